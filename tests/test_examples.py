"""The scripts in examples/ run (tiny model built in memory)."""

import importlib.util
from pathlib import Path

import anyio
import pytest
from conftest import uvicorn_server

from r3mem.service import create_app
from r3mem.store import MemoryStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rag_folder_writes_each_document_once_and_answers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "house.txt").write_text("Henry Sibley built a stone house near the ferry.\n\nIt had two floors.\n")
    (docs / "river.md").write_text("In winter the river froze and the settlers crossed on foot.\n")
    (docs / "empty.txt").write_text("  \n")
    rag = _load("rag_folder")
    store = tmp_path / "rag.db"
    args = [str(docs), "Who built the stone house?", "--base-model", "tiny-llama", "--store", str(store)]
    assert rag.main(args) == 0
    out = capsys.readouterr()
    assert "2 documents (2 written now)" in out.err and out.out.count("Q: ") == 1 and "from: " in out.out
    assert rag.main(args + ["--read", "source"]) == 0  # the kept memory: nothing written again
    assert "2 documents (0 written now)" in capsys.readouterr().err
    with MemoryStore(store) as st:
        assert [t.speaker for t in st.list_turns(rag.USER, rag.SESSION)] == ["house.txt", "river.md"]
    with pytest.raises(SystemExit, match="nowhere: not a folder"):
        rag.main([str(tmp_path / "nowhere"), "q?", "--base-model", "tiny-llama"])


def test_async_client_example_against_a_served_app(engine, tmp_path, capsys):
    example = _load("async_client")
    with MemoryStore(tmp_path / "s.db") as store, uvicorn_server(create_app(engine, store, admin_token="adm")) as url:
        assert anyio.run(example.main, url, "adm") == 0
    out = capsys.readouterr().out
    assert "memory jobs: ['done', 'done', 'done']" in out and "answer:" in out


def test_langchain_retriever_example_runs(capsys, monkeypatch):
    pytest.importorskip("langchain_core")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _load("langchain_retriever").main(["Where did Caroline move?", "--base-model", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Q: Where did Caroline move?\n[turn ") and out.count("[turn ") == 2
