"""Command line: ``python -m app serve | ground | batch | video | eval | parse | tiny-model``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from app.errors import ChordError

logger = logging.getLogger(__name__)

LOAD_FAILURE_EXIT_STATUS = 3
SHUTDOWN_GRACE_S = 5  # seconds open connections get after SIGTERM before the server closes them


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ChordError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Chord: visual grounding with Qwen VL models.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (UI, REST, /health, /metrics) in the foreground")
    serve.add_argument("--host", default=None, help="override HOST (default from config/chord.toml: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="override PORT (default from config/chord.toml: 7860)")
    serve.add_argument("--run-dir", default=None, help="where 'chordctl swap' leaves its requests (default: run/)")
    serve.set_defaults(handler=_serve)

    ground = commands.add_parser("ground", help="ground phrases in one image and print the result JSON")
    ground.add_argument("image", help="image file")
    ground.add_argument("phrase", nargs="+", help="one or more phrases, e.g. 'the white vase'")
    ground.add_argument("--out", help="also write the image with boxes drawn to this file")
    _option_arguments(ground, tiling=True)
    ground.add_argument("--model", default=None, help="override MODEL_PATH")
    ground.set_defaults(handler=_ground, batch_size=None)

    batch = commands.add_parser("batch", help="ground phrases in every image of a folder (resumable)")
    batch.add_argument("input_dir", help="folder of images (by extension: jpg, png, webp, bmp, gif, tiff)")
    batch.add_argument("phrase", nargs="+", help="one or more phrases, e.g. 'glass bottle with a gold label'")
    batch.add_argument("--phrase", dest="more_phrases", action="append", default=[], help="another phrase")
    batch.add_argument("--out", required=True, help="output folder: results.jsonl, annotated/; re-run to resume")
    batch.add_argument("--recursive", action="store_true", help="include subfolders")
    batch.add_argument("--annotated", action="store_true", help="also write the images with boxes to OUT/annotated/")
    batch.add_argument("--coco", default=None, help="also write the results in COCO detection format to this file")
    batch.add_argument("--server", default=None, help="ground on a running Chord server at this URL instead")
    batch.add_argument("--batch-size", type=int, default=None, help="images per batch (default MAX_BATCH_SIZE)")
    _option_arguments(batch, tiling=True)
    batch.add_argument("--model", default=None, help="override MODEL_PATH (in-process only)")
    batch.set_defaults(handler=_batch)

    video = commands.add_parser("video", help="ground phrases in a video's frames, sampled at --fps")
    video.add_argument("video", help="video file (anything FFmpeg decodes: mp4, mov, mkv, webm, ...)")
    video.add_argument("phrase", nargs="+", help="one or more phrases, e.g. 'the forklift'")
    video.add_argument("--out", required=True, help="output folder: frames.jsonl, annotated.mp4")
    video.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video (default 1)")
    video.add_argument("--annotated", action="store_true", help="also write the sampled frames with boxes as an MP4")
    video.add_argument("--batch-size", type=int, default=None, help="frames per batch (default MAX_BATCH_SIZE)")
    _option_arguments(video, tiling=False)
    video.add_argument("--model", default=None, help="override MODEL_PATH")
    video.set_defaults(handler=_video)

    evaluate = commands.add_parser("eval", help="measure accuracy on labelled cases (JSONL, COCO or RefCOCO-style)")
    evaluate.add_argument(
        "cases", help="cases file: JSONL {image, phrase, boxes}, COCO detection JSON, or RefCOCO-style"
    )
    evaluate.add_argument("--server", default=None, help="ground on a running Chord server at this URL instead")
    evaluate.add_argument(
        "--out", default=None, help="also write the report, with every case's outcome, to this JSON file"
    )
    evaluate.add_argument("--min-accuracy", type=float, default=None,
                          help="exit with status 1 when acc_iou50 is under this (0..1)")  # fmt: skip
    evaluate.add_argument("--batch-size", type=int, default=None, help="cases per batch (default MAX_BATCH_SIZE)")
    _option_arguments(evaluate, tiling=True)
    evaluate.add_argument("--model", default=None, help="override MODEL_PATH (in-process only)")
    evaluate.set_defaults(handler=_eval)

    parse = commands.add_parser("parse", help="parse a raw model answer from stdin; needs no model")
    parse.add_argument("--family", required=True, choices=["qwen-vl", "qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
    parse.add_argument("--image-size", required=True, type=_wh, help="original image size, WxH")
    parse.add_argument("--input-size", type=_wh, default=None, help="size the model saw, WxH (needed for qwen2.5-vl)")
    parse.set_defaults(handler=_parse)

    tiny = commands.add_parser("tiny-model", help="build a tiny random-weight Qwen2.5-VL checkpoint offline")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--init-std", type=float, default=0.02, help="std of the random weights")
    tiny.set_defaults(handler=_tiny_model)
    return parser


def _option_arguments(command: argparse.ArgumentParser, tiling: bool) -> None:
    """The grounding options every front end takes (REST form fields, the UI's Advanced settings)."""
    command.add_argument("--max-new-tokens", type=int, default=None, help="override MAX_NEW_TOKENS")
    command.add_argument("--score-threshold", type=float, default=0.0, help="drop boxes scored below this (0..1)")
    command.add_argument("--prompt-template", default=None, help="your own prompt holding {targets}")
    if tiling:
        command.add_argument("--tiling", action=argparse.BooleanOptionalAction, default=None,
                             help="ground huge images tile by tile too (default TILING)")  # fmt: skip
    else:
        command.set_defaults(tiling=None)


def _wh(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 640x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return w, h


def _serve(args) -> int:
    from app.logs import configure_logging
    from app.settings import load_settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, stream=sys.stdout)
    logger.info("settings: %s", settings.describe())

    if settings.exit_on_load_failure and settings.engine == "transformers":
        from app.model_path import require_model_path

        try:  # fail in a second, before the heavy imports, so Supervisor counts it as a failed start
            require_model_path(settings.resolved_model_path())
        except ChordError as exc:
            logger.error("the model could not be loaded: %s", exc.message)
            logger.error("exiting with status %d: EXIT_ON_LOAD_FAILURE is on", LOAD_FAILURE_EXIT_STATUS)
            return LOAD_FAILURE_EXIT_STATUS

    from app.server.keeper import KeeperPolicy, run_keeper

    _import_serving_code(settings)
    try:
        listener = _bind(settings.host, settings.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    policy = KeeperPolicy(final_statuses=frozenset({LOAD_FAILURE_EXIT_STATUS}))
    return run_keeper(lambda serving, tell: _serve_forked(serving, args, tell, listener), settings, policy)


def _bind(host: str, port: int):
    """The port, bound here in the keeper and shared by every serving process it forks: once the first one has
    listened, connections made while one is replaced wait in the backlog for the next instead of being refused."""
    import socket

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.set_inheritable(True)
    return listener


def _import_serving_code(settings) -> None:
    """Import everything a serving process and its model process run, once, in the keeper they are forked from."""
    import time

    started = time.monotonic()
    import uvicorn  # noqa: F401

    import app.server.main  # noqa: F401
    import app.server.swap_control  # noqa: F401
    import app.service.head_start  # noqa: F401

    if settings.engine == "transformers" and settings.preload_model_code:
        from app.engine.preload import import_model_code

        import_model_code(str(settings.resolved_model_path()))
    logger.info(
        "imported the server's code in %.1f s (%d modules); serving processes are forked from this one (pid %d)",
        time.monotonic() - started, len(sys.modules), os.getpid(),
    )  # fmt: skip


def _serve_forked(settings, args, tell, listener) -> int:
    """One serving process: the model process first (forked, its code already imported), then the keeper's
    ``listener``. ``tell`` hands the settings of a swapped-in model to the keeper, for the next serving process."""
    from multiprocessing.util import register_after_fork
    from pathlib import Path

    import uvicorn

    from app.server.http_protocol import WholeResponseH11Protocol
    from app.server.main import create_app
    from app.server.swap_control import SwapControl
    from app.service.head_start import HeadStart
    from app.settings import PROJECT_ROOT

    # The model process forked next must not hold the port: frozen, it would keep a new keeper from binding it.
    register_after_fork(listener, lambda sock: sock.close())
    loader = HeadStart(settings, fork_model=True)  # the model starts loading now, while the app is built
    server: uvicorn.Server | None = None
    failed: list[ChordError] = []

    def stop_on_load_failure(error: ChordError) -> None:
        if settings.exit_on_load_failure and server is not None:
            logger.error("exiting with status %d: EXIT_ON_LOAD_FAILURE is on", LOAD_FAILURE_EXIT_STATUS)
            failed.append(error)
            server.should_exit = True

    app = create_app(settings, loader, on_load_failure=stop_on_load_failure)
    run_dir = Path(args.run_dir) if args.run_dir else PROJECT_ROOT / "run"
    SwapControl(app.state.service, settings.port, run_dir, on_swapped=tell).install()
    logger.info("serving on http://%s:%d (UI at /, API docs at /docs)", settings.host, settings.port)
    # One worker: Gradio's queue lives in this process. log_config=None keeps our one log format;
    # access_log off because each grounding request already gets its own line. An open browser
    # tab holds a stream open: without a graceful-shutdown limit SIGTERM would wait for it forever.
    # WholeResponseH11Protocol sends each answer's head and body in one write (see its module).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=WholeResponseH11Protocol,
        workers=1,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[listener])
    return LOAD_FAILURE_EXIT_STATUS if failed else 0


def _ground(args) -> int:
    from pathlib import Path

    from app.grounding.drawing import annotate
    from app.service.images import open_image
    from app.service.records import RequestRecord

    settings = _tool_settings(args, model_process=False)  # one answer: a second process would only cost its start
    with _in_process(settings) as chord:
        service = chord.service
        phrases = service.phrases("\n".join(args.phrase))
        options = _options(service, args)
        data = Path(args.image).read_bytes()
        result = chord.run(service.ground_upload(data, phrases, RequestRecord(endpoint="cli:ground"), options))
    print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    if args.out:
        annotate(open_image(args.image), result).save(args.out)
        logger.info("annotated image written to %s", args.out)
    return 0


def _batch(args) -> int:
    from pathlib import Path

    from app.batch.runner import RESULTS_NAME, recorded_paths, run_batch
    from app.grounding.prompts import split_phrases

    prompt = "\n".join([*args.phrase, *args.more_phrases])
    phrases = split_phrases(prompt, max_chars=1 << 20)
    recorded_paths(Path(args.out) / RESULTS_NAME, phrases)  # refuse a mixed output before loading the model
    settings = _tool_settings(args)
    batch_size = args.batch_size or settings.max_batch_size
    grounder, options = _grounder(args, settings, batch_size)
    try:
        summary = run_batch(
            args.input_dir,
            phrases,
            args.out,
            grounder,
            batch_size=batch_size,
            recursive=args.recursive,
            annotated=args.annotated,
            coco_path=args.coco,
            options=options,
        )
    except KeyboardInterrupt:
        print(f"interrupted: re-run the same command to resume from {args.out}/{RESULTS_NAME}", file=sys.stderr)
        return 130
    finally:
        grounder.close()
    print(f"done: {summary.line()}")
    print(f"results: {args.out}/{RESULTS_NAME}" + (f", COCO: {args.coco}" if args.coco else ""))
    return 0


def _grounder(args, settings, batch_size: int):
    """The grounder ``--server`` names (or the service in this process) and the command's options."""
    if args.server:
        from app.batch.grounders import ServerGrounder
        from app.grounding.options import GroundingOptions
        from app.grounding.prompts import clean_template

        grounder = ServerGrounder(args.server, timeout_s=max(600.0, settings.request_timeout_s))
        template = clean_template(args.prompt_template, settings.max_prompt_chars)
        return grounder, GroundingOptions(args.max_new_tokens, args.score_threshold, template, args.tiling)
    from app.batch.grounders import ServiceGrounder

    chord = _in_process(settings.model_copy(update={"max_batch_size": batch_size}))
    return ServiceGrounder(chord), _options(chord.service, args)


def _eval(args) -> int:
    from tqdm import tqdm

    from app.batch.evaluation import load_cases, run_eval
    from app.batch.runner import write_json_atomic
    from app.grounding.evaluation import outcome_dict, summarise

    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise ValueError(f"--min-accuracy must be in 0..1, got {args.min_accuracy}")
    cases = load_cases(args.cases)  # a bad file is said before the model loads
    settings = _tool_settings(args)
    batch_size = args.batch_size or settings.max_batch_size
    grounder, options = _grounder(args, settings, batch_size)
    try:
        with tqdm(total=len(cases), unit="case", file=sys.stderr, desc="eval") as bar:
            outcomes = run_eval(cases, grounder, options, batch_size, bar.update)
    finally:
        grounder.close()
    report = {"cases_file": args.cases, "server": args.server, **summarise(outcomes)}
    print(json.dumps(report, ensure_ascii=False, indent=2))
    if args.out:
        write_json_atomic(args.out, {**report, "outcomes": [outcome_dict(o) for o in outcomes]})
    if args.min_accuracy is not None and report["acc_iou50"] < args.min_accuracy:
        print(f"acc_iou50 {report['acc_iou50']:.4f} is under --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


def _video(args) -> int:
    from app.batch.video_runner import ANNOTATED_NAME, FRAMES_NAME, run_video

    if not args.fps > 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    settings = _tool_settings(args)
    if args.batch_size:
        settings = settings.model_copy(update={"max_batch_size": args.batch_size})
    with _in_process(settings) as chord:
        phrases = chord.service.phrases("\n".join(args.phrase))
        options = _options(chord.service, args)
        try:
            summary = run_video(chord, args.video, phrases, args.out, fps=args.fps, annotated=args.annotated,
                                options=options)  # fmt: skip
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    print(f"done: {summary.line()}")
    print(f"frames: {args.out}/{FRAMES_NAME}" + (f", video: {args.out}/{ANNOTATED_NAME}" if args.annotated else ""))
    return 0


def _tool_settings(args, **overrides):
    """The server's settings (config file and environment), with this command's overrides."""
    from app.logs import configure_logging
    from app.settings import load_settings

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.model is not None:
        overrides["model_path"] = args.model
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, stream=sys.stderr)
    logger.info("settings: %s", settings.describe())
    return settings


def _in_process(settings):
    from app.batch.in_process import InProcessService

    return InProcessService(settings)


def _options(service, args):
    """The command's grounding options, checked by the service as every front end's are."""
    return service.options(args.max_new_tokens, args.score_threshold, args.prompt_template, args.tiling)


def _parse(args) -> int:
    from app.grounding.families import Family, family_from_name
    from app.grounding.mapping import map_answer
    from app.grounding.parsing import parse_answer

    family = family_from_name(args.family)
    if family is Family.QWEN2_5_VL and args.input_size is None:
        raise ValueError("qwen2.5-vl answers are in pixels of the resized input: pass --input-size WxH")
    text = sys.stdin.read()
    mapped = map_answer(parse_answer(text, family, args.input_size), family, args.image_size, args.input_size)
    print(
        json.dumps(
            {
                "boxes": [list(b) for b in mapped.boxes],
                "labels": list(mapped.box_labels),
                "points": [list(p) for p in mapped.points],
                "point_labels": list(mapped.point_labels),
                "image_size": list(args.image_size),
                "input_size": None if args.input_size is None else list(args.input_size),
                "family": family.value,
            },
            ensure_ascii=False,
        )
    )
    return 0


def _tiny_model(args) -> int:
    from app.engine.tiny_checkpoint import build_tiny_checkpoint

    path = build_tiny_checkpoint(args.out_dir, seed=args.seed, init_std=args.init_std)
    print(path)
    return 0
