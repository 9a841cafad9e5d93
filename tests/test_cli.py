"""The `r3mem` command line, driven in-process through typer's CliRunner on a tiny in-memory model."""

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r3mem.cli.main import app
from r3mem.store import MemoryStore

TEXT = "Henry Sibley built a stone house near the ferry.\n\nIn winter the river froze.\n\nTraders came by canoe.\n"


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch, tmp_path):
    monkeypatch.setenv("R3MEM_BASE_MODEL", "tiny-llama")
    monkeypatch.setenv("R3MEM_HOME", str(tmp_path / "home"))  # the default store lives here
    monkeypatch.delenv("R3MEM_MODEL", raising=False)
    monkeypatch.delenv("R3MEM_DEBUG", raising=False)
    monkeypatch.delenv("R3MEM_USER", raising=False)
    monkeypatch.delenv("R3MEM_STORE", raising=False)
    monkeypatch.setenv("R3MEM_CONFIG", str(tmp_path / "no-config.toml"))  # never the real user's file


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(*args, input=None):
    r = run(*args, input=input)
    assert r.exit_code == 0, r.output
    return r


COMMANDS = [[], ["demo"], ["write"], ["recall"], ["chat"], ["serve"], ["train"], ["version"], ["memory"],
            ["memory", "list"], ["memory", "show"], ["memory", "export"], ["memory", "import"], ["memory", "delete"],
            ["memory", "edit"], ["memory", "forget"]]


def test_version_flag_and_command():
    from r3mem import __version__

    assert ok("--version").stdout.strip() == __version__ == ok("version").stdout.strip()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "r3mem")
def test_help(command):
    r = ok(*command, "--help")
    assert "Usage" in r.output


def test_write_then_recall_on_a_store(tmp_path, text_file):
    db = tmp_path / "chats.db"
    w = json.loads(ok("write", text_file, "--store", db, "--session", "notes", "--user", "ann", "--json").stdout)
    assert w["turns"] == 3 and (w["first_turn"], w["last_turn"]) == (1, 3) and w["memory_version"] == 1
    again = json.loads(ok("write", text_file, "--store", db, "--session", "notes", "--user", "ann", "--json").stdout)
    assert (again["first_turn"], again["last_turn"], again["memory_version"]) == (4, 6, 2)
    rec = json.loads(ok("recall", "--store", db, "--session", "notes", "--user", "ann", "--query", "stone house",
                        "--top-k", "2", "--json").stdout)
    assert rec["level"] == "paragraph" and len(rec["slots"]) == 2 and all(s["turn_id"] for s in rec["slots"])
    plain = ok("recall", "--store", db, "--session", "notes", "--user", "ann", "--index", "0")
    assert plain.stdout.strip() != "" or plain.stdout == "\n"
    with MemoryStore(db) as store:
        turns = store.list_turns("ann", "notes")
        assert [t.text for t in turns[:3]] == [p for p in TEXT.strip().split("\n\n")]
        assert store.get_memory("ann", "notes").through_turn == 6


def test_session_ids_that_cannot_be_named_in_a_path_are_refused(tmp_path, text_file):
    db = str(tmp_path / "s.db")
    r = run("write", text_file, "--store", db, "--session", "x/y")
    assert r.exit_code == 1 and "session_id 'x/y' is not allowed" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()  # refused before the store was opened or the model loaded


def test_write_then_recall_on_a_memory_file(tmp_path, text_file):
    mem = tmp_path / "notes.r3mem"
    first = json.loads(ok("write", text_file, "--memory", mem, "--json").stdout)
    second = json.loads(ok("write", text_file, "--memory", mem, "--json").stdout)
    assert mem.exists() and second["tokens"] > first["tokens"] and second["paragraphs"] > first["paragraphs"]
    rec = json.loads(ok("recall", "--memory", mem, "--index", "1", "--json").stdout)
    assert rec["slots"][0]["key"] == "p1" and isinstance(rec["text"], str)


def test_default_store_and_user(tmp_path, text_file):
    ok("write", text_file, "--session", "s")
    with MemoryStore(tmp_path / "home" / "store.db") as store:  # MemoryStore.default_path() under R3MEM_HOME
        assert store.get_session("local", "s").turn_count == 3
    listed = json.loads(ok("memory", "list", "--json").stdout)
    assert [(s["session_id"], s["turns"], s["memory_version"]) for s in listed] == [("s", 3, 1)]


