"""Continuous batching: greedy decoding of many prompts at once, new ones joining between steps.

``generate`` decodes a fixed batch until its last row is done, so a request that arrives while a
batch runs waits for all of it, and with many users the model alternates two half-size batches.
``ContinuousDecoder`` keeps one running batch instead: ``admit`` prefills newly arrived prompts
(with their images) in one forward pass and appends them to the running rows, ``step`` decodes
one token for every running row, and a row leaves the moment it is done.

What it keeps per row is what ``generate`` keeps: the key/value cache, the attention mask, the
token history (for the logits processors) and the next position. Rows of different lengths are
left-padded to one length, so joining means padding one side's cache and mask on the left and
concatenating; leading columns that no row uses any more are dropped as rows leave. Positions
are Qwen2-VL's multimodal rope positions: a prompt's ``rope_deltas`` (from the model's own
prefill) plus its count of real tokens gives the position of its next token.

The tokens are ``generate``'s greedy ones (same logits processors, from the checkpoint's
generation config; the tests compare them). ``supports`` says whether a model can be decoded
this way; the engine falls back to ``generate`` when it cannot.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from app.engine.prefix_cache import Prefix, PrefixCache, select_rows

# Model types whose decoding the tests compare with ``generate`` (tests/test_continuous.py).
VERIFIED_MODEL_TYPES = frozenset({"qwen2_5_vl"})
# Logits processors that treat every row alike whatever its length, so rows may join at any step.
_ROW_INDEPENDENT = (RepetitionPenaltyLogitsProcessor,)


@dataclass
class FinishedRow:
    """One prompt's answer: its generated ids and the log-probability of each, and how crowded decoding was."""

    key: Hashable
    token_ids: list[int]
    logprobs: list[float]
    mean_rows: float  # rows decoded together, averaged over this row's steps


@dataclass
class _Row:
    key: Hashable
    limit: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    rows_seen: int = 0


def greedy_processors(model) -> LogitsProcessorList:
    """The logits processors greedy ``generate`` applies for this checkpoint's generation config."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=1,
        encoder_input_ids=torch.zeros(1, 1, dtype=torch.long),
        logits_processor=LogitsProcessorList(),
        device=model.device,
    )


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot be decoded continuously (None when it can)."""
    if model.config.model_type not in VERIFIED_MODEL_TYPES:
        return f"continuous batching is verified for {sorted(VERIFIED_MODEL_TYPES)}, not {model.config.model_type}"
    if not hasattr(getattr(model, "model", None), "rope_deltas"):
        return f"{type(model).__name__} has no multimodal rope deltas"
    text_config = getattr(model.config, "text_config", model.config)
    if getattr(text_config, "use_sliding_window", False):
        return "sliding-window attention keeps a cache that cannot be left-padded"
    if not isinstance(model.generation_config, GenerationConfig):
        return "no generation config"
    try:
        processors = greedy_processors(model)
    except (AttributeError, TypeError, ValueError) as exc:  # a private transformers API: say so, fall back
        return f"transformers' greedy logits processors could not be built here ({type(exc).__name__}: {exc})"
    others = [type(p).__name__ for p in processors if not isinstance(p, _ROW_INDEPENDENT)]
    if others:
        return f"the generation config asks for logits processors that depend on each row's length: {others}"
    return None


