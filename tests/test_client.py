"""`r3mem.client.Client` against a live `r3mem serve` on 127.0.0.1 (tiny model, real SQLite store, the process
stopped at the end), plus its retry and timeout rules through httpx transports that count requests."""

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import free_port, wait_healthy

from r3mem.client import (
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    ServiceUnreachable,
    Unauthorized,
)

ADMIN = "admin-secret"
SRC = Path(__file__).resolve().parents[1] / "src"
START_DEADLINE_S = 120


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`r3mem serve` in a subprocess on a free loopback port; (url, store path). SIGINT at the end."""
    tmp = tmp_path_factory.mktemp("served")
    db, port = tmp / "served.db", free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "R3MEM_BASE_MODEL": "tiny-llama", "R3MEM_ADMIN_TOKEN": ADMIN, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "R3MEM_HOME": str(tmp / "home")}
    log = open(tmp / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "r3mem.cli.main", "serve", "--store", str(db), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    def output() -> str:
        log.seek(0)
        return log.read()

    try:
        wait_healthy(proc, url, START_DEADLINE_S, output)
        yield url, db
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def users(service):
    url, _ = service
    with Client(url, ADMIN) as admin:
        return {name: admin.create_user(name).token for name in ("alice", "bob")}


@pytest.fixture
def alice(service, users):
    with Client(service[0], users["alice"]) as c:
        yield c


# ----------------------------------------------------------------------------------- live service


def test_every_verb_against_a_live_service(service, users, alice):
    url, _ = service
    assert alice.health() == {"status": "ok"}
    assert {"r3mem", "base_model_id", "adapter_hash"} <= set(alice.version())
    created = alice.create_session("trip", meta={"topic": "travel"})
    assert created.session_id == "trip" and created.meta == {"topic": "travel"}
    random_id = alice.create_session().session_id
    assert [s.session_id for s in alice.list_sessions()] == ["trip", random_id]
    w = alice.write("trip", "Henry Sibley built a stone house.", speaker="Caroline")
    assert w.turn.index == 1 and w.turn.speaker == "Caroline" and w.memory_version == 1
    alice.write("trip", "The river froze in winter.")
    rec = alice.recall("trip", query="stone house", top_k=2)
    assert rec.level == "paragraph" and sorted(s.turn_id for s in rec.slots) == [1, 2]
    assert alice.recall("trip", index=1).slots[0].key == "p1"
    sure = alice.recall("trip", query="stone house", top_k=2, min_confidence=1.0)  # every expansion is under 1
    assert sure.probably_wrong is True and {s.read for s in sure.slots} == {"source"}
    assert "Caroline: Henry Sibley built a stone house." in [s.text for s in sure.slots]
    ans = alice.answer("trip", "Who built the house?", top_k=1, max_new_tokens=4, retrieval="bm25")
    assert isinstance(ans.text, str) and len(ans.slots) == 1
    chat = alice.chat("trip", "Remember the ferry.", max_new_tokens=4)
    assert chat.turns[0].index == 3 and chat.turns[0].text == "Remember the ferry."
    turns = alice.list_turns("trip")
    assert [t.index for t in turns] == list(range(1, 3 + len(chat.turns)))
    info = alice.get_session("trip")
    assert info.turn_count == len(turns) and info.memory.through_turn == len(turns)
    exported = alice.export_session("trip")
    assert base64.b64decode(exported["memory"]["blob_b64"])
    copy = alice.import_session(exported, session_id="copy")
    assert copy.session_id == "copy" and copy.turn_count == len(turns)
    assert alice.export_session("copy")["memory"]["blob_b64"] == exported["memory"]["blob_b64"]
    assert alice.delete_session("copy") is None
    with pytest.raises(NotFound):
        alice.get_session("copy")
    with httpx.Client(base_url=url) as raw:  # the client sent what the API documents
        body = raw.get("/sessions/trip/turns", headers={"Authorization": f"Bearer {users['alice']}"})
    assert body.json()["turns"] == [t.model_dump(mode="json") for t in turns]


def test_curation_and_jobs_against_a_live_service(alice):
    alice.create_session("notes")
    first = alice.write("notes", "My locker code is 4711.")
    assert alice.write("notes", "my locker code is 4711").turn == first.turn  # deduplicated
    assert alice.write("notes", "my locker code is 4711", dedupe=False).turn.index == 2
    queued = alice.write("notes", "The ferry leaves at noon.", wait=False)
    assert queued.memory_version is None and queued.job.kind == "write"
    done = alice.wait_job(queued.job.job_id, timeout_s=60)
    assert done.state == "done" and alice.get_session("notes").memory.through_turn == 3
    assert [j.job_id for j in alice.jobs("notes")] == [queued.job.job_id]
    edited = alice.edit_turn("notes", 3, "The ferry leaves at one.")
    assert edited.turn.text == "The ferry leaves at one." and edited.memory_version >= 1
    assert [h.text for h in alice.get_turn("notes", 3).history] == ["The ferry leaves at noon."]
    assert alice.delete_turn("notes", 1).turn.text == "My locker code is 4711."
    assert [t.index for t in alice.list_turns("notes")] == [2, 3]
    with pytest.raises(NotFound, match="turn 1"):
        alice.delete_turn("notes", 1)  # a first attempt that finds nothing is an error
    with pytest.raises(NotFound, match="job"):
        alice.job("0123456789abcdef")
    with pytest.raises(ValueError, match="timeout_s must be a finite number"):
        alice.wait_job("x", timeout_s=float("nan"))


def test_async_client_against_a_live_service(service, users):
    async def go():
        async with AsyncClient(service[0], users["alice"]) as c:
            await c.create_session("async")
            w = await c.write("async", "The ferry leaves at noon.", wait=False)
            done = await c.wait_job(w.job.job_id, timeout_s=60)
            rec = await c.recall("async", query="ferry")
            with pytest.raises(NotFound, match="'nope' not found"):
                await c.get_session("nope")
            return w, done, rec, await c.list_turns("async")

    w, done, rec, turns = anyio.run(go)
    assert w.turn.index == 1 and done.state == "done" and done.memory_version == 1
    assert rec.slots[0].turn_id == 1 and [t.text for t in turns] == ["The ferry leaves at noon."]


def test_session_ids_are_escaped_in_paths(alice):
    alice.create_session("x")
    alice.write("x", "Only in x.")
    for sid in ("x?y=1", "x#y", "x/turns"):  # unescaped, each of these would reach session "x"
        with pytest.raises(ApiError) as e:
            alice.list_turns(sid)
        assert e.value.status in (400, 404, 422), sid
    assert [t.text for t in alice.list_turns("x")] == ["Only in x."]
    alice.delete_session("x")


def test_errors_are_typed_and_carry_the_service_message(service, users, alice):
    url, _ = service
    with pytest.raises(NotFound) as e:
        alice.get_session("nope")
    assert (e.value.status, e.value.kind) == (404, "not_found") and "'nope' not found" in str(e.value)
    raw = httpx.get(f"{url}/sessions/nope", headers={"Authorization": f"Bearer {users['alice']}"}).json()
    assert str(e.value) == e.value.message == raw["message"] and "\n" not in e.value.message
    with Client(url, "wrong-token") as stranger, pytest.raises(Unauthorized, match="invalid token") as e:
        stranger.list_sessions()
    assert e.value.status == 401 and e.value.kind == "unauthorized"
    with Client(url) as anonymous, pytest.raises(Unauthorized, match="missing bearer token"):
        anonymous.list_sessions()
    alice.create_session("errs")
    with pytest.raises(Conflict, match="already exists"):
        alice.create_session("errs")
    alice.write("errs", "One turn.")
    with pytest.raises(BadRequest, match="does not exist") as e:
        alice.recall("errs", index=99)
    assert e.value.status == 400
    with pytest.raises(BadRequest) as e:
        alice.recall("errs", top_k=0)  # refused by the request schema
    assert e.value.status == 422 and "top_k" in e.value.message
    with pytest.raises(Unauthorized, match="admin token required"):
        alice.create_user("mallory")
    with Client(url, users["bob"]) as bob, pytest.raises(NotFound):
        bob.write("errs", "Not mine.")  # another user's session is invisible
    assert [t.text for t in alice.list_turns("errs")] == ["One turn."]
    assert issubclass(Forbidden, ApiError) and issubclass(ServiceUnavailable, ApiError)


def test_delete_me_revokes_the_token(service):
    url, _ = service
    with Client(url, ADMIN) as admin:
        token = admin.create_user("carol").token
    with Client(url, token) as carol:
        carol.create_session("s")
        assert carol.delete_me() is None
        with pytest.raises(Unauthorized):
            carol.list_sessions()


# ----------------------------------------------------------------------------------- retries and timeouts


class Counting(httpx.BaseTransport):
    """Answers every request with `reply(request)` and records (method, path) of each."""

    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def handle_request(self, request):
        self.seen.append((request.method, request.url.path))
        return self.reply(request)


def _unavailable(request):
    return httpx.Response(503, json={"error": "store_unavailable", "message": "store is down"})


def _refused(request):
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize("reply", [_unavailable, _refused], ids=["503", "connect-error"])
def test_only_idempotent_requests_are_retried(reply):
    t = Counting(reply)
    expected = ServiceUnavailable if reply is _unavailable else ServiceUnreachable
    with Client("http://r3mem.invalid", "tok", retries=2, backoff=0, transport=t) as c:
        for call, method, path in [(lambda: c.list_sessions(), "GET", "/sessions"),
                                   (lambda: c.get_session("s"), "GET", "/sessions/s"),
                                   (lambda: c.delete_session("s"), "DELETE", "/sessions/s"),
                                   (lambda: c.recall("s", query="q"), "POST", "/sessions/s/recall"),
                                   (lambda: c.answer("s", "q?"), "POST", "/sessions/s/answer")]:
            t.seen.clear()
            with pytest.raises(expected):
                call()
            assert t.seen == [(method, path)] * 3, path  # first try + 2 retries
        for call, path in [(lambda: c.write("s", "hi"), "/sessions/s/write"),
                           (lambda: c.chat("s", "hi"), "/sessions/s/chat"),
                           (lambda: c.create_session("s"), "/sessions"),
                           (lambda: c.create_user("u"), "/users"),
                           (lambda: c.import_session({}), "/sessions/import")]:
            t.seen.clear()
            with pytest.raises(expected):
                call()
            assert t.seen == [("POST", path)], path  # sent exactly once
    if reply is _unavailable:
        with Client("http://r3mem.invalid", "tok", retries=2, backoff=0, transport=Counting(reply)) as c:
            with pytest.raises(ServiceUnavailable) as e:
                c.health()
        assert e.value.message == "store is down" and e.value.kind == "store_unavailable"


class AsyncCounting(httpx.AsyncBaseTransport):
    def __init__(self, reply):
        self.reply, self.seen = reply, []

    async def handle_async_request(self, request):
        self.seen.append((request.method, request.url.path))
        return self.reply(request)


def test_async_client_retries_by_the_same_rules():
    t = AsyncCounting(_unavailable)

    async def go():
        async with AsyncClient("http://r3mem.invalid", "tok", retries=2, backoff=0, transport=t) as c:
            with pytest.raises(ServiceUnavailable, match="store is down"):
                await c.list_sessions()
            assert len(t.seen) == 3
            t.seen.clear()
            with pytest.raises(ServiceUnavailable):
                await c.write("s", "hi")
            assert t.seen == [("POST", "/sessions/s/write")]  # a write is sent once

    anyio.run(go)


def test_a_retry_that_succeeds_returns_the_answer():
    answers = iter([httpx.Response(502, text="bad gateway"), httpx.Response(200, json={"sessions": []})])
    t = Counting(lambda request: next(answers))
    with Client("http://r3mem.invalid", "tok", retries=1, backoff=0, transport=t) as c:
        assert c.list_sessions() == []
    assert len(t.seen) == 2


@pytest.mark.parametrize("call, gone", [(lambda c: c.delete_session("s"), 404), (lambda c: c.delete_me(), 401)],
                         ids=["delete_session", "delete_me"])
def test_a_retried_delete_that_finds_nothing_has_succeeded(call, gone):
    """The first DELETE did its work but its 204 was lost (a timeout): the retry finds nothing left."""
    first = [True]

    def reply(request):
        if first[0]:
            first[0] = False
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(gone, json={"error": "not_found" if gone == 404 else "unauthorized", "message": "gone"})

    t = Counting(reply)
    with Client("http://r3mem.invalid", "tok", retries=2, backoff=0, transport=t) as c:
        assert call(c) is None
    assert len(t.seen) == 2
    # without a lost first answer, finding nothing is an error as before
    t = Counting(lambda r: httpx.Response(gone, json={"error": "x", "message": "gone"}))
    with Client("http://r3mem.invalid", "tok", retries=2, backoff=0, transport=t) as c, pytest.raises(ApiError):
        call(c)


def test_client_errors_are_not_retried():
    t = Counting(lambda r: httpx.Response(404, json={"error": "not_found", "message": "session 's' not found"}))
    with Client("http://r3mem.invalid", "tok", retries=3, backoff=0, transport=t) as c, pytest.raises(NotFound):
        c.get_session("s")
    assert len(t.seen) == 1


def test_non_json_error_keeps_its_first_line():
    t = Counting(lambda r: httpx.Response(500, text="Internal Server Error\nstack trace here"))
    with Client("http://r3mem.invalid", "tok", retries=0, transport=t) as c, pytest.raises(ApiError) as e:
        c.version()
    assert (e.value.status, e.value.message) == (500, "Internal Server Error")


def test_timeout_and_unreachable_service():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with Client(url, "tok", timeout=0.3, retries=1, backoff=0) as c, pytest.raises(ServiceUnreachable,
                                                                                       match="timed out"):
            c.health()
        assert time.monotonic() - started < 10
    with Client(f"http://127.0.0.1:{free_port()}", "tok", retries=0) as c, pytest.raises(ServiceUnreachable,
                                                                                          match="failed"):
        c.health()  # nothing listens there


def test_bad_arguments():
    with pytest.raises(ValueError, match="retries"):
        Client("http://127.0.0.1:1", retries=-1)
    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="timeout must be a finite number"):
            Client("http://127.0.0.1:1", timeout=bad)
    with pytest.raises(ValueError, match="backoff"):
        Client("http://127.0.0.1:1", backoff=float("nan"))
    with Client("http://127.0.0.1:1") as c, pytest.raises(ValueError, match="session_id"):
        c.write("", "text")
