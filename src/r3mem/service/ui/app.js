// The r3mem memory inspector: a static page over the service's own JSON API (no build step, no
// external URLs). Every piece of stored text is put in the page with textContent, never as HTML.
"use strict";

const API = new URL("../", document.baseURI); // the page is served at <service>/ui/
const TOKEN_KEY = "r3mem.token";
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(new URL(path, API), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    if (r.status === 401) logout();
    throw new Error((data && data.message) || `${method} ${path}: HTTP ${r.status}`);
  }
  return data;
}

const sid = (id) => `sessions/${encodeURIComponent(id)}`;

// ----- login ---------------------------------------------------------------------------------

async function login(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await loadSessions();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw e;
  }
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#logout").hidden = false;
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#login-view").hidden = false;
  $("#app-view").hidden = true;
  $("#logout").hidden = true;
  $("#session").hidden = true;
}

// ----- sessions ------------------------------------------------------------------------------

async function loadSessions() {
  const { sessions } = await api("GET", "sessions");
  const list = $("#sessions");
  list.replaceChildren();
  if (!sessions.length) list.append(el("li", { class: "muted" }, "no sessions yet"));
  for (const s of sessions) {
    const link = el("a", { href: "#", "data-session": s.session_id }, s.session_id);
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      openSession(s.session_id).catch((e) => showError(e.message));
    });
    list.append(el("li", {}, link, el("span", { class: "muted" }, ` ${s.turn_count} turns`)));
  }
}

let current = null; // { id, memory } of the open session

async function openSession(id) {
  showError("");
  const [turns, memory] = await Promise.all([api("GET", `${sid(id)}/turns`), api("GET", `${sid(id)}/memory`)]);
  current = { id, memory };
  for (const a of document.querySelectorAll("#sessions a")) a.classList.toggle("active", a.dataset.session === id);
  $("#session-title").textContent = id;
  renderSummary(memory, turns.turns.length);
  renderSlots(memory.slots);
  renderTurns(turns.turns);
  $("#recall").replaceChildren();
  $("#session").hidden = false;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

function renderSummary(m, nTurns) {
  const card = (label, value, title = "") => el("div", { class: "card", title }, el("b", {}, value), el("span", {}, label));
  $("#memory-summary").replaceChildren(
    card("memory version", `v${m.version}`, `covers turns 1-${m.through_turn} of ${nTurns}`),
    card("memory file", bytes(m.bytes)),
    card("document state", `${m.document.shape.join("×")} ${m.document.dtype}`,
         `${bytes(m.document.bytes)}, ${m.document.n_tokens} tokens in ${m.document.n_segments} segments`),
    card("slots", `${m.paragraphs} paragraphs · ${m.entities} entities`, `tensor state ${bytes(m.state_bytes)}`),
    card("memory mode", m.memory_mode),
  );
}

function renderSlots(slots) {
  const body = $("#slots tbody");
  body.replaceChildren();
  for (const s of slots) {
    const button = el("button", { type: "button" }, "Recall");
    button.addEventListener("click", () => recallSlot(s).catch((e) => showError(e.message)));
    body.append(el("tr", { "data-key": s.key, "data-level": s.level },
      el("td", {}, s.level), el("td", {}, s.key), el("td", {}, s.turn_id ?? "–"),
      el("td", {}, `${s.n_tokens} → ${s.mem_tokens}`), el("td", { class: "source" }, s.source.trim()),
      el("td", {}, button)));
  }
  if (!slots.length) body.append(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "nothing written into memory yet")));
}

function renderTurns(turns) {
  $("#turns").replaceChildren(...turns.map((t) =>
    el("li", { value: t.index }, el("b", {}, `${t.speaker}: `), t.text)));
}

// ----- recall and comparison -----------------------------------------------------------------

async function recallSlot(slot) {
  showError("");
  const rec = await api("POST", `${sid(current.id)}/recall`, { level: slot.level, index: slot.index });
  $("#recall").replaceChildren(...rec.slots.map((r) => comparison(slot, r)));
}

