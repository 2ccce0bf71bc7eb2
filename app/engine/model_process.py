"""The model in its own process, so generation never waits on the server's interpreter lock.

Python runs one thread at a time. In one process the model thread's generate loop (hundreds of
small steps, each a little Python) takes turns with the HTTP handlers, image decoding and the
processor, and on a busy server each slows the other. ``ModelProcess`` loads the model in a
child process (``spawn``) exactly as ``LocalModel`` does in-process and decodes there (a
continuous batch, or one ``generate`` per batch); the server keeps the processor, the
scheduler and everything else. Prepared inputs go to the child through one shared-memory block
the parent reuses (a batch's patches are megabytes: pickled through the pipe they cost more than
the generation of a tiny model), only their shapes go over the pipe, and token ids come back
over it.

The child ends with its parent: its pipe reaches end-of-file, and a watcher thread sees the
parent process change (``PR_SET_PDEATHSIG`` would follow the loading thread, not the process). If
the child dies first (killed for memory, a crashed kernel), every request in flight fails with
``model_process_exited`` and the server stops itself, so Supervisor restarts the whole program.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing import shared_memory

import torch
import torch.multiprocessing  # noqa: F401 - its pickling of tensors, for what the child sends back

from app.engine.image_cache import CacheCounts
from app.engine.progress import ProgressClock, throttled
from app.errors import ChordError, ModelLoadError, ModelProcessExited
from app.settings import Settings

logger = logging.getLogger(__name__)

_STOP_WAIT_S = 10.0
PROGRESS_REPORT_S = 0.5  # the child tells its parent of decoding steps at most this often


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


class ModelProcess:
    """A child process holding the model: ``generate_ids`` and ``start_ids`` as ``LocalModel`` has them.

    Calls may come from several threads: each message gets futures, and a receiver thread
    completes them as the child answers. The shared block holds one message's inputs at a time;
    the next is written once the child says it has read them (its prefill is done).
    """

    def __init__(self, process, connection, ready: tuple, exit_on_loss: bool = True):
        self.info, self.eos_token_ids, self.continuous_unsupported, ready_memory = ready
        self.model = None  # in the child process
        self.progress = ProgressClock()  # ticked by every message of the child's (it reports its steps)
        self._process = process
        self._connection = connection
        self._exit_on_loss = exit_on_loss
        self._shared = SharedTensors()
        self._shared_free = threading.Semaphore(1)
        self._cache_counts = CacheCounts()  # the child's image prefix cache, as of its last answer
        self._send_lock = threading.Lock()
        self._pending: dict[object, Future] = {}
        self._keys = itertools.count()
        self._lost: str | None = None  # why calls fail now
        self._gpu_memory: dict[str, tuple[float, float]] = ready_memory
        self._receiver = threading.Thread(target=self._receive, name="chord-model-receive", daemon=True)
        self._receiver.start()

    @classmethod
    def start(cls, process, parent_end, exit_on_loss: bool = True) -> ModelProcess:
        """Wait until the child ``model_spawn.spawn_model_process`` started (``process``, the parent's end of its
        pipe) has loaded its model; ModelLoadError (with the reason) if it does not."""
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
        logger.info("the model runs in its own process (pid %d)", process.pid)
        return cls(process, parent_end, payload, exit_on_loss)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched ``generate`` in the child (between two of its decoding steps, if it has a running batch)."""
        (future,) = self._send("generate", inputs, max_new_tokens, rows=1)
        generated, logprobs = future.result()
        return generated, logprobs

    def start_ids(
        self, inputs: dict[str, torch.Tensor], limits, pad_id: int, stop_ids: set[int], image_keys=None
    ) -> list[Future]:
        """Add these prompts to the child's running batch; a future per row, of ``FinishedRow``."""
        keys = None if image_keys is None else list(image_keys)
        return self._send("admit", inputs, (list(limits), pad_id, set(stop_ids), keys), rows=len(limits))

    def image_cache_counts(self) -> CacheCounts:
        """The child's image prefix cache counts, as of its last answer."""
        return self._cache_counts

    def gpu_memory(self) -> dict[str, tuple[float, float]]:
        """Per CUDA device, bytes torch held and reserved in the model process when it last read a batch (at
        load before that; empty on the CPU)."""
        return self._gpu_memory

    def _stop_wait_s(self) -> float:
        """How long a child that is making progress gets to finish; a stalled one gets a second."""
        return _STOP_WAIT_S if self.progress.seconds_since() < _STOP_WAIT_S else 1.0

    def close(self) -> None:
        """Ask the child to stop; terminate it if it does not within a few seconds, kill it if still there."""
        self._lost = self._lost or "the model process was stopped"
        if self._process.is_alive():
            try:
                with self._send_lock:
                    self._connection.send(("stop",))
            except (OSError, ValueError):
                pass
            self._process.join(self._stop_wait_s())
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(self._stop_wait_s())
        if self._process.is_alive():  # a stopped (SIGSTOP) or wedged child ignores SIGTERM
            self._process.kill()
            self._process.join(_STOP_WAIT_S)
        self._connection.close()
        self._receiver.join(_STOP_WAIT_S)
        self._shared.close()

    def _send(self, kind: str, inputs: dict[str, torch.Tensor], arguments, rows: int) -> list[Future]:
        self._shared_free.acquire()  # released when the child has read the block's previous inputs
        with self._send_lock:
            if self._lost:
                self._shared_free.release()
                raise ModelProcessExited(self._lost)
            keys = [next(self._keys) for _ in range(rows)]
            futures = [Future() for _ in keys]
            self._pending.update(zip(keys, futures, strict=True))
            try:
                self._connection.send((kind, self._shared.write(inputs), arguments, keys))
            except (OSError, ValueError):
                pass  # the receiver sees the pipe end and fails these futures
        return futures

    def _receive(self) -> None:
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                self._on_loss()
                return
            self.progress.tick()
            if message[0] == "progress":
                continue
            if message[0] == "cache":
                self._cache_counts = message[1]
                continue
            if message[0] == "read":
                self._gpu_memory = message[1]
                self._shared_free.release()
            else:  # ("done", key, ok, payload)
                _, key, ok, payload = message
                future = self._pending.pop(key)
                if ok:
                    future.set_result(payload)
                else:
                    future.set_exception(payload)

    def _on_loss(self) -> None:
        """The pipe ended: fail what is pending; unless closed on purpose, stop the server (Supervisor restarts it)."""
        on_purpose = self._lost is not None
        if not on_purpose:
            self._process.join(1.0)
            self._lost = f"the model process ended (exit code {self._process.exitcode}); the server is restarting"
            logger.critical("%s", self._lost)
        with self._send_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(ModelProcessExited(self._lost))
        self._shared_free.release()
        if not on_purpose and self._exit_on_loss:
            os.kill(os.getpid(), signal.SIGTERM)