class ContinuousDecoder:
    """The running batch of one model; ``admit`` and ``step`` are called from one thread."""

    def __init__(self, model, stop_ids: set[int], pad_id: int, prefixes: PrefixCache | None = None):
        self.model = model
        self.prefixes = prefixes  # image prefixes' key/value caches, or None (no image cache)
        self.stop_ids = stop_ids
        self.pad_id = pad_id
        self.processors = greedy_processors(model)
        # With sdpa, a decoding step's mask is the padding mask itself (one query attends to every
        # real token): passed ready-made, transformers does not rebuild it from scratch each step.
        text_config = getattr(model.config, "text_config", model.config)
        layer_types = set(getattr(text_config, "layer_types", None) or ())
        self._ready_mask = text_config._attn_implementation == "sdpa" and layer_types == {"full_attention"}
        self._reset()

    @property
    def size(self) -> int:
        """Rows decoding now."""
        return len(self._rows)

    def admit(
        self,
        inputs: dict[str, torch.Tensor],
        keys: Sequence[Hashable],
        limits: Sequence[int],
        image_keys: Sequence[bytes | None] | None = None,
    ) -> list[FinishedRow]:
        """Prefill these prompts (a left-padded processor batch) and add them; returns rows already done.

        With a prefix cache and an ``image_keys`` entry for a row, a prompt whose image prefix is cached
        prefills only its own text; the others prefill in full (together) and leave their prefix cached.
        """
        if self.prefixes is None or image_keys is None or not any(image_keys):
            return self._admit_full(inputs, keys, limits, {})
        plan = self.prefixes.plan(inputs, image_keys)
        finished = []
        if plan.full:
            part = inputs if len(plan.full) == len(keys) else select_rows(inputs, plan.full)
            finished += self._admit_full(part, [keys[r] for r in plan.full], [limits[r] for r in plan.full], plan.store)
        for row, real, prefix in plan.hits:
            finished += self._admit_prefixed(real, prefix, keys[row], limits[row])
        return finished

    def _admit_full(self, inputs, keys, limits, to_store: dict[int, tuple[bytes, int]]) -> list[FinishedRow]:
        """Prefill whole prompts in one forward pass; keep the prefixes ``to_store`` names (row: key, length)."""
        device = self.model.device
        inputs = {name: value.to(device) for name, value in inputs.items()}
        with torch.inference_mode():
            self.model.model.rope_deltas = None  # set by this prefill
            output = self.model(**inputs, use_cache=True, logits_to_keep=1)
            # Without images the model keeps no deltas; generate then uses zeros, and so does this.
            deltas = self.model.model.rope_deltas
            deltas = torch.zeros(len(keys), dtype=torch.long) if deltas is None else deltas.view(-1)
            # Copies: the inputs may be views of a buffer the sender reuses once this returns.
            mask, input_ids = inputs["attention_mask"].clone(), inputs["input_ids"].clone()
            for row, (prefix_key, length) in to_store.items():
                start = int((mask[row] == 0).sum())  # left padding
                self.prefixes.store(prefix_key, output.past_key_values, row, start, length, int(deltas[row]))
            positions = mask.sum(dim=1) + deltas.to(device)
            tokens, logprobs = self._pick(output.logits[:, -1, :], input_ids)
            first = len(self._rows)
            rows = [_Row(key, limit) for key, limit in zip(keys, limits, strict=True)]
            self._join(output.past_key_values, mask, input_ids, positions, tokens, rows)
            return self._record(first, tokens, logprobs)

    def _admit_prefixed(self, real: torch.Tensor, prefix: Prefix, key: Hashable, limit: int) -> list[FinishedRow]:
        """Prefill one prompt's text after its cached image prefix, at the positions a full prefill gives it."""
        device = self.model.device
        real = real.to(device)[None]
        total = real.shape[1]
        with torch.inference_mode():
            mask = torch.ones(1, total, dtype=torch.long, device=device)
            output = self.model(
                input_ids=real[:, prefix.length :],
                attention_mask=mask,
                position_ids=torch.arange(prefix.length, total, device=device)[None] + prefix.rope_delta,
                past_key_values=self.prefixes.cache_from(prefix),
                use_cache=True,
                logits_to_keep=1,
            )
            positions = torch.tensor([total + prefix.rope_delta], device=device)
            tokens, logprobs = self._pick(output.logits[:, -1, :], real)
            first = len(self._rows)
            self._join(output.past_key_values, mask, real, positions, tokens, [_Row(key, limit)])
            return self._record(first, tokens, logprobs)

    def step(self) -> list[FinishedRow]:
        """Decode one token for every running row; returns the rows that finished with it."""
        if not self._rows:
            return []
        with torch.inference_mode():
            self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
            mask = {"full_attention": self._mask.bool()[:, None, None, :]} if self._ready_mask else self._mask
            output = self.model(
                input_ids=self._next[:, None],
                attention_mask=mask,
                position_ids=self._positions[:, None],
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self._sequences = torch.cat([self._sequences, self._next[:, None]], dim=1)
            self._positions = self._positions + 1
            self._next, logprobs = self._pick(output.logits[:, -1, :], self._sequences)
            return self._record(0, self._next, logprobs)

    def abandon(self) -> list[Hashable]:
        """Drop every running row (after a failed forward pass); their keys."""
        keys = [row.key for row in self._rows]
        self._reset()
        return keys

    # --- internals ---------------------------------------------------------------------------
    def _reset(self) -> None:
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        # Per row, aligned with the cache: attention mask and token ids [rows, length]; and per row
        # the chosen token not yet fed (``_next``) and the rope position it will be fed at.
        self._mask = self._sequences = self._next = self._positions = None

    def _pick(self, logits: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy choice after the logits processors, as ``generate`` makes it; and its log-probability."""
        scores = self.processors(history, logits.float())
        logprobs, tokens = torch.log_softmax(scores, dim=-1).max(dim=-1)
        return tokens, logprobs

    def _record(self, first: int, tokens: torch.Tensor, logprobs: torch.Tensor) -> list[FinishedRow]:
        """Give rows ``first``.. their new token; retire the rows that are done."""
        size = len(self._rows)
        finished_at = []
        for index, token, logprob in zip(range(first, size), tokens.tolist(), logprobs.tolist(), strict=True):
            row = self._rows[index]
            row.token_ids.append(token)
            row.logprobs.append(logprob)
            row.rows_seen += size
            if token in self.stop_ids or len(row.token_ids) >= row.limit:
                finished_at.append(index)
        return self._retire(finished_at)

    def _retire(self, indices: list[int]) -> list[FinishedRow]:
        if not indices:
            return []
        finished = [
            FinishedRow(row.key, row.token_ids, row.logprobs, row.rows_seen / len(row.token_ids))
            for row in (self._rows[i] for i in indices)
        ]
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        if not keep:
            self._reset()
            return finished
        index = torch.tensor(keep, device=self._mask.device)
        self._rows = [self._rows[i] for i in keep]
        for layer in self._cache.layers:  # each on its own device when the model is split over GPUs
            on_device = index.to(layer.keys.device)
            layer.keys, layer.values = layer.keys[on_device], layer.values[on_device]
        self._mask = self._mask[index]
        self._sequences = self._sequences[index]
        self._positions = self._positions[index]
        self._next = self._next[index]
        self._drop_unused_columns()
        return finished

    def _drop_unused_columns(self) -> None:
        """Cut the leading columns that are padding in every remaining row."""
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start == 0:
            return
        self._mask = self._mask[:, start:]
        self._sequences = self._sequences[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[..., start:, :]
            layer.values = layer.values[..., start:, :]

    def _join(self, cache: DynamicCache, mask, input_ids, positions, tokens, rows: list[_Row]) -> None:
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            raise TypeError("continuous batching needs a plain dynamic key/value cache")
        if not self._rows:
            self._cache, self._mask, self._sequences, self._positions = cache, mask, input_ids, positions
            self._next, self._rows = tokens, rows
            return
        length = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_left_pad(self._mask, length, 0), _left_pad(mask, length, 0)])
        self._sequences = torch.cat(
            [_left_pad(self._sequences, length, self.pad_id), _left_pad(input_ids, length, self.pad_id)]
        )
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, tokens])
        for running, joining in zip(self._cache.layers, cache.layers, strict=True):
            running.keys = torch.cat(
                [_left_pad(running.keys, length, 0, dim=-2), _left_pad(joining.keys, length, 0, dim=-2)]
            )
            running.values = torch.cat(
                [_left_pad(running.values, length, 0, dim=-2), _left_pad(joining.values, length, 0, dim=-2)]
            )
        self._rows = self._rows + rows


def _left_pad(tensor: torch.Tensor, length: int, value, dim: int = -1) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - (dim % tensor.dim())) + [missing, 0]
    return torch.nn.functional.pad(tensor, pad, value=value)
