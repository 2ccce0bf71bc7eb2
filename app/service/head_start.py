"""The first model load, begun before the serving process builds its app so the two overlap.

A serving process is forked from the keeper (``app/server/keeper.py``) with its code imported; what is
left is building the app (Gradio's blocks, about half a second) and loading the model (its own process
reads the weights). Started first, the load runs in its own thread and process while the main thread
builds the app: the serving process answers in the longer of the two instead of their sum.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from functools import partial

from app.engine.base import Engine
from app.engine.model_spawn import spawn_model_process
from app.service.service import Loader, load_engine, load_transformers_engine
from app.settings import Settings


class HeadStart:
    """A loader whose first call, for the settings it was made with, returns the load begun at construction.

    With the model in its own process (MODEL_PROCESS, the default) that process is started at once,
    from here, before this process imports torch; the rest of the load (the processor) goes on in a
    thread. ``fork_model``: this process was forked from the keeper with everything imported, and the
    model process is forked from it too (``spawn_model_process``).
    """

    def __init__(self, settings: Settings, loader: Loader | None = None, fork_model: bool = False):
        self._settings = settings
        self._loader = loader or load_engine
        first = self._loader
        if loader is None and settings.engine == "transformers" and settings.model_process:
            first = partial(load_transformers_engine, spawned=spawn_model_process(settings, fork_model))
        self._pending: Future | None = Future()
        threading.Thread(target=self._load, args=(self._pending, first), name="chord-load-early", daemon=True).start()

    def _load(self, pending: Future, first: Loader) -> None:
        try:
            pending.set_result(first(self._settings))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits, as a load of its own would raise it
            pending.set_exception(exc)

    def __call__(self, settings: Settings) -> Engine:
        pending, self._pending = self._pending, None
        if pending is not None and settings == self._settings:
            return pending.result()
        return self._loader(settings)
