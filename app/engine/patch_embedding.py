"""The vision patch embedding as one matrix product instead of a ``Conv3d`` (same weights, same result).

Qwen2-VL and Qwen2.5-VL embed each image patch with a ``Conv3d`` whose kernel equals its stride,
so every output is one flattened patch times the flattened kernel: a matrix product. PyTorch runs
it as a convolution, which costs about 0.55 ms per 640x640 scene on one CPU core (3.9 ms of a
17.7 ms prefill for 7 scenes, measured), and on some GPUs cuDNN picks a very slow kernel for it
(transformers issue 45750). transformers' own switch, ``fusion_config={"patch_embeddings": True}``,
left the new layer's weights unloaded for checkpoints saved by transformers 5 (5.23.0: the weight
reported UNEXPECTED and the new one MISSING), so Chord swaps the forward after loading, on the
loaded weights; the state dict keeps its names.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearPatchEmbed(nn.Module):
    """Wraps a patch embedding whose ``proj`` is a non-overlapping ``Conv3d``; computes it as ``F.linear``."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.proj = original.proj
        self.embed_dim = self.proj.out_channels
        self.patch_volume = self.proj.weight[0].numel()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        # On the weight's device too: with device_map="auto" the original module may have carried that hook.
        flat = hidden_states.reshape(-1, self.patch_volume).to(device=weight.device, dtype=weight.dtype)
        return nn.functional.linear(flat, weight.view(self.embed_dim, -1), self.proj.bias)


def is_non_overlapping_patch_conv(module: nn.Module) -> bool:
    proj = getattr(module, "proj", None)
    return (
        isinstance(proj, nn.Conv3d)
        and proj.stride == proj.kernel_size
        and proj.padding == (0, 0, 0)
        and proj.dilation == (1, 1, 1)
        and proj.groups == 1
    )


def use_linear_patch_embedding(model: nn.Module) -> list[str]:
    """Swap every ``*patch_embed`` with a non-overlapping ``Conv3d`` for ``LinearPatchEmbed``; their names."""
    swapped = []
    for name, module in list(model.named_modules()):
        if not name.endswith("patch_embed") or not is_non_overlapping_patch_conv(module):
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, LinearPatchEmbed(module))
        swapped.append(name)
    return swapped
