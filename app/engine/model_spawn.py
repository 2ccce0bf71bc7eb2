"""Starting the model's own process: spawned, or forked from a process that only imported.

Spawned (the default) the child is a fresh interpreter that imports torch and transformers itself.
Forked, it starts loading weights at once with the parent's imports; that is only safe from a process
that has imported torch but run nothing with it (a forked child of a process whose OpenMP threads ran
deadlocks in its first parallel operation) and runs a single thread (a lock held mid-update by another
thread would be copied held). A serving process forked from the keeper (``app/server/keeper.py``) is
such a process; a swap, from a thread of a running server, is not. This module imports no torch.
``ModelProcess.start`` takes the started process from here and waits for its model.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from dataclasses import dataclass
from multiprocessing import resource_tracker

from app.settings import Settings

_SPAWN = multiprocessing.get_context("spawn")
_FORK = multiprocessing.get_context("fork")


@dataclass
class SpawnedModel:
    """A model process on its way: the process and the parent's end of its pipe."""

    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection


def spawn_model_process(settings: Settings, fork: bool = False) -> SpawnedModel:
    """Start the child that loads the model ``settings`` name; it says "ready" (or "error") on the pipe.
    ``fork`` only from a process that has imported but run nothing (see above); with other threads running it
    spawns anyway."""
    context = _FORK if fork and threading.active_count() == 1 and sys.platform.startswith("linux") else _SPAWN
    if context is _FORK:
        resource_tracker.ensure_running()  # shared with the child, as a spawned child shares it
    parent_end, child_end = context.Pipe()
    process = context.Process(target=child_main, args=(child_end, settings), name="chord-model", daemon=True)
    process.start()
    child_end.close()
    return SpawnedModel(process, parent_end)


def child_main(connection, settings: Settings) -> None:
    """The child's entry point: torch is imported here, in the child, not in the parent that started it."""
    from app.engine.model_process import serve_model

    serve_model(connection, settings)
