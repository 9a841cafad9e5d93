"""Background memory work: a write, edit or delete whose memory catch-up runs after the request returned.

A job is the memory side of a change that is already committed to the store: the turn was stored (or
edited, or deleted) before the job was queued, so the memory catch-up the job runs can be lost (a
crash, a restart, a cancel) without losing anything acknowledged: the next write of the session folds
every turn the memory does not cover yet (see `ChatAgent.sync`). Jobs live in the process (one worker
thread: model work is serialised by the model lock anyway); a restart forgets them, not their turns, and
the service queues a catch-up ("sync") for every session left behind when it starts again.

State: queued → running → done | failed | cancelled. Progress is (turns folded, turns to fold), reported
after each write batch; a cancel is noticed there, before the memory is put back, so a cancelled job
leaves the memory at the version it started from.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

__all__ = ["Job", "JobRunner", "Cancelled", "JOB_STATES", "Work"]

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
KEEP_FINISHED = 1000  # finished jobs remembered (oldest forgotten first), so status polls after the end work

Work = Callable[[Callable[[int, int], None]], int]  # work(progress) -> memory version; progress(done, total)


class Cancelled(Exception):
    """Raised inside a job's progress callback once the job was cancelled."""


@dataclass(frozen=True)
class Job:
    """A snapshot of one job's state (`JobRunner.get` returns a fresh one each time)."""

    job_id: str
    user_id: str
    session_id: str
    kind: str  # write | edit | delete | sync
    state: str = "queued"
    done: int = 0  # turns folded into memory so far
    total: int | None = None  # turns to fold (None until the job starts)
    memory_version: int | None = None  # the committed version covering every turn, once done
    turn_index: int | None = None  # the turn the change was about
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None


class JobRunner:
    """Runs queued jobs one at a time in a daemon thread; `get` / `cancel` / `list` by owner."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._cancel: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Work] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="r3mem-jobs", daemon=True)
        self._thread.start()

    def submit(self, user_id: str, session_id: str, kind: str, work: Work, turn_index: int | None = None) -> Job:
        """Queue `work`; returns the queued job."""
        job = Job(secrets.token_hex(8), user_id, session_id, kind, turn_index=turn_index)
        with self._lock:
            self._jobs[job.job_id] = job
        self._queue.put((job.job_id, work))
        return job

    def get(self, user_id: str, job_id: str) -> Job | None:
        """The job if it exists and belongs to `user_id` (another user's job is None, as an unknown one)."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.user_id == user_id else None

    def list(self, user_id: str, session_id: str | None = None) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j for j in jobs if j.user_id == user_id and session_id in (None, j.session_id)]

    def cancel(self, user_id: str, job_id: str) -> Job | None:
        """Ask the job to stop: a queued job never starts, a running one stops at its next batch; a
        finished job is left as it is. Returns the job's state after the request."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.user_id != user_id:
                return None
            if job.state == "queued":
                job = self._set(job_id, state="cancelled", finished_at=time.time())
            elif job.state == "running":
                self._cancel.add(job_id)
            return job

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker after the running job (queued ones are dropped: their turns are stored)."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    # ----- worker -------------------------------------------------------------------------------
    def _set(self, job_id: str, **changes) -> Job:
        job = self._jobs[job_id] = replace(self._jobs[job_id], **changes)
        return job

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            job_id, work = item
            with self._lock:
                if self._jobs[job_id].state != "queued":  # cancelled while queued
                    continue
                self._set(job_id, state="running")
            self._run(job_id, work)

    def _run(self, job_id: str, work: Work) -> None:
        def progress(done: int, total: int) -> None:
            with self._lock:
                self._set(job_id, done=done, total=total)
                if job_id in self._cancel:
                    raise Cancelled(job_id)

        try:
            version = work(progress)
        except Cancelled:
            end = {"state": "cancelled"}
        except Exception as e:  # noqa: BLE001 - the job reports it; the worker goes on with the next
            end = {"state": "failed", "error": (str(e).strip().splitlines() or [type(e).__name__])[0]}
        else:
            end = {"state": "done", "memory_version": version}
        with self._lock:
            self._cancel.discard(job_id)
            self._set(job_id, finished_at=time.time(), **end)
            self._forget_old()

    def _forget_old(self) -> None:
        finished = sorted((j.finished_at or 0.0, j.job_id) for j in self._jobs.values() if j.finished_at)
        for _, job_id in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]
