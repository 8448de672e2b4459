"""Mixture-of-experts calibration: the inputs of fused experts, and where tokens are routed.

Two passes over the calibration batches that the dense layers do not need:

- :func:`fused_expert_inputs` sees the input of every expert slice of a fused 3-D expert
  parameter (``workers/layers.py``), so GPTQ and Wanda calibrate a fused expert on exactly the
  rows routed to it, as a hook on a separate expert ``nn.Linear`` does. A fused experts module
  computes every expert inside one forward (transformers' ``grouped_mm`` by default); for this
  pass it runs its eager loop instead (``config._experts_implementation = "eager"``, the same
  math), which calls ``F.linear(x, param[e])`` per expert, and ``F.linear`` is wrapped to record
  ``x`` when its weight is a slice of a watched parameter. A class whose eager loop does not call
  ``F.linear`` (transposed layouts use ``bmm``) records nothing: the worker then says so.
- :func:`routing_counts` counts how many calibration tokens (padding excluded) each routed
  expert receives, from the ``top_k_index`` an experts module is called with (fused, or a
  ``ModuleList`` of separate experts called as one, as transformers 5.x calls them); for
  separate experts whose container is not called, from the rows each expert's first matrix
  receives (padding included: the block flattens tokens before routing).
  :func:`routing_fractions` turns counts into the fraction of tokens routed to each expert, the
  weight MC-MoE gives the expert's sensitivity (``searcher.params.routing``; docs/moe.md).

Expert inputs include padding tokens routed to the expert (a hook after the block's flattening
cannot tell them apart); calibration samples of one length have none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.spaces.experts import expert_of

from .layers import ExpertSlice

Record = Callable[[str, torch.Tensor], None]


@contextmanager
def fused_expert_inputs(slices: Mapping[str, ExpertSlice], record: Record) -> Iterator[None]:
    """While active, ``record(name, x)`` receives the input rows ``x`` of every expert slice in
    ``slices`` each time its experts module applies it."""
    watched: dict[int, tuple[torch.Tensor, dict[int, str]]] = {}
    modules: dict[int, nn.Module] = {}
    for name, piece in slices.items():
        param = piece.tensor
        watched.setdefault(id(param), (param, {}))[1][piece.index] = name
        modules[id(piece.module)] = piece.module
    linear = F.linear

    def recording_linear(x: torch.Tensor, weight: torch.Tensor, bias: Any = None) -> torch.Tensor:
        base = weight._base
        hit = watched.get(id(base)) if base is not None else None
        if hit is not None:
            param, names = hit
            step = param.stride(0) * param.element_size()
            index = (weight.data_ptr() - param.data_ptr()) // step
            if index in names:
                record(names[index], x)
        return linear(x, weight, bias)

    configs: list[Any] = [m.config for m in modules.values() if hasattr(m, "config")]
    saved = [getattr(c, "_experts_implementation", None) for c in configs]
    for config in configs:
        config._experts_implementation = "eager"
    torch.nn.functional.linear = recording_linear  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.nn.functional.linear = linear
        for config, value in zip(configs, saved, strict=True):
            config._experts_implementation = value


def count_routes(top_k_index: torch.Tensor, experts: int,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens routed to each of ``experts`` experts, from a (tokens × top_k) ``top_k_index``;
    ``keep`` (tokens,) leaves out the tokens it marks False. Indices outside [0, experts) (a
    sentinel for "no expert") are not counted."""
    index = top_k_index if keep is None else top_k_index[keep]
    index = index.reshape(-1)
    index = index[(index >= 0) & (index < experts)]
    return torch.bincount(index, minlength=experts)[:experts].cpu()


def routing_counts(model: nn.Module, slices: Mapping[str, ExpertSlice],
                   expert_layers: Mapping[str, nn.Module], batches: list[dict[str, torch.Tensor]]
                   ) -> tuple[dict[tuple[str, int], int], int]:
    """((experts prefix, expert) → tokens routed to it, calibration tokens) over ``batches``.

    ``slices``: the fused expert slices (their modules are hooked); ``expert_layers``: routed
    expert matrices held as modules, by name (the first matrix of each expert is hooked)."""
    counts: dict[tuple[str, int], int] = {}
    keep: dict[str, torch.Tensor] = {}
    handles = []
    fused = {id(s.module): (s.module, expert_of(n)) for n, s in slices.items()}

    def on_fused(prefix: str, experts: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            mask = keep.get("mask")
            rows = mask if mask is not None and mask.numel() == hidden.shape[0] else None
            for e, n in enumerate(count_routes(index, experts, rows).tolist()):
                counts[(prefix, e)] = counts.get((prefix, e), 0) + int(n)
        return hook

    for module, found in fused.values():
        assert found is not None
        size = next(p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3)
        handles.append(module.register_forward_pre_hook(on_fused(found[0], size),
                                                        with_kwargs=True))
    first: dict[tuple[str, int], str] = {}
    for name in expert_layers:
        found = expert_of(name)
        if found is not None:
            first.setdefault(found, name)
    routed: set[str] = set()  # containers called with top_k_index: counted there, not by rows
    containers = dict(model.named_modules())

    def on_container(prefix: str, experts: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            index = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            if isinstance(index, torch.Tensor) and not index.is_floating_point():
                routed.add(prefix)
                on_fused(prefix, experts)(_module, args, kwargs)
        return hook

    for prefix in {moe for moe, _ in first}:
        count = sum(1 for moe, _ in first if moe == prefix)
        if prefix in containers:
            handles.append(containers[prefix].register_forward_pre_hook(
                on_container(prefix, count), with_kwargs=True))

    def on_expert(key: tuple[str, int]):
        def hook(_module: nn.Module, args: tuple) -> None:
            if key[0] in routed:
                return
            rows = args[0].reshape(-1, args[0].shape[-1]).shape[0]
            counts[key] = counts.get(key, 0) + rows
        return hook

    for key, name in first.items():
        counts.setdefault(key, 0)
        handles.append(expert_layers[name].register_forward_pre_hook(on_expert(key)))
    tokens = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch["attention_mask"].bool()
                keep["mask"] = mask.reshape(-1)
                tokens += int(mask.sum())
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return counts, tokens


def routing_fractions(counts: Mapping[tuple[str, int], int], tokens: int,
                      layers: list[str]) -> dict[str, float]:
    """Layer name → the fraction of calibration tokens routed to its expert, for every routed
    expert matrix among ``layers`` (a MoE layer's fractions sum to top_k)."""
    out = {}
    for name in layers:
        found = expert_of(name)
        if found is not None:
            out[name] = counts.get(found, 0) / max(tokens, 1)
    return out
