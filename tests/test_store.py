"""Tests of the persistent MemoryStore, run against real databases (no mocks).

Every backend-parametrised test runs on SQLite (a file in tmp_path) and, when
``R3MEM_TEST_PG_URL`` is set (``eval "$(bash scripts/ci_postgres.sh)"``), on PostgreSQL,
each test in its own throw-away PostgreSQL schema.
"""

import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url

from r3mem.store import (
    Conflict,
    InvalidExport,
    MemoryStore,
    NotFound,
    SchemaTooNew,
    SlotRecord,
    StoreError,
    migrations,
    schema,
    text_key,
)

PG_URL = os.environ.get("R3MEM_TEST_PG_URL")
SRC = Path(__file__).resolve().parents[1] / "src"
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="R3MEM_TEST_PG_URL not set (eval \"$(bash scripts/ci_postgres.sh)\" to test PostgreSQL)"
        ),
    ),
]


# --------------------------------------------------------------------------- fixtures


def _pg_driver_url(url: str):
    """SQLAlchemy URL using psycopg 3 (the only PostgreSQL driver we depend on)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername in ("postgresql", "postgres") else parsed


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL for an empty database: an SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = f"r3mem_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_driver_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        scoped = _pg_driver_url(PG_URL).update_query_dict({"options": f"-csearch_path={name}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(url: str) -> Iterator[MemoryStore]:
    with MemoryStore(url) as opened:
        yield opened


@pytest.fixture
def raw(url: str) -> Iterator[Engine]:
    """A plain SQLAlchemy engine on the same database, to inspect rows behind the store's back."""
    engine = create_engine(_pg_driver_url(url) if url.startswith("postgres") else url)
    yield engine
    engine.dispose()


def _count(raw: Engine, table: str, user_id: str) -> int:
    with raw.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table} WHERE user_id = :u"), {"u": user_id}).scalar_one()


def _slots(n: int, tag: str) -> list[SlotRecord]:
    return [SlotRecord("L0", f"{tag}:{i}", i, i + 1, i + 1, f"{tag} text {i}", 1000.0 + i) for i in range(n)]


def _populate(store: MemoryStore, user_id: str, sessions: int = 2) -> None:
    """A user with sessions, turns and a memory in each session."""
    store.create_user(user_id, token=f"token-{user_id}")
    for k in range(sessions):
        session = store.create_session(user_id, f"s{k}", meta={"k": k})
        for i in range(3):
            store.append_turn(user_id, session.session_id, f"{user_id} turn {i}")
        store.put_memory(user_id, session.session_id, b"blob-" + user_id.encode(), _slots(4, user_id), 3)