def serve_model(connection, settings: Settings) -> None:
    """The child: load the model, say so, then serve ``generate`` and ``admit`` messages until told to stop."""
    from app.engine.continuous import ContinuousDecoder
    from app.engine.decode_loop import Group, model_error, run_decode_loop
    from app.engine.local_model import LocalModel
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
    connection.send(("ready", (runner.info, runner.eos_token_ids, runner.continuous_unsupported, runner.gpu_memory())))
    runner.on_progress = throttled(lambda: connection.send(("progress",)), PROGRESS_REPORT_S)
    shared = SharedTensors.reader()
    decoder = None
    if runner.continuous_unsupported is None:
        decoder = ContinuousDecoder(runner.model, set(), 0, runner.prefixes)

    def finished(key, outcome) -> None:
        if runner.prefixes is not None:
            connection.send(("cache", runner.image_cache_counts()))
        connection.send(("done", key, not isinstance(outcome, Exception), outcome))

    def generate(layout, max_new_tokens: int, key) -> None:
        inputs = shared.read(layout)
        try:
            outcome = runner.generate_ids(inputs, max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - the batch fails; the scheduler retries its requests alone
            outcome = model_error(exc, inputs["input_ids"].shape[0])
        connection.send(("read", runner.gpu_memory()))
        finished(key, outcome)

    def receive(block: bool) -> list[Group] | None:
        groups = []
        while block or connection.poll():
            block = False
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return None
            kind = message[0]
            if kind == "stop":
                return None
            _, layout, arguments, keys = message
            if kind == "generate":
                generate(layout, arguments, keys[0])
                block = decoder is None or decoder.size == 0 and not groups
                continue
            limits, decoder.pad_id, decoder.stop_ids, image_keys = arguments
            groups.append(Group(shared.read(layout), keys, limits, image_keys))
        return groups

    def admitted(group: Group) -> None:
        connection.send(("read", runner.gpu_memory()))

    if decoder is None:  # continuous batching unsupported: the parent sends "generate" only
        while receive(True) is not None:
            pass
        return
    run_decode_loop(decoder, receive, admitted, finished, runner.on_progress)


def _die_with_parent(poll_s: float = 1.0) -> None:
    """Exit as soon as the server process is gone (even killed by SIGKILL, mid-generation)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="chord-model-parent-watch", daemon=True).start()
