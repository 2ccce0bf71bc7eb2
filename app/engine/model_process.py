"""The model in its own process, so generation never waits on the server's interpreter lock.

Python runs one thread at a time. In one process the model thread's generate loop (hundreds of
small steps, each a little Python) takes turns with the HTTP handlers, image decoding and the
processor, and on a busy server each slows the other. ``ModelProcess`` loads the model in a
child process (``spawn``) exactly as ``LocalModel`` does in-process and runs ``generate_ids``
there; the server keeps the processor, the scheduler and everything else. Prepared inputs go to
the child through one shared-memory block the parent reuses (a batch's patches are megabytes:
pickled through the pipe they cost more than the generation of a tiny model), only their
shapes go over the pipe, and token ids come back over it.

The child ends with its parent: its pipe reaches end-of-file, and a watcher thread sees the
parent process change (``PR_SET_PDEATHSIG`` would follow the loading thread, not the process). If
the child dies first (killed for memory, a crashed kernel), the batch in flight fails with
``model_process_exited`` and the server stops itself, so Supervisor restarts the whole program.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from multiprocessing import shared_memory

import torch
import torch.multiprocessing

from app.engine.base import EngineInfo
from app.errors import ChordError, ModelLoadError
from app.settings import Settings

logger = logging.getLogger(__name__)

_SPAWN = torch.multiprocessing.get_context("spawn")
_STOP_WAIT_S = 10.0


class SharedTensors:
    """Tensors passed through one reusable shared-memory block: the writer copies in, the reader gets views.

    One batch at a time: the parent writes the next batch only after the child has answered.
    The block grows (a new one, twice the size needed) when a batch does not fit.
    """

    def __init__(self, initial_bytes: int = 64 * 2**20):
        self._block = shared_memory.SharedMemory(create=True, size=initial_bytes)
        self._attached: shared_memory.SharedMemory | None = None

    def write(self, tensors: dict[str, torch.Tensor]) -> dict:
        """Copy ``tensors`` into the block; returns what ``read`` needs (block name, dtypes, shapes, offsets)."""
        tensors = {key: value.contiguous() for key, value in tensors.items()}
        needed = sum(_aligned(t.numel() * t.element_size()) for t in tensors.values())
        if needed > self._block.size:
            self._block.close()
            self._block.unlink()
            self._block = shared_memory.SharedMemory(create=True, size=2 * needed)
        memory = torch.frombuffer(self._block.buf, dtype=torch.uint8)
        layout, offset = {}, 0
        for key, tensor in tensors.items():
            nbytes = tensor.numel() * tensor.element_size()
            memory[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape).copy_(tensor)
            layout[key] = (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset)
            offset += _aligned(nbytes)
        return {"block": self._block.name, "tensors": layout}

    def read(self, message: dict) -> dict[str, torch.Tensor]:
        """Views into the block (valid until the writer's next ``write``)."""
        if self._attached is None or self._attached.name != message["block"]:
            if self._attached is not None:
                self._attached.close()
            # A spawned child shares its parent's resource tracker: the writer's unlink is the only one.
            self._attached = shared_memory.SharedMemory(name=message["block"])
        memory = torch.frombuffer(self._attached.buf, dtype=torch.uint8)
        tensors = {}
        for key, (dtype, shape, offset) in message["tensors"].items():
            dtype = getattr(torch, dtype)
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            tensors[key] = memory[offset : offset + nbytes].view(dtype).view(shape)
        return tensors

    @classmethod
    def reader(cls) -> SharedTensors:
        reader = cls.__new__(cls)
        reader._block, reader._attached = None, None
        return reader

    def close(self) -> None:
        if self._block is not None:
            self._block.close()
            self._block.unlink()
            self._block = None


def _aligned(nbytes: int, alignment: int = 64) -> int:
    return -(-nbytes // alignment) * alignment


class ModelProcessExited(ChordError):
    status = 503
    code = "model_process_exited"


class ModelProcess:
    """A child process holding the model; ``generate_ids`` as ``LocalModel`` has it, one call at a time."""

    def __init__(self, process, connection, info: EngineInfo, eos_token_ids: set[int], exit_on_loss: bool = True):
        self.info = info
        self.eos_token_ids = eos_token_ids
        self._process = process
        self._connection = connection
        self._lock = threading.Lock()
        self._lost = False
        self._exit_on_loss = exit_on_loss
        self._shared = SharedTensors()
        self._gpu_bytes = 0.0

    @classmethod
    def start(cls, settings: Settings, exit_on_loss: bool = True) -> ModelProcess:
        """Start the child and wait until its model is loaded; ModelLoadError (with the reason) if it is not."""
        parent_end, child_end = _SPAWN.Pipe()
        process = _SPAWN.Process(target=_child_main, args=(child_end, settings), name="chord-model", daemon=True)
        process.start()
        child_end.close()
        try:
            kind, payload = parent_end.recv()
        except EOFError:
            process.join(_STOP_WAIT_S)
            raise ModelLoadError(
                f"the model process exited with code {process.exitcode} while loading (see the log above)"
            ) from None
        if kind == "error":
            process.join(_STOP_WAIT_S)
            raise payload
        info, eos_token_ids = payload
        logger.info("the model runs in its own process (pid %d)", process.pid)
        return cls(process, parent_end, info, eos_token_ids, exit_on_loss)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            if self._lost:
                raise ModelProcessExited("the model process has ended; the server is restarting")
            try:
                self._connection.send(("generate", self._shared.write(inputs), max_new_tokens))
                kind, payload = self._connection.recv()
            except (EOFError, OSError):
                self._lost = True
                self._process.join(1.0)
                message = f"the model process ended (exit code {self._process.exitcode}); the server is restarting"
                logger.critical("%s", message)
                if self._exit_on_loss:
                    os.kill(os.getpid(), signal.SIGTERM)  # Supervisor starts the program again
                raise ModelProcessExited(message) from None
        if kind == "error":
            raise payload
        generated, logprobs, self._gpu_bytes = payload
        return generated, logprobs

    def gpu_memory_allocated(self) -> float:
        """Bytes torch held on the GPU in the model process after its last batch (0 before the first, or on CPU)."""
        return self._gpu_bytes

    def close(self) -> None:
        """Ask the child to stop; terminate it if it does not within a few seconds."""
        if self._process.is_alive():
            try:
                self._connection.send(("stop",))
            except (OSError, ValueError):
                pass
            self._process.join(_STOP_WAIT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(_STOP_WAIT_S)
        self._connection.close()
        self._shared.close()


def _child_main(connection, settings: Settings) -> None:
    """The child: load the model, say so, then generate for every request until told to stop."""
    from app.engine.runtime import cuda_memory_allocated
    from app.engine.transformers_engine import LocalModel
    from app.logs import configure_logging

    _die_with_parent()
    configure_logging(settings.log_level, stream=sys.stderr)  # stdout may be a CLI's JSON
    try:
        runner = LocalModel.load(settings)
    except ChordError as exc:
        connection.send(("error", ModelLoadError(exc.message)))
        return
    except Exception as exc:  # noqa: BLE001 - the parent reports it as a load failure
        connection.send(("error", ModelLoadError(f"could not load the model: {type(exc).__name__}: {exc}")))
        return
    connection.send(("ready", (runner.info, runner.eos_token_ids)))
    shared = SharedTensors.reader()
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, layout, max_new_tokens = message
        try:
            generated, logprobs = runner.generate_ids(shared.read(layout), max_new_tokens)
            connection.send(("ok", (generated, logprobs, cuda_memory_allocated())))
        except ChordError as exc:
            connection.send(("error", exc))
        except Exception as exc:  # noqa: BLE001 - the batch fails; the scheduler retries its requests alone
            logger.exception("generation failed in the model process")
            connection.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _die_with_parent(poll_s: float = 1.0) -> None:
    """Exit as soon as the server process is gone (even killed by SIGKILL, mid-generation)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="chord-model-parent-watch", daemon=True).start()
