"""One model over several devices of one worker: sizing, placing, loading and running it.

A worker given ``devices`` (more than one; ``workers.gpus: k`` gives ``cuda:0 … cuda:k-1``) holds
its model as a plain pipeline of its repeated blocks (the largest ``nn.ModuleList``: a Llama's
decoder layers, GPT-2's ``h``, BERT's encoder layers):

1. :func:`empty_model` builds the model from its config with parameters on the meta device (no
   memory, no weights read) and buffers real, on the CPU (a rotary embedding's ``inv_freq``);
2. :func:`estimate_needs` sizes each block (weights, its variants: one dense copy of each
   searched layer per option, its KV cache) and the activations, from parameter sizes, the
   space's options and the calibration batch; :func:`device_budgets` reads each device's free
   memory; :func:`mpsearch.workers.placement.place` cuts the blocks (or raises a one-line
   :class:`~.placement.PlacementError`);
3. :func:`materialise_` creates every parameter on its block's device, read from the model's
   safetensors files (or random, for benchmarks); a model whose files do not match its
   parameters one to one is loaded on the CPU by ``from_pretrained`` and moved instead;
4. :func:`dispatch_` hooks each block so that its inputs (hidden state, masks, rotary
   embeddings) move to its device before it runs, and the last block's output back to the
   first device, where the embeddings, the head, the inputs and the reference stay.

The variant cache is split the same way (:class:`ShardedVariantCache`: one
:class:`~.variant_cache.VariantCache` per device, capped by what the placement left free there).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.spaces.space import SearchSpace

from .layers import get_weight, quantizable_targets
from .placement import BlockNeeds, Placement, place
from .registry import HESSIAN, handler_for
from .variant_cache import VariantCache

Key = tuple[str, Hashable]
RESERVE_BYTES = 1 << 30  # left free on each GPU: the CUDA context, allocator slack, cuBLAS space


# -- the model's blocks ------------------------------------------------------------------------
def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and modules of the model's repeated blocks (its longest ``nn.ModuleList``)."""
    lists = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        from .placement import PlacementError
        raise PlacementError(f"{type(model).__name__} has no list of repeated blocks to spread "
                             "over several devices; use one GPU per worker (workers.gpus <= 1)")
    return max(lists, key=lambda item: len(item[1]))


def block_of(layer: str, prefix: str) -> str | None:
    """``model.layers.3`` for ``model.layers.3.mlp.up_proj`` (prefix ``model.layers``); None outside."""
    if not layer.startswith(prefix + "."):
        return None
    return f"{prefix}.{layer[len(prefix) + 1:].split('.', 1)[0]}"


