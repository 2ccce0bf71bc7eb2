"""Every error Chord reports, in one place: each class declares its HTTP status, its stable code and
when it happens, once. ``ERROR_CODES`` is built from them; the error table in docs/api.md says the same
(``tests/test_error_table.py`` checks both ways). How an error becomes an HTTP answer lives in
``app/server/errors.py``.
"""

from __future__ import annotations

from collections.abc import Iterable


class ChordError(Exception):
    """Base class. ``code`` is stable and documented; ``message`` is for people; ``when`` documents it."""

    status = 500
    code = "internal_error"
    when = ""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self, request_id: str | None = None) -> dict:
        """The one error shape, ``{"error": {"code", "message"}}``, with ``request_id`` when given."""
        body = {"code": self.code, "message": self.message}
        if request_id is not None:
            body["request_id"] = request_id
        return {"error": body}


class Retryable(ChordError):
    """A refusal for now; ``retry_after_s`` becomes the ``Retry-After`` header."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --- what a request sent ---------------------------------------------------------------------
class InvalidImage(ChordError):
    status = 400
    code = "invalid_image"
    when = "the file or base64 data cannot be decoded: empty, truncated or corrupt"


class InvalidVideo(ChordError):
    status = 400
    code = "invalid_video"
    when = (
        "`/api/ground/video`: the file is not a video FFmpeg can decode (or a container not accepted), or it is empty"
    )


class InvalidRequest(ChordError):
    status = 422
    code = "invalid_request"
    when = (
        "another field missing or out of range, a body that is not JSON, a template without `{targets}`, "
        "a model control token in the text, a multipart limit (too many files or fields, a part too large)"
    )


class MissingImage(InvalidRequest):
    code = "missing_image"
    when = "no `image` field"


class EmptyPrompt(InvalidRequest):
    code = "empty_prompt"
    when = "no prompt, or no phrase once split on `;` and newlines"


class PromptTooLong(InvalidRequest):
    code = "prompt_too_long"
    when = "the prompt or the prompt template is longer than `MAX_PROMPT_CHARS`"


class UnsupportedMediaType(ChordError):
    status = 415
    code = "unsupported_media_type"
    when = "not an accepted image format (the message lists them; HEIC, PDF and SVG are named)"


class PayloadTooLarge(ChordError):
    status = 413
    code = "payload_too_large"
    when = (
        "the upload is larger than `MAX_UPLOAD_BYTES`, or the body larger than `MAX_REQUEST_BYTES` "
        "(refused while it arrives)"
    )


class ImageTooLarge(ChordError):
    status = 413
    code = "image_too_large"
    when = (
        "the image has more pixels than `MAX_IMAGE_PIXELS` (read from the header), or the request's images "
        "together more than `MAX_REQUEST_PIXELS`"
    )


class VideoTooLong(ChordError):
    status = 413
    code = "video_too_long"
    when = (
        "`/api/ground/video`: longer than `VIDEO_MAX_SECONDS`, more than `VIDEO_MAX_FRAMES` frames at that fps, "
        "or sampled frames holding more than `MAX_REQUEST_PIXELS`"
    )


class ForbiddenPath(ChordError):
    status = 403
    code = "forbidden_path"
    when = "a Gradio call names a file that is not a regular file inside the upload cache (never read)"


# --- who may call ----------------------------------------------------------------------------
class Unauthorized(ChordError):
    status = 401
    code = "unauthorized"
    when = "`API_KEY` is set and the request has no valid key"


class TooManyLoginAttempts(Retryable):
    status = 429
    code = "too_many_login_attempts"
    when = "`POST /login`: too many failed UI logins from this address; retry after `Retry-After`"


class NotFound(ChordError):
    status = 404
    code = "not_found"
    when = "no Chord route has this path under `/api/`"


class MethodNotAllowed(ChordError):
    """A method the path does not take; ``allowed`` becomes the ``Allow`` header."""

    status = 405
    code = "method_not_allowed"
    when = "the path takes other methods; the `Allow` header lists them"

    def __init__(self, message: str, allowed: Iterable[str]):
        super().__init__(message)
        self.allowed = tuple(sorted(allowed))


# --- the service's state ---------------------------------------------------------------------
class ModelNotReady(ChordError):
    status = 503
    code = "model_loading"
    when = "the model is still loading; retry when `/health` is 200"


class ModelLoadError(ChordError):
    status = 503
    code = "model_load_failed"
    when = "the model could not be loaded (with `EXIT_ON_LOAD_FAILURE=false`)"


class ModelProcessExited(ChordError):
    status = 503
    code = "model_process_exited"
    when = "the model's own process ended (e.g. killed for memory); the server stops and Supervisor restarts it"


class OutOfMemory(ChordError):
    """The accelerator ran out of memory on this request; the cache was freed and serving goes on."""

    status = 503
    code = "out_of_memory"
    when = "the GPU ran out of memory on this request; retry, or lower `MAX_BATCH_SIZE` / `MAX_PIXELS`"


class QueueFull(Retryable):
    status = 503
    code = "busy"
    when = "the queue is full (`MAX_QUEUE`), or images wait too long for the decode budget; retry after `Retry-After`"


class RequestTimeout(ChordError):
    status = 504
    code = "timeout"
    when = "no answer within `REQUEST_TIMEOUT_S`"


class ShuttingDown(ChordError):
    status = 503
    code = "shutting_down"
    when = "the server is stopping"


class EngineUnavailable(ChordError):
    """The OpenAI-compatible engine could not be reached, or answered with a server error (5xx)."""

    status = 502
    code = "engine_unavailable"
    when = "`ENGINE=openai`: the engine server cannot be reached, or answered 5xx; `/health` says `engine_unreachable`"


class EngineRejected(ChordError):
    """The engine refused the request (4xx): usually ENGINE_MODEL or the engine's context length."""

    status = 502
    code = "engine_rejected"
    when = "`ENGINE=openai`: the engine refused the request (4xx, e.g. a wrong `ENGINE_MODEL`); its message is included"


class EngineTimeout(ChordError):
    """The engine did not answer within ENGINE_TIMEOUT_S."""

    status = 504
    code = "engine_timeout"
    when = "`ENGINE=openai`: no answer from the engine within `ENGINE_TIMEOUT_S`"


class InternalError(ChordError):
    status = 500
    code = "internal_error"
    when = "an unexpected fault; its traceback is in the log under the request id"


# --- outside HTTP: start-up and the command line -------------------------------------------
class SettingsError(ChordError):
    """A bad setting; raised at start-up, before anything serves."""

    code = "invalid_setting"


class ServiceUnavailable(ChordError):
    """The command line's batch could not get answers from the service after its retries."""

    status = 503
    code = "service_unavailable"


def chord_error_of(exc: BaseException) -> ChordError:
    """The ChordError a failure is reported as; anything unexpected becomes ``internal_error``."""
    if isinstance(exc, ChordError):
        return exc
    return InternalError("unexpected server error; quote the request id when reporting it")


def _documented(cls: type[ChordError]) -> list[type[ChordError]]:
    found = [cls] if cls.__dict__.get("when") else []
    for sub in cls.__subclasses__():
        found += _documented(sub)
    return found


# code -> (status, when), for every error an HTTP answer can carry.
ERROR_CODES: dict[str, tuple[int, str]] = {cls.code: (cls.status, cls.when) for cls in _documented(ChordError)}
