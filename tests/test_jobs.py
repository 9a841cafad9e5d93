"""The service's background job runner (`r3mem.service.jobs`): states, progress, cancel, failures, owners;
and a job killed mid-run (SIGKILL) loses no acknowledged turn."""

import os
import signal
import threading
import time

import httpx
from conftest import free_port, wait_healthy

from r3mem.service.jobs import JobRunner
from r3mem.store import MemoryStore


def _until(pred, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_progress_done_failed_and_owners():
    runner = JobRunner()
    try:
        def work(progress):
            progress(2, 4)
            progress(4, 4)
            return 7

        job = runner.submit("alice", "s", "write", work, turn_index=3)
        _until(lambda: runner.get("alice", job.job_id).state == "done")
        done = runner.get("alice", job.job_id)
        assert (done.done, done.total, done.memory_version, done.turn_index) == (4, 4, 7, 3)
        assert done.finished_at >= done.created_at
        assert runner.get("bob", job.job_id) is None and runner.cancel("bob", job.job_id) is None
        assert runner.list("bob") == [] and [j.job_id for j in runner.list("alice", "s")] == [job.job_id]

        def broken(progress):
            raise ValueError("memory of session 's' is from another model\nsecond line")

        bad = runner.submit("alice", "s", "sync", broken)
        _until(lambda: runner.get("alice", bad.job_id).state == "failed")
        assert runner.get("alice", bad.job_id).error == "memory of session 's' is from another model"
    finally:
        runner.close()


def test_cancel_a_running_and_a_queued_job():
    runner = JobRunner()
    started, release, after_cancel = threading.Event(), threading.Event(), []
    try:
        def slow(progress):
            progress(0, 3)
            started.set()
            release.wait(10)
            progress(1, 3)  # the cancel is noticed here, before anything is committed
            after_cancel.append("ran on")
            return 1

        running = runner.submit("alice", "s", "write", slow)
        queued = runner.submit("alice", "s", "write", lambda progress: 2)
        assert started.wait(10)
        assert runner.cancel("alice", queued.job_id).state == "cancelled"  # never starts
        assert runner.cancel("alice", running.job_id).state == "running"  # asked; stops at its next batch
        release.set()
        _until(lambda: runner.get("alice", running.job_id).state == "cancelled")
        assert after_cancel == [] and runner.get("alice", running.job_id).memory_version is None
        assert runner.get("alice", queued.job_id).state == "cancelled"
    finally:
        runner.close()


def test_a_job_killed_mid_run_loses_no_acknowledged_turn(tmp_path):
    """Turns acknowledged with 202 are stored before their job runs: kill the server with SIGKILL while jobs
    may still be folding them, restart it, and one more write brings the memory over every acknowledged turn."""
    from test_service import ADMIN, _serve, bearer

    db = tmp_path / "served.db"
    port = free_port()
    proc = _serve(str(db), port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, 90, lambda: proc.stderr.read().decode())
        token = httpx.post(f"{url}/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
        with httpx.Client(base_url=url, timeout=30, headers=bearer(token)) as c:
            c.post("/sessions", json={"session_id": "s"})
            acked = []
            for i in range(30):
                r = c.post("/sessions/s/write?wait=false", json={"text": f"line {i} about the ferry."})
                assert r.status_code == 202, r.text
                acked.append(r.json()["turn"]["index"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with MemoryStore(db) as store:
        assert [t.index for t in store.list_turns("alice", "s")] == acked  # every acknowledged turn is stored
    proc = _serve(str(db), port := free_port())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, 90, lambda: proc.stderr.read().decode())
        r = httpx.post(f"{url}/sessions/s/write", json={"text": "after the restart."}, headers=bearer(token),
                       timeout=60)
        assert r.status_code == 201, r.text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    with MemoryStore(db) as store:
        stored = store.get_memory("alice", "s")
    assert stored.through_turn == 31
    assert {r.turn_id for r in stored.slots if r.level == "paragraph"} == set(range(1, 32))