# -- sizes -------------------------------------------------------------------------------------
def _nbytes(params: Any) -> int:
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def _first(config: Any, *names: str, default: int) -> int:
    """The first of ``names`` the config sets (architectures name the same size differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    return default


def _shape(config: Any) -> dict[str, int]:
    """Hidden size, MLP width, heads, KV heads and vocabulary of a transformers config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", default=0)
    heads = _first(text, "num_attention_heads", "n_head", default=1)
    return {"hidden": hidden,
            "inter": _first(text, "intermediate_size", "n_inner", default=4 * hidden),
            "heads": heads,
            "kv_heads": _first(text, "num_key_value_heads", default=heads),
            "head_dim": _first(text, "head_dim", default=hidden // max(heads, 1)),
            "vocab": _first(text, "vocab_size", default=0),
            "use_cache": int(bool(getattr(text, "use_cache", False)))}


def estimate_needs(model: nn.Module, space: SearchSpace, *, batch_size: int, seq_len: int,
                   samples: int, objective: str, kl_top_k: int | None
                   ) -> tuple[list[BlockNeeds], int, int, int]:
    """(blocks, weights outside them, reference + output activations, one block's working set).

    Upper bounds in bytes from parameter sizes: variants are dense copies in the model's dtype,
    one per option of each searched layer; a block keeps its KV cache and the input statistics
    its options ask for (a float32 Hessian in × in per layer for GPTQ, norms for Wanda); the
    working set assumes eager attention (scores materialised in float32) and the MLP's three
    projections alive at once.
    """
    prefix, blocks = find_blocks(model)
    modules = quantizable_targets(model)  # a fused expert's slice too
    options = {layer.name: len(gene.options) for gene in space.genes for layer in gene.layers}
    variants = dict.fromkeys((f"{prefix}.{i}" for i in range(len(blocks))), 0)
    outside_variants = 0
    statistics = dict.fromkeys(variants, 0)  # kept once gathered: GPTQ Hessians, Wanda norms
    for gene in space.genes:
        wanted = {n for option in gene.options for n in handler_for(option).statistics(option)}
        for layer in gene.layers:
            block = block_of(layer.name, prefix)
            if block in statistics and wanted:
                cols = layer.in_features
                statistics[block] += 8 * cols + (4 * cols * cols if HESSIAN in wanted else 0)
    for name, count in options.items():
        w = get_weight(modules[name])
        size = w.numel() * w.element_size() * count
        block = block_of(name, prefix)
        if block in variants:
            variants[block] += size
        else:  # a searched layer outside the blocks (an LM head): kept on the first device
            outside_variants += size
    s = _shape(model.config)
    e = next(model.parameters()).element_size()
    b, t = min(batch_size, samples), seq_len
    kv = s["use_cache"] * 2 * b * t * s["kv_heads"] * s["head_dim"] * e
    needs = [BlockNeeds(f"{prefix}.{i}", _nbytes(block.parameters()), variants[f"{prefix}.{i}"],
                        kv + statistics[f"{prefix}.{i}"]) for i, block in enumerate(blocks)]
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    outside = _nbytes(p for p in model.parameters() if id(p) not in in_blocks)
    working = b * t * (6 * s["hidden"] + 3 * s["inter"]) * e + b * s["heads"] * t * t * 4
    if objective == "embedding_distortion":
        reference, output = samples * s["hidden"] * 4, b * t * s["hidden"] * 4
    else:  # logits: KL keeps float32 log-probabilities (or the top k values and ids)
        per_token = 12 * kl_top_k if kl_top_k and objective == "kl" else 4 * s["vocab"]
        reference, output = samples * t * per_token, b * t * s["vocab"] * (e + 12)
    return needs, outside + outside_variants, reference + output, working


def device_budgets(devices: Sequence[str]) -> list[int]:
    """Bytes each device may use: a GPU's free memory less :data:`RESERVE_BYTES`; the CPU's
    physical memory shared equally among the devices named ``cpu``."""
    budgets = []
    cpus = sum(1 for d in devices if torch.device(d).type == "cpu")
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            budgets.append(max(free - RESERVE_BYTES, 0))
        else:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            budgets.append(memory // max(cpus, 1))
    return budgets


# -- building and loading ----------------------------------------------------------------------
@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device, their buffers as usual."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def empty_model(path: str, kind: str, dtype: str) -> nn.Module:
    """The model of ``path``'s config, parameters on the meta device, buffers on the CPU."""
    from .model_loading import _auto_class, load_config

    config = load_config(path)
    with _parameters_on_meta():
        model = _auto_class(kind).from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def _device_of_param(prefix: str, index: dict[str, int], devices: Sequence[str]):
    def device_of(name: str) -> str:
        block = block_of(name, prefix)
        return devices[index[block]] if block in index else devices[0]
    return device_of


def _safetensors_files(path: str) -> list[Path]:
    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / n for n in names]
    single = root / "model.safetensors"
    return [single] if single.is_file() else []


def materialise_(model: nn.Module, placement: Placement, path: str | None) -> bool:
    """Create each meta parameter on its device: from ``path``'s safetensors files, or random
    (``path`` None: normal(0, 0.02) matrices, unit norm weights, zero biases). Tied parameters
    stay tied. False (and nothing changed) when the files do not hold exactly the parameters."""
    prefix, _blocks = find_blocks(model)
    device_of = _device_of_param(prefix, placement.index_of(), placement.devices)
    groups: dict[int, list[str]] = {}
    params: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        params.setdefault(name, p)
    heads = {names[0]: names for names in groups.values()}
    files = _safetensors_files(path) if path is not None else []
    if path is not None:
        from safetensors import safe_open

        stored: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                stored.update(dict.fromkeys(handle.keys(), f))
        wanted = {next((n for n in names if n in stored), names[0]) for names in heads.values()}
        if not files or not wanted <= set(stored) or len(stored) != len(wanted):
            return False
    modules = dict(model.named_modules())

    def assign(names: list[str], tensor: torch.Tensor) -> None:
        param = nn.Parameter(tensor, requires_grad=False)
        for n in names:
            owner, _, attr = n.rpartition(".")
            modules[owner]._parameters[attr] = param

    if path is None:
        for head, names in heads.items():
            meta = params[head]
            t = torch.empty(meta.shape, dtype=meta.dtype, device=device_of(head))
            if t.dim() >= 2:
                t.normal_(0.0, 0.02)
            else:
                t.fill_(1.0 if head.endswith("weight") else 0.0)
            assign(names, t)
    else:
        by_file: dict[Path, list[tuple[str, list[str]]]] = {}
        for names in heads.values():
            key = next(n for n in names if n in stored)
            by_file.setdefault(stored[key], []).append((key, names))
        for f, entries in by_file.items():
            with safe_open(str(f), framework="pt") as handle:
                for key, names in entries:
                    dtype = params[names[0]].dtype
                    assign(names, handle.get_tensor(key).to(device_of(names[0]), dtype))
    for name, module in model.named_modules():  # buffers (built on the CPU) follow their module
        for attr, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[attr] = buf.to(device_of(f"{name}.{attr}" if name else attr))
    return True


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj  # caches and flags: each block keeps its own entries on its device


def dispatch_(model: nn.Module, placement: Placement) -> None:
    """Move each block to its device (the rest to the first) and hook the hand-overs."""
    prefix, blocks = find_blocks(model)
    index = placement.index_of()
    devices = [torch.device(d) for d in placement.devices]
    inside = {id(m) for b in blocks for m in b.modules()}
    for module in model.modules():  # everything outside the blocks: the first device
        if id(module) in inside:
            continue
        for p in module._parameters.values():
            if p is not None:
                p.data = p.data.to(devices[0])  # in place: tied parameters stay one object
        for attr, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[attr] = buf.to(devices[0])
    for i, block in enumerate(blocks):
        device = devices[index[f"{prefix}.{i}"]]
        block.to(device)

        def to_block(_m: nn.Module, args: tuple, kwargs: dict, device=device) -> tuple:
            return _move(args, device), _move(kwargs, device)

        block.register_forward_pre_hook(to_block, with_kwargs=True)
    blocks[len(blocks) - 1].register_forward_hook(
        lambda _m, _args, output: _move(output, devices[0]))


def spread_model(model: nn.Module | None, space: SearchSpace, setup: Any,
                 devices: Sequence[str]) -> tuple[nn.Module, Placement]:
    """The model of ``setup`` (or ``model``) over ``devices``, and its placement.

    Raises:
        PlacementError: it does not fit (before any weight is read).
    """
    from .model_loading import load_model

    skeleton = model if model is not None else empty_model(setup.model_path, setup.kind,
                                                           setup.dtype)
    budgets = (list(setup.device_budgets) if setup.device_budgets is not None
               else device_budgets(devices))
    blocks, fixed, fixed_act, working = estimate_needs(
        skeleton, space, batch_size=setup.batch_size, seq_len=setup.seq_len,
        samples=max(len(setup.texts), 1), objective=setup.objective, kl_top_k=setup.kl_top_k)
    placement = place(blocks, devices, budgets, fixed=fixed, fixed_activations=fixed_act,
                      working_set=working)
    if model is None:
        path = None if setup.random_weights else setup.model_path
        if not materialise_(skeleton, placement, path):
            skeleton = load_model(setup.model_path, setup.kind, setup.dtype, "cpu")
    dispatch_(skeleton, placement)
    return skeleton.eval(), placement


# -- the variant cache, split the same way -----------------------------------------------------
class ShardedVariantCache:
    """One :class:`VariantCache` per device; a layer's variants go to its block's device."""

    def __init__(self, placement: Placement, device_of_layer: dict[str, int],
                 caps: Sequence[int | None] | None = None) -> None:
        caps = caps if caps is not None else [s.variant_cap for s in placement.shares]
        self.parts = [VariantCache(torch.device(d), cap)
                      for d, cap in zip(placement.devices, caps, strict=True)]
        self.device_of_layer = device_of_layer

    def part(self, key: Key) -> VariantCache:
        return self.parts[self.device_of_layer.get(key[0], 0)]

    def __contains__(self, key: Key) -> bool:
        return key in self.part(key)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self) -> Iterator[Key]:
        return iter([k for p in self.parts for k in p])

    def bytes(self) -> dict[str, int]:
        split = [p.bytes() for p in self.parts]
        return {"device": sum(s["device"] for s in split), "host": sum(s["host"] for s in split)}

    def per_device(self) -> list[dict[str, int]]:
        return [p.bytes() for p in self.parts]

    def put(self, key: Key, weight: torch.Tensor) -> None:
        self.part(key).put(key, weight)

    def get(self, key: Key) -> torch.Tensor:
        return self.part(key).get(key)

    def fetch(self, key: Key, module: nn.Module) -> torch.Tensor:
        return self.part(key).fetch(key, module)


