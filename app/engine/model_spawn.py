"""Starting the model's own process before this one has imported torch.

A server start imports two heavy stacks in one interpreter (the web stack, then torch and
transformers for the processor) while the model process imports torch and transformers again and
reads the weights. Started first, from this torch-free module, the model process does its part on
the other core while the server imports its own: a start costs the longer of the two, not their sum.
``ModelProcess.start`` takes the spawned process from here and waits for its model.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

from app.settings import Settings

_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class SpawnedModel:
    """A model process on its way: the process and the parent's end of its pipe."""

    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection


def spawn_model_process(settings: Settings) -> SpawnedModel:
    """Start the child that loads the model ``settings`` name; it says "ready" (or "error") on the pipe."""
    parent_end, child_end = _SPAWN.Pipe()
    process = _SPAWN.Process(target=child_main, args=(child_end, settings), name="chord-model", daemon=True)
    process.start()
    child_end.close()
    return SpawnedModel(process, parent_end)


def child_main(connection, settings: Settings) -> None:
    """The child's entry point: torch is imported here, in the child, not in the parent that started it."""
    from app.engine.model_process import serve_model

    serve_model(connection, settings)