def test_chat_repl(tmp_path):
    db = tmp_path / "chat.db"
    r = ok(
        "chat", "--store", db, "--session", "talk", "--max-new-tokens", "4", input="hello there\n\n/quit\nnot read\n"
    )
    assert r.stdout.count("assistant>") == 1 and "you> " in r.stdout
    assert "session 'talk'" in r.stderr and "1 messages answered" in r.stderr
    with MemoryStore(db) as store:
        turns = store.list_turns("local", "talk")
        assert turns[0].speaker == "user" and turns[0].text == "hello there"
        assert [t.speaker for t in turns[1:]] in ([], ["assistant"])
        assert store.get_memory("local", "talk").through_turn == len(turns)
    # end of input (Ctrl-D) ends the loop too, and the session continues where it stopped
    r = ok("chat", "--store", db, "--session", "talk", "--max-new-tokens", "4", input="again\n")
    assert r.stdout.count("assistant>") == 1 and f"({len(turns)} earlier turns)" in r.stderr


def test_store_from_the_environment(tmp_path, text_file, monkeypatch):
    monkeypatch.setenv("R3MEM_STORE", str(tmp_path / "env.db"))
    ok("write", text_file, "--session", "e")
    with MemoryStore(tmp_path / "env.db") as store:
        assert len(store.list_turns("local", "e")) == 3
    assert [r["session_id"] for r in json.loads(ok("memory", "list", "--json").stdout)] == ["e"]
    assert "user 'local' not found" in run("memory", "list", "--store", tmp_path / "other.db").output  # flag wins


def test_config_file_gives_option_defaults(tmp_path, text_file, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'store = "{tmp_path / "cfg.db"}"\nuser = "ann"\n[memory.show]\nlast = 1\n')
    monkeypatch.setenv("R3MEM_CONFIG", str(cfg))
    ok("write", text_file, "--session", "c")
    with MemoryStore(tmp_path / "cfg.db") as store:
        assert len(store.list_turns("ann", "c")) == 3  # store and user from the file
    assert len(json.loads(ok("memory", "show", "c", "--json").stdout)["turn_list"]) == 1  # a subcommand's table
    assert len(json.loads(ok("memory", "show", "c", "--last", "0", "--json").stdout)["turn_list"]) == 3  # flag wins
    monkeypatch.setenv("R3MEM_USER", "bob")  # the environment wins over the file
    assert "user 'bob' not found" in run("memory", "list").output
    monkeypatch.delenv("R3MEM_USER")
    for text, words in [('colour = "red"\n', "'colour' is no option of any command"),
                        ('[serve]\nlast = 1\n', "[serve] 'last' is no option of `r3mem serve`"),
                        ('[nope]\nport = 1\n', "[nope]: no such command"),
                        ('store = \n', "not a valid TOML file")]:
        cfg.write_text(text)
        r = run("memory", "list")
        assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output, r.output


def test_memory_edit_and_forget_single_turns(tmp_path, text_file):
    db = tmp_path / "m.db"
    ok("write", text_file, "--store", db, "--session", "a")
    edited = json.loads(ok("memory", "edit", "a", "2", "In winter the lake froze.", "--store", db, "--json").stdout)
    assert edited["text"] == "In winter the lake froze." and edited["memory_version"] >= 2
    ok("memory", "forget", "a", "1", "--store", db, "--yes")
    shown = json.loads(ok("memory", "show", "a", "--store", db, "--json").stdout)
    assert [t["index"] for t in shown["turn_list"]] == [2, 3] and {s["turn_id"] for s in shown["slot_list"]} == {2, 3}
    with MemoryStore(db) as store:
        assert [r.text for r in store.turn_history("local", "a", 2)] == ["In winter the river froze."]
    r = run("memory", "forget", "a", "1", "--store", db, "--yes")
    assert r.exit_code != 0 and "turn 1 of session 'a'" in r.output and "Traceback" not in r.output
    assert run("memory", "forget", "a", "2", "--store", db, input="n\n").exit_code == 1  # not confirmed: kept
    assert len(json.loads(ok("memory", "show", "a", "--store", db, "--json").stdout)["turn_list"]) == 2


