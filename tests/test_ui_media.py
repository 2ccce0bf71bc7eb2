"""The UI's Batch and Video tabs, through their Gradio API on the real server."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_video import make_video, secret_and_playlists

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_batch_tab_grounds_files_and_a_zip_and_offers_jsonl_and_coco(client, sample_png, tmp_path):
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(sample_png, "inside/a.png")
        zipped.writestr("inside/broken.jpg", b"not an image")
        zipped.writestr("inside/notes.txt", b"ignored: not an image extension")
    gallery, downloads, summary = client.predict(
        [handle_file(sample_png), handle_file(str(archive))], "the red square", api_name="/ground_batch"
    )
    assert summary.startswith("3 images, 0 boxes, 1 failures")
    assert len(gallery) == 2
    files = {Path(d).name: Path(d) for d in downloads}
    records = [json.loads(line) for line in files["results.jsonl"].read_text().splitlines()]
    assert [r["path"] for r in records] == ["sample.png", "more.zip/inside/a.png", "more.zip/inside/broken.jpg"]
    assert records[2]["error"]["code"] == "invalid_image"
    coco = json.loads(files["coco.json"].read_text())
    assert len(coco["images"]) == 2 and coco["categories"][0]["name"] == "the red square"


def test_video_tab_returns_frames_an_annotated_video_and_frames_jsonl(client, tmp_path):
    clip = make_video(tmp_path / "shapes.mp4", seconds=2)
    annotated, frames, download, summary = client.predict(
        handle_file(str(clip)), "the red square", 2, api_name="/ground_video"
    )
    assert summary.startswith("4 frames at 2 fps")
    assert [f["timestamp"] for f in frames] == [0.0, 0.5, 1.0, 1.5]
    assert len(Path(download).read_text().splitlines()) == 4
    assert Path(annotated["video"] if isinstance(annotated, dict) else annotated).stat().st_size > 0


def test_video_tab_refuses_playlists_without_reading_what_they_name(client, tmp_path):
    clip = make_video(tmp_path / "shapes.mp4", seconds=2)
    token, pointers = secret_and_playlists(tmp_path, clip)
    for name, path in pointers.items():
        with pytest.raises(AppError) as refused:
            client.predict(handle_file(str(path)), "the red square", 1, api_name="/ground_video")
        assert "not a video Chord can decode" in str(refused.value), name
        assert token not in str(refused.value) and str(tmp_path) not in str(refused.value)


def test_the_image_tab_api_is_unchanged(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert {"/ground", "/ground_batch", "/ground_video"} <= set(info["named_endpoints"])
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/ground"]["parameters"]]
    assert parameters[:2] == ["image", "phrase"]  # the Image tab's event keeps its inputs
