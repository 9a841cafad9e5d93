"""Answer questions from a folder of text documents kept in r3mem memory (retrieval-augmented generation).

    python examples/rag_folder.py DOCS_DIR "Who built the stone house?" ["another question" ...]
    python examples/rag_folder.py DOCS_DIR --base-model tiny-llama "question"   # seconds: a random tiny model

Each `*.txt` / `*.md` file of DOCS_DIR becomes one turn of a session (its paragraphs become the memory's
paragraph slots, each keyed for search when written); a question is answered from the slots its keys find.
With `--store PATH` the memory is kept: a later run over the same folder adds only the files it has not
seen (the same file text is deduplicated), so only new documents cost a write. `--read source` gives the
reader the stored paragraphs the memory found (fastest); `text` (default) their reconstruction from
memory, checked against the stored text in one pass where it can be.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from r3mem.agent import QA_PROMPT, ChatAgent, ensure_session
from r3mem.cli.common import load_engine
from r3mem.store import MemoryStore

USER, SESSION = "rag", "documents"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="Folder of .txt / .md documents.")
    p.add_argument("questions", nargs="+", help="Questions to answer from the documents.")
    p.add_argument("--store", default=None, help="Store file or URL to keep the memory in (default: temporary).")
    p.add_argument("--read", choices=("text", "source", "cache"), default="text", help="What the reader is given.")
    p.add_argument("--top-k", type=int, default=2, help="Slots found per question.")
    p.add_argument("--base-model", default=None, help="Base model: registry name, HF checkpoint folder or tiny-llama.")
    p.add_argument("--model", type=Path, default=None, help="Adapter folder (default: the shipped one).")
    return p.parse_args(argv)


def documents(folder: Path) -> list[tuple[str, str]]:
    """(file name, text) of every .txt / .md file, in name order; empty files are left out."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".txt", ".md") and p.is_file())
    docs = [(p.name, p.read_text(encoding="utf-8").strip()) for p in files]
    return [(name, text) for name, text in docs if text]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    docs = documents(args.folder)
    if not docs:
        print(f"{args.folder}: no .txt or .md documents", file=sys.stderr)
        return 1
    engine = load_engine(args.model, args.base_model)
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(args.store or Path(tmp) / "rag.db") as store:
        ensure_session(store, USER, SESSION)
        agent = ChatAgent(engine, store, USER, SESSION, top_k=args.top_k, prompt=QA_PROMPT, read=args.read)
        known = {t.text for t in store.list_turns(USER, SESSION)}
        new = [(name, text) for name, text in docs if text not in known]
        for name, text in new:  # one write per document: the store's dedupe skips a text it holds already
            agent.write(text, speaker=name[:64])
        print(f"{len(docs)} documents ({len(new)} written now)", file=sys.stderr)
        for q in args.questions:
            reply = agent.respond(q, max_new_tokens=32)
            sources = sorted({s.get("turn_id") for s in reply.slots if s.get("turn_id") is not None})
            names = [t.speaker for t in store.get_turns(USER, SESSION, sources)]
            print(f"Q: {q}\nA: {reply.text}\n   from: {', '.join(names) or '(nothing)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
