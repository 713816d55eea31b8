"""The page in a real browser (Playwright + Debian Chromium) against app.py on the demo models.

Uploads a reference, types a sentence, clones, watches the prompt-cache hits rise on a second click,
edits the result, and saves screenshots under artifacts/ (set EDITX_DOCS_SCREENSHOT=1 to also
refresh docs/ui.png, the README's picture).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import soundfile as sf

from demo.examples import synthetic_voice
from tests.app_server import ROOT, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "artifacts"
STEP_TIMEOUT_MS = 180_000  # one clone on a busy 2-core machine
SEEDS = 5  # the random demo LLM sometimes emits no whole audio group for a seed


@pytest.fixture(scope="module")
def server(demo_models_root, tmp_path_factory):
    with running_app(demo_models_root, tmp_path_factory.mktemp("browser_app")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_selector("#clone-button")
    return page


def cache_hits(page) -> int:
    text = page.locator("#cache-stats").inner_text()
    match = re.search(r"hits\s+(\d+)", text)
    assert match, f"no hit count in the cache panel: {text!r}"
    return int(match.group(1))


def set_seed(page, seed: int) -> None:
    page.get_by_role("tab", name="Clone").click()
    page.get_by_label("Seed (-1: random)").fill(str(seed))


def click_until_done(page, button: str, done, what: str) -> None:
    """Click ``button`` until ``done()`` is true; on a "No audio was generated" notice try the next seed."""
    for seed in range(SEEDS):
        if seed:
            set_seed(page, seed)
            if button == "#edit-button":
                page.get_by_role("tab", name="Edit").click()
        page.locator(button).click()
        deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            if done():
                return
            if page.get_by_text("No audio was generated").count():
                page.get_by_text("No audio was generated").first.wait_for(state="detached", timeout=20_000)
                break
            page.wait_for_timeout(250)
        else:
            pytest.fail(f"{what} did not finish in {STEP_TIMEOUT_MS / 1000:.0f} s")
    pytest.fail(f"{what}: no seed produced audio")


def test_clone_in_the_browser_and_the_cache_hit_count_rises(browser, server, tmp_path):
    wav = tmp_path / "my_voice.wav"
    sf.write(wav, synthetic_voice(3.0, 32000, f0=125.0, seed=31), 32000)
    page = open_page(browser, server)
    assert "untrained weights" in page.locator("#demo-banner").inner_text()

    page.locator("#reference-text textarea").fill("one two three four")
    page.locator("#reference-audio input[type=file]").set_input_files(str(wav))
    page.locator("#target-text textarea").fill("Hello from a real browser.")
    page.wait_for_function("() => document.querySelector('#char-counter').innerText.startsWith('26 /')")
    page.locator("#cache-panel").get_by_text("Prompt cache").first.click()
    page.wait_for_selector("#cache-stats")

    click_until_done(page, "#clone-button", lambda: page.locator("#clone-output audio").count() > 0, "clone")
    assert page.locator("#clone-timing").get_by_text("total").count() == 1
    hits = cache_hits(page)
    click_until_done(page, "#clone-button", lambda: cache_hits(page) > hits, "second clone")
    assert page.locator("#clone-timing").get_by_text("tokenizer (cache hit)").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui_clone.png"), full_page=True)

    # Edit tab: the clones are in the history; edit the newest one
    page.get_by_role("tab", name="Edit").click()
    assert page.locator("#version-select input").input_value().startswith("v2 · clone")
    click_until_done(page, "#edit-button", lambda: page.locator("#edit-output audio").count() > 0, "edit")
    page.screenshot(path=str(ARTIFACTS / "ui_edit.png"), full_page=True)
    assert "Traceback" not in page.content()
    page.close()


def test_example_voice_fills_the_form_and_clones(browser, server):
    page = open_page(browser, server)
    page.get_by_text("en gb bright").click()
    page.wait_for_function("() => document.querySelector('#target-text textarea').value.length > 0")
    assert page.locator("#reference-audio audio").count() or page.locator("#reference-audio").inner_text()
    click_until_done(page, "#clone-button", lambda: page.locator("#clone-output audio").count() > 0,
                     "example clone")
    page.locator("#cache-panel").get_by_text("Prompt cache").first.click()
    page.wait_for_selector("#cache-stats")
    page.mouse.move(2, 2)  # no hover highlight in the picture
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui_example.png"), full_page=True)
    if os.environ.get("EDITX_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "ui.png"), full_page=True)
    page.close()


def test_bad_input_shows_a_message_not_a_traceback(browser, server):
    page = open_page(browser, server)
    page.locator("#target-text textarea").fill("No reference yet.")
    page.locator("#clone-button").click()
    page.get_by_text("upload or record a clip").first.wait_for()
    assert "Traceback" not in page.content()
    page.close()