def sharded_cache(model: nn.Module, placement: Placement, layers: Sequence[str],
                  cap_bytes: int | None = None) -> ShardedVariantCache:
    """The variant cache of a spread model: each of ``layers`` on its block's device, each device
    keeping what its placement left free (at most ``cap_bytes`` when given)."""
    prefix, _blocks = find_blocks(model)
    index = placement.index_of()
    where = {name: index.get(block_of(name, prefix) or "", 0) for name in layers}
    caps = [s.variant_cap if cap_bytes is None else min(cap_bytes, s.variant_cap)
            for s in placement.shares]
    return ShardedVariantCache(placement, where, caps)


# -- what a worker reports about its devices (benchmarks) -----------------------------------
def worker_diagnostics(worker: Any, forward_repeats: int = 0) -> dict[str, Any]:
    """Per device: bytes allocated now and at peak (CUDA) and variant bytes; with
    ``forward_repeats``, the mean seconds of one plain forward pass over every calibration batch
    (the model as it stands, no objective): the yardstick of an evaluation's cost."""
    devices = list(worker.placement.devices) if worker.placement is not None else [
        str(worker.device)]
    parts = (worker.cache.per_device() if isinstance(worker.cache, ShardedVariantCache)
             else [worker.cache.bytes()])
    report: dict[str, Any] = {"devices": []}
    for name, part in zip(devices, parts, strict=True):
        device = torch.device(name)
        entry = {"device": name, "variants_device": part["device"], "variants_host": part["host"]}
        if device.type == "cuda":
            entry["allocated"] = torch.cuda.memory_allocated(device)
            entry["peak"] = torch.cuda.max_memory_allocated(device)
            entry["total"] = torch.cuda.get_device_properties(device).total_memory
        report["devices"].append(entry)
    if forward_repeats:
        import time

        def sync() -> None:
            for name in devices:
                if torch.device(name).type == "cuda":
                    torch.cuda.synchronize(name)

        with torch.inference_mode():
            for batch in worker.batches:  # once untimed: kernels chosen, caches allocated
                worker.model(**batch)
            sync()
            start = time.perf_counter()
            for _ in range(forward_repeats):
                for batch in worker.batches:
                    worker.model(**batch)
            sync()
        report["forward_seconds"] = (time.perf_counter() - start) / forward_repeats
    return report
