"""Building the level database on one worker: batched GPTQ over every layer of a shape, loading.

A *build task* is a set of layers and options (:func:`plan_tasks` cuts a worker's share of the
layers into one task per weight shape, so each task is one batched GPTQ problem). For its GPTQ
options the task's layers are grouped by the Hessian they read (q/k/v share their input, gate/up
theirs), each group stacked along rows, the stacks of one shape stacked into a batch; the inverse
Hessian factors of the batch are computed once and serve every GPTQ option of the task, and
:func:`~.gptq_batch.gptq_encode_batch` quantizes the whole batch at once. Other stored options (MSE
clipping of RTN levels, Wanda) are computed one layer at a time: they have no per-column loop to
batch.

Memory: the batch is cut so that the float32 weights of a chunk stay under ``max_weight_bytes``
and its factors under ``max_factor_bytes``; factors are computed one Hessian at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from mpsearch.spaces.options import QuantOption

from . import level_codec
from .gptq import activation_order, dampened_inverse_cholesky, permuted_hessian
from .gptq_batch import gptq_encode_batch
from .level_db import stored_option
from .registry import HESSIAN, Encoded, handler_for

if TYPE_CHECKING:
    from .worker import Worker

Pair = tuple[str, QuantOption]
_BLOCK = re.compile(r"\d+")


@dataclass(frozen=True)
class BuildTask:
    """Layers of one input width and the stored options to build for them."""

    layers: tuple[str, ...]
    options: tuple[QuantOption, ...]

    @property
    def pairs(self) -> list[Pair]:
        return [(n, o) for o in self.options for n in self.layers]


def needs_hessian(option: QuantOption) -> bool:
    """GPTQ-like: the options whose handler asks for the layer's Hessian (batched here)."""
    return option.format == "int" and HESSIAN in handler_for(option).statistics(option)


def block_of(name: str) -> str:
    """The block a layer belongs to (its first number: ``model.layers.7.mlp.up_proj`` → 7), or
    its own name when it has none; a worker's share is made of whole blocks."""
    m = _BLOCK.search(name)
    return m.group() if m else name


def plan_tasks(pairs: Iterable[Pair], shapes: dict[str, tuple[int, int]], workers: int,
               owner: Mapping[str, int] | None = None) -> list[list[BuildTask]]:
    """Divide the stored-option ``pairs`` among ``workers``: whole blocks, dealt round-robin
    (every block has the same layers, so the shares are even), each share cut into one task per
    input width and option set (layers reading one input share a width). ``shapes``: layer →
    (out, in); ``owner``: block → worker, to keep the shares of an earlier plan. Returns one list
    of tasks per worker (some may be empty)."""
    wanted: dict[str, list[QuantOption]] = {}
    for name, option in pairs:
        if stored_option(option) and option not in wanted.setdefault(name, []):
            wanted[name].append(option)
    blocks: dict[str, list[str]] = {}
    for name in wanted:
        blocks.setdefault(block_of(name), []).append(name)
    shares: list[list[str]] = [[] for _ in range(max(workers, 1))]
    for i, (block, names) in enumerate(blocks.items()):
        shares[owner[block] if owner is not None else i % len(shares)].extend(names)
    out = []
    for share in shares:
        tasks: dict[tuple, list[str]] = {}
        for name in share:
            tasks.setdefault((shapes[name][1], tuple(wanted[name])), []).append(name)
        out.append([BuildTask(tuple(names), options) for (_, options), names in tasks.items()])
    return out


def statistics_reserve(worker: Worker) -> int:
    """Device bytes to leave free beside the variant cache for a level build: the layers'
    Hessians (an upper bound: as if none were shared) and one batch of GPTQ factors."""
    options = {o for gene in worker.space.genes for o in gene.options}
    if not any(needs_hessian(o) for o in options) and not worker.setup.proxies:
        return 0
    cols = [w.shape[1] for w in worker.original.values()]
    return sum(4 * c * c for c in cols) + worker.setup.gptq_max_factor_bytes


def _stacks(worker: Worker, names: Sequence[str]) -> list[list[str]]:
    """``names`` grouped by the Hessian they read (one tensor object per shared input)."""
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(id(worker.hessian(name)), []).append(name)
    return list(groups.values())


def _by_shape(worker: Worker, stacks: list[list[str]]) -> list[list[list[str]]]:
    """Stacks grouped by their stacked shape (rows of the stack × input width) and device (a
    model spread over several GPUs keeps each layer's statistics on its block's device)."""
    groups: dict[tuple[int, int, torch.device], list[list[str]]] = {}
    for stack in stacks:
        w = worker.original[stack[0]]
        rows = sum(worker.original[n].shape[0] for n in stack)
        groups.setdefault((rows, w.shape[1], w.device), []).append(stack)
    return list(groups.values())