async function recallQuery(query, level, topK) {
  showError("");
  const rec = await api("POST", `${sid(current.id)}/recall`, { query, level, top_k: topK });
  const byKey = new Map(current.memory.slots.map((s) => [`${s.level}/${s.key}`, s]));
  $("#recall").replaceChildren(...rec.slots.map((r) => comparison(byKey.get(`${r.level}/${r.key}`), r)));
}

// Tokens are compared without surrounding whitespace; whitespace-only tokens are never marked.
const norm = (t) => t.trim();

// Longest common subsequence of two token lists: which positions of each are matched.
function lcsMatch(a, b) {
  const n = a.length, m = b.length;
  const L = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const inA = new Array(n).fill(false), inB = new Array(m).fill(false);
  for (let i = 0, j = 0; i < n && j < m;) {
    if (a[i] === b[j]) { inA[i] = inB[j] = true; i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) i++;
    else j++;
  }
  return [inA, inB];
}

function shade(p) {
  // low probability: warm and strong; high probability: nearly clear
  return `rgba(230, 120, 20, ${(0.75 * (1 - p)).toFixed(3)})`;
}

function comparison(slot, rec) {
  const recTokens = rec.tokens || [{ text: rec.text || "", p: 1 }];
  const srcTokens = slot ? slot.source_tokens : [];
  const keep = (list) => list.map((t, i) => [norm(t), i]).filter(([k]) => k);
  const a = keep(srcTokens), b = keep(recTokens.map((t) => t.text));
  const [inA, inB] = lcsMatch(a.map(([k]) => k), b.map(([k]) => k));
  const missing = new Set(a.filter((_, x) => !inA[x]).map(([, i]) => i));
  const differ = new Set(b.filter((_, x) => !inB[x]).map(([, i]) => i));
  const matched = inA.filter(Boolean).length;

  const original = el("div", { class: "text original" },
    ...srcTokens.map((t, i) => el("span", { class: missing.has(i) ? "tok missing" : "tok", title: missing.has(i) ? "not recalled" : "" }, t)));
  const recalled = el("div", { class: "text recalled" },
    ...recTokens.map((t, i) => {
      const span = el("span", { class: differ.has(i) ? "tok diff" : "tok", "data-p": t.p.toFixed(4),
                                title: `p = ${t.p.toFixed(3)}${differ.has(i) ? " · not in the original" : ""}` }, t.text);
      span.style.backgroundColor = shade(t.p);
      return span;
    }));
  const conf = rec.confidence || {};
  const stats = [
    `${matched}/${a.length} original tokens recalled in order`,
    conf.geo_mean == null ? "" : `confidence: geometric mean ${conf.geo_mean.toFixed(3)}, min ${conf.min.toFixed(3)}`,
  ].filter(Boolean).join(" · ");
  return el("article", { class: "comparison", "data-key": rec.key },
    el("h3", {}, `${rec.level} ${rec.key}`, el("span", { class: "muted" }, rec.turn_id == null ? "" : ` · turn ${rec.turn_id}`)),
    el("p", { class: "stats" }, stats),
    el("div", { class: "side-by-side" },
      el("div", {}, el("h4", {}, "original"), original),
      el("div", {}, el("h4", {}, "reconstruction (shaded by uncertainty)"), recalled)));
}

// ----- wiring --------------------------------------------------------------------------------

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  showError("");
  login($("#token").value.trim()).catch((e) => showError(e.message));
});
$("#logout").addEventListener("click", logout);
$("#query-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  recallQuery($("#query").value, $("#query-level").value, Number($("#query-k").value) || 1)
    .catch((e) => showError(e.message));
});

fetch(new URL("version", API)).then((r) => r.json()).then((v) => {
  $("#model").textContent = `r3mem ${v.r3mem} · ${v.base_model_id.split("|")[0]}${v.adapter_trained ? "" : " (untrained adapter)"}`;
}).catch(() => {});
if (sessionStorage.getItem(TOKEN_KEY)) login(sessionStorage.getItem(TOKEN_KEY)).catch(() => logout());
