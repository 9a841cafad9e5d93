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

let allSessions = [];

async function loadSessions() {
  ({ sessions: allSessions } = await api("GET", "sessions"));
  renderSessions();
}

function renderSessions() {
  const filter = $("#session-filter").value.trim().toLowerCase();
  const list = $("#sessions");
  list.replaceChildren();
  const shown = allSessions.filter((s) => s.session_id.toLowerCase().includes(filter));
  if (!shown.length) list.append(el("li", { class: "muted" }, allSessions.length ? "no session matches" : "no sessions yet"));
  for (const s of shown) {
    const link = el("a", { href: "#", "data-session": s.session_id }, s.session_id);
    link.classList.toggle("active", current !== null && current.id === s.session_id);
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      openSession(s.session_id).catch((e) => showError(e.message));
    });
    list.append(el("li", {}, link, el("span", { class: "muted" }, ` ${s.turn_count} turns`)));
  }
}

let current = null; // { id, memory, turns, shown } of the open session
const PAGE = 50; // turns shown at first (the latest); "Show earlier turns" shows PAGE more

async function openSession(id, keepPage = false) {
  showError("");
  const [turns, memory] = await Promise.all([api("GET", `${sid(id)}/turns`), api("GET", `${sid(id)}/memory`)]);
  const shown = keepPage && current && current.id === id ? current.shown : PAGE;
  current = { id, memory, turns: turns.turns, shown };
  for (const a of document.querySelectorAll("#sessions a")) a.classList.toggle("active", a.dataset.session === id);
  $("#session-title").textContent = id;
  renderSummary(memory, turns.turns.length);
  renderSlots(memory.slots);
  renderTurns();
  if (!keepPage) $("#recall").replaceChildren();
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
         `${bytes(m.document.bytes)}, ${m.document.n_tokens} tokens in ${m.document.n_segments} segments; ` +
         `${m.document.snapshots} snapshots (${bytes(m.document.snapshot_bytes)}) for rebuilds after an edit`),
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
      el("td", {}, s.level), el("td", {}, s.key), el("td", { class: "turn" }, turnLink(s)),
      el("td", {}, `${s.n_tokens} → ${s.mem_tokens}`), el("td", { class: "source" }, s.source.trim()),
      el("td", {}, button)));
  }
  if (!slots.length) body.append(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "nothing written into memory yet")));
}

function turnLink(slot) {
  if (slot.turn_id == null) return "–";
  const link = el("a", { href: "#", title: "show this slot's text in its turn" }, String(slot.turn_id));
  link.addEventListener("click", (ev) => { ev.preventDefault(); showInTurn(slot); });
  return link;
}

// Mark the slot's source text inside its turn (the turn's text as the memory saw it: "speaker: text").
function showInTurn(slot) {
  const pos = current.turns.findIndex((t) => t.index === slot.turn_id);
  if (pos < 0) return;
  current.shown = Math.max(current.shown, current.turns.length - pos);
  renderTurns(slot);
  $("#turns-box").open = true;
  const item = $(`#turn-${slot.turn_id}`);
  if (item) item.scrollIntoView({ block: "center" });
}

function renderTurns(slot = null) {
  const turns = current.turns.slice(Math.max(0, current.turns.length - current.shown));
  $("#more-turns").hidden = turns.length === current.turns.length;
  $("#turns").replaceChildren(...turns.map((t) => turnItem(t, slot && slot.turn_id === t.index ? slot : null)));
}

function turnItem(t, slot) {
  const text = el("span", { class: "text" });
  const stream = `${t.speaker}: ${t.text}`;
  const span = slot ? slot.source.trim() : "";
  const at = span ? stream.indexOf(span) : -1;
  if (at >= 0) text.append(stream.slice(0, at), el("mark", {}, span), stream.slice(at + span.length));
  else text.append(el("b", {}, `${t.speaker}: `), t.text);
  const edit = el("button", { type: "button", class: "edit-turn" }, "Edit");
  const forget = el("button", { type: "button", class: "forget-turn" }, "Forget");
  const item = el("li", { value: t.index, id: `turn-${t.index}`, class: slot ? "highlight" : "" }, text, edit, forget);
  edit.addEventListener("click", () => editTurn(item, t));
  forget.addEventListener("click", () => forgetTurn(t).catch((e) => showError(e.message)));
  return item;
}

