"""The whole flow in a real browser: Debian's chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    yield page
    context.close()


def test_upload_type_click_shows_boxes_and_json(page, server, sample_png, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#chord-header")).to_contain_text(re.compile(r"serving \S+ \(Qwen2.5-VL\) on cpu"))
    page.locator("#chord-image input[type=file]").set_input_files(sample_png)
    expect(page.locator("#chord-image img")).to_be_visible()
    page.locator("#chord-phrase textarea").fill("the red square")
    go = page.locator("#chord-go")
    expect(go).to_be_enabled()
    go.click()

    expect(page.locator("#chord-out img")).to_be_visible()
    expect(page.locator("#chord-json")).to_contain_text("image_size")
    expect(page.locator("#chord-json")).to_contain_text("320")
    expect(page.locator("#chord-json")).to_contain_text("the red square")
    expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"\d+ ms model time"))
    expect(page.locator("#chord-history img")).to_have_count(1)

    # A second phrase on the same image, from the Chinese examples, without re-uploading.
    page.get_by_text("穿红衣服的人").click()
    expect(page.locator("#chord-phrase textarea")).to_have_value("穿红衣服的人")
    go.click()
    expect(page.locator("#chord-json")).to_contain_text("穿红衣服的人")
    expect(page.locator("#chord-history img")).to_have_count(2)

    screenshot = tmp_path / "chord-ui.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_a_model_that_cannot_load_is_explained_not_a_broken_button(browser, broken_server, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(broken_server.url)
    expect(page.locator("#chord-header")).to_contain_text("could not be loaded")
    expect(page.locator("#chord-header")).to_contain_text("no-such-model")
    expect(page.locator("#chord-go")).to_be_disabled()
    expect(page.locator("#chord-go")).to_contain_text("unavailable")
    page.screenshot(path=str(tmp_path / "chord-ui-load-failed.png"), full_page=True)
    page.close()


def test_the_page_says_the_model_is_loading_then_enables_find(browser, tiny_checkpoint, tmp_path):
    from live_server import start_server
    from playwright.sync_api import expect

    live = start_server(tiny_checkpoint, tmp_path)
    try:
        assert live.wait_for_health(503, timeout_s=120, loading_ok=True)["status"] == "loading"
        page = browser.new_page()
        page.goto(live.url)
        go = page.locator("#chord-go")
        expect(page.locator("#chord-header")).to_contain_text("loading")
        expect(go).to_be_disabled()
        expect(go).to_contain_text("loading")
        page.screenshot(path=str(tmp_path / "chord-ui-loading.png"), full_page=True)
        # The page polls: once the model is ready it says what serves and enables the button, no reload.
        expect(page.locator("#chord-header")).to_contain_text("serving", timeout=120_000)
        expect(go).to_be_enabled()
        expect(go).to_have_text("Find")
        # Supervisor stops it with SIGTERM: an open tab must not keep it alive.
        started = time.monotonic()
        live.process.terminate()
        live.process.wait(timeout=20)
        assert time.monotonic() - started < 10
        page.close()
    finally:
        live.stop()


def test_a_demo_scene_is_grounded_on_the_first_click(browser, demo_server, tmp_path):
    """A newcomer on the demo model clicks a generated scene and gets it grounded, no upload, no typing."""
    from playwright.sync_api import expect

    from app.demo.examples import write_demo_examples

    _, phrase = write_demo_examples(tmp_path / "scenes")[0]
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(demo_server.url)
        expect(page.locator("#chord-header")).to_contain_text("demo model", timeout=60_000)
        expect(page.locator("#chord-go")).to_be_enabled(timeout=60_000)
        page.locator("#chord-demo-scenes").get_by_text(phrase, exact=True).click()
        expect(page.locator("#chord-phrase textarea")).to_have_value(phrase)
        expect(page.locator("#chord-image img")).to_be_visible()
        expect(page.locator("#chord-out img")).to_be_visible(timeout=60_000)
        expect(page.locator("#chord-json")).to_contain_text(phrase)
        expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"\d+ ms model time"))
        page.screenshot(path=str(tmp_path / "chord-demo.png"), full_page=True)
    finally:
        context.close()
