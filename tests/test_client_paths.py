"""No file a client names is read or served: Gradio FileData paths outside the upload cache, special
files, planted links and ``..`` tricks are refused before any read, and the server stays responsive."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from live_server import PROJECT_ROOT, start_server

pytestmark = pytest.mark.slow
SECRET = "chord-secret-7f3e91"
KEY = "k3y-for-the-path-tests"


@pytest.fixture(scope="module")
def guarded(tiny_checkpoint, tmp_path_factory):
    """A server with API_KEY and UI_AUTH set (as an attacker who has a login meets it), and a secret file."""
    folder = tmp_path_factory.mktemp("paths")
    live = start_server(tiny_checkpoint, folder, API_KEY=KEY, UI_AUTH=f"ana:{SECRET}-pw")
    try:
        live.wait_for_health(200)
        (folder / "secret.txt").write_text(f"{SECRET}\n")
        yield live, folder
    finally:
        live.stop()


def call_ground(url: str, path: str, timeout: float = 10) -> httpx.Response:
    """What a logged-in client can post: the /ground event with a FileData naming ``path``."""
    file_data = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    body = {"data": [file_data, "the cat", 8, 0, "", []]}
    return httpx.post(f"{url}/gradio_api/call/ground", json=body, headers={"X-API-Key": KEY}, timeout=timeout)


def hostile_paths(folder: Path) -> dict[str, str]:
    cache = folder / "gradio"
    planted = cache / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    link = planted / "innocent.png"
    if not link.is_symlink():
        link.symlink_to(folder / "secret.txt")
    return {
        "process environment": "/proc/self/environ",
        "passwd": "/etc/passwd",
        "the checkout's config": str(PROJECT_ROOT / "config" / "chord.toml"),
        "a file beside the cache": str(folder / "secret.txt"),
        "dot-dot out of the cache": f"{cache}/../secret.txt",
        "dot-dot in the middle": f"{cache}/planted/../../secret.txt",
        "a link planted in the cache": str(link),
        "the cache folder itself": str(cache),
        "a url for the server to fetch": "http://127.0.0.1:1/secret.png",
        "a relative path": "config/chord.toml",
    }


@pytest.mark.parametrize(
    "case",
    [
        "process environment",
        "passwd",
        "the checkout's config",
        "a file beside the cache",
        "dot-dot out of the cache",
        "dot-dot in the middle",
        "a link planted in the cache",
        "the cache folder itself",
        "a url for the server to fetch",
        "a relative path",
    ],
)
def test_a_named_path_is_refused_before_it_is_read(guarded, case):
    live, folder = guarded
    path = hostile_paths(folder)[case]
    response = call_ground(live.url, path)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden_path"
    assert error["request_id"] == response.headers["x-request-id"]
    assert SECRET not in response.text and "root:" not in response.text and "API_KEY" not in response.text
    # Nothing was copied into Gradio's cache to be served afterwards.
    cached = [p for p in (folder / "gradio").rglob("*") if p.is_file() and not p.is_symlink()]
    assert not any(SECRET in p.read_text(errors="ignore") for p in cached)
    served = httpx.get(f"{live.url}/gradio_api/file={path}", headers={"X-API-Key": KEY}, timeout=10)
    assert SECRET not in served.text and "root:" not in served.text
    assert httpx.get(f"{live.url}/health", timeout=2).status_code == 200


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo"])
def test_special_files_never_freeze_the_server(guarded, special, tmp_path):
    live, _ = guarded
    if special == "fifo":
        special = str(tmp_path / "pipe")
        os.mkfifo(special)
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call_ground(live.url, special, timeout=30)))
    thread.start()
    started = time.monotonic()
    while thread.is_alive() and time.monotonic() - started < 10:
        assert httpx.get(f"{live.url}/health", timeout=2).status_code == 200
        time.sleep(0.2)
    thread.join(timeout=20)
    assert answers and answers[0].status_code == 403, answers and answers[0].text


def test_a_real_upload_still_works_through_gradio_client(guarded, sample_png):
    live, _ = guarded
    client = Client(live.url, verbose=False, headers={"X-API-Key": KEY})
    _, result, _, _ = client.predict(handle_file(sample_png), "the red square", api_name="/ground")
    assert result["image_size"] == [320, 240]


def test_gradio_client_with_a_server_path_gets_an_error(guarded):
    live, _ = guarded
    client = Client(live.url, verbose=False, headers={"X-API-Key": KEY})
    # gradio_client uploads files that exist on the caller's machine: name one that exists only on the server.
    ghost = {"path": "/proc/1/environ-of-the-server", "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    with pytest.raises(Exception) as info:
        client.predict(ghost, "the cat", api_name="/ground")
    assert SECRET not in str(info.value)
    assert httpx.get(f"{live.url}/health", timeout=2).status_code == 200
