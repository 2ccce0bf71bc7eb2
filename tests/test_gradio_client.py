"""Gradio's auto API through gradio_client, against the real server."""

from __future__ import annotations

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_ground_returns_boxes_as_numbers_for_the_same_image(client, sample_png):
    annotated, result, raw_answer, latency = client.predict(
        handle_file(sample_png), "the red square", api_name="/ground"
    )
    assert isinstance(result["boxes"], list)
    assert all(len(box) == 4 and all(isinstance(v, int) for v in box) for box in result["boxes"])
    assert result["image_size"] == [320, 240]
    assert result["phrases"] == ["the red square"]
    assert raw_answer == result["text"]
    assert "ms" in latency
    with Image.open(annotated) as image:
        assert image.size == (320, 240)


def test_the_advanced_inputs_can_be_given_by_name(client, sample_png):
    _, result, _, _ = client.predict(
        image=handle_file(sample_png),
        phrase="红色的方块\nthe blue circle",
        max_new_tokens=8,
        score_threshold=0.5,
        prompt_template="Find {targets}.",
        api_name="/ground",
    )
    assert result["phrases"] == ["红色的方块", "the blue circle"]
    assert all(s is None or s >= 0.5 for s in result["scores"])


def test_an_empty_phrase_is_a_readable_error_and_the_server_stays_up(client, server, sample_png):
    with pytest.raises(Exception, match="prompt is empty"):
        client.predict(handle_file(sample_png), "   ", api_name="/ground")
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_the_api_lists_ground_with_image_and_phrase_first(client):
    info = client.view_api(print_info=False, return_format="dict")
    parameters = info["named_endpoints"]["/ground"]["parameters"]
    assert [p["parameter_name"] for p in parameters[:2]] == ["image", "phrase"]
    assert all(p["parameter_has_default"] for p in parameters[2:])
