"""The pure parts of batch export: whole-line JSONL that survives a crash, and the COCO dict."""

from __future__ import annotations

import json
import os

import pytest
from pycocotools.coco import COCO

from app.batch.files import find_images
from app.batch.jsonl import JsonlWriter, read_records
from app.grounding.coco import to_coco, xyxy_to_xywh


def test_jsonl_lines_round_trip(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"path": "a.png", "labels": ["杯子"]})
        writer.write({"path": "b.png"})
    assert read_records(path) == [{"path": "a.png", "labels": ["杯子"]}, {"path": "b.png"}]
    assert path.read_bytes().endswith(b"\n")


def test_jsonl_reader_ignores_a_partial_last_line_and_the_writer_cuts_it(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"path": "a.png"}\n{"path": "b.p')
    assert read_records(path) == [{"path": "a.png"}]
    with JsonlWriter(path) as writer:
        writer.write({"path": "c.png"})
    assert path.read_bytes() == b'{"path": "a.png"}\n{"path":"c.png"}\n'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", []),  # empty file
        (b"\n\n", []),  # blank lines
        (b'not json\n{"path": "a"}\n', [{"path": "a"}]),  # a damaged complete line is skipped
        (b'[1, 2]\n{"path": "a"}\n', [{"path": "a"}]),  # a line that is not an object is skipped
        (b'{"path": "a"}', []),  # no newline: never finished
    ],
)
def test_jsonl_reader_table(tmp_path, content, expected):
    path = tmp_path / "results.jsonl"
    path.write_bytes(content)
    assert read_records(path) == expected


def test_jsonl_reader_of_a_missing_file_is_empty(tmp_path):
    assert read_records(tmp_path / "nothing.jsonl") == []


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([10, 20, 30, 60], [10, 20, 20, 40]),  # ordinary box
        ([5, 5, 5, 5], [5, 5, 0, 0]),  # degenerate box keeps zero size
        ([0.5, 1.5, 2.5, 4.5], [0.5, 1.5, 2.0, 3.0]),  # floats stay floats
    ],
)
def test_xyxy_to_xywh(box, expected):
    assert xyxy_to_xywh(box) == expected


@pytest.mark.parametrize(
    "box",
    [
        [1, 2, 3],  # three numbers
        [30, 20, 10, 60],  # x2 < x1
        [10, 60, 30, 20],  # y2 < y1
    ],
)
def test_xyxy_to_xywh_refuses_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        xyxy_to_xywh(box)


RECORDS = [
    {
        "path": "a.png",
        "image_size": [320, 240],
        "boxes": [[10, 20, 110, 220], [200, 10, 300, 100]],
        "labels": ["red square", "Blue  Circle"],
        "scores": [0.9, None],
    },
    {"path": "broken.jpg", "error": {"code": "invalid_image", "message": "could not decode image"}},
    {"path": "sub/b.jpg", "image_size": [64, 48], "boxes": [[1, 2, 3, 4]], "labels": ["a cup"], "scores": [0.4]},
    {"path": "c.png", "image_size": [100, 100], "boxes": [], "labels": [], "scores": []},
]


def test_coco_images_categories_and_annotations():
    coco = to_coco(RECORDS, ["red square", "blue circle"])
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "sub/b.jpg", "c.png"]
    assert coco["images"][0] == {"id": 1, "file_name": "a.png", "width": 320, "height": 240}
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "red square"), (2, "blue circle"), (3, "a cup")]
    first, second, third = coco["annotations"]
    assert first == {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [10, 20, 100, 200],
        "area": 20000,
        "iscrowd": 0,
        "score": 0.9,
    }
    assert second["category_id"] == 2 and "score" not in second  # label matched ignoring case and spaces
    assert third["image_id"] == 2 and third["category_id"] == 3


def test_coco_single_phrase_names_unlabelled_boxes_after_it():
    records = [{"path": "a.png", "image_size": [10, 10], "boxes": [[0, 0, 5, 5]], "labels": [""], "scores": [0.5]}]
    coco = to_coco(records, ["cat"])
    assert coco["annotations"][0]["category_id"] == 1 and len(coco["categories"]) == 1


def test_coco_loads_in_pycocotools_as_dataset_and_as_results(tmp_path):
    coco_dict = to_coco(RECORDS, ["red square", "blue circle"])
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_dict))
    dataset = COCO(str(path))
    assert sorted(dataset.getImgIds()) == [1, 2, 3]
    assert len(dataset.getAnnIds(imgIds=[1])) == 2
    assert dataset.loadCats([3])[0]["name"] == "a cup"
    scored = [dict(a) for a in coco_dict["annotations"] if "score" in a]
    results = dataset.loadRes(scored)  # the detection-results form evaluation tools read
    assert len(results.getAnnIds()) == len(scored)


def test_find_images_by_extension_sorted(tmp_path):
    for name in ["b.PNG", "a.jpg", "notes.txt", "sub/c.webp", "sub/deeper/d.tiff"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    os.mkdir(tmp_path / "folder.png")  # a folder with an image extension is no image
    assert [p.name for p in find_images(tmp_path)] == ["a.jpg", "b.PNG"]
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, recursive=True)]
    assert found == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tiff"]
    with pytest.raises(ValueError, match="not a folder"):
        find_images(tmp_path / "a.jpg")
