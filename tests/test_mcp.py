"""`r3mem mcp`: the MCP server driven by the official `mcp` SDK's own clients — over stdio against the real
command in a subprocess, in process for schemas and results, and over streamable HTTP on 127.0.0.1.
Tiny in-memory model, real SQLite store."""

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from conftest import uvicorn_server

pytest.importorskip("mcp")

from mcp import Client as InProcessClient  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from r3mem.agent import ChatAgent  # noqa: E402
from r3mem.cli.main import app as cli  # noqa: E402
from r3mem.mcp_server import create_server  # noqa: E402
from r3mem.store import MemoryStore  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TOOLS = {"write_memory", "write_conversation", "recall_memory", "answer_from_memory", "list_sessions", "delete_session",
         "search_memories", "list_memories", "get_memory", "update_memory", "delete_memory"}
DEADLINE_S = 240  # the whole stdio conversation, model loading included


@pytest.fixture
def server(engine, store):
    return create_server(engine, store, user_id="ann")


def call(server, *calls):
    """Run (tool, arguments) calls in order through the SDK's in-process client; the results."""

    async def go():
        async with InProcessClient(server) as c:
            return [await c.call_tool(name, args) for name, args in calls]

    return anyio.run(go)


def structured(result):
    assert not result.is_error, result.content
    assert json.loads(result.content[0].text) == result.structured_content  # the same result as text, for any client
    return result.structured_content


def error_text(result, one_line=True):
    """A tool error's text; the library's errors are one line (the SDK's own argument checks are not)."""
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text or not one_line, text
    return text


# ----------------------------------------------------------------------------------- stdio, end to end


def test_stdio_end_to_end_with_the_sdk_client(tmp_path):
    db = tmp_path / "served.db"
    env = {
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "R3MEM_BASE_MODEL": "tiny-llama",
        "R3MEM_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    params = StdioServerParameters(command=sys.executable, env=env,
                                   args=["-m", "r3mem.cli.main", "mcp", "--store", str(db), "--user", "ann"])
    errlog = open(tmp_path / "server.log", "w+")
    results = {}

    async def go():
        with anyio.fail_after(DEADLINE_S):
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
                init = await s.initialize()
                results["server"] = init.server_info.name
                results["instructions"] = init.instructions
                results["tools"] = {t.name: t for t in (await s.list_tools()).tools}
                results["write"] = await s.call_tool("write_memory", {"text": "Henry Sibley built a stone house.",
                                                                      "speaker": "Caroline", "session_id": "trip"})
                results["conv"] = await s.call_tool("write_conversation", {"session_id": "trip", "turns": [
                    {"speaker": "user", "text": "The river froze in winter."},
                    {"speaker": "assistant", "text": "Noted: the river froze."}]})
                results["note"] = await s.call_tool("write_memory", {"text": "Buy bread."})  # the default session
                results["recall"] = await s.call_tool("recall_memory", {"session_id": "trip", "query": "stone house",
                                                                        "top_k": 2, "include_tokens": True})
                results["answer"] = await s.call_tool("answer_from_memory", {"session_id": "trip", "top_k": 1,
                                                                             "question": "Who built the house?",
                                                                             "max_new_tokens": 4})
                results["listed"] = await s.call_tool("list_sessions", {})
                results["missing"] = await s.call_tool("recall_memory", {"session_id": "nope"})
                results["bad_level"] = await s.call_tool("recall_memory", {"session_id": "trip", "level": "chapter"})
                results["deleted"] = await s.call_tool("delete_session", {"session_id": "default"})
                results["deleted_again"] = await s.call_tool("delete_session", {"session_id": "default"})

    try:
        anyio.run(go)
    finally:
        errlog.seek(0)
        log = errlog.read()
        errlog.close()
    assert results["server"] == "r3mem" and "recall_memory" in results["instructions"], log
    assert set(results["tools"]) == TOOLS
    w = structured(results["write"])
    assert w["session_id"] == "trip" and w["memory_version"] == 1
    assert [(t["index"], t["speaker"], t["text"]) for t in w["turns"]] == [
        (1, "Caroline", "Henry Sibley built a stone house.")
    ]
    conv = structured(results["conv"])
    assert [t["index"] for t in conv["turns"]] == [2, 3] and conv["memory_version"] == 2
    assert structured(results["note"])["session_id"] == "default"
    rec = structured(results["recall"])
    assert rec["level"] == "paragraph" and len(rec["slots"]) == 2 and {s["turn_id"] for s in rec["slots"]} <= {1, 2, 3}
    for slot in rec["slots"]:  # the model's confidence reaches the agent: per slot and per token
        assert 0 < slot["confidence"]["min"] <= slot["confidence"]["geo_mean"] <= 1
        assert "".join(t["text"] for t in slot["tokens"]) == slot["text"] and all(
            0 < t["p"] <= 1 for t in slot["tokens"]
        )
    assert rec["confidence"] == min(s["confidence"]["geo_mean"] for s in rec["slots"])
    ans = structured(results["answer"])
    assert isinstance(ans["text"], str) and len(ans["slots"]) == 1 and ans["recalled"] == ans["slots"][0]["text"]
    assert ans["confidence"] == ans["slots"][0]["confidence"]["geo_mean"]
    listed = structured(results["listed"])["sessions"]
    assert [(s["session_id"], s["turn_count"]) for s in listed] == [("trip", 3), ("default", 1)]
    assert "session 'nope' not found" in error_text(results["missing"])
    assert "Input should be 'document', 'paragraph' or 'entity'" in error_text(results["bad_level"], False)
    assert structured(results["deleted"]) == {"session_id": "default", "deleted": True}
    assert "not found" in error_text(results["deleted_again"])
    with MemoryStore(db) as st:  # everything the tools reported is in the store the command was pointed at
        assert [t.text for t in st.list_turns("ann", "trip")] == [
            "Henry Sibley built a stone house.",
            "The river froze in winter.",
            "Noted: the river froze.",
        ]
        assert st.get_memory("ann", "trip").through_turn == 3
        assert [s.session_id for s in st.list_sessions("ann")] == ["trip"]