def test_memory_show_export_import_delete(tmp_path, text_file):
    db = tmp_path / "m.db"
    ok("write", text_file, "--store", db, "--session", "a")
    shown = json.loads(ok("memory", "show", "a", "--store", db, "--json").stdout)
    assert shown["turns"] == 3 and [t["index"] for t in shown["turn_list"]] == [1, 2, 3]
    assert {s["turn_id"] for s in shown["slot_list"]} == {1, 2, 3}
    assert "[2] user: In winter the river froze." in ok("memory", "show", "a", "--store", db).stdout
    exported, bare = tmp_path / "a.json", tmp_path / "a.r3mem"
    ok("memory", "export", "a", "--store", db, "--out", exported, "--memory-file", bare)
    assert json.loads(exported.read_text())["format"] == "r3mem.session" and bare.stat().st_size > 0
    rec = json.loads(ok("recall", "--memory", bare, "--index", "0", "--json").stdout)  # the bare file is a memory file
    assert rec["slots"][0]["key"] == "p0"
    imported = json.loads(
        ok("memory", "import", exported, "--store", db, "--user", "bob", "--session", "copy", "--json").stdout
    )
    assert imported == {"user": "bob", "session": "copy", "turns": 3, "memory_rebuilt": False}
    assert json.loads(ok("memory", "list", "--store", db, "--user", "bob", "--json").stdout)[0]["memory_version"] == 1
    ok("memory", "delete", "a", "--store", db, "--yes")
    assert json.loads(ok("memory", "list", "--store", db, "--json").stdout) == []
    ok("memory", "delete", "--all", "--user", "bob", "--store", db, input="y\n")
    with MemoryStore(db) as store:
        assert [u.user_id for u in store.list_users()] == ["local"]


def _bad_cases(tmp_path, text_file):
    corrupt = tmp_path / "corrupt.r3mem"
    corrupt.write_bytes(b"not a memory file at all")
    not_json = tmp_path / "x.json"
    not_json.write_text("{oops")
    db = tmp_path / "bad.db"
    return [
        (["recall", "--store", db, "--session", "nope"], "session 'nope' not found"),
        (["write", tmp_path / "missing.txt", "--session", "s"], "missing.txt"),
        (["write", text_file], "missing target"),
        (["write", text_file, "--memory", tmp_path / "m.r3mem", "--session", "s"], "not both"),
        (["recall", "--memory", corrupt], "corrupt.r3mem"),
        (["recall", "--memory", tmp_path / "absent.r3mem"], "cannot read"),
        (["memory", "import", not_json, "--store", db], "not JSON"),
        (["memory", "show", "nope", "--store", db], "not found"),
        (["memory", "delete", "--store", db], "--all"),
        (["chat", "--store", db, "--retrieval", "grep"], "retrieval"),
        (["recall", "--store", db, "--session", "s", "--level", "chapter"], "level"),
    ]


def test_bad_input_gives_one_line_errors(tmp_path, text_file):
    ok("write", text_file, "--store", tmp_path / "bad.db", "--session", "s")
    for args, words in _bad_cases(tmp_path, text_file):
        r = run(*args, input="/quit\n")
        assert r.exit_code == 1, (args, r.output)
        errors = [line for line in r.stderr.splitlines() if not line.startswith("note:")]
        assert len(errors) == 1 and errors[0].startswith("error: "), (args, r.stderr)
        assert words in errors[0], (args, errors[0])
        assert "Traceback" not in r.output


def test_debug_env_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("R3MEM_DEBUG", "1")
    r = run("recall", "--store", tmp_path / "d.db", "--session", "nope")
    assert r.exit_code != 0 and type(r.exception).__name__ == "NotFound"


def test_demo_runs_the_main_job(tmp_path):
    import json

    saved = tmp_path / "demo.r3mem"
    out = ok("demo", "--json", "--save", str(saved)).stdout
    result = json.loads(out[out.index("{"):])
    assert result["paragraph_slots"] >= 2 and result["compression_ratio"] > 1
    assert 0.0 <= result["token_exact_match"] <= 1.0 and result["original"]
    assert saved.exists()
    text = ok("demo").output
    assert "compression ratio" in text and "recalled from memory" in text and "token exact match" in text
    assert re.search(r"memory size       : \d+\.\d\d MB \((float16|\d+ bits) per number", text)


# ----------------------------------------------------------------------------------- hardening (issue 13)


