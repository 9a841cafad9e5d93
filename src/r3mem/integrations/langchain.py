"""A LangChain retriever over a session memory: `invoke(question)` gives the slots recalled for it as
`Document`s, as `ChatAgent` recalls them for its own answers (slots found by their keys, each expansion
checked against its stored turns, a doubted one read from its source).

    from r3mem.integrations.langchain import R3MemRetriever
    retriever = R3MemRetriever(agent=ChatAgent(engine, store, "alice", "trip"), top_k=3)
    docs = retriever.invoke("Where did I move in May?")   # list[Document], best first
    docs[0].metadata                                       # turn_id, score, p_exact, read, span

Needs `langchain-core` (the `langchain` extra); any LangChain chain or agent takes it as a retriever.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

__all__ = ["R3MemRetriever"]


class R3MemRetriever(BaseRetriever):
    """The `top_k` slots `agent` recalls for a query, as documents (text: the slot's expansion or, where
    its confidence is under the agent's `min_confidence`, the stored turns it was written from)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    agent: Any = Field(description="The r3mem.agent.ChatAgent whose session memory is searched.")
    top_k: int = Field(2, ge=1, le=32)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        slots = self.agent.recall_for(query, top_k=self.top_k)
        ranked = sorted(slots, key=lambda s: -(s.get("score") or 0.0))  # recall gives them in text order
        return [Document(page_content=s["text"], metadata=_metadata(s, self.agent)) for s in ranked]


def _metadata(slot: dict[str, Any], agent) -> dict[str, Any]:
    confidence = slot.get("confidence") or {}
    return {"session_id": agent.session_id, "user_id": agent.user_id, "turn_id": slot.get("turn_id"),
            "slot": slot["key"], "start": slot["start"], "end": slot["end"], "score": slot.get("score"),
            "p_exact": confidence.get("p_exact"), "probably_wrong": slot.get("probably_wrong"),
            "read": slot.get("read")}
