"""The whole flow in a real browser: Debian's chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import psutil
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
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a page's language and state arrive by events: slower on a busy machine
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


FIRST_SCREEN_WH = (1280, 800)


def new_page(browser, locale: str = "en-US", viewport_wh: tuple[int, int] = FIRST_SCREEN_WH):
    """A page in its own context, with the browser language ``locale`` and a window of ``viewport_wh``."""
    context = browser.new_context(viewport={"width": viewport_wh[0], "height": viewport_wh[1]}, locale=locale)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where screenshots go: CHORD_SCREENSHOTS (e.g. docs/img, to refresh the docs' pictures), else tmp_path."""
    folder = Path(os.environ.get("CHORD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def in_first_screen(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    width, height = FIRST_SCREEN_WH
    return (
        box is not None
        and box["y"] >= 0
        and box["x"] >= 0
        and box["y"] + box["height"] <= height
        and (box["x"] + box["width"] <= width)
    )


def test_upload_type_enter_shows_boxes_on_the_first_screen(browser, server, sample_png, screenshots):
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(server.url)
    expect(page.locator("#chord-header")).to_contain_text(re.compile(r"serving \S+ \(Qwen2.5-VL\) on cpu"))
    for selector in ("#chord-image", "#chord-phrase", "#chord-go", "#chord-out"):
        assert in_first_screen(page, selector), f"{selector} is not on the first screen at 1280x800"
    expect(page.locator("#chord-phrase")).to_contain_text("Enter finds")  # the hint says how to submit
    # Without a mouse: Enter on the focused drop zone opens the file chooser, Tab reaches the phrase.
    page.locator("#chord-image").get_by_role("button", name="Drop an image file here to upload").focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(sample_png)
    expect(page.locator("#chord-image img")).to_be_visible()
    phrase = page.locator("#chord-phrase textarea")
    for _ in range(6):
        if phrase.evaluate("e => e === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(phrase).to_be_focused()
    page.keyboard.type("the red square")
    phrase.press("Shift+Enter")  # a new line, no request
    expect(phrase).to_have_value("the red square\n")
    phrase.fill("the red square")
    phrase.press("Enter")

    expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"\d+ ms model time"))
    expect(page.locator("#chord-out img")).to_be_visible()
    assert in_first_screen(page, "#chord-out"), "the result is not next to the input"
    expect(page.locator("#chord-json")).to_contain_text("image_size")
    expect(page.locator("#chord-json")).to_contain_text("320")
    expect(page.locator("#chord-json")).to_contain_text("the red square")
    # The overall confidence (the best box's score) and whether the result needs a second look.
    expect(page.locator("#chord-confidence textarea")).to_have_value(
        re.compile(
            r"^(\d\.\d\d · (looks right|needs review \(under 0\.7\))|no box · needs review|no score · needs review)$"
        )
    )
    expect(page.locator("#chord-history img")).to_have_count(1)

    # A second phrase on the same image, with the keyboard alone: Shift+Tab from Find to the phrase, Enter.
    page.locator("#chord-go").focus()
    page.keyboard.press("Shift+Tab")
    expect(phrase).to_be_focused()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("穿红衣服的人")
    page.keyboard.press("Enter")
    expect(page.locator("#chord-json")).to_contain_text("穿红衣服的人")
    expect(page.locator("#chord-history img")).to_have_count(2)
    page.screenshot(path=str(screenshots / "ui-en-first-screen.png"))
    page.context.close()


def test_find_with_nothing_filled_in_asks_for_the_image(browser, demo_server):
    from playwright.sync_api import expect

    page = new_page(browser)
    page.goto(demo_server.url)
    expect(page.locator("#chord-go")).to_be_enabled()
    page.locator("#chord-go").click()
    expect(page.locator(".toast-body")).to_contain_text("Add an image")
    expect(page.locator(".toast-body")).to_contain_text("type what to find")
    page.context.close()


def test_a_chinese_browser_gets_a_chinese_page_that_grounds(browser, demo_server, screenshots, tmp_path):
    from playwright.sync_api import expect

    from app.demo.examples import write_demo_examples

    scene, phrase = write_demo_examples(tmp_path / "scenes", count=1)[0]
    page = new_page(browser, locale="zh-CN")
    page.goto(demo_server.url)
    go = page.locator("#chord-go")
    expect(go).to_have_text("查找")
    expect(go).to_be_enabled()
    expect(page.locator("#chord-header")).to_contain_text("视觉定位")
    expect(page.locator("#chord-phrase")).to_contain_text("要查找的内容")
    expect(page.locator("#chord-phrase")).to_contain_text("按 Enter 查找")
    expect(page.locator("#chord-language input[value='zh-CN']")).to_be_checked()
    page.locator("#chord-image input[type=file]").set_input_files(scene)
    expect(page.locator("#chord-image img")).to_be_visible()
    go.click()  # no phrase yet
    expect(page.locator(".toast-body")).to_contain_text("请输入要查找的内容")
    page.locator("#chord-phrase textarea").fill(phrase)
    page.locator("#chord-phrase textarea").press("Enter")
    expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"模型用时 \d+ ms"))
    expect(page.locator("#chord-json")).to_contain_text(phrase)
    expect(page.locator("#chord-confidence textarea")).to_have_value(re.compile(r"结果可信|需要复核"))
    close_messages(page)
    page.screenshot(path=str(screenshots / "ui-zh.png"))

    # The switch turns the same page English, no reload; the next result speaks English too.
    page.locator("#chord-language").get_by_text("English").click()
    expect(go).to_have_text("Find")
    expect(page.locator("#chord-phrase")).to_contain_text("What to find")
    expect(page.get_by_role("tab", name="Batch")).to_be_visible()
    page.locator("#chord-phrase textarea").press("Enter")
    expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"\d+ ms model time"))
    expect(page.locator("#chord-confidence textarea")).to_have_value(re.compile(r"looks right|needs review"))
    close_messages(page)
    page.screenshot(path=str(screenshots / "ui-en.png"))
    page.context.close()


