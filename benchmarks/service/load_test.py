"""Bounded load test of `r3mem serve` on loopback: concurrent clients, several users, then checks.

Starts the service in a subprocess (the tiny random model by default; `--base-model`/`--model` for a
real one) on a throw-away SQLite store, creates `--users` users with two sessions each (one with a
per-user id, one with an id every user shares), and lets `--clients` threads (one httpx client each)
work through a fixed, seeded plan of `--requests` requests: writes, recalls and answers on the
caller's own sessions, plus requests that deliberately cross users (user A's token on a session only
user B has), which must all be answered 404. It stops by itself when the plan is done or after
`--max-seconds`, then verifies through the API that

- every acknowledged write (201) is present, under its index, with its text, in its own session;
- no session holds a turn written by another user, and no crossing request got anything but 404;
- every session's memory covers all its turns (`memory.through_turn == turn_count`),

and writes p50/p90/p99 latency per endpoint, throughput and error rate to `--out` (JSON) with a
latency histogram beside it (PNG). Exit status 0 only if there was no error and every check passed.

    python benchmarks/service/load_test.py                              # 8 clients, 300 requests, tiny model
    python benchmarks/service/load_test.py --clients 2 --requests 20 --out /tmp/load.json
    python benchmarks/service/load_test.py --base-model smollm2-135m --out benchmarks/service/results/load_smollm2.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "load_tiny.json"
ADMIN = "load-test-admin-token"
MIX = (("write", 0.5), ("recall", 0.25), ("answer", 0.15), ("cross", 0.10))
CROSS = ("write", "recall", "answer", "turns", "export", "get", "delete")
WORDS = ("river ferry stone house winter traders canoe mission thaw settlers flour furs news spring town "
         "bridge lantern harbour orchard meadow").split()
SHARED_SESSION = "common"  # every user has a session with this id: it must resolve per user


@dataclass
class Request:
    seq: int
    kind: str  # write | recall | answer | cross
    user: str
    session: str
    method: str
    path: str
    body: dict[str, Any] | None
    expect: int  # the status a correct service answers


@dataclass
class Result:
    req: Request
    status: int  # 0: transport error
    ms: float
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == self.req.expect


@dataclass
class Plan:
    users: list[str]
    sessions: dict[str, list[str]]
    requests: list[Request] = field(default_factory=list)


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int, base_model: str | None, model: str | None, torch_threads: int | None,
                 log: Path, timeout: float = 180.0) -> subprocess.Popen:
    """`r3mem serve` in a subprocess; returns once /health answers (or raises with the server's stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p),
           "R3MEM_ADMIN_TOKEN": ADMIN, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if torch_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch_threads)
    cmd = [sys.executable, "-m", "r3mem.cli.main", "serve", "--store", str(store), "--port", str(port),
           "--log-level", "warning"]
    if base_model:
        cmd += ["--base-model", base_model]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"server did not answer /health within {timeout:.0f} s")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> int:
    """Ctrl-C (requests in flight finish), then a kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


# ----------------------------------------------------------------------------- the plan


def make_plan(n_users: int, n_requests: int, seed: int) -> Plan:
    """A seeded list of requests over users and their sessions (same arguments: same plan)."""
    rng = random.Random(seed)
    users = [f"user{i}" for i in range(n_users)]
    sessions = {u: [f"{u}-notes", SHARED_SESSION] for u in users}
    plan = Plan(users, sessions)
    kinds, weights = zip(*MIX)
    for seq in range(n_requests):
        kind = rng.choices(kinds, weights)[0]
        user = rng.choice(users)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        if kind == "cross":
            victim = rng.choice([u for u in users if u != user])
            session = f"{victim}-notes"  # exists only for the victim
            op = rng.choice(CROSS)
            method, path, body = {
                "write": ("POST", "write", {"text": f"INTRUDER {user} #{seq} {words}"}),
                "recall": ("POST", "recall", {"query": words}),
                "answer": ("POST", "answer", {"question": f"{words}?", "max_new_tokens": 4}),
                "turns": ("GET", "turns", None),
                "export": ("GET", "export", None),
                "get": ("GET", "", None),
                "delete": ("DELETE", "", None),
            }[op]
            plan.requests.append(Request(seq, kind, user, session, method,
                                         f"/sessions/{session}" + (f"/{path}" if path else ""), body, 404))
            continue
        session = rng.choice(sessions[user])
        if kind == "write":
            body = {"text": f"[{user}/{session}#{seq}] {words}.", "speaker": rng.choice(["user", "assistant"])}
            plan.requests.append(Request(seq, kind, user, session, "POST", f"/sessions/{session}/write", body, 201))
        elif kind == "recall":
            body = {"query": words, "top_k": rng.randint(1, 3)}
            plan.requests.append(Request(seq, kind, user, session, "POST", f"/sessions/{session}/recall", body, 200))
        else:
            body = {"question": f"What about the {words}?", "max_new_tokens": 8, "top_k": 2}
            plan.requests.append(Request(seq, kind, user, session, "POST", f"/sessions/{session}/answer", body, 200))
    return plan


# ----------------------------------------------------------------------------- running it


def setup_users(url: str, plan: Plan, admin_token: str) -> dict[str, str]:
    tokens = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for u in plan.users:
            r = c.post("/users", json={"user_id": u}, headers={"Authorization": f"Bearer {admin_token}"})
            r.raise_for_status()
            tokens[u] = r.json()["token"]
            for s in plan.sessions[u]:
                c.post(
                    "/sessions", json={"session_id": s}, headers={"Authorization": f"Bearer {tokens[u]}"}
                ).raise_for_status()
    return tokens


def run_plan(url: str, plan: Plan, tokens: dict[str, str], clients: int, max_seconds: float,
             timeout: float = 300.0) -> tuple[list[Result], float]:
    """Work through the plan with `clients` threads; stops early at `max_seconds`. Returns results and wall time."""
    todo: queue.Queue[Request] = queue.Queue()
    for r in plan.requests:
        todo.put(r)
    results: list[Result] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            while time.monotonic() < deadline:
                try:
                    req = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                try:
                    r = c.request(
                        req.method, req.path, json=req.body, headers={"Authorization": f"Bearer {tokens[req.user]}"}
                    )
                    res = Result(req, r.status_code, (time.perf_counter() - t0) * 1000, _json(r))
                    if not res.ok:
                        got = f"{r.status_code} {r.text[:200]}"
                        res.error = f"{req.kind} {req.method} {req.path}: expected {req.expect}, got {got}"
                except httpx.HTTPError as e:
                    res = Result(
                        req,
                        0,
                        (time.perf_counter() - t0) * 1000,
                        error=f"{req.kind} {req.path}: {type(e).__name__}: {e}",
                    )
                with lock:
                    results.append(res)

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- checks and figures


def verify(url: str, plan: Plan, tokens: dict[str, str], results: list[Result]) -> dict[str, Any]:
    """Every acknowledged write present in its own session; nothing crossed users; memory covers every turn."""
    acked: dict[tuple[str, str], list[dict]] = defaultdict(list)
    failed_writes: dict[tuple[str, str], int] = defaultdict(int)
    for res in results:
        if res.req.kind == "write":
            if res.status == 201:
                acked[(res.req.user, res.req.session)].append(res.body["turn"])
            else:
                failed_writes[(res.req.user, res.req.session)] += 1
    cross = [r for r in results if r.req.kind == "cross"]
    report = {
        "acked_writes": sum(map(len, acked.values())),
        "missing_writes": 0,
        "wrong_text": 0,
        "foreign_or_intruder_turns": 0,
        "non_contiguous_sessions": 0,
        "unexplained_turns": 0,
        "memory_not_covering_turns": 0,
        "cross_user_requests": len(cross),
        "cross_user_not_404": sum(1 for r in cross if r.status != 404 or (r.body or {}).get("error") != "not_found"),
        "unreadable_sessions": 0,
        "problems": [],
    }
    with httpx.Client(base_url=url, timeout=120) as c:
        for u in plan.users:
            h = {"Authorization": f"Bearer {tokens[u]}"}
            for s in plan.sessions[u]:
                r = c.get(f"/sessions/{s}/turns", headers=h)
                if r.status_code != 200:  # e.g. deleted by a crossing request
                    report["unreadable_sessions"] += 1
                    report["problems"].append(f"{u}/{s}: GET turns answered {r.status_code} {r.text[:100]}")
                    continue
                turns = r.json()["turns"]
                by_index = {t["index"]: t["text"] for t in turns}
                if sorted(by_index) != list(range(1, len(turns) + 1)):
                    report["non_contiguous_sessions"] += 1
                for t in acked[(u, s)]:
                    if t["index"] not in by_index:
                        report["missing_writes"] += 1
                        report["problems"].append(f"{u}/{s}: acknowledged turn {t['index']} missing")
                    elif by_index[t["index"]] != t["text"]:
                        report["wrong_text"] += 1
                        report["problems"].append(f"{u}/{s}: turn {t['index']} text differs")
                for t in turns:
                    if "INTRUDER" in t["text"] or not t["text"].startswith(f"[{u}/{s}#"):
                        report["foreign_or_intruder_turns"] += 1
                        report["problems"].append(f"{u}/{s}: foreign turn {t['index']}: {t['text'][:60]!r}")
                # a write answered with an error may still have stored its turn (it is folded in later)
                if not len(acked[(u, s)]) <= len(turns) <= len(acked[(u, s)]) + failed_writes[(u, s)]:
                    report["unexplained_turns"] += 1
                info = c.get(f"/sessions/{s}", headers=h).json()
                if turns and info["memory"]["through_turn"] != info["turn_count"]:
                    report["memory_not_covering_turns"] += 1
                    report["problems"].append(
                        f"{u}/{s}: memory covers {info['memory']['through_turn']} of {info['turn_count']} turns"
                    )
    report["problems"] = report["problems"][:20]
    counters = [k for k in report if k not in ("acked_writes", "cross_user_requests", "problems")]
    report["passed"] = all(report[k] == 0 for k in counters)
    return report


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100])."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return round(s[k], 2)


def summarise(results: list[Result], wall_s: float, planned: int) -> dict[str, Any]:
    by_kind: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_kind[r.req.kind].append(r)
    endpoints = {}
    for kind, rs in sorted(by_kind.items()):
        ms = [r.ms for r in rs]
        endpoints[kind] = {"count": len(rs), "errors": sum(not r.ok for r in rs), "p50_ms": percentile(ms, 50),
                           "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
                           "mean_ms": round(sum(ms) / len(ms), 2), "max_ms": round(max(ms), 2)}
    errors = [r for r in results if not r.ok]
    return {"requests_planned": planned, "requests_done": len(results), "duration_s": round(wall_s, 3),
            "throughput_rps": round(len(results) / wall_s, 3) if wall_s > 0 else None,
            "error_rate": round(len(errors) / len(results), 4) if results else None,
            "errors": [r.error for r in errors[:10]], "endpoints": endpoints}


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = sorted({r.req.kind for r in results})
    fig, ax = plt.subplots(figsize=(7, 4))
    ms = [r.ms for r in results] or [1.0]
    bins = np.logspace(np.log10(max(min(ms), 0.1)), np.log10(max(ms) * 1.01 + 0.1), 40)
    for kind in kinds:
        ax.hist([r.ms for r in results if r.req.kind == kind], bins=bins, alpha=0.6, label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base-model", default="tiny-llama", help="Base model of the served engine (default: tiny-llama).")
    p.add_argument("--model", default=None, help="Adapter folder for the served engine.")
    p.add_argument("--clients", type=int, default=8, help="Concurrent client threads.")
    p.add_argument("--requests", type=int, default=300, help="Requests in the plan (the run stops when done).")
    p.add_argument("--users", type=int, default=3, help="Users (>= 2: some requests cross between them).")
    p.add_argument("--max-seconds", type=float, default=600.0, help="Stop issuing requests after this long.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the request plan.")
    p.add_argument("--torch-threads", type=int, default=None, help="OMP_NUM_THREADS for the server process.")
    p.add_argument("--store", type=Path, default=None, help="SQLite store file (default: a temporary one).")
    p.add_argument("--url", default=None, help="Use a running service at this URL instead of starting one "
                                               "(with --admin-token).")
    p.add_argument("--admin-token", default=None, help="Admin token of the service given with --url.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Result JSON (a PNG histogram is written beside it).")
    p.add_argument("--no-plot", action="store_true", help="Skip the PNG.")
    a = p.parse_args(argv)
    if a.users < 2:
        p.error("--users must be >= 2")
    if a.clients < 1 or a.requests < 1 or a.max_seconds <= 0:
        p.error("--clients, --requests and --max-seconds must be positive")
    if a.url and not a.admin_token:
        p.error("--url needs --admin-token")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load test; returns the result document (also written to --out)."""
    a = parse_args(argv)
    plan = make_plan(a.users, a.requests, a.seed)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="r3mem-load-") as tmp:
        proc, start_s = None, None
        if a.url:
            url, admin = a.url.rstrip("/"), a.admin_token
        else:
            port = free_port()
            url, admin = f"http://127.0.0.1:{port}", ADMIN
            t0 = time.perf_counter()
            proc = start_server(a.store or Path(tmp) / "store.db", port, a.base_model, a.model, a.torch_threads,
                                Path(tmp) / "server.log")
            start_s = round(time.perf_counter() - t0, 2)
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                version = c.get("/version").json()
            tokens = setup_users(url, plan, admin)
            results, wall = run_plan(url, plan, tokens, a.clients, a.max_seconds)
            checks = verify(url, plan, tokens, results)
        finally:
            exit_code = stop_server(proc) if proc is not None else None
    doc = {
        "benchmark": "service-load",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"base_model": a.base_model if not a.url else None, "model": a.model, "clients": a.clients,
                   "requests": a.requests, "users": a.users, "sessions_per_user": 2, "mix": dict(MIX),
                   "max_seconds": a.max_seconds, "seed": a.seed, "torch_threads": a.torch_threads,
                   "url": a.url or "spawned on 127.0.0.1"},
        "service": {"r3mem": version.get("r3mem"), "base_model_id": version.get("base_model_id"),
                    "adapter_trained": version.get("adapter_trained"), "start_s": start_s, "exit_code": exit_code},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_1m_before": load_before},  # other work on the machine slows every figure
        **summarise(results, wall, len(plan.requests)),
        "verification": checks,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    if not a.no_plot:
        e = doc["endpoints"]
        plot(
            results,
            a.out.with_suffix(".png"),
            f"r3mem serve ({a.base_model if not a.url else a.url}): {a.clients} clients, "
            f"{doc['requests_done']} requests, "
            f"{doc['throughput_rps']} req/s, error rate {doc['error_rate']}\n"
            + ", ".join(f"{k} p50 {v['p50_ms']:.0f} ms" for k, v in e.items()),
        )
    return doc


if __name__ == "__main__":
    d = main()
    print(
        json.dumps(
            {k: d[k] for k in ("requests_done", "duration_s", "throughput_rps", "error_rate", "endpoints")}, indent=2
        )
    )
    v = d["verification"]
    print(f"verification: {'passed' if v['passed'] else 'FAILED'} ({v['acked_writes']} acknowledged writes, "
          f"{v['cross_user_requests']} cross-user requests)" + "".join(f"\n  {p}" for p in v["problems"]))
    sys.exit(0 if v["passed"] and d["error_rate"] == 0 else 1)
