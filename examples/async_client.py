"""Talk to a running `r3mem serve` from asyncio: write turns without waiting for memory, then ask.

    r3mem serve --admin-token ADMIN &                   # in another shell
    python examples/async_client.py http://127.0.0.1:8000 ADMIN

Creates a user and a session, writes a few turns with `wait=False` (each answered as soon as it is stored;
a background job folds it into memory), waits for the jobs, recalls by query and answers a question.
"""

from __future__ import annotations

import asyncio
import sys

from r3mem.client import AsyncClient, Conflict

TURNS = ["I moved to Lisbon in May.", "My sister Ana visits in August.", "I started learning the guitar."]


async def main(url: str, admin_token: str) -> int:
    async with AsyncClient(url, admin_token) as admin:
        try:
            token = (await admin.create_user("async-demo")).token
        except Conflict:
            print("user async-demo exists already: delete it (DELETE /users/me with its token) to rerun")
            return 1
    async with AsyncClient(url, token) as c:
        await c.create_session("notes")
        writes = [await c.write("notes", text, wait=False) for text in TURNS]
        jobs = await asyncio.gather(*(c.wait_job(w.job.job_id, timeout_s=600) for w in writes if w.job))
        print("memory jobs:", [j.state for j in jobs])
        rec = await c.recall("notes", query="Who visits in August?", top_k=1)
        print("recalled:", rec.text, f"(confidence {rec.confidence})")
        print("answer:", (await c.answer("notes", "Where do I live?")).text)
        await c.delete_me()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    raise SystemExit(asyncio.run(main(sys.argv[1], sys.argv[2])))