function editTurn(item, t) {
  const input = el("input", { class: "edit", value: t.text });
  const save = el("button", { type: "button", class: "save-turn" }, "Save");
  const cancel = el("button", { type: "button" }, "Cancel");
  save.addEventListener("click", () => changed(api("PATCH", `${sid(current.id)}/turns/${t.index}`, { text: input.value }),
                                                `turn ${t.index} edited`).catch((e) => showError(e.message)));
  cancel.addEventListener("click", () => renderTurns());
  item.replaceChildren(el("b", {}, `${t.speaker}: `), input, save, cancel);
  input.focus();
}

async function forgetTurn(t) {
  if (!confirm(`Forget turn ${t.index}? It is deleted with its history and the memory is rebuilt without it.`)) return;
  await changed(api("DELETE", `${sid(current.id)}/turns/${t.index}`), `turn ${t.index} forgotten`);
}

// After a write, edit or delete: wait for its background job if it got one (202), then show the session anew.
async function changed(request, what) {
  showError("");
  const out = await request;
  if (out && out.job) {
    $("#status").textContent = `${what}; memory being rebuilt in the background…`;
    let job = out.job;
    while (!["done", "failed", "cancelled"].includes(job.state)) {
      await new Promise((ok) => setTimeout(ok, 500));
      job = await api("GET", `jobs/${encodeURIComponent(job.job_id)}`);
      $("#status").textContent = `${what}; memory being rebuilt: ${job.done}/${job.total ?? "?"} turns`;
    }
    if (job.state !== "done") throw new Error(`memory job ${job.state}: ${job.error || ""}`);
  }
  $("#status").textContent = `${what}; memory v${out && out.memory_version != null ? out.memory_version : "?"}`;
  await Promise.all([openSession(current.id, true), loadSessions()]);
}

async function exportSession() {
  const data = await api("GET", `${sid(current.id)}/export`);
  const link = el("a", { href: URL.createObjectURL(new Blob([JSON.stringify(data, null, 1)], { type: "application/json" })),
                         download: `${current.id}.r3mem-session.json` });
  document.body.append(link);
  link.click();
  link.remove();
  $("#status").textContent = `exported ${data.turns.length} turns`;
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
    el("h3", {}, `${rec.level} ${rec.key}`, el("span", { class: "muted" }, rec.turn_id == null ? "" : ` · turn ${rec.turn_id}`),
       el("span", { class: "muted score" }, rec.score == null ? "" : ` · score ${rec.score.toFixed(3)}`)),
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
$("#session-filter").addEventListener("input", renderSessions);
$("#more-turns").addEventListener("click", () => { current.shown += PAGE; renderTurns(); });
$("#export").addEventListener("click", () => exportSession().catch((e) => showError(e.message)));
$("#write-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = { text: $("#write-text").value, speaker: $("#write-speaker").value.trim() || "user" };
  changed(api("POST", `${sid(current.id)}/write`, body), "turn written")
    .then(() => { $("#write-text").value = ""; })
    .catch((e) => showError(e.message));
});
$("#query-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  recallQuery($("#query").value, $("#query-level").value, Number($("#query-k").value) || 1)
    .catch((e) => showError(e.message));
});

fetch(new URL("version", API)).then((r) => r.json()).then((v) => {
  $("#model").textContent = `r3mem ${v.r3mem} · ${v.base_model_id.split("|")[0]}${v.adapter_trained ? "" : " (untrained adapter)"}`;
}).catch(() => {});
if (sessionStorage.getItem(TOKEN_KEY)) login(sessionStorage.getItem(TOKEN_KEY)).catch(() => logout());
