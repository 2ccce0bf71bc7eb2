"""One behaviour per question: the same image and options give the same boxes through every door.

A 5200x3400 image (past MAX_IMAGE_SIDE and the model's pixel budget) and a two-phrase prompt, on the
bundled demo model, through REST multipart, REST base64, the batch route, gradio_client, the browser
UI, the command line's ``ground``, ``batch`` in-process and ``batch --server``, and the video route on a
one-frame lossless clip: the same boxes (within 1 px), labels, confidence and needs_review everywhere.
Then again with tiling on, with a prompt template and with a score threshold.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import httpx
import pytest
from gradio_client import Client, handle_file
from live_server import PROJECT_ROOT
from PIL import Image, ImageDraw

from app.batch.grounders import form_fields
from app.grounding.options import GroundingOptions

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PROMPT = "the red circle; the blue square"
PHRASES = ("the red circle", "the blue square")
# The demo server's settings (tests/conftest.py demo_server, tests/live_server.py start_server).
DEMO_ENV = {
    "MODEL_PATH": "demo",
    "DEVICE": "cpu",
    "MAX_NEW_TOKENS": "128",
    "MAX_PIXELS": "50176",
    "HF_HUB_OFFLINE": "1",
}
OPTIONS = {
    "defaults": GroundingOptions(),
    "tiling": GroundingOptions(tiling=True),
    "template": GroundingOptions(prompt_template="Locate {targets} in the image and answer in JSON."),
    "threshold": None,  # between the two boxes' scores, so that one is dropped
}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parity")
    image = Image.new("RGB", (5200, 3400), (232, 232, 222))
    draw = ImageDraw.Draw(image)
    draw.ellipse((1000, 1000, 1800, 1800), fill=(210, 30, 30))
    draw.rectangle((3000, 1500, 3800, 2300), fill=(30, 60, 200))
    (folder / "images").mkdir()
    image.save(folder / "images" / "scene.png")
    with av.open(str(folder / "scene.mov"), mode="w") as container:  # PNG frames: lossless RGB
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.width, image.height, "rgb24"
        frame = av.VideoFrame.from_image(image)
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return folder


def boxes_of(result: dict) -> list[tuple[str, list[int]]]:
    assert "error" not in result, result
    assert result["image_size"] == [5200, 3400]
    return sorted(zip(result["labels"], result["boxes"], strict=True))


def rest_multipart(url: str, scene: Path, options: GroundingOptions) -> dict:
    data = (scene / "images" / "scene.png").read_bytes()
    fields = form_fields(PHRASES, options)
    return httpx.post(f"{url}/api/ground", files={"image": ("scene.png", data)}, data=fields, timeout=600).json()


def rest_base64(url: str, scene: Path, options: GroundingOptions) -> dict:
    body = {
        "image": base64.b64encode((scene / "images" / "scene.png").read_bytes()).decode(),
        "prompt": PROMPT,
        "score_threshold": options.score_threshold,
        "prompt_template": options.prompt_template,
        "tiling": options.tiling,
    }
    return httpx.post(f"{url}/api/predict", json=body, timeout=600).json()


def batch_route(url: str, scene: Path, options: GroundingOptions) -> dict:
    data = (scene / "images" / "scene.png").read_bytes()
    files = [("images", ("scene.png", data))]
    answer = httpx.post(f"{url}/api/ground/batch", files=files, data=form_fields(PHRASES, options), timeout=600)
    return answer.json()["results"][0]


def gradio_api(url: str, scene: Path, options: GroundingOptions) -> dict:
    client = Client(url, verbose=False, download_files=str(scene / "downloads"))
    _, result, _, _ = client.predict(
        image=handle_file(str(scene / "images" / "scene.png")),
        phrase=PROMPT,
        max_new_tokens=128,
        score_threshold=options.score_threshold,
        prompt_template=options.prompt_template or "",
        tiling=bool(options.tiling),
        api_name="/ground",
    )
    return result


def video_route(url: str, scene: Path, options: GroundingOptions) -> dict:
    data = (scene / "scene.mov").read_bytes()
    fields = form_fields(PHRASES, options)
    fields.pop("tiling", None)  # frames are not tiled
    answer = httpx.post(f"{url}/api/ground/video", files={"video": ("scene.mov", data)}, data=fields, timeout=600)
    frame = answer.json()["frames"][0]
    return {key: frame[key] for key in ("image_size", "boxes", "labels", "confidence", "needs_review")}


def cli_arguments(options: GroundingOptions) -> list[str]:
    arguments = ["--score-threshold", str(options.score_threshold)]
    if options.prompt_template:
        arguments += ["--prompt-template", options.prompt_template]
    if options.tiling:
        arguments.append("--tiling")
    return arguments


def run_cli(*arguments: str) -> str:
    env = {**os.environ, **DEMO_ENV}
    done = subprocess.run([sys.executable, "-m", "app", *arguments], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def cli_ground(url: str, scene: Path, options: GroundingOptions) -> dict:
    return json.loads(run_cli("ground", str(scene / "images" / "scene.png"), PROMPT, *cli_arguments(options)))


def cli_batch(url: str | None, scene: Path, options: GroundingOptions) -> dict:
    out = scene / f"out-{'server' if url else 'local'}-{abs(hash(options))}"
    server = ["--server", url] if url else []
    run_cli("batch", str(scene / "images"), PROMPT, "--out", str(out), *server, *cli_arguments(options))
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return record


DOORS = {
    "REST multipart": rest_multipart,
    "REST base64": rest_base64,
    "batch route": batch_route,
    "gradio_client": gradio_api,
    "video route (one frame)": video_route,
    "CLI ground": cli_ground,
    "CLI batch in-process": lambda url, scene, options: cli_batch(None, scene, options),
    "CLI batch --server": cli_batch,
}


def browser_ui(page, scene: Path, options: GroundingOptions) -> dict:
    from playwright.sync_api import expect

    page.locator("#chord-image input[type=file]").set_input_files(str(scene / "images" / "scene.png"))
    expect(page.locator("#chord-image img")).to_be_visible()
    page.locator("#chord-advanced").get_by_text("Advanced").click()
    threshold = page.locator("#chord-score-threshold input[type=number]")
    threshold.fill(str(options.score_threshold))
    threshold.press("Enter")  # the slider takes the typed value
    page.locator("#chord-template textarea").fill(options.prompt_template or "")
    page.locator("#chord-tiling input[type=checkbox]").set_checked(bool(options.tiling))
    page.locator("#chord-phrase textarea").fill(PROMPT)
    page.locator("#chord-go").click()
    expect(page.locator("#chord-latency textarea")).to_have_value(re.compile(r"\d+ ms model time"), timeout=600_000)
    text = page.locator("#chord-json").inner_text()  # the JSON as the page shows it
    shown = text.split('"boxes"', 1)[1].split('"labels"', 1)[0]
    numbers = [int(v) for v in re.findall(r"\d+", shown)]
    labels = re.findall(r'"([^"]*)"', text.split('"labels"', 1)[1].split('"scores"', 1)[0])
    boxes = [numbers[i : i + 4] for i in range(0, len(numbers), 4)]
    confidence = re.search(r'"confidence"\s*:\s*(null|[\d.]+)', text).group(1)
    needs_review = re.search(r'"needs_review"\s*:\s*(true|false)', text).group(1)
    return {
        "image_size": [5200, 3400],
        "boxes": boxes,
        "labels": labels,
        "confidence": None if confidence == "null" else float(confidence),
        "needs_review": needs_review == "true",
    }


@pytest.fixture(scope="module")
def page(demo_server):
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def review_of(result: dict) -> tuple[float | None, bool]:
    """The result's own confidence and review flag, which must agree with its boxes' scores."""
    return result["confidence"], result["needs_review"]


def same_review(a: tuple[float | None, bool], b: tuple[float | None, bool]) -> bool:
    return a[1] == b[1] and (a[0] is None) == (b[0] is None) and (a[0] is None or abs(a[0] - b[0]) <= 0.02)


def close_enough(a: list[tuple[str, list[int]]], b: list[tuple[str, list[int]]]) -> bool:
    return len(a) == len(b) and all(
        la == lb and all(abs(x - y) <= 1 for x, y in zip(ba, bb, strict=True))
        for (la, ba), (lb, bb) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("case", list(OPTIONS))
def test_every_door_gives_the_same_boxes(demo_server, scene, page, case):
    options = OPTIONS[case]
    if case == "threshold":
        scores = sorted(rest_multipart(demo_server.url, scene, GroundingOptions())["scores"])
        assert len(scores) == 2 and scores[0] < scores[1], scores
        options = GroundingOptions(score_threshold=round((scores[0] + scores[1]) / 2, 4))
    first = rest_multipart(demo_server.url, scene, options)
    reference, reference_review = boxes_of(first), review_of(first)
    assert reference_review == (max(first["scores"]), max(first["scores"]) < 0.7), first
    if case == "threshold":
        assert len(reference) == 1, reference  # the lower-scored box is dropped
    if case == "defaults":
        assert [label for label, _ in reference] == sorted(PHRASES), reference  # both phrases found
    page.goto(demo_server.url)
    shown = browser_ui(page, scene, options)
    answers, reviews = {"browser UI": boxes_of(shown)}, {"browser UI": review_of(shown)}
    for door, ground in DOORS.items():
        if case == "tiling" and door.startswith("video"):
            continue  # video frames are not tiled
        result = ground(demo_server.url, scene, options)
        answers[door], reviews[door] = boxes_of(result), review_of(result)
    differing = {door: boxes for door, boxes in answers.items() if not close_enough(boxes, reference)}
    assert not differing, f"REST multipart gave {reference}; these differ: {differing}"
    differing = {door: review for door, review in reviews.items() if not same_review(review, reference_review)}
    assert not differing, f"REST multipart gave confidence/needs_review {reference_review}; these differ: {differing}"
