"""Access: with API_KEY set, REST and the Gradio API need the key; the UI asks for a login."""

from __future__ import annotations

import re

import httpx
import pytest
from gradio_client import Client, handle_file
from live_server import start_server

pytestmark = pytest.mark.slow
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def locked_server(tiny_checkpoint, tmp_path_factory):
    live = start_server(tiny_checkpoint, tmp_path_factory.mktemp("auth"), API_KEY=KEY, UI_AUTH="ana:pw1")
    try:
        live.wait_for_health(200)
        yield live
    finally:
        live.stop()


def ground(url, sample_png, headers=None):
    with open(sample_png, "rb") as f:
        return httpx.post(f"{url}/api/ground", files={"image": f}, data={"prompt": "cat"}, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (None, 401),  # no key
        ({"X-API-Key": "wrong"}, 401),  # wrong key
        ({"Authorization": "Bearer wrong"}, 401),  # wrong bearer
        ({"X-API-Key": KEY}, 200),  # key header
        ({"Authorization": f"Bearer {KEY}"}, 200),  # bearer
    ],
)
def test_rest_needs_the_key(locked_server, sample_png, headers, status):
    response = ground(locked_server.url, sample_png, headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


def test_health_and_metrics_stay_open_for_the_watchdog(locked_server):
    assert httpx.get(f"{locked_server.url}/health").status_code == 200
    assert httpx.get(f"{locked_server.url}/metrics").status_code == 200


def test_the_ui_asks_for_a_login(locked_server):
    assert httpx.get(f"{locked_server.url}/gradio_api/login_check").status_code == 401
    page = httpx.get(f"{locked_server.url}/")
    assert page.status_code == 200  # the page loads and shows Gradio's login form (auth_required)
    login = httpx.post(f"{locked_server.url}/login", data={"username": "ana", "password": "pw1"})
    assert login.status_code == 200
    assert httpx.get(f"{locked_server.url}/gradio_api/login_check", cookies=login.cookies).status_code == 200
    bad = httpx.post(f"{locked_server.url}/login", data={"username": "ana", "password": "nope"})
    assert bad.status_code == 400


def test_gradio_api_with_the_key_header_works_and_without_it_does_not(locked_server, sample_png):
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own error types for a 401
        Client(locked_server.url, verbose=False).predict(handle_file(sample_png), "cat", api_name="/ground")
    client = Client(locked_server.url, verbose=False, headers={"X-API-Key": KEY})
    _, result, _, _ = client.predict(handle_file(sample_png), "cat", api_name="/ground")
    assert result["image_size"] == [320, 240]


def test_binding_beyond_loopback_without_a_key_warns(tiny_checkpoint, tmp_path):
    live = start_server(tiny_checkpoint, tmp_path, HOST="0.0.0.0")
    try:
        live.wait_for_health(200)
    finally:
        live.stop()
    assert "no API_KEY" in live.log()


def test_the_key_is_never_logged(locked_server):
    assert KEY not in locked_server.log() and "pw1" not in locked_server.log()


def auth_failures(url: str, kind: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'^chord_auth_failures_total{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def test_a_refused_key_is_logged_without_the_key_and_counted(locked_server, sample_png):
    before = auth_failures(locked_server.url, "api_key")
    response = ground(locked_server.url, sample_png, {"X-API-Key": "guessed-key-42"})
    assert response.status_code == 401
    request_id = response.headers["x-request-id"]
    assert response.json()["error"]["request_id"] == request_id
    line = next(line for line in locked_server.log().splitlines() if f"id={request_id}" in line)
    assert "path='/api/ground'" in line and "client=127.0.0.1" in line and "key_headers=X-API-Key" in line
    assert "guessed-key-42" not in locked_server.log() and KEY not in locked_server.log()
    assert auth_failures(locked_server.url, "api_key") == before + 1


def login(url: str, password: str, address: str) -> httpx.Response:
    """A UI login as the browser sends it (multipart form), from the loopback ``address``."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address)) as client:
        return client.post(f"{url}/login", files={"username": (None, "ana"), "password": (None, password)})


def test_repeated_failed_logins_from_one_address_are_refused_for_a_while(locked_server):
    url, address = locked_server.url, "127.0.0.2"  # an address of its own: other tests log in from 127.0.0.1
    before = auth_failures(url, "ui_login")
    assert [login(url, "wrong-pw-7", address).status_code for _ in range(4)] == [400] * 4
    assert login(url, "pw1", address).status_code == 200  # under the limit the right password still works
    assert login(url, "wrong-pw-7", address).status_code == 400  # the fifth failure
    refused = login(url, "pw1", address)
    assert refused.status_code == 429  # now even the right password waits
    assert refused.json()["error"]["code"] == "too_many_login_attempts"
    assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert login(url, "pw1", "127.0.0.3").status_code == 200  # another address is not held back
    assert auth_failures(url, "ui_login") == before + 5
    log = locked_server.log().splitlines()
    failures = [line for line in log if "failed login id=" in line and f"client={address} " in line]
    assert len(failures) == 5 and all("user='ana'" in line for line in failures)
    assert "wrong-pw-7" not in locked_server.log()
