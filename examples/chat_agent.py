"""Replay a LoCoMo conversation through `ChatAgent` into a `MemoryStore`, then answer its questions.

    python examples/chat_agent.py --limit 10                      # default base model + shipped adapter
    python examples/chat_agent.py --base-model tiny-llama --limit 2   # seconds, random tiny model (smoke test)

Each LoCoMo turn becomes a stored turn ("Speaker: text" in memory; a photo turn carries its caption), each
session opens with a date turn so temporal questions have something to go on. Every question is answered
from what the memory recalls for it; the script prints the answer next to the gold one with its token F1,
and the evidence recall: the fraction of the question's evidence turns (dia_ids) among the recalled slots.
With `--store PATH` the replayed session is kept and reused by later runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from r3mem.agent import QA_PROMPT, ChatAgent, ensure_session
from r3mem.cli.common import load_engine
from r3mem.evaluate.datasets import LocomoConversation, load_locomo
from r3mem.evaluate.metrics import f1
from r3mem.store import MemoryStore

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "locomo" / "locomo_dev8.json"
USER = "locomo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="LoCoMo JSON file.")
    p.add_argument("--conversation", default="0", help="Index or sample_id of the conversation to replay.")
    p.add_argument("--limit", type=int, default=None, help="Answer only the first N questions.")
    p.add_argument("--max-turns", type=int, default=None, help="Replay only the first N turns.")
    p.add_argument("--store", default=None, help="Store file or URL (default: a temporary SQLite file).")
    p.add_argument("--base-model", default=None, help="Base model: registry name, HF checkpoint folder or tiny-llama.")
    p.add_argument("--model", type=Path, default=None, help="Adapter folder (default: the shipped one).")
    p.add_argument("--retrieval", choices=["bm25", "embedding"], default=None, help="Re-rank recalled memory.")
    p.add_argument("--top-k", type=int, default=3, help="Memory slots recalled per question.")
    p.add_argument("--max-new-tokens", type=int, default=16, help="Longest answer, in tokens.")
    return p.parse_args(argv)


def pick(conversations: list[LocomoConversation], which: str) -> LocomoConversation:
    by_id = {c.sample_id: c for c in conversations}
    if which in by_id:
        return by_id[which]
    if which.isdigit() and int(which) < len(conversations):
        return conversations[int(which)]
    raise SystemExit(f"error: no conversation {which!r} (have {', '.join(by_id)})")


def session_time(date_time: str) -> float | None:
    """LoCoMo's "1:56 pm on 8 May, 2023" as seconds since the epoch (None when unparseable)."""
    try:
        return datetime.strptime(date_time, "%I:%M %p on %d %B, %Y").timestamp()
    except ValueError:
        return None


def script(conv: LocomoConversation, max_turns: int | None) -> list[tuple[str, str, str | None]]:
    """(speaker, text, dia_id) in conversation order; date turns have no dia_id."""
    rows: list[tuple[str, str, str | None]] = []
    for session in conv.sessions:
        rows.append(("date", f"Session {session.index} began at {session.date_time}.", None))
        for t in session.turns:
            text = t.text + (f" [shares a photo: {t.blip_caption}]" if t.blip_caption else "")
            rows.append((t.speaker, text, t.dia_id))
    real = [i for i, r in enumerate(rows) if r[2] is not None]
    if max_turns is not None and max_turns < len(real):
        rows = rows[: real[max_turns - 1] + 1] if max_turns > 0 else []
    return rows


def replay(agent: ChatAgent, rows: list[tuple[str, str, str | None]]) -> dict[int, str]:
    """Store the turns (reusing a complete earlier replay) and return turn index -> dia_id."""
    store, user, session = agent.store, agent.user_id, agent.session_id
    done = store.get_session(user, session).turn_count
    if done != len(rows):
        if done:
            store.delete_session(user, session)
            ensure_session(store, user, session)
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"writing {len(rows)} turns", total=len(rows))
            agent.add_turns([(s, t) for s, t, _ in rows], progress=lambda n, _: bar.update(task, completed=n))
    turns = store.list_turns(user, session)
    return {t.index: dia for t, (_, _, dia) in zip(turns, rows) if dia is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    conv = pick(load_locomo(args.data), args.conversation)
    engine = load_engine(args.model, args.base_model)
    tmp = tempfile.TemporaryDirectory() if args.store is None else None
    store_at = args.store or str(Path(tmp.name) / "locomo.db")
    with MemoryStore(store_at) as store:
        ensure_session(store, USER, conv.sample_id)
        agent = ChatAgent(engine, store, USER, conv.sample_id, args.retrieval, top_k=args.top_k, prompt=QA_PROMPT)
        rows = script(conv, args.max_turns)
        dia_of = replay(agent, rows)
        stored = store.get_memory(USER, conv.sample_id)
        sessions = sum(1 for _, _, dia in rows if dia is None)
        print(f"{conv.sample_id}: {conv.speaker_a} & {conv.speaker_b}, {len(dia_of)} turns in {sessions} "
              f"sessions -> memory v{stored.version if stored else 0} with {len(stored.slots) if stored else 0} slots "
              f"({store.url})")
        f1s, recalls = [], []
        for n, qa in enumerate(conv.qa[: args.limit], 1):
            reply = agent.respond(qa.question, max_new_tokens=args.max_new_tokens)
            answer = reply.text.split("\n")[0].strip()
            seen = {dia_of.get(s.get("turn_id")) for s in reply.slots}
            recall = len(seen & set(qa.evidence)) / len(qa.evidence) if qa.evidence else None
            gold = qa.answer if qa.answer is not None else f"(adversarial) {qa.adversarial_answer}"
            score = f1(answer, qa.answer) if qa.answer is not None else None
            f1s += [score] if score is not None else []
            recalls += [recall] if recall is not None else []
            print(f"\n[{n}] (category {qa.category}) {qa.question}\n    gold  : {gold}\n    answer: {answer}")
            print(f"    F1 {'-' if score is None else f'{score:.2f}'} | evidence {', '.join(qa.evidence) or '-'} | "
                  f"recalled {', '.join(sorted(d for d in seen if d)) or '-'} | evidence recall "
                  f"{'-' if recall is None else f'{recall:.2f}'}")
        mean = lambda xs: f"{statistics.mean(xs):.3f}" if xs else "-"  # noqa: E731
        print(f"\n{len(conv.qa[: args.limit])} questions: mean token F1 {mean(f1s)} (answerable), "
              f"mean evidence recall@{args.top_k} {mean(recalls)}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