# ----------------------------------------------------------------------------------- schemas and results


def test_stdio_answers_every_request_even_malformed_ones(tmp_path):
    """Raw lines to `r3mem mcp` over stdio: a request with string params, one with a lone surrogate escape,
    and a line that is not JSON each get their JSON-RPC error (the SDK alone answered none of them); a
    malformed notification gets nothing; the session goes on answering valid requests, and answers the
    ones still running when the input ends (the SDK cancels them)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "R3MEM_BASE_MODEL": "tiny-llama", "R3MEM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
    lines = [json.dumps(init), json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
             '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"write_memory"}',
             '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"write_memory",'
             '"arguments":{"text":"bad \\ud800 text"}}}',
             "this is not json",
             '{"jsonrpc":"2.0","method":"notifications/cancelled","params":"no"}',
             json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
             json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call",  # model work, then the input ends
                         "params": {"name": "write_memory", "arguments": {"text": "The ferry ran at dawn."}}})]
    proc = subprocess.run([sys.executable, "-m", "r3mem.cli.main", "mcp", "--store", str(tmp_path / "s.db")],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, env=env, timeout=DEADLINE_S)
    replies = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    by_id = {r.get("id"): r for r in replies}
    assert by_id[1]["error"]["code"] == -32602 and "object" in by_id[1]["error"]["message"]
    assert by_id[2]["error"]["code"] == -32602 and "lone surrogate" in by_id[2]["error"]["message"]
    assert by_id[None]["error"]["code"] == -32700
    assert {t["name"] for t in by_id[3]["result"]["tools"]} == TOOLS  # still serving after the bad lines
    assert by_id[4]["result"]["structuredContent"]["turns"][0]["text"] == "The ferry ran at dawn."  # answered
    assert len(replies) == 6, replies  # initialize, 1, 2, the unparsable line, 3, 4: nothing for the notification


def test_every_tool_and_argument_is_described_for_an_agent(server):
    async def go():
        async with InProcessClient(server) as c:
            return (await c.list_tools()).tools

    tools = {t.name: t for t in anyio.run(go)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name
        for arg, schema in tool.input_schema.get("properties", {}).items():
            assert len(schema.get("description", "")) > 10, (tool.name, arg)
    recall = tools["recall_memory"].input_schema
    assert recall["properties"]["level"]["enum"] == ["document", "paragraph", "entity"]
    assert (recall["properties"]["top_k"]["minimum"], recall["properties"]["top_k"]["maximum"]) == (1, 32)
    assert recall.get("required", []) == []  # everything has a default: an agent can call it bare
    assert tools["write_memory"].input_schema["required"] == ["text"]
    assert tools["delete_session"].input_schema["required"] == ["session_id"]
    assert tools["delete_session"].annotations.destructive_hint is True
    assert tools["recall_memory"].annotations.read_only_hint is True
    assert tools["write_memory"].annotations.read_only_hint is False


def test_recall_passes_the_library_result_through(server, engine, store):
    w, r, by_index = call(server, ("write_memory", {"text": "The ferry leaves at noon.", "session_id": "s"}),
                          ("recall_memory", {"session_id": "s", "query": "ferry"}),
                          ("recall_memory", {"session_id": "s", "index": 0}))
    assert structured(w)["memory_version"] == 1
    expected = ChatAgent(engine, store, "ann", "s").recall("ferry").to_dict()
    got = structured(r)
    assert got.pop("session_id") == "s"
    for slot in expected["slots"]:  # compact by default: confidence as numbers, no per-token list
        assert slot["tokens"]
        slot["tokens"] = None
    assert got == json.loads(json.dumps(expected))  # text, confidence, slots with turn_id and confidence
    assert structured(by_index)["slots"][0]["key"] == "p0"
    (full,) = call(server, ("recall_memory", {"session_id": "s", "query": "ferry", "include_tokens": True}))
    assert "".join(t["text"] for t in structured(full)["slots"][0]["tokens"]) == structured(full)["slots"][0]["text"]


def test_answer_with_bm25_retrieval(server):
    texts = ["The ferry leaves at noon.", "Bread is baked at dawn.", "The ferry costs two coins."]
    results = call(server, ("write_conversation", {"session_id": "s", "turns": [{"speaker": "user", "text": t}
                                                                              for t in texts]}),
                   *[("answer_from_memory", {"session_id": "s", "question": "When is bread baked?", "top_k": 1,
                                             "max_new_tokens": 2, "retrieval": "bm25"})] * 2,
                   ("answer_from_memory", {"session_id": "s", "question": "Bread?", "retrieval": "grep"}))
    assert "Input should be 'bm25' or 'embedding'" in error_text(results.pop(), False)
    assert [t["index"] for t in structured(results[0])["turns"]] == [1, 2, 3]
    for r in results[1:]:
        ans = structured(r)
        assert len(ans["slots"]) == 1 and ans["recalled"] == ans["slots"][0]["text"] and "turns" not in ans


def test_tool_errors_carry_the_library_message(server):
    w, bad_index, empty, too_many, unknown = call(
        server, ("write_memory", {"text": "One line.", "session_id": "s"}),
        ("recall_memory", {"session_id": "s", "index": 7}),
        ("write_memory", {"text": "   ", "session_id": "s"}),
        ("recall_memory", {"session_id": "s", "top_k": 33}),
        ("answer_from_memory", {"question": "Anything?", "session_id": "other"}))
    structured(w)
    assert "slot 7 does not exist" in error_text(bad_index)
    assert "must not be empty" in error_text(empty)
    assert "top_k" in error_text(too_many, False)
    assert "session 'other' not found for user 'ann'" in error_text(unknown)


def test_session_ids_follow_the_stores_one_rule(server, store):
    (bad,) = call(server, ("write_memory", {"text": "One line.", "session_id": "a/b"}))
    assert "session_id 'a/b' is not allowed" in error_text(bad)
    assert store.list_sessions("ann") == []  # nothing stored under an id the service could not name


def test_single_memories_listed_edited_deleted_and_searched_across_sessions(server, store):
    call(server, ("write_conversation", {"session_id": "trip", "turns": [
        {"speaker": "user", "text": "The ferry to Lisbon leaves at noon."},
        {"speaker": "user", "text": "Pack the blue umbrella."},
        {"speaker": "user", "text": "My locker code is 4711."}]}),
         ("write_memory", {"session_id": "home", "text": "The plumber comes on Tuesday."}),
         ("write_memory", {"session_id": "home", "text": "the plumber comes on tuesday"}))  # a repeat: not stored
    page, rest, one, edited, gone, found, missing = call(
        server, ("list_memories", {"session_id": "trip", "limit": 2}),
        ("list_memories", {"session_id": "trip", "offset": 2}),
        ("update_memory", {"session_id": "trip", "index": 1, "text": "The ferry to Lisbon leaves at one."}),
        ("get_memory", {"session_id": "trip", "index": 1}),
        ("delete_memory", {"session_id": "trip", "index": 3}),
        ("search_memories", {"query": "when does the plumber come", "top_k": 3}),
        ("get_memory", {"session_id": "trip", "index": 3}))
    page, rest = structured(page), structured(rest)
    assert [m["index"] for m in page["memories"]] == [1, 2] and page["total"] == 3 and page["next_offset"] == 2
    assert [m["index"] for m in rest["memories"]] == [3] and rest["next_offset"] is None
    assert structured(one)["memory"]["text"] == "The ferry to Lisbon leaves at one."
    assert [h["text"] for h in structured(edited)["history"]] == ["The ferry to Lisbon leaves at noon."]
    assert structured(gone)["memory"]["text"] == "My locker code is 4711."
    assert "turn 3 of session 'trip'" in error_text(missing)
    hits = structured(found)["memories"]
    assert {(h["session_id"], h["index"]) for h in hits} <= {("trip", 1), ("trip", 2), ("home", 1)}
    assert ("home", 1) in {(h["session_id"], h["index"]) for h in hits} and len(hits) == 3
    assert len(store.list_turns("ann", "home")) == 1
    assert "4711" not in json.dumps(store.export_session("ann", "trip"))


def test_list_sessions_before_anything_was_written(server):
    (listed,) = call(server, ("list_sessions", {}))
    assert structured(listed) == {"sessions": []}


def test_tools_act_for_their_user_only(engine, store):
    structured(call(create_server(engine, store, user_id="bob"), ("write_memory", {"text": "Bob's secret."}))[0])
    ann = create_server(engine, store, user_id="ann")
    listed, peek = call(ann, ("list_sessions", {}), ("recall_memory", {"session_id": "default"}))
    assert structured(listed) == {"sessions": []} and "not found" in error_text(peek)
    assert [t.text for t in store.list_turns("bob", "default")] == ["Bob's secret."]


# ----------------------------------------------------------------------------------- streamable HTTP


def test_streamable_http(server, store):
    with uvicorn_server(server.streamable_http_app()) as url:
        async def go():
            with anyio.fail_after(60):
                async with streamable_http_client(f"{url}/mcp") as (read, write), ClientSession(read, write) as s:
                    await s.initialize()
                    w = await s.call_tool("write_memory", {"text": "Over HTTP.", "session_id": "web"})
                    listed = await s.call_tool("list_sessions", {})
                    return w, listed

        w, listed = anyio.run(go)
    assert structured(w)["turns"][0]["text"] == "Over HTTP."
    assert [s["session_id"] for s in structured(listed)["sessions"]] == ["web"]
    assert store.get_memory("ann", "web").through_turn == 1


# ----------------------------------------------------------------------------------- command line


def test_mcp_command_help_and_bad_transport(monkeypatch, tmp_path):
    monkeypatch.setenv("R3MEM_BASE_MODEL", "tiny-llama")
    monkeypatch.setenv("R3MEM_HOME", str(tmp_path))
    monkeypatch.delenv("R3MEM_DEBUG", raising=False)
    r = CliRunner().invoke(cli, ["mcp", "--help"])
    assert r.exit_code == 0 and "--transport" in r.output
    r = CliRunner().invoke(cli, ["mcp", "--transport", "carrier-pigeon"])
    assert r.exit_code == 1 and "--transport must be one of stdio, streamable-http" in r.output


def test_write_conversation_reports_progress_to_a_client_that_asks(server):
    seen = []

    async def progress(done, total, message):
        seen.append((done, total, message))

    async def go():
        async with InProcessClient(server) as c:
            turns = [{"speaker": "user", "text": f"Line {i} about the ferry."} for i in range(70)]
            return await c.call_tool("write_conversation", {"session_id": "p", "turns": turns},
                                     progress_callback=progress)

    result = anyio.run(go)
    assert len(structured(result)["turns"]) == 70
    assert [(d, t) for d, t, _ in seen] == [(64, 70), (70, 70)]  # after each write batch of 64 turns
    assert seen[-1][2] == "70/70 turns written into memory"
