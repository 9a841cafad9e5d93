"""The /ui memory inspector in a real browser: headless Chromium (Debian's package, driven by Playwright,
which downloads no browser of its own) against the service on 127.0.0.1 with the tiny model.

Skipped when no Chromium is installed, unless R3MEM_REQUIRE_BROWSER=1 (CI sets it after installing one)."""

import os
import shutil

import pytest
from conftest import uvicorn_server

from r3mem.agent import ChatAgent
from r3mem.service import create_app
from r3mem.store import MemoryStore

TOKEN = "alice-token-for-the-browser"
TURNS = ["We landed in Tangier on a windy Tuesday.", "The market sold figs, mint and copper lamps.",
         "Next we take the night train to Fez."]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # no calls out of a closed network


def _chromium() -> str | None:
    return os.environ.get("R3MEM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    required = os.environ.get("R3MEM_REQUIRE_BROWSER") == "1"
    if exe is None:
        if required:
            pytest.fail("R3MEM_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium installed (apt-get install chromium)")
    if required:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def served(engine, tmp_path):
    """The service over a store holding one session of three turns written into memory: (url, agent)."""
    with MemoryStore(tmp_path / "ui.db") as store:
        store.create_user("alice", token=TOKEN)
        store.create_session("alice", "trip")
        store.create_session("alice", "empty")
        agent = ChatAgent(engine, store, "alice", "trip")
        for text in TURNS:
            agent.turn(text)
        with uvicorn_server(create_app(engine, store)) as url:
            yield url, agent


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _log_in(page, url, token=TOKEN):
    page.goto(f"{url}/ui/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def test_inspector_renders_a_session_and_compares_a_recall(served, page):
    url, agent = served
    described = agent.describe()
    _log_in(page, url)
    page.wait_for_selector("#sessions a[data-session=trip]")
    assert sorted(page.locator("#sessions a").all_inner_texts()) == ["empty", "trip"]
    page.click("#sessions a[data-session=trip]")
    page.wait_for_selector("#slots tbody tr[data-key]")

    rows = page.locator("#slots tbody tr[data-key]")
    assert rows.count() == len(described["slots"]) > 0
    assert page.locator("#turns li").count() == len(TURNS)
    summary = page.inner_text("#memory-summary")
    assert f"v{described['version']}" in summary and "×".join(map(str, described["document"]["shape"])) in summary

    first = described["slots"][0]
    page.locator(f"#slots tr[data-key='{first['key']}'] button").click()
    page.wait_for_selector(".comparison .recalled .tok")
    # The original side is the slot's source span, token by token, as the tokenizer split it.
    assert page.locator(".comparison .original .tok").all_text_contents() == first["source_tokens"]
    assert "".join(first["source_tokens"]) == first["source"]
    # The reconstruction side is what the service recalls for that slot, with each token's probability.
    recalled = agent.recall(level=first["level"], index=first["index"]).slots[0]
    tokens = page.locator(".comparison .recalled .tok")
    assert tokens.all_text_contents() == [t["text"] for t in recalled["tokens"]]
    probs = [float(tokens.nth(i).get_attribute("data-p")) for i in range(tokens.count())]
    assert probs == pytest.approx([t["p"] for t in recalled["tokens"]], abs=1e-4)
    # Shading follows the probability: the least likely token is the most strongly shaded.
    alphas = page.eval_on_selector_all(".comparison .recalled .tok",
                                       "els => els.map(e => Number(getComputedStyle(e).backgroundColor"
                                       ".match(/[\\d.]+\\)$/)[0].slice(0, -1)))")
    assert alphas.index(max(alphas)) == probs.index(min(probs))
    # The untrained tiny model does not reproduce the text: differing tokens are marked on both sides.
    n_diff = page.locator(".comparison .recalled .diff").count()
    n_missing = page.locator(".comparison .original .missing").count()
    assert n_diff + n_missing > 0
    assert "original tokens recalled in order" in page.inner_text(".comparison .stats")


def test_inspector_diff_marks_exactly_the_tokens_outside_the_common_subsequence(served, page):
    url, _ = served
    page.goto(f"{url}/ui/")
    got = page.evaluate("lcsMatch(['the', 'cat', 'sat', 'down'], ['the', 'dog', 'sat', 'down', 'now'])")
    assert got == [[True, False, True, True], [True, False, True, True, False]]


def test_inspector_recall_by_query_and_a_bad_token(served, page):
    url, _ = served
    _log_in(page, url, token="not-a-token")
    page.wait_for_selector("#error:not([hidden])")
    assert "invalid token" in page.inner_text("#error")
    assert page.is_visible("#login-view") and not page.is_visible("#app-view")

    _log_in(page, url)
    page.click("#sessions a[data-session=trip]")
    page.wait_for_selector("#slots tbody tr[data-key]")
    page.fill("#query", "figs and copper lamps")
    page.fill("#query-k", "2")
    page.click("#query-form button")
    page.wait_for_selector(".comparison")
    assert page.locator(".comparison").count() == 2
    # Each result is compared with the source of the slot it came from.
    for i in range(2):
        assert page.locator(".comparison").nth(i).locator(".original .tok").count() > 0

    page.click("#sessions a[data-session=empty]")
    page.wait_for_selector("#slots tbody td.muted")
    assert "nothing written into memory yet" in page.inner_text("#slots tbody")


def test_inspector_curates_turns_and_finds_slots_in_them(served, page):
    url, agent = served
    page.on("dialog", lambda d: d.accept())  # the confirmation of "Forget"
    _log_in(page, url)
    page.fill("#session-filter", "tri")
    assert page.locator("#sessions a").all_inner_texts() == ["trip"]
    page.fill("#session-filter", "")
    page.click("#sessions a[data-session=trip]")
    page.wait_for_selector("#slots tbody tr[data-key]")
    # a slot's turn link opens the turns and marks the slot's text in its turn
    page.click("#slots tbody tr[data-level=paragraph] td.turn a >> nth=1")
    assert page.is_visible("#turn-2.highlight mark")
    assert page.inner_text("#turn-2 mark") in "user: " + TURNS[1]
    # write a turn, edit it, forget another: the store and the memory follow, the page shows them
    page.fill("#write-text", "The riad had a blue door.")
    page.click("#write-form button")
    page.wait_for_selector("#turn-4")
    page.click("#turn-4 .edit-turn")
    page.fill("#turn-4 input.edit", "The riad had a green door.")
    page.click("#turn-4 .save-turn")
    page.wait_for_selector("#turn-4 >> text=green door")
    page.click("#turn-1 .forget-turn")
    page.wait_for_selector("#turn-1", state="detached")
    store = agent.store
    assert [t.text for t in store.list_turns("alice", "trip")] == [TURNS[1], TURNS[2], "The riad had a green door."]
    assert store.get_memory("alice", "trip").through_turn == 4
    assert [r.text for r in store.turn_history("alice", "trip", 4)] == ["The riad had a blue door."]
    assert "Tangier" not in page.inner_text("#slots tbody")  # the forgotten turn's slots are gone
    with page.expect_download() as download:
        page.click("#export")
    assert "green door" in open(download.value.path(), encoding="utf-8").read()
    # query results show their score; document-level recall works
    page.fill("#query", "green door")
    page.click("#query-form button")
    page.wait_for_selector(".comparison .score")
    assert "score" in page.inner_text(".comparison .score")
    page.select_option("#query-level", "document")
    page.fill("#query-k", "1")
    page.click("#query-form button")
    page.wait_for_selector(".comparison[data-key]")
