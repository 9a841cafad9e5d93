"""`r3mem serve` killed with SIGKILL mid-stream and restarted; read-only and full stores through HTTP.

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import sqlite3
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from _helpers import ADMIN, all_finite, bearer, load_test
from fastapi.testclient import TestClient
from sqlalchemy import event

from r3mem.service import create_app
from r3mem.store import MemoryStore, StoreError

torch.set_num_threads(1)


def _serve(db: Path, port: int, log: Path):
    return load_test.start_server(db, port, "tiny-llama", None, 1, log, timeout=120)


def test_sigkill_mid_writes_then_restart_loses_nothing_acknowledged(tmp_path):
    db, log = tmp_path / "served.db", tmp_path / "server.log"
    port = load_test.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(db, port, log)
    acked, stop, threads = [], threading.Event(), []
    try:
        admin = bearer(load_test.ADMIN)
        alice = bearer(httpx.post(f"{url}/users", json={"user_id": "alice"}, headers=admin).json()["token"])
        bob = bearer(httpx.post(f"{url}/users", json={"user_id": "bob"}, headers=admin).json()["token"])
        httpx.post(f"{url}/sessions", json={"session_id": "s"}, headers=alice).raise_for_status()
        httpx.post(f"{url}/sessions", json={"session_id": "b"}, headers=bob).raise_for_status()

        def writer(w):
            with httpx.Client(base_url=url, timeout=30, headers=alice) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.post("/sessions/s/write", json={"text": f"writer {w} line {i}"})
                    except httpx.TransportError:
                        return  # killed
                    if r.status_code == 201:
                        acked.append(r.json())
                    i += 1

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
        for t in threads:
            t.start()
        t_end = time.monotonic() + 90
        while len(acked) < 8 and time.monotonic() < t_end and all(t.is_alive() for t in threads):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown handler runs
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in threads:
        t.join(30)
    assert len(acked) >= 8, log.read_text()[-2000:]
    with sqlite3.connect(db) as conn:  # the store file opens cleanly
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with MemoryStore(db) as store:
        turns = {t.index: t.text for t in store.list_turns("alice", "s")}
        stored = store.get_memory("alice", "s")
    assert sorted(turns) == list(range(1, len(turns) + 1))  # contiguous: no partial turn
    assert all(turns[a["turn"]["index"]] == a["turn"]["text"] for a in acked)
    assert stored.version >= max(a["memory_version"] for a in acked)
    assert max(a["turn"]["index"] for a in acked) <= stored.through_turn <= len(turns)
    # at most the writes in flight at the kill are stored but not yet in memory (unacknowledged)
    assert len(turns) - stored.through_turn <= len(threads)

    port = load_test.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(db, port, log)  # restarted on the same store
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/sessions", headers=bearer("guess")).status_code == 401
            assert c.get("/sessions/s", headers=bob).status_code == 404  # isolation still holds
            assert c.post("/sessions/s/write", json={"text": "bob was here"}, headers=bob).status_code == 404
            w = c.post("/sessions/s/write", json={"text": "after the restart"}, headers=alice)  # the old token works
            assert w.status_code == 201 and w.json()["turn"]["index"] == len(turns) + 1
            info = c.get("/sessions/s", headers=alice).json()
            assert info["memory"]["through_turn"] == info["turn_count"] == len(turns) + 1  # caught up
            exported = c.get("/sessions/s/export", headers=alice).json()
            rec = c.post("/sessions/s/recall", json={"query": "writer 1", "top_k": 2}, headers=alice)
            assert rec.status_code == 200 and len(rec.json()["slots"]) == 2
    finally:
        assert load_test.stop_server(proc) == 0
    slot_turns = [s["turn_id"] for s in exported["memory"]["slots"] if s["level"] == "paragraph"]
    assert slot_turns == list(range(1, len(turns) + 2))  # every turn written into memory exactly once, in order
    from r3mem.cli.common import load_engine

    mem = load_engine(None, "tiny-llama").from_bytes(base64.b64decode(exported["memory"]["blob_b64"]))
    assert len(mem.paragraphs) == len(turns) + 1 and all_finite(mem)


@pytest.fixture
def populated_store(tmp_path, engine):
    path = tmp_path / "store" / "store.db"
    with MemoryStore(path) as store, TestClient(create_app(engine, store, admin_token=ADMIN)) as c:
        token = c.post("/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
        c.post("/sessions", json={"session_id": "s"}, headers=bearer(token))
        for text in ("Henry Sibley built a stone house.", "The river froze in winter."):
            assert c.post("/sessions/s/write", json={"text": text}, headers=bearer(token)).status_code == 201
    return path, bearer(token)


def assert_503(r, *words):
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "store_unavailable" and "\n" not in body["message"], body
    assert all(w in body["message"] for w in words), body


def test_read_only_store_through_the_service(populated_store, engine):
    path, alice = populated_store
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        with MemoryStore(path) as store, TestClient(create_app(engine, store, admin_token=ADMIN)) as c:
            assert c.get("/health").json() == {"status": "ok"}
            assert len(c.get("/sessions/s/turns", headers=alice).json()["turns"]) == 2  # reads work
            assert c.post("/sessions/s/recall", json={"index": 0}, headers=alice).status_code == 200
            assert_503(
                c.post("/sessions/s/write", json={"text": "more"}, headers=alice), "read-only", "nothing was written"
            )
            assert_503(c.post("/sessions", json={"session_id": "t"}, headers=alice), "read-only")
            assert_503(c.delete("/sessions/s", headers=alice), "read-only")
            assert_503(c.post("/users", json={"user_id": "bob"}, headers=bearer(ADMIN)), "read-only")
            assert_503(c.delete("/users/me", headers=alice), "read-only")
            assert c.get("/sessions", headers=bearer("guess")).status_code == 401  # auth still holds
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_full_disk_through_the_service_keeps_data_and_recovers(populated_store, engine, monkeypatch):
    path, alice = populated_store
    with MemoryStore(path) as store, TestClient(create_app(engine, store, admin_token=ADMIN)) as c:
        old = store.get_memory("alice", "s")
        with sqlite3.connect(path) as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]

        def cap(dbapi_conn, record):  # noqa: ARG001
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

        event.listen(store._engine, "connect", cap)
        store._engine.dispose()  # every new connection sees a database that cannot grow
        # Larger than the free room of a capped database's last pages (16-bit memories are small).
        r = c.post("/sessions/s/write", json={"text": "A small turn about the ferry. " * 40}, headers=alice)
        stranded = len(store.list_turns("alice", "s")) - 2  # a small turn may fit where its memory does not
        if stranded:
            assert_503(r, "turn 3 stored, but the memory was not updated", "full")
        else:
            assert_503(r, "cannot append a turn", "full", "nothing was written")
        big = "A long turn about the ferry and the stone house. " * 400
        for _ in range(2):
            assert_503(c.post("/sessions/s/write", json={"text": big}, headers=alice), "full")
        export = store.export_session("alice", "s")
        export["turns"][0]["text"] += " " + big  # more than the capped database's free room
        assert_503(c.post("/sessions/import", json=export, params={"session_id": "copy"},
                          headers=alice), "full", "nothing was written")
        assert len(store.list_turns("alice", "s")) == 2 + stranded
        kept = store.get_memory("alice", "s")
        assert (kept.blob, kept.version, kept.through_turn, kept.slots) == (
            old.blob,
            old.version,
            old.through_turn,
            old.slots,
        )
        assert len(engine.from_bytes(kept.blob).paragraphs) == 2
        event.remove(store._engine, "connect", cap)
        store._engine.dispose()
        w = c.post("/sessions/s/write", json={"text": "Space again."}, headers=alice)
        assert w.status_code == 201 and w.json()["turn"]["index"] == 3 + stranded
        info = c.get("/sessions/s", headers=alice).json()
        assert info["memory"]["through_turn"] == info["turn_count"] == 3 + stranded  # the stranded turn folded in
        assert [s.session_id for s in store.list_sessions("alice")] == ["s"]

        # the memory write alone failing (deterministically): the 503 says the turn was kept
        real_put = store.put_memory

        def full(*a, **k):
            raise StoreError("cannot write the memory: store is full, no space left; nothing was written")

        monkeypatch.setattr(store, "put_memory", full)
        assert_503(c.post("/sessions/s/write", json={"text": "Kept turn."}, headers=alice),
                   f"turn {4 + stranded} stored, but the memory was not updated (the next write will fold it in)")
        monkeypatch.setattr(store, "put_memory", real_put)
        assert c.post("/sessions/s/write", json={"text": "Last."}, headers=alice).status_code == 201
        turns = c.get("/sessions/s/turns", headers=alice).json()["turns"]
        assert [t["text"] for t in turns][-2:] == ["Kept turn.", "Last."]
        exported = c.get("/sessions/s/export", headers=alice).json()
        # every turn is in memory, in order (a long turn's paragraph is split into several slots)
        slot_turns = [x["turn_id"] for x in exported["memory"]["slots"] if x["level"] == "paragraph"]
        assert list(dict.fromkeys(slot_turns)) == [t["index"] for t in turns]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
