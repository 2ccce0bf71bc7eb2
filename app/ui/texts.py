"""Every word the browser UI shows, in English and Chinese.

Static labels go through Gradio's I18n (``T("key")``): the browser translates them in the page's
locale, which follows the browser's language and the page's language switch. Text the server
writes at run time (the header, the button, messages, the latency line, the review mark) is
chosen here by ``say(key, language)``, the language coming from the switch. REST errors stay English.
"""

from __future__ import annotations

import gradio as gr
from gradio.i18n import I18nData

ENGLISH, CHINESE = "en", "zh-CN"
LANGUAGES = [("English", ENGLISH), ("中文", CHINESE)]

# Shown as labels, hints and placeholders; translated by the browser.
LABELS: dict[str, tuple[str, str]] = {
    "tab_image": ("Image", "图片"),
    "tab_batch": ("Batch", "批量"),
    "tab_video": ("Video", "视频"),
    "language": ("Language", "语言"),
    "image": ("Image", "图片"),
    "phrase": ("What to find", "要查找的内容"),
    "phrase_placeholder": ("e.g. the red car; the person on the left", "例如：红色的汽车；左边的人"),
    "phrase_info": (
        "Enter finds · Shift+Enter starts a new line · several things: separate them with ;",
        "按 Enter 查找 · Shift+Enter 换行 · 查找多个对象时用 ；分隔",
    ),
    "demo_examples": (
        "Demo scenes from the evaluation set (click one: it is grounded at once)",
        "评测集中的演示场景（点击即定位）",
    ),
    "photo_examples": ("Example photos (click one: it is grounded at once)", "示例照片（点击即定位）"),
    "advanced": ("Advanced", "高级设置"),
    "max_new_tokens": ("Max new tokens", "最大生成 token 数"),
    "score_threshold": ("Score threshold", "分数阈值"),
    "template": ("Prompt template", "提示模板"),
    "template_placeholder": (
        "Leave empty for the built-in prompt. A custom one must contain {targets}, e.g. 'Find {targets}.'",
        "留空则使用内置提示。自定义模板须包含 {targets}，例如 'Find {targets}.'",
    ),
    "tiling": (
        "Large images: also search tile by tile, each box confirmed by zooming in (small objects in big scans)",
        "大图：同时分块搜索，每个框放大复核（适合大扫描件中的小物体）",
    ),
    "out": ("Image with boxes", "标注结果"),
    "confidence": ("Confidence (the best box's score)", "置信度（最佳框的分数）"),
    "latency": ("Latency", "耗时"),
    "result": ("Result", "结果"),
    "raw": ("Raw model answer", "模型原始回答"),
    "history": ("Earlier results for this image (newest first)", "此图片的历史结果（最新在前）"),
    "batch_files": ("Images, or a zip of images", "图片，或图片的 zip 压缩包"),
    "batch_placeholder": ("e.g. glass bottle with a gold label", "例如：贴金色标签的玻璃瓶"),
    "batch_go": ("Find in all", "全部查找"),
    "summary": ("Summary", "摘要"),
    "batch_downloads": ("results.jsonl and COCO", "results.jsonl 和 COCO"),
    "batch_gallery": ("Images with boxes", "标注后的图片"),
    "video_in": ("A short video", "短视频"),
    "video_placeholder": ("e.g. the forklift", "例如：叉车"),
    "fps": ("Frames per second to ground", "每秒定位的帧数"),
    "video_go": ("Find in every frame", "逐帧查找"),
    "video_out": ("Sampled frames with boxes", "标注后的抽样帧"),
    "frames": ("Frames", "帧"),
}

# Written by the server at run time; str.format fields in braces.
MESSAGES: dict[str, tuple[str, str]] = {
    "title": ("visual grounding", "视觉定位"),
    "serving": ("serving {what}", "正在服务 {what}"),
    "loading_header": ("{what} Find is enabled once the model is ready.", "{what} 模型就绪后即可查找。"),
    "find": ("Find", "查找"),
    "button_loading": ("The model is loading ...", "模型加载中 ..."),
    "button_unavailable": ("The model is unavailable (see above)", "模型不可用（见上方）"),
    "could_not_ground": ("Could not ground", "无法定位"),
    "error": ("Error", "错误"),
    "add_image": (
        "Add an image first: drop it in, paste it or click to upload.",
        "请先添加图片：拖入、粘贴或点击上传。",
    ),
    "add_image_and_phrase": (
        "Add an image (drop, paste or click to upload) and type what to find.",
        "请添加图片（拖入、粘贴或点击上传），并输入要查找的内容。",
    ),
    "type_phrase": ("Type what to find: the prompt is empty.", "请输入要查找的内容：提示为空。"),
    "unexpected": ("Unexpected server error (request id {request_id}).", "服务器意外出错（请求 ID {request_id}）。"),
    "no_box": (
        "No box found. Try other words, or lower the score threshold under Advanced.",
        "未找到目标框。请换个说法，或在高级设置中调低分数阈值。",
    ),
    "latency": (
        "{ms:.0f} ms model time · {boxes} · request {request_id}",
        "模型用时 {ms:.0f} ms · {boxes} · 请求 {request_id}",
    ),
    "one_box": ("1 box", "1 个框"),
    "boxes": ("{n} boxes", "{n} 个框"),
    "confident": ("{score:.2f} · looks right", "{score:.2f} · 结果可信"),
    "review_low": ("{score:.2f} · needs review (under {bar:.1f})", "{score:.2f} · 需要复核（低于 {bar:.1f}）"),
    "review_none": ("no box · needs review", "无框 · 需要复核"),
    "review_unscored": ("no score · needs review", "无分数 · 需要复核"),
}

# Keys carry a prefix: Gradio's own translations already use names such as "image".
KEY_PREFIX = "chord_"
# The messages too, so that a page's first render (the button's text) is in its language already.
_ALL = {**MESSAGES, **LABELS}
I18N = gr.I18n(
    en={KEY_PREFIX + key: en for key, (en, _) in _ALL.items()},
    **{code: {KEY_PREFIX + key: zh for key, (_, zh) in _ALL.items()} for code in ("zh-CN", "zh-TW", "zh")},
)


def T(key: str) -> I18nData:  # noqa: N802 - reads like the gettext ``_``
    """A label (or a message without fields) the browser translates."""
    if key not in _ALL:
        raise KeyError(f"no label {key!r}")
    return I18N(KEY_PREFIX + key)


def language_of(code: str | None) -> str:
    """The UI language for a locale code: Chinese for any ``zh`` variant, else English."""
    return CHINESE if (code or "").lower().startswith("zh") else ENGLISH


def say(key: str, language: str | None = ENGLISH, **fields) -> str:
    """A run-time text in ``language`` (any locale code; see language_of)."""
    english, chinese = MESSAGES[key]
    return (chinese if language_of(language) == CHINESE else english).format(**fields)


def label(key: str, language: str | None = ENGLISH) -> str:
    """A label as plain text in ``language``, for the few places the browser does not re-translate."""
    english, chinese = LABELS[key]
    return chinese if language_of(language) == CHINESE else english


def boxes_text(count: int, language: str | None = ENGLISH) -> str:
    return say("one_box", language) if count == 1 else say("boxes", language, n=count)