def _chunks(stacks: list[list[str]], worker: Worker) -> list[list[list[str]]]:
    """Stacks of one shape, cut so each chunk's weights and factors fit the setup's limits."""
    rows = sum(worker.original[n].shape[0] for n in stacks[0])
    cols = worker.original[stacks[0][0]].shape[1]
    per_weight, per_factor = 4 * rows * cols, 4 * cols * cols
    n = max(1, min(worker.setup.gptq_max_weight_bytes // per_weight,
                   worker.setup.gptq_max_factor_bytes // per_factor))
    return [stacks[i:i + n] for i in range(0, len(stacks), n)]


Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _factors(worker: Worker, chunk: list[list[str]], ordered: bool = False) -> Factors:
    """U and the dead-input mask of each stack's Hessian, one Hessian at a time: a batched
    Cholesky rounds differently on a GPU, and GPTQ's error feedback would turn that into other
    codes than the per-layer path's (one at a time they are the same, bit for bit). ``ordered``:
    of the Hessians permuted to activation order, with the permutations (else None)."""
    hs = [worker.hessian(stack[0]) for stack in chunk]
    d = hs[0].shape[0]
    U = torch.empty(len(hs), d, d, device=hs[0].device)
    dead = torch.empty(len(hs), d, dtype=torch.bool, device=hs[0].device)
    perm = torch.stack([activation_order(H) for H in hs]) if ordered else None
    for i, H in enumerate(hs):
        U[i], dead[i] = dampened_inverse_cholesky(
            H if perm is None else permuted_hessian(H, perm[i]), worker.setup.gptq_percdamp)
    return U, dead, perm


def _gptq_chunk(worker: Worker, chunk: list[list[str]], option: QuantOption,
                factors: Factors) -> Iterator[tuple[str, Encoded]]:
    """Each layer's parts (codes, scales, zero points, mask) under ``option``, from one batched
    GPTQ over the chunk's stacks, one layer at a time (an 8B gate/up chunk's float32 codes
    would take 15 GB at once)."""
    W = torch.stack([torch.cat([worker.original[n] for n in stack]) for stack in chunk])
    mask = None
    if option.sparse:  # prune as the option says, then GPTQ the survivors (SparseGPT-like)
        handler = handler_for(option)
        mask = torch.stack([torch.cat([
            cast(torch.Tensor, handler.keep_mask(worker.original[n], option,  # sparse: a mask
                                                 worker.layer_inputs(n, option)))
            for n in stack]) for stack in chunk])
    U, dead, perm = factors
    codes = gptq_encode_batch(W, U, dead, option.bits, option.group_size, option.symmetric,
                              worker.setup.gptq_block_size, mask, perm=perm, clip=option.clip)
    del W, mask
    for b, stack in enumerate(chunk):
        start = 0
        for n in stack:
            r = slice(start, start + worker.original[n].shape[0])
            start = r.stop
            yield n, Encoded(option, codes.codes[b, r].float().add_(codes.q_min),
                             codes.scale[b, r].clone(),
                             None if codes.zero is None else codes.zero[b, r].clone(),
                             mask=None if codes.mask is None else codes.mask[b, r].clone())


@torch.inference_mode()
def build_task_(worker: Worker, task: BuildTask,
                on_layers: Callable[[QuantOption, int], None] | None = None) -> int:
    """Compute every variant of ``task`` the worker has not cached; they are kept in its cache
    and queued for its level database. ``on_layers(option, n)`` follows the progress. Returns
    how many variants were computed."""
    todo = [(n, o) for n, o in task.pairs if (n, o) not in worker.cache]
    done = 0
    gptq = [o for o in task.options if needs_hessian(o) and any(p[1] == o for p in todo)]
    if gptq:
        names = sorted({n for n, o in todo if o in gptq}, key=list(task.layers).index)
        for chunk in [c for same in _by_shape(worker, _stacks(worker, names))
                      for c in _chunks(same, worker)]:
            factors: dict[bool, Factors] = {}  # by column order, each computed once a chunk
            for option in sorted(gptq, key=lambda o: o.act_order):
                if option.act_order not in factors:
                    factors.clear()  # one set of factors in memory at a time
                    factors[option.act_order] = _factors(worker, chunk, option.act_order)
                for name, enc in _gptq_chunk(worker, chunk, option, factors[option.act_order]):
                    if (name, option) in todo:
                        w = level_codec.dequantize(enc, worker.original[name].dtype)
                        worker.keep_variant(name, option, w, enc)
                        done += 1
                if on_layers is not None:
                    on_layers(option, sum(len(s) for s in chunk))
            del factors
    for name, option in todo:
        if option not in gptq:
            worker.variant(name, option)
            done += 1
            if on_layers is not None:
                on_layers(option, 1)
    return done


def load_stored_(worker: Worker, pairs: Iterable[Pair], threads: int = 8) -> tuple[int, int]:
    """Read the stored variants of ``pairs`` the worker lacks into its cache, checking each
    file's checksum; a missing or rejected one is computed again (and stored). Returns
    (loaded, rebuilt)."""
    assert worker.levels is not None
    todo = [(n, o) for n, o in pairs if stored_option(o) and (n, o) not in worker.cache]
    if not todo:
        return 0, 0
    devices = {n: worker.original[n].device for n, _ in todo}
    loaded, again = 0, []
    for name, option, w in worker.levels.load_many(todo, threads, devices):
        if w is None:
            again.append((name, option))
            continue
        worker.cache.put((name, option), w.contiguous())
        loaded += 1
    rebuilt = 0
    if again:
        shapes = {n: (worker.original[n].shape[0], worker.original[n].shape[1]) for n, _ in again}
        for task in plan_tasks(again, shapes, 1)[0]:
            rebuilt += build_task_(worker, task)
    return loaded, rebuilt