def close_messages(page) -> None:
    """Close the toasts and move the mouse away, so that a screenshot shows the page as it rests."""
    from playwright.sync_api import expect

    for _ in range(5):
        if not page.locator(".toast-close").count():
            break
        page.locator(".toast-close").first.click()
        page.wait_for_timeout(400)
    expect(page.locator(".toast-body")).to_have_count(0)
    page.mouse.move(0, 0)  # no hover styling in the picture


def test_a_model_that_cannot_load_is_explained_not_a_broken_button(browser, broken_server, tmp_path):
    from playwright.sync_api import expect

    page = new_page(browser)
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

    # The model process imports torch itself (about 7 s here), and is held there with SIGSTOP while the page is
    # looked at: a load as long as a 7B's, whatever the machine's speed.
    live = start_server(tiny_checkpoint, tmp_path, PRELOAD_MODEL_CODE="false")
    try:
        assert live.wait_for_health(503, timeout_s=120, loading_ok=True)["status"] == "loading"
        children = psutil.Process(live.serving_pid).children()
        (model,) = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
        model.suspend()
        assert httpx.get(f"{live.url}/health", timeout=5).json()["status"] == "loading"
        page = new_page(browser)
        page.goto(live.url)
        go = page.locator("#chord-go")
        expect(page.locator("#chord-header")).to_contain_text("loading")
        expect(go).to_be_disabled()
        expect(go).to_contain_text("loading")
        page.screenshot(path=str(tmp_path / "chord-ui-loading.png"), full_page=True)
        model.resume()
        # The page polls: once the model is ready it says what serves and enables the button, no reload.
        expect(page.locator("#chord-header")).to_contain_text("serving", timeout=120_000)
        expect(go).to_be_enabled()
        expect(go).to_have_text("Find")
        assert live.wait_for_health(200)["status"] == "ok"
        assert live.health_seen.index(503) < live.health_seen.index(200), "503 while the model loads, then 200"
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
    page = new_page(browser)
    context = page.context
    try:
        page.goto(demo_server.url)
        expect(page.locator("#chord-header")).to_contain_text("demo model", timeout=60_000)
        expect(page.locator("#chord-go")).to_be_enabled(timeout=60_000)
        page.locator("#chord-examples").get_by_text(phrase, exact=True).click()
        expect(page.locator("#chord-phrase textarea")).to_have_value(phrase)
        expect(page.locator("#chord-image img")).to_be_visible()
        expect(page.locator("#chord-out img")).to_be_visible(timeout=60_000)
        expect(page.locator("#chord-json")).to_contain_text(phrase)
        expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"\d+ ms model time"))
        expect(page.locator("#chord-confidence textarea")).not_to_have_value("")
        page.screenshot(path=str(tmp_path / "chord-demo.png"), full_page=True)
    finally:
        context.close()
