"""Screenshot of the /ui memory inspector for the README: the bundled held-out excerpt written into a
session with the shipped adapter (or --model), one paragraph slot recalled and compared.

    .venv/bin/python scripts/ui_screenshot.py --out docs/inspector.png [--model DIR] [--slot 0]

Needs Debian's chromium (apt-get install chromium) and playwright (in requirements.lock). Runs the real
model on the CPU: about a minute.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

from playwright.sync_api import sync_playwright

from r3mem.agent import ChatAgent
from r3mem.engine import R3Mem
from r3mem.service import create_app, serve_in_thread
from r3mem.store import MemoryStore

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/inspector.png"))
    ap.add_argument("--model", type=Path, default=None, help="adapter folder (default: the shipped adapter)")
    ap.add_argument("--slot", type=int, default=0, help="paragraph slot to recall")
    ap.add_argument("--paragraphs", type=int, default=3, help="paragraphs of the excerpt to write, one turn each")
    args = ap.parse_args()

    excerpt = files("r3mem").joinpath("assets/pg19_10356_excerpt.txt").read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in excerpt.split("\n\n") if p.strip()][: args.paragraphs]
    engine = R3Mem.from_pretrained(args.model)
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(Path(tmp) / "ui.db") as store:
        store.create_user("reader", token=token)
        store.create_session("reader", "morocco-travels")
        ChatAgent(engine, store, "reader", "morocco-travels").add_turns([("book", p) for p in paragraphs])
        with serve_in_thread(create_app(engine, store)) as url:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1360, "height": 980}, device_scale_factor=1)
                page.goto(f"{url}/ui/")
                page.fill("#token", token)
                page.click("#login button[type=submit]")
                page.click("#sessions a[data-session=morocco-travels]")
                page.wait_for_selector("#slots tbody tr[data-key]")
                page.locator("#slots tbody tr[data-level=paragraph] button").nth(args.slot).click()
                page.wait_for_selector(".comparison .recalled .tok", timeout=300_000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                print(page.inner_text(".comparison .stats"))
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
