"""Chord's errors: each carries an HTTP status and a stable code for the one JSON error shape."""

from __future__ import annotations


class ChordError(Exception):
    """Base class. ``code`` is stable and documented; ``message`` is for people."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidImage(ChordError):
    status = 400
    code = "invalid_image"


class InvalidVideo(ChordError):
    status = 400
    code = "invalid_video"


class VideoTooLong(ChordError):
    status = 413
    code = "video_too_long"


class InvalidRequest(ChordError):
    status = 422
    code = "invalid_request"


class ModelLoadError(ChordError):
    status = 503
    code = "model_load_failed"


class ModelNotReady(ChordError):
    status = 503
    code = "model_loading"


class OutOfMemory(ChordError):
    """The accelerator ran out of memory on this request; the cache was freed and serving goes on."""

    status = 503
    code = "out_of_memory"


class SettingsError(ChordError):
    """A bad setting; raised at start-up, before anything serves."""

    code = "invalid_setting"


class EngineUnavailable(ChordError):
    """The OpenAI-compatible engine could not be reached, or answered with a server error (5xx)."""

    status = 502
    code = "engine_unavailable"


class EngineRejected(ChordError):
    """The engine refused the request (4xx): usually ENGINE_MODEL or the engine's context length."""

    status = 502
    code = "engine_rejected"


class EngineTimeout(ChordError):
    """The engine did not answer within ENGINE_TIMEOUT_S."""

    status = 504
    code = "engine_timeout"
