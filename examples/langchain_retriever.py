"""A conversation kept in r3mem memory, searched from LangChain (`pip install r3mem[langchain]`).

    python examples/langchain_retriever.py "Where did Caroline move?"
    python examples/langchain_retriever.py --base-model tiny-llama "question"   # seconds: a random tiny model

Writes a short conversation into a session memory, then hands `R3MemRetriever` to a LangChain pipeline
that formats the recalled slots as a context block with the turn each came from: the same slots
`ChatAgent` reads for its own answers (found by their keys, each expansion checked against its turn).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langchain_core.runnables import RunnableLambda

from r3mem.agent import ChatAgent, ensure_session
from r3mem.cli.common import load_engine
from r3mem.integrations.langchain import R3MemRetriever
from r3mem.store import MemoryStore

CONVERSATION = [
    ("Caroline", "I moved to Lisbon in May, right after the conference."),
    ("Melanie", "How is the new flat? Last time you said the stairs were a problem."),
    ("Caroline", "The flat is fine, and I adopted a grey cat called Pico."),
    ("Melanie", "My sister starts her pottery course in September."),
]


def context_block(docs) -> str:
    return "\n".join(f"[turn {d.metadata['turn_id']}] {d.page_content}" for d in docs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("questions", nargs="+")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--base-model", default=None, help="Base model: registry name, HF checkpoint folder or tiny-llama.")
    args = p.parse_args(argv)
    engine = load_engine(None, args.base_model)
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(Path(tmp) / "chat.db") as store:
        ensure_session(store, "caroline", "chat")
        agent = ChatAgent(engine, store, "caroline", "chat")
        agent.add_turns(CONVERSATION)
        chain = R3MemRetriever(agent=agent, top_k=args.top_k) | RunnableLambda(context_block)
        for q in args.questions:
            print(f"Q: {q}\n{chain.invoke(q)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
