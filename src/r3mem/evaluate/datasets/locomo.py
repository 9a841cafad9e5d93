"""LoCoMo long conversations with question-answer items: the `locomo` task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.evaluate.datasets._io import (
    _get,
    _read_json_list,
)


@dataclass(frozen=True)
class LocomoTurn:
    dia_id: str
    speaker: str
    text: str
    session: int
    date_time: str
    blip_caption: str | None = None  # image turns: the released caption stands in for the image



@dataclass(frozen=True)
class LocomoSession:
    index: int
    date_time: str
    turns: tuple[LocomoTurn, ...]



@dataclass(frozen=True)
class LocomoQA:
    """A question; category 5 (adversarial) items have ``answer=None`` and an ``adversarial_answer``."""

    question: str
    answer: str | None
    category: int
    evidence: tuple[str, ...]
    adversarial_answer: str | None = None



@dataclass(frozen=True)
class LocomoConversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: tuple[LocomoSession, ...]
    qa: tuple[LocomoQA, ...]

    @property
    def turns(self) -> list[LocomoTurn]:
        """All turns in conversation order, the order in which memory is written."""
        return [t for s in self.sessions for t in s.turns]

    def turn(self, dia_id: str) -> LocomoTurn:
        """The turn with this ``dia_id`` (e.g. "D3:7"); KeyError when absent."""
        for t in self.turns:
            if t.dia_id == dia_id:
                return t
        raise KeyError(f"{self.sample_id}: no turn {dia_id}")



_SESSION_KEY = re.compile(r"^session_(\d+)$")

_DIA_ID = re.compile(r"D:?(\d+):(\d+)")



def _evidence(values: list, name: str, where: str) -> tuple[str, ...]:
    """dia_ids, repairing the few malformed upstream entries.

    The official file has "D8:6; D9:17" (two ids in one string) and "D:11:26" (stray colon);
    both are split/repaired to "D<session>:<turn>". Entries with no id at all ("D") are dropped.
    """
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name}: {where}: 'evidence' must be a list of strings")
    return tuple(f"D{s}:{t}" for v in values for s, t in _DIA_ID.findall(v))



def _locomo_turn(raw: Any, session: int, date_time: str, name: str, where: str) -> LocomoTurn:
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: {where}: session_{session} turns must be objects")
    return LocomoTurn(
        dia_id=_get(raw, "dia_id", str, name, where),
        speaker=_get(raw, "speaker", str, name, where),
        text=_get(raw, "text", str, name, where),
        session=session,
        date_time=date_time,
        blip_caption=_get(raw, "blip_caption", str, name, where, None),
    )



def _locomo_sessions(conv: dict, name: str, where: str) -> tuple[LocomoSession, ...]:
    """Sessions in numeric order; ``session_N_date_time`` keys without a ``session_N`` list are skipped."""
    numbers = sorted(int(m.group(1)) for k in conv if (m := _SESSION_KEY.match(k)))
    sessions = []
    for n in numbers:
        turns_raw = _get(conv, f"session_{n}", list, name, where)
        date_time = _get(conv, f"session_{n}_date_time", str, name, where, "")
        turns = tuple(_locomo_turn(t, n, date_time, name, where) for t in turns_raw)
        sessions.append(LocomoSession(n, date_time, turns))
    return tuple(sessions)



def _locomo_qa(raw: Any, name: str, where: str) -> LocomoQA:
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: {where}: each 'qa' entry must be an object")
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise ValueError(f"{name}: {where}: qa 'answer' must be a string or number")
    return LocomoQA(
        question=_get(raw, "question", str, name, where),
        answer=None if answer is None else str(answer),
        category=_get(raw, "category", int, name, where),
        evidence=_evidence(_get(raw, "evidence", list, name, where, []), name, where),
        adversarial_answer=_get(raw, "adversarial_answer", str, name, where, None),
    )



def load_locomo(path: str | Path, limit: int | None = None) -> list[LocomoConversation]:
    """LoCoMo conversations (sessions of turns) with their QA items."""
    path = Path(path)
    out = []
    for where, rec in _read_json_list(path, limit):
        conv = _get(rec, "conversation", dict, path.name, where)
        out.append(
            LocomoConversation(
                sample_id=_get(rec, "sample_id", str, path.name, where),
                speaker_a=_get(conv, "speaker_a", str, path.name, where),
                speaker_b=_get(conv, "speaker_b", str, path.name, where),
                sessions=_locomo_sessions(conv, path.name, where),
                qa=tuple(_locomo_qa(q, path.name, where) for q in _get(rec, "qa", list, path.name, where)),
            )
        )
    return out
