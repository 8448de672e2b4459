"""Finding the quantizable layers of a model, and reading/writing their weights uniformly.

``nn.Linear`` stores its weight as (out × in); GPT-2's ``Conv1D`` stores (in × out). Everything
else in mpsearch sees (out × in), so the transpose is confined to this module.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from mpsearch.spaces.space import LayerInfo

try:  # transformers keeps GPT-2's Conv1D here
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - depends on the transformers version
    Conv1D = ()  # type: ignore[assignment,misc]


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module name → module, for every Linear or Conv1D, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)}


def discover_layers(model: nn.Module) -> list[LayerInfo]:
    """Shapes of every quantizable layer (works on a model built on the meta device)."""
    infos = []
    for name, module in quantizable_modules(model).items():
        out_f, in_f = oriented_shape(module)
        infos.append(LayerInfo(name, in_f, out_f))
    return infos


def oriented_shape(module: nn.Module) -> tuple[int, int]:
    rows, cols = cast(torch.Tensor, module.weight).shape
    return (cols, rows) if isinstance(module, Conv1D) else (rows, cols)


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out × in)."""
    w = cast(torch.Tensor, module.weight).data
    return w.t() if isinstance(module, Conv1D) else w


def set_weight_(module: nn.Module, w: torch.Tensor) -> None:
    """Point the module at ``w`` (out × in) without copying: swapping a cached variant is O(1)."""
    module.weight.data = w.t() if isinstance(module, Conv1D) else w