def _run_child(url: str, code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.Popen(
        [sys.executable, "-c", code, url, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# --------------------------------------------------------------------------- migrations


def test_migrations_are_contiguous_from_one() -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, migrations.LATEST + 1))


def test_fresh_store_is_at_latest_version_and_matches_schema_py(store: MemoryStore, raw: Engine) -> None:
    assert store.schema_version == migrations.LATEST
    insp = inspect(raw)
    for table in schema.metadata.sorted_tables:
        columns = {c["name"]: c["nullable"] for c in insp.get_columns(table.name)}
        assert columns == {c.name: c.nullable for c in table.columns}, table.name
        assert set(insp.get_pk_constraint(table.name)["constrained_columns"]) == {c.name for c in table.primary_key}
        found_fks = {
            (tuple(fk["constrained_columns"]), fk["referred_table"], (fk.get("options") or {}).get("ondelete"))
            for fk in insp.get_foreign_keys(table.name)
        }
        wanted_fks = {
            (tuple(c.name for c in fk.columns), fk.referred_table.name, fk.ondelete)
            for fk in table.foreign_key_constraints
        }
        assert found_fks == wanted_fks, table.name


def test_a_version_1_store_upgrades_with_its_data(url: str, raw: Engine) -> None:
    with raw.begin() as conn:  # a database as r3mem left it before turn revisions existed
        migrations.upgrade(conn, "test", target=1)
        conn.execute(text("INSERT INTO users (user_id, created_at) VALUES ('alice', 1.0)"))
        conn.execute(text("INSERT INTO sessions VALUES ('alice', 's', 1.0, 1.0, '{}', 1)"))
        conn.execute(text("INSERT INTO turns VALUES ('alice', 's', 1, 'user', 'old text', 1.0)"))
    assert "turn_revisions" not in inspect(raw).get_table_names()
    with MemoryStore(url) as store:
        assert store.schema_version == migrations.LATEST == 2
        store.edit_turn("alice", "s", 1, "new text")
        assert [r.text for r in store.turn_history("alice", "s", 1)] == ["old text"]


def test_reopening_keeps_data_and_version(url: str) -> None:
    with MemoryStore(url) as first:
        _populate(first, "alice", sessions=1)
    with MemoryStore(url) as again:
        assert again.schema_version == migrations.LATEST
        assert [t.text for t in again.list_turns("alice", "s0")] == [f"alice turn {i}" for i in range(3)]


def test_store_stamped_with_future_version_is_refused(url: str, raw: Engine) -> None:
    MemoryStore(url).close()
    with raw.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = :v"), {"v": migrations.LATEST + 1})
    with pytest.raises(SchemaTooNew, match=rf"schema version {migrations.LATEST + 1}.*upgrade r3mem"):
        MemoryStore(url)


def test_tables_without_version_row_are_refused(url: str, raw: Engine) -> None:
    MemoryStore(url).close()
    with raw.begin() as conn:
        conn.execute(text("DROP TABLE schema_version"))
    with pytest.raises(StoreError, match="no schema_version"):
        MemoryStore(url)


# --------------------------------------------------------------------------- users and auth


def test_user_crud_and_token_stored_only_as_sha256(store: MemoryStore, raw: Engine) -> None:
    alice = store.create_user("alice", token="s3cret-token")
    store.create_user("bob")
    assert alice.has_token and not store.get_user("bob").has_token
    assert [u.user_id for u in store.list_users()] == ["alice", "bob"]
    with raw.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM users WHERE user_id = 'alice'")).scalar_one()
    assert stored == hashlib.sha256(b"s3cret-token").hexdigest()
    assert store.authenticate("s3cret-token") == "alice"
    for wrong in ("s3cret-toke", "", stored):
        assert store.authenticate(wrong) is None
    store.set_token("alice", "rotated")
    assert store.authenticate("s3cret-token") is None and store.authenticate("rotated") == "alice"
    with pytest.raises(Conflict, match="'alice' already exists"):
        store.create_user("alice")
    with pytest.raises(NotFound, match="'carol'"):
        store.get_user("carol")
    with pytest.raises(ValueError):
        store.create_user("")


def test_delete_user_cascades_to_everything(store: MemoryStore, raw: Engine) -> None:
    _populate(store, "alice")
    _populate(store, "bob")
    store.delete_user("alice")
    for table in ("users", "sessions", "turns", "memories", "slots"):
        assert _count(raw, table, "alice") == 0, table
    assert _count(raw, "turns", "bob") == 6 and _count(raw, "slots", "bob") == 8
    assert store.authenticate("token-alice") is None
    with pytest.raises(NotFound):
        store.delete_user("alice")


# --------------------------------------------------------------------------- sessions and turns


def test_session_crud(store: MemoryStore, raw: Engine) -> None:
    store.create_user("alice")
    named = store.create_session("alice", "chat-1", meta={"title": "hello", "tags": ["a"]})
    generated = store.create_session("alice")
    assert len(generated.session_id) == 32 and generated.meta == {}
    assert store.get_session("alice", "chat-1").meta == {"title": "hello", "tags": ["a"]}
    assert [s.session_id for s in store.list_sessions("alice")] == [named.session_id, generated.session_id]
    with pytest.raises(Conflict, match="'chat-1'.*'alice'"):
        store.create_session("alice", "chat-1")
    with pytest.raises(NotFound, match="'nobody'"):
        store.create_session("nobody")
    store.append_turn("alice", "chat-1", "hi")
    store.delete_session("alice", "chat-1")
    assert _count(raw, "turns", "alice") == 0
    with pytest.raises(NotFound, match="session 'chat-1' not found for user 'alice'"):
        store.get_session("alice", "chat-1")
    with pytest.raises(ValueError):
        store.create_session("alice", meta={"bad": object()})


def test_turns_are_numbered_from_one_and_since_filters(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    first = store.append_turn("alice", "s", "hello", timestamp=1700000000.5)
    store.append_turn("alice", "s", "hi there", speaker="assistant")
    store.append_turn("alice", "s", "bye")
    assert first.index == 1 and first.timestamp == 1700000000.5
    turns = store.list_turns("alice", "s")
    assert [(t.index, t.speaker, t.text) for t in turns] == [
        (1, "user", "hello"), (2, "assistant", "hi there"), (3, "user", "bye")
    ]
    assert [t.index for t in store.list_turns("alice", "s", since=1)] == [2, 3]
    assert store.list_turns("alice", "s", since=3) == []
    assert store.get_session("alice", "s").turn_count == 3


def test_another_users_session_is_not_found(store: MemoryStore) -> None:
    _populate(store, "alice", sessions=1)
    store.create_user("bob")
    attempts = [
        lambda: store.get_session("bob", "s0"),
        lambda: store.list_turns("bob", "s0"),
        lambda: store.append_turn("bob", "s0", "intrusion"),
        lambda: store.put_memory("bob", "s0", b"x", [], 0),
        lambda: store.get_memory("bob", "s0"),
        lambda: store.export_session("bob", "s0"),
        lambda: store.delete_session("bob", "s0"),
    ]
    for attempt in attempts:
        with pytest.raises(NotFound, match="session 's0' not found for user 'bob'"):
            attempt()
    assert len(store.list_turns("alice", "s0")) == 3 and store.get_memory("alice", "s0") is not None


# --------------------------------------------------------------------------- memories


def test_put_and_get_memory_with_versions(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    store.append_turns("alice", "s", [("user", f"turn {i}") for i in range(5)])
    store.create_session("alice", "none")  # no turns: nothing to catch up
    assert store.get_memory("alice", "s") is None and store.sessions_behind() == [("alice", "s")]
    assert store.put_memory("alice", "s", b"\x00first", _slots(5, "v1"), through_turn=2) == 1
    assert store.sessions_behind() == [("alice", "s")]  # behind turn 5
    got = store.get_memory("alice", "s")
    assert (got.blob, got.version, got.through_turn, got.slots) == (b"\x00first", 1, 2, _slots(5, "v1"))
    assert store.put_memory("alice", "s", b"second", _slots(2, "v2"), 4, expected_version=1) == 2
    assert store.get_memory("alice", "s").slots == _slots(2, "v2")
    with pytest.raises(Conflict, match="session 's' of user 'alice' is at version 2, not the expected 1"):
        store.put_memory("alice", "s", b"stale", _slots(1, "bad"), 5, expected_version=1)
    got = store.get_memory("alice", "s")
    assert (got.blob, got.version, got.slots) == (b"second", 2, _slots(2, "v2"))
    assert store.put_memory("alice", "s", b"x", [], 0) == 3
    assert store.get_memory("alice", "s").slots == []
    assert store.put_memory("alice", "s", b"whole", [], 5) == 4 and store.sessions_behind() == []
    with pytest.raises(ValueError, match="memory blob is empty"):  # empty is the store's own reset marker
        store.put_memory("alice", "s", b"", [], 0)


def test_corrupted_blob_is_detected_on_read(store: MemoryStore, raw: Engine) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    store.put_memory("alice", "s", b"good bytes", [], 0)
    with raw.begin() as conn:
        conn.execute(text("UPDATE memories SET blob = :b"), {"b": b"evil bytes"})
    with pytest.raises(StoreError, match="corrupted"):
        store.get_memory("alice", "s")


def test_failure_between_memory_row_and_slots_leaves_previous_memory(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected after the memory row is written but before the slots: nothing may remain."""
    store.create_user("alice")
    store.create_session("alice", "s")
    store.create_session("alice", "empty")
    for session_id in ("s", "empty"):
        store.append_turns("alice", session_id, [("user", "one"), ("user", "two")])

    def crash(conn, slot_rows):  # noqa: ARG001 - same signature as the real method
        raise RuntimeError("injected failure after the memory row")

    store.put_memory("alice", "s", b"v1", _slots(3, "v1"), 1)
    monkeypatch.setattr(MemoryStore, "_write_slots", staticmethod(crash))
    for session_id in ("s", "empty"):
        with pytest.raises(RuntimeError, match="injected"):
            store.put_memory("alice", session_id, b"v2", _slots(7, "v2"), 2)
    monkeypatch.undo()
    kept = store.get_memory("alice", "s")
    assert (kept.blob, kept.version, kept.through_turn, kept.slots) == (b"v1", 1, 1, _slots(3, "v1"))
    assert store.get_memory("alice", "empty") is None
    assert store.put_memory("alice", "s", b"v2", _slots(7, "v2"), 2, expected_version=1) == 2


# --------------------------------------------------------------------------- concurrency


def test_concurrent_appends_from_threads_get_unique_contiguous_indices(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(25):
                store.append_turn("alice", "s", f"{k}:{i}")
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    turns = store.list_turns("alice", "s")
    assert [t.index for t in turns] == list(range(1, 201))
    assert sorted(t.text for t in turns) == sorted(f"{k}:{i}" for k in range(8) for i in range(25))
    for k in range(8):  # each writer's turns keep its own order
        mine = [int(t.text.split(":")[1]) for t in turns if t.text.startswith(f"{k}:")]
        assert mine == list(range(25))
    assert store.get_session("alice", "s").turn_count == 200


APPEND_CHILD = """
import sys
from r3mem.store import MemoryStore
with MemoryStore(sys.argv[1]) as store:
    for i in range(int(sys.argv[3])):
        store.append_turn("alice", "s", f"{sys.argv[2]}:{i}")
"""


def test_concurrent_appends_from_processes(store: MemoryStore, url: str) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    children = [_run_child(url, APPEND_CHILD, f"p{k}", "40") for k in range(3)]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    turns = store.list_turns("alice", "s")
    assert [t.index for t in turns] == list(range(1, 121))
    assert Counter(t.text.split(":")[0] for t in turns) == {"p0": 40, "p1": 40, "p2": 40}


def test_concurrent_put_memory_has_exactly_one_winner_per_version(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    writers, rounds = 6, 8
    barrier = threading.Barrier(writers)
    wins: list[tuple[int, int]] = []
    conflicts = Counter()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for expected in range(rounds):
                barrier.wait(timeout=30)
                try:
                    version = store.put_memory("alice", "s", f"{k}".encode(), _slots(3, f"w{k}"), 0, expected)
                    wins.append((expected, version))
                except Conflict:
                    conflicts[expected] += 1
                barrier.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(wins) == [(v, v + 1) for v in range(rounds)]
    assert all(conflicts[v] == writers - 1 for v in range(rounds))
    final = store.get_memory("alice", "s")
    winner = final.blob.decode()
    assert final.version == rounds and final.slots == _slots(3, f"w{winner}")


# --------------------------------------------------------------------------- crash safety


KILL_CHILD = """
import sys
from r3mem.store import MemoryStore, SlotRecord
with MemoryStore(sys.argv[1]) as store:
    memory = store.get_memory("alice", "s")
    version = 0 if memory is None else memory.version
    while True:
        turn = store.append_turn("alice", "s", "t")
        print(f"turn {turn.index}", flush=True)
        tag = f"v{version + 1}"
        slots = [SlotRecord("L0", f"{tag}:{j}", j, j + 1, turn.index, tag, None) for j in range(300)]
        version = store.put_memory("alice", "s", tag.encode() * 20000, slots, turn.index, expected_version=version)
        print(f"memory {version}", flush=True)
"""


def _kill_mid_write(url: str, acked_memories: int) -> tuple[set[int], int]:
    """Run the write loop in a child, SIGKILL it once it acknowledged enough writes.

    Returns the turn indices and the highest memory version it reported as written.
    """
    child = _run_child(url, KILL_CHILD)
    turns: set[int] = set()
    memory = 0
    deadline = time.monotonic() + 30
    while memory < acked_memories and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        kind, number = line.split()
        if kind == "turn":
            turns.add(int(number))
        else:
            memory = int(number)
    os.kill(child.pid, signal.SIGKILL)
    rest, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    for line in rest.splitlines():  # acknowledged before the kill but not read yet
        kind, number = line.split()
        if kind == "turn":
            turns.add(int(number))
        else:
            memory = max(memory, int(number))
    assert memory >= acked_memories, f"child wrote too little before the deadline: {err}"
    return turns, memory


def test_sigkill_during_write_loop_loses_nothing_acknowledged(store: MemoryStore, url: str, raw: Engine) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    for acked in (5, 12):
        turns, memory = _kill_mid_write(url, acked)
        if url.startswith("sqlite"):
            with raw.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        stored_turns = [t.index for t in store.list_turns("alice", "s")]
        assert stored_turns == list(range(1, len(stored_turns) + 1))
        assert turns <= set(stored_turns)
        got = store.get_memory("alice", "s")
        assert got.version >= memory
        tag = f"v{got.version}"
        assert got.blob == tag.encode() * 20000
        assert len(got.slots) == 300 and {s.text for s in got.slots} == {tag}
        assert {s.turn_id for s in got.slots} == {got.through_turn}
    # No stale lock: the next writer proceeds at once from the surviving version.
    assert store.put_memory("alice", "s", b"after", [], 0, expected_version=got.version) == got.version + 1


# --------------------------------------------------------------------------- export / import


def test_export_import_round_trip(store: MemoryStore) -> None:
    _populate(store, "alice", sessions=1)
    store.create_user("bob")
    exported = json.loads(json.dumps(store.export_session("alice", "s0")))
    imported = store.import_session("bob", exported)
    assert (imported.user_id, imported.session_id, imported.meta, imported.turn_count) == ("bob", "s0", {"k": 0}, 3)
    strip = lambda turns: [(t.index, t.speaker, t.text, t.timestamp) for t in turns]  # noqa: E731
    assert strip(store.list_turns("bob", "s0")) == strip(store.list_turns("alice", "s0"))
    original, copy = store.get_memory("alice", "s0"), store.get_memory("bob", "s0")
    assert (copy.blob, copy.version, copy.through_turn, copy.slots) == (
        original.blob, original.version, original.through_turn, original.slots
    )
    assert store.append_turn("bob", "s0", "next").index == 4
    with pytest.raises(Conflict):
        store.import_session("bob", exported)
    assert store.import_session("bob", exported, session_id="copy").session_id == "copy"


def test_import_of_bad_export_writes_nothing(store: MemoryStore) -> None:
    _populate(store, "alice", sessions=1)
    exported = store.export_session("alice", "s0")
    tampered = json.loads(json.dumps(exported))
    tampered["memory"]["blob_b64"] = "AAAA"
    with pytest.raises(StoreError, match="not a valid r3mem session export.*sha256"):
        store.import_session("alice", tampered, session_id="t")
    with pytest.raises(StoreError, match="not a valid r3mem session export"):
        store.import_session("alice", {"format": "something else"}, session_id="t")
    duplicated = json.loads(json.dumps(exported))
    duplicated["turns"].append(duplicated["turns"][0])
    with pytest.raises(StoreError, match="not unique"):
        store.import_session("alice", duplicated, session_id="t")
    assert [s.session_id for s in store.list_sessions("alice")] == ["s0"]


# --------------------------------------------------------------------------- SQLite specifics and setup


def _sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "ro" / "store.db"
    with MemoryStore(path) as store:
        _populate(store, "alice", sessions=1)
    return path


def test_read_only_sqlite_file_raises_store_error_and_stays_intact(tmp_path: Path) -> None:
    path = _sqlite_file(tmp_path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        with MemoryStore(path) as store:  # opened read-only even by root: the file's mode says so
            assert [t.index for t in store.list_turns("alice", "s0")] == [1, 2, 3]
            writes = [
                lambda: store.create_user("bob"),
                lambda: store.append_turn("alice", "s0", "more"),
                lambda: store.put_memory("alice", "s0", b"x", [], 0),
                lambda: store.delete_user("alice"),
            ]
            for write in writes:
                with pytest.raises(StoreError, match="read-only"):
                    write()
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with MemoryStore(path, read_only=True) as store, pytest.raises(StoreError, match="read-only"):
        store.create_user("bob")


def test_full_sqlite_database_raises_store_error_and_keeps_old_memory(tmp_path: Path) -> None:
    path = _sqlite_file(tmp_path)
    with MemoryStore(path) as store:
        with sqlite3.connect(path) as conn:
            limit = conn.execute("PRAGMA page_count").fetchone()[0] + 4

        def cap(dbapi_conn, record) -> None:  # noqa: ARG001 - pool event signature
            dbapi_conn.execute(f"PRAGMA max_page_count = {limit}")

        event.listen(store._engine, "connect", cap)
        store._engine.dispose()  # new connections get the cap: the database is now "full"
        with pytest.raises(StoreError, match="full"):
            store.put_memory("alice", "s0", os.urandom(1 << 20), _slots(100, "big"), 3)
        event.remove(store._engine, "connect", cap)
        store._engine.dispose()
        kept = store.get_memory("alice", "s0")
        assert (kept.blob, kept.version, kept.slots) == (b"blob-alice", 1, _slots(4, "alice"))


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = _sqlite_file(tmp_path)
    with MemoryStore(f"sqlite:///{path}") as store, store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
        assert len(store.list_turns("alice", "s0")) == 3  # the URL and the plain path open the same file


def test_bad_targets_and_closed_store(tmp_path: Path) -> None:
    for bad in (":memory:", "sqlite://", "mysql://localhost/db"):
        with pytest.raises(StoreError):
            MemoryStore(bad)
    with pytest.raises(StoreError, match="no such file"):
        MemoryStore(tmp_path / "missing.db", read_only=True)
    store = MemoryStore(tmp_path / "nested" / "dir" / "store.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_users()


def test_default_path_honours_r3mem_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R3MEM_HOME", str(tmp_path / "home"))
    assert MemoryStore.default_path() == tmp_path / "home" / "store.db"
    with MemoryStore() as store:
        store.create_user("alice")
    assert (tmp_path / "home" / "store.db").exists()
    monkeypatch.delenv("R3MEM_HOME")
    default = MemoryStore.default_path()
    assert default.name == "store.db" and "r3mem" in default.parts


def test_new_sqlite_store_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, under which files would be created 0644
    try:
        path = tmp_path / "new" / "store.db"
        with MemoryStore(path) as store:
            _populate(store, "alice", sessions=1)
            files = [p for p in path.parent.iterdir() if p.name.startswith("store.db")]
            assert {p.name for p in files} >= {"store.db", "store.db-wal"}
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert set(modes.values()) == {0o600}, modes  # -wal and -shm take the database file's mode
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        path.chmod(0o640)  # an existing file keeps the mode its owner chose
        MemoryStore(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_one_session_id_rule_for_every_door(store):
    store.create_user("alice")
    for bad in ("a/b", "..", "../etc", ".hidden", "a b", "é", "x" * 129, ""):
        with pytest.raises(ValueError, match="is not allowed"):
            store.create_session("alice", bad)
    ok = store.create_session("alice", "A-z_0.9~x")
    export = store.export_session("alice", ok.session_id)
    with pytest.raises(ValueError, match="session_id 'x/y' is not allowed"):
        store.import_session("alice", export, session_id="x/y")
    assert [s.session_id for s in store.list_sessions("alice")] == ["A-z_0.9~x"]


# --------------------------------------------------------------------------- curation of single turns


def test_edit_turn_keeps_its_history_and_resets_a_memory_that_read_it(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    first = store.append_turns("alice", "s", [("user", "I live in Porto."), ("user", "I like tea.")])
    store.put_memory("alice", "s", b"mem", _slots(2, "v1"), through_turn=2)
    edited = store.edit_turn("alice", "s", 1, "I live in Lisbon.")
    assert (edited.index, edited.text, edited.speaker, edited.timestamp) == (1, "I live in Lisbon.", "user",
                                                                             first[0].timestamp)
    assert [t.text for t in store.list_turns("alice", "s")] == ["I live in Lisbon.", "I like tea."]
    (rev,) = store.turn_history("alice", "s", 1)
    assert (rev.index, rev.rev, rev.speaker, rev.text) == (1, 1, "user", "I live in Porto.")
    store.edit_turn("alice", "s", 1, "I live in Braga.", speaker="bob")
    assert [r.text for r in store.turn_history("alice", "s", 1)] == ["I live in Porto.", "I live in Lisbon."]
    assert store.get_turn("alice", "s", 1).speaker == "bob"
    reset = store.get_memory("alice", "s")  # covered turn 1: nothing of the old text is left in memory
    assert (reset.blob, reset.through_turn, reset.slots, reset.version) == (b"", 0, [], 3)
    assert store.export_session("alice", "s")["memory"] is None
    with pytest.raises(Conflict):  # a writer that read version 1 cannot store a memory of the old text
        store.put_memory("alice", "s", b"stale", [], 2, expected_version=1)
    assert store.put_memory("alice", "s", b"rebuilt", [], 2, expected_version=3) == 4


def test_delete_turn_forgets_its_text_everywhere_in_the_store(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    store.append_turns("alice", "s", [("user", "my pin is 4711"), ("user", "hello"), ("user", "bye")])
    store.edit_turn("alice", "s", 1, "my pin is 1234")
    store.put_memory("alice", "s", b"mem", [SlotRecord("paragraph", "p0", 0, 5, turn_id=1, text="my pin")], 3)
    gone = store.delete_turn("alice", "s", 1)
    assert gone.text == "my pin is 1234"
    assert [t.index for t in store.list_turns("alice", "s")] == [2, 3]  # the gap stays: indices are never reused
    exported = json.dumps(store.export_session("alice", "s"))
    assert "pin" not in exported  # neither the turn, its earlier text nor a slot's text
    assert store.turn_history("alice", "s") == []
    assert store.append_turn("alice", "s", "new").index == 4
    with pytest.raises(NotFound, match="turn 1 of session 's' of user 'alice' not found"):
        store.delete_turn("alice", "s", 1)
    with pytest.raises(NotFound, match="turn 9 of session 's'"):
        store.edit_turn("alice", "s", 9, "x")
    with pytest.raises(ValueError, match="turn index must be an int in 1"):
        store.get_turn("alice", "s", 0)
    store.create_user("bob")
    with pytest.raises(NotFound):  # another user's session is not found, whatever the turn
        store.delete_turn("bob", "s", 2)
    assert [t.index for t in store.list_turns("alice", "s")] == [2, 3, 4]


def test_change_beyond_the_memory_bumps_its_version_and_keeps_it(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    store.append_turns("alice", "s", [("user", "one"), ("user", "two"), ("user", "three")])
    store.put_memory("alice", "s", b"mem", _slots(1, "v1"), through_turn=1)
    store.edit_turn("alice", "s", 3, "THREE")
    kept = store.get_memory("alice", "s")
    assert (kept.blob, kept.through_turn, kept.version, kept.slots) == (b"mem", 1, 2, _slots(1, "v1"))
    with pytest.raises(Conflict):  # a writer that was folding turns 2-3 from version 1 rereads them
        store.put_memory("alice", "s", b"old three", [], 3, expected_version=1)
    store.create_session("alice", "fresh")
    store.append_turn("alice", "fresh", "x")
    store.edit_turn("alice", "fresh", 1, "y")  # no memory yet: a first write begun before it conflicts too
    with pytest.raises(Conflict):
        store.put_memory("alice", "fresh", b"old x", [], 1, expected_version=0)


def test_dedupe_returns_the_stored_turn_instead_of_a_second(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    (a,) = store.append_turns("alice", "s", [("user", "I moved to Lisbon.")], dedupe=True)
    b, c, d = store.append_turns("alice", "s", [("user", "i moved  to LISBON"), ("bob", "I moved to Lisbon."),
                                                 ("bob", "I moved to Lisbon!")], dedupe=True)
    assert b == a and c.index == 2 and d == c  # same speaker and text_key: the stored turn; another speaker: new
    assert len(store.list_turns("alice", "s")) == 2
    assert store.append_turns("alice", "s", [("user", "I moved to Lisbon.")])[0].index == 3  # dedupe is opt-in
    assert text_key("  Ｉ moved\tto Lisbon… ") == "i moved to lisbon"


def test_export_round_trips_turn_history(store: MemoryStore) -> None:
    store.create_user("alice")
    store.create_session("alice", "s")
    store.append_turns("alice", "s", [("user", "a"), ("user", "b")])
    store.edit_turn("alice", "s", 2, "b2")
    store.delete_turn("alice", "s", 1)
    data = store.export_session("alice", "s")
    assert data["turns"] == [{"index": 2, "speaker": "user", "text": "b2", "timestamp": data["turns"][0]["timestamp"],
                              "history": [dict(data["turns"][0]["history"][0], speaker="user", text="b")]}]
    store.import_session("alice", data, "copy")
    assert [(r.index, r.text) for r in store.turn_history("alice", "copy")] == [(2, "b")]
    assert store.append_turn("alice", "copy", "c").index == 3
    bad = json.loads(json.dumps(data))
    bad["turns"][0]["history"] = [{"speaker": "user", "text": 5, "timestamp": 1.0, "replaced_at": 2.0}]
    with pytest.raises(InvalidExport, match=r"turns\[0\]\.history\[0\]\.text must be a str"):
        store.import_session("alice", bad, "copy2")


def test_times_are_refused_outside_the_years_iso_8601_can_say(store: MemoryStore) -> None:
    from r3mem.store.records import MAX_TIME, MIN_TIME

    store.create_user("alice")
    store.create_session("alice", "s")
    for bad in (MAX_TIME + 1, MIN_TIME - 1):
        with pytest.raises(ValueError, match="between the years 1 and 9999"):
            store.append_turn("alice", "s", "x", timestamp=bad)
    assert store.append_turn("alice", "s", "x", timestamp=MAX_TIME).timestamp == MAX_TIME
