"""``python -m app eval``: accuracy on labelled cases, the same for JSONL and COCO, in-process and --server.

The arithmetic is checked on small tables; then the real command on demo scenes, whose acc_iou50 must
equal the same rule applied by hand to ``POST /api/ground`` answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pycocotools.coco import COCO

from app.grounding.evaluation import (
    EvalCase,
    cases_from_coco,
    cases_from_records,
    percentile,
    score_case,
    summarise,
    top_box,
)
from app.grounding.geometry import iou

ROOT = Path(__file__).resolve().parent.parent
CASE = EvalCase("c1", "a.png", "the red circle", ((10.0, 10.0, 50.0, 50.0), (100.0, 100.0, 140.0, 140.0)), "g")


def answer(boxes, scores, **extra) -> dict:
    return {"boxes": boxes, "labels": ["x"] * len(boxes), "scores": scores, "latency_ms": 10.0, **extra}


@pytest.mark.parametrize(
    ("boxes", "scores", "expected"),
    [
        ([], [], None),  # no box
        ([[0, 0, 1, 1], [5, 5, 9, 9]], [0.2, 0.9], [5, 5, 9, 9]),  # the higher score wins
        ([[0, 0, 1, 1], [5, 5, 9, 9]], [0.9, 0.9], [0, 0, 1, 1]),  # a tie: the earlier
        ([[0, 0, 1, 1], [5, 5, 9, 9]], [None, 0.1], [5, 5, 9, 9]),  # a scored box beats an unscored one
        ([[0, 0, 1, 1], [5, 5, 9, 9]], [None, None], [0, 0, 1, 1]),  # no scores: the first
    ],
)
def test_top_box(boxes, scores, expected):
    assert top_box(boxes, scores) == expected


@pytest.mark.parametrize(
    ("result", "top_iou", "recalled"),
    [
        (answer([[10, 10, 50, 50]], [0.9]), 1.0, 1),  # exact on the first truth
        (answer([[0, 0, 5, 5], [100, 100, 140, 140]], [0.95, 0.6]), 0.0, 1),  # a wrong top box fails, recall counts
        (answer([[10, 10, 50, 50], [100, 100, 140, 140]], [0.8, 0.7]), 1.0, 2),  # both truths found
        (answer([[10, 10, 50, 40]], [0.9]), 0.75, 1),  # IoU 0.75 exactly
        (answer([], []), 0.0, 0),  # no box
        ({"error": {"code": "timeout", "message": "no answer"}}, 0.0, 0),  # an error scores 0
    ],
)
def test_score_case(result, top_iou, recalled):
    outcome = score_case(CASE, result)
    assert (outcome.top_iou, outcome.recalled, outcome.truths) == (top_iou, recalled, 2)


def test_summarise_counts_the_rule_and_lists_failures():
    outcomes = [
        score_case(CASE, answer([[10, 10, 50, 50]], [0.9], confidence=0.9, needs_review=False)),  # right, sure
        score_case(CASE, answer([[10, 10, 50, 40]], [0.8], confidence=0.8, needs_review=False)),  # IoU 0.75
        score_case(CASE, answer([[0, 0, 5, 5]], [0.5], confidence=0.5, needs_review=True)),  # wrong, flagged
        score_case(EvalCase("c4", "b.png", "p", ((0.0, 0.0, 10.0, 10.0),), "h"), answer([], [])),
    ]
    report = summarise(outcomes)
    assert report["cases"] == 4
    assert report["acc_iou50"] == 0.5 and report["acc_iou75"] == 0.5
    assert report["recall"] == round(2 / 7, 4)  # 1 + 1 + 0 of 2 + 2 + 2, and 0 of 1
    assert report["not_flagged"] == {"cases": 2, "acc_iou50": 1.0}
    assert report["groups"]["g"]["cases"] == 3 and report["groups"]["h"]["acc_iou50"] == 0.0
    assert [f["id"] for f in report["failures"]] == ["c1", "c4"]
    assert report["latency_ms"] == {"p50": 10.0, "p95": 10.0}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([5.0], 95, 5.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.0), (list(map(float, range(1, 101))), 95, 95.0)],
)
def test_percentile_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_coco_cases_are_image_category_pairs():
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 30, 10, 10]},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1},  # crowds skipped
        ],
    }
    assert cases_from_coco(data) == [
        EvalCase("1:cat", "a.png", "cat", ((0, 0, 10, 20), (30, 30, 40, 40)), "cat"),
        EvalCase("2:dog", "b.png", "dog", ((5, 5, 10, 10),), "dog"),
    ]


def test_refcoco_style_records_give_one_case_per_sentence():
    records = [
        {
            "file_name": "a.jpg",
            "ref_id": 7,
            "category": "person",
            "bbox": [10, 10, 30, 40],
            "sentences": [{"sent": "man on the left"}, {"sent": "guy in red"}],
        },  # fmt: skip
        {"image": "b.jpg", "expression": "the white vase", "bbox": [0, 0, 5, 5]},
    ]
    cases = cases_from_records(records)
    assert [(c.id, c.phrase, c.boxes, c.group) for c in cases] == [
        ("7/0", "man on the left", ((10, 10, 40, 50),), "person"),
        ("7/1", "guy in red", ((10, 10, 40, 50),), "person"),
        ("2", "the white vase", ((0, 0, 5, 5),), "ref"),
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"phrase": "x", "boxes": [[0, 0, 1, 1]]}, "'image'"),  # no image
        ({"image": "a.png", "phrase": "x", "boxes": [[0, 0, 1]]}, r"\[x1, y1, x2, y2\]"),  # three numbers
        ({"image": "a.png", "phrase": "x", "boxes": [[5, 0, 1, 1]]}, "x2 > x1"),  # reversed
        ({"image": "a.png", "phrase": " ", "boxes": [[0, 0, 1, 1]]}, "'phrase'"),  # blank phrase
        ({"image": "a.png", "phrase": "x"}, "expected 'boxes'"),  # no truth at all
    ],
)
def test_bad_cases_say_which_and_why(record, message):
    with pytest.raises(ValueError, match=message):
        cases_from_records([record])


def test_files_are_read_by_their_shape_and_paths_resolved_next_to_them(tmp_path):
    from app.batch.evaluation import load_cases

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"not read here")
    refcoco = tmp_path / "refs.json"  # a JSON list of RefCOCO-style records
    refcoco.write_text(json.dumps([{"file_name": "img/a.png", "sentences": ["the dog"], "bbox": [1, 2, 3, 4]}]))
    jsonl = tmp_path / "cases.jsonl"
    jsonl.write_text(json.dumps({"image": str(tmp_path / "img" / "a.png"), "phrase": "dog", "boxes": [[1, 2, 4, 6]]}))
    (from_refs,) = load_cases(refcoco)
    (from_jsonl,) = load_cases(jsonl)
    assert from_refs.image == from_jsonl.image == str(tmp_path / "img" / "a.png")  # relative and absolute
    assert from_refs.boxes == from_jsonl.boxes == ((1, 2, 4, 6),)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no cases"):
        load_cases(empty)


def test_eval_refuses_a_missing_image_before_loading_a_model(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"image": "nowhere.png", "phrase": "x", "boxes": [[0, 0, 1, 1]]}) + "\n")
    done = run_eval_command(str(cases), env={"MODEL_PATH": str(tmp_path / "no-model")})
    assert done.returncode == 2 and "nowhere.png not found" in done.stderr


def run_eval_command(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MODEL_PATH": "demo", "DEVICE": "cpu", "MAX_NEW_TOKENS": "128", "MAX_PIXELS": "50176",
                   "HF_HUB_OFFLINE": "1", **(env or {})}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "app", "eval", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_jsonl_and_coco_give_the_same_accuracy_in_process_and_on_a_server(demo_server, tmp_path):
    from tools.demo_model.evaluation import fresh_cases, write_case_files

    scenes = fresh_cases(12, "eval", start=500)
    jsonl, coco = write_case_files(scenes, tmp_path)
    assert len(COCO(str(coco)).getAnnIds()) == len(scenes)  # a COCO file pycocotools reads

    # The rule by hand on /api/ground answers: the top-scoring box reaches IoU 0.5 with the truth.
    hits = 0
    for scene in scenes:
        data = (tmp_path / f"images/scene-{scene.index}.png").read_bytes()
        body = httpx.post(f"{demo_server.url}/api/ground", files={"image": ("s.png", data)},
                          data={"prompt": scene.phrase}, timeout=120).json()  # fmt: skip
        if body["boxes"]:
            best = max(range(len(body["boxes"])), key=lambda i: (body["scores"][i], -i))
            hits += iou(body["boxes"][best], scene.box) >= 0.5
    by_hand = round(hits / len(scenes), 4)
    assert 0 < by_hand < 1  # the demo model gets some right and some wrong: the test can tell them apart

    reports = {}
    for name, path in (("jsonl", jsonl), ("coco", coco)):
        for where, extra in (("in-process", []), ("server", ["--server", demo_server.url])):
            out = tmp_path / f"report-{name}-{where}.json"
            done = run_eval_command(str(path), "--out", str(out), *extra)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "12/12" in done.stderr  # the progress bar
            printed = json.loads(done.stdout)
            assert printed["cases"] == 12 and json.loads(out.read_text())["acc_iou50"] == printed["acc_iou50"]
            reports[(name, where)] = printed
    assert {key: report["acc_iou50"] for key, report in reports.items()} == dict.fromkeys(reports, by_hand)
    failures = {report["failures"][0]["id"].split(":")[0] for report in reports.values() if report["failures"]}
    assert failures  # the failures are named by id (scene id in JSONL, image id in COCO)

    below = run_eval_command(str(jsonl), "--min-accuracy", str(min(1.0, by_hand + 0.01)))
    assert below.returncode == 1 and "under --min-accuracy" in below.stderr
    assert run_eval_command(str(jsonl), "--min-accuracy", str(by_hand)).returncode == 0
