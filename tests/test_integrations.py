"""r3mem.integrations: the LangChain retriever over a session memory (tiny model, real store)."""

import pytest

pytest.importorskip("langchain_core")  # the `langchain` extra; requirements.lock installs it

from langchain_core.documents import Document  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402

from r3mem.agent import ChatAgent, ensure_session, format_turn  # noqa: E402
from r3mem.integrations.langchain import R3MemRetriever  # noqa: E402

TURNS = [("Caroline", "Henry Sibley built a stone house near the ferry."),
         ("Melanie", "In winter the river froze and the settlers crossed on foot."),
         ("Caroline", "Traders came by canoe and steamboat to Saint Paul.")]


def test_the_retriever_gives_the_agents_recalled_slots_as_documents(engine, store):
    ensure_session(store, "alice", "s")
    agent = ChatAgent(engine, store, "alice", "s")
    agent.add_turns(TURNS)
    retriever = R3MemRetriever(agent=agent, top_k=2)
    docs = retriever.invoke("Who built the stone house near the ferry?")
    slots = agent.recall_for("Who built the stone house near the ferry?", top_k=2)
    assert [d.page_content for d in docs] == [s["text"] for s in sorted(slots, key=lambda s: -s["score"])]
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 2
    meta = docs[0].metadata
    assert meta["session_id"] == "s" and meta["turn_id"] in (1, 2, 3) and meta["read"] in ("expansion", "source")
    stream = "".join(format_turn(s, t) for s, t in TURNS)
    assert stream[meta["start"]:meta["end"]].strip()  # the span of the turns it was written from
    # a LangChain pipeline takes it as any retriever
    chain = retriever | RunnableLambda(lambda ds: "\n".join(d.page_content for d in ds))
    assert chain.invoke("steamboat to Saint Paul") == "\n".join(
        d.page_content for d in retriever.invoke("steamboat to Saint Paul"))
    with pytest.raises(ValueError, match="question|query"):
        retriever.invoke("   ")
    with pytest.raises(ValueError):
        R3MemRetriever(agent=agent, top_k=0)