def one_error(r, *words):
    """The run failed with exit code 1 and exactly one `error:` line holding every word."""
    assert r.exit_code == 1, (r.exit_code, r.output)
    errors = [line for line in r.stderr.splitlines() if not line.startswith("note:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and "Usage" not in r.output
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: the command had to refuse its input before."""
    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded")

    for module in ("recall", "serve", "write", "demo", "memory"):
        monkeypatch.setattr(f"r3mem.cli.{module}.load_engine", refuse, raising=False)


def test_piped_input_with_a_bad_byte_stores_nothing(tmp_path, no_model):
    db = tmp_path / "mem.db"
    piped = b"Para one is fine.\n\nPara two is fine.\n\nbad \xff here.\n\n"
    bad_at = piped.index(b"\xff")
    one_error(run("write", "-", "--session", "s", "--store", db, input=piped), f"at byte {bad_at}", "--encoding")
    one_error(run("write", "-", "--session", "t", "--store", db, input=b"\xffirst bad\n\nthen good\n"), "at byte 0")
    assert not db.exists()  # no session, not even an empty one: nothing was opened


def test_write_stores_all_turns_in_one_transaction(tmp_path):
    with MemoryStore(tmp_path / "t.db") as store:
        store.create_user("u")
        store.create_session("u", "s")
        with pytest.raises(ValueError, match="lone surrogate"):
            store.append_turns("u", "s", [("user", "fine"), ("user", "bad \udcff")])
        assert store.list_turns("u", "s") == [] and store.get_session("u", "s").turn_count == 0
        assert [t.index for t in store.append_turns("u", "s", [("user", "a"), ("bot", "b")])] == [1, 2]


def test_other_encodings_are_named_by_an_option(tmp_path):
    book = tmp_path / "latin1.txt"
    book.write_bytes("Caf\xe9 au lait by the river.\n\nA second paragraph.\n".encode("latin-1"))
    db = tmp_path / "enc.db"
    one_error(run("write", book, "--session", "s", "--store", db), "latin1.txt", "byte 3", "--encoding latin-1")
    ok("write", book, "--session", "s", "--store", db, "--encoding", "latin-1")
    with MemoryStore(db) as store:
        assert store.list_turns("local", "s")[0].text == "Café au lait by the river."
    one_error(run("write", book, "--session", "s", "--store", db, "--encoding", "klingon"), "--encoding", "klingon")
    one_error(run("demo", "--text", book), "--encoding")
    assert "--encoding" in ok("demo", "--help").output


def test_unreadable_inputs_get_the_one_line_error(tmp_path, text_file, monkeypatch, no_model):
    locked = tmp_path / "locked.txt"
    locked.write_text(TEXT)
    locked.chmod(0)
    real_access = os.access
    # root reads mode-000 files; emulate a normal user, for whom os.access (click's check as well) says no
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    try:
        for args in (["write", locked, "--session", "s"], ["write", text_file, "--memory", locked],
                     ["recall", "--memory", locked], ["memory", "import", locked], ["demo", "--text", locked]):
            one_error(run(*args), "cannot read", "locked.txt", "permission denied")
    finally:
        locked.chmod(0o600)


def test_serve_refuses_a_bad_port_in_one_line_before_loading(no_model):
    for port in ("99999", "-1"):
        one_error(run("serve", "--port", port), "--port", "0-65535")


def test_recall_refuses_a_bad_memory_file_before_loading(tmp_path, no_model):
    bad = tmp_path / "bad.r3mem"
    bad.write_bytes(b"definitely not a memory file")
    one_error(run("recall", "--memory", bad), "bad.r3mem", "not a memory file")
    one_error(run("write", "-", "--memory", bad, input="Some text.\n"), "bad.r3mem")


def _cli_export(tmp_path, text_file):
    db = tmp_path / "src.db"
    ok("write", text_file, "--store", db, "--session", "a")
    out = tmp_path / "a.json"
    ok("memory", "export", "a", "--store", db, "--out", out)
    return json.loads(out.read_text())


def test_memory_import_checks_the_memory_against_the_model(tmp_path, text_file):
    import base64
    from dataclasses import replace

    import torch

    from r3mem.cli.common import load_engine

    exported = _cli_export(tmp_path, text_file)
    engine = load_engine(None, "tiny-llama")  # what the command loads
    mem = engine.from_bytes(base64.b64decode(exported["memory"]["blob_b64"]))
    state = mem.doc_state
    foreign = load_engine(None, "tiny-gpt2")
    cases = [(engine.to_bytes(replace(mem, doc_state=torch.zeros(*state.shape[:-1], 3, dtype=state.dtype))), "shape"),
             (engine.to_bytes(replace(mem, pending_ids=[10**12])), "vocabulary")]
    db = tmp_path / "dst.db"
    for i, (blob, words) in enumerate(cases):
        data = json.loads(json.dumps(exported))
        data["memory"]["blob_b64"] = base64.b64encode(blob).decode()
        data["memory"].pop("blob_sha256")
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(data))
        one_error(run("memory", "import", path, "--store", db, "--user", "bob"), words)
    broken = dict(exported, turns=[dict(exported["turns"][0], index=2**63)])
    (tmp_path / "range.json").write_text(json.dumps(broken))
    one_error(run("memory", "import", tmp_path / "range.json", "--store", db, "--user", "bob"), "turns[0].index")
    inf = json.dumps(exported).replace(str(exported["session"]["created_at"]), "Infinity", 1)
    (tmp_path / "inf.json").write_text(inf)
    one_error(run("memory", "import", tmp_path / "inf.json", "--store", db, "--user", "bob"), "created_at")
    assert not db.exists() or json.loads(ok("memory", "list", "--store", db, "--user", "bob", "--json").stdout) == []
    # another model's memory is not refused: the turns are imported and the memory is rebuilt from them
    data = json.loads(json.dumps(exported))
    data["memory"]["blob_b64"] = base64.b64encode(foreign.to_bytes(foreign.new_memory())).decode()
    data["memory"].pop("blob_sha256")
    (tmp_path / "foreign.json").write_text(json.dumps(data))
    foreign_file = tmp_path / "foreign.json"
    info = json.loads(ok("memory", "import", foreign_file, "--store", db, "--user", "bob", "--json").stdout)
    assert info["memory_rebuilt"] is True and info["turns"] == len(exported["turns"])
    assert "rebuilt from the turns" in ok("memory", "import", foreign_file, "--store", db, "--user", "bob",
                                           "--session", "b2").stdout


def test_library_noise_is_hidden_unless_debugging(monkeypatch):
    import warnings

    from transformers.utils import logging as hf_logging

    from r3mem.cli.common import quiet_libraries

    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    hf_logging.enable_progress_bar()  # as a fresh process starts (an earlier command may have disabled it)
    try:
        monkeypatch.setenv("R3MEM_DEBUG", "1")
        quiet_libraries()
        assert hf_logging.is_progress_bar_enabled()
        monkeypatch.delenv("R3MEM_DEBUG")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_libraries()
            warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        assert seen == [] and not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()


def test_fuzzed_memory_import_is_one_error_or_a_whole_session(tmp_path, text_file):
    """Random mutations of a real export through `r3mem memory import`: a one-line error and nothing
    stored, or the whole session; the session list always loads afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    exported = _cli_export(tmp_path, text_file)
    db = tmp_path / "fuzz.db"
    edge = st.sampled_from([2**31, 2**63, 10**30, -1, 0, float("inf"), float("nan"), "\ud800", "", None, [], {}, "x/y"])
    paths = st.sampled_from(
        [
            ("session", "session_id"),
            ("session", "turn_count"),
            ("session", "created_at"),
            ("session", "meta"),
            ("turns", 0, "index"),
            ("turns", 0, "text"),
            ("memory", "version"),
            ("memory", "through_turn"),
            ("memory", "blob_b64"),
            ("memory", "slots"),
            ("format_version",),
        ]
    )
    n = [0]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.tuples(paths, edge), min_size=1, max_size=2))
    def check(edits):
        data = json.loads(json.dumps(exported))
        for path, value in edits:
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        n[0] += 1
        f = tmp_path / f"m{n[0]}.json"
        f.write_text(json.dumps(data))  # NaN/Infinity/lone surrogates written as Python's json writes them
        before = json.loads(ok("memory", "list", "--store", db, "--user", "u", "--json").stdout) if db.exists() else []
        r = run("memory", "import", f, "--store", db, "--user", "u", "--session", f"s{n[0]}")
        after = json.loads(ok("memory", "list", "--store", db, "--user", "u", "--json").stdout) if db.exists() else []
        assert "Traceback" not in r.output
        if r.exit_code == 0:
            assert len(after) == len(before) + 1
        else:
            one_error(r)
            assert after == before

    check()
