"""Placing one model's blocks across the devices of one worker, within each device's memory.

A worker with ``workers.gpus: k > 1`` holds one model over k GPUs as a pipeline: its repeated
blocks (decoder layers) are cut into k contiguous runs, one per device, and everything outside
the blocks (embeddings, final norm, LM head) stays on the first device, where the inputs, the
full-precision reference and the outputs live. Each layer's variants live on its block's device.

This module is the arithmetic only (no torch): given what each block needs and what each device
offers, :func:`place` chooses the cut. What a device holds is

    fixed (first device only: the parts outside the blocks, the reference, the logits)
    + working set (every device: the activations of one block's forward at the calibration batch)
    + Σ over its blocks of (weights + kept activations, e.g. the KV cache)      ← must fit
    + Σ over its blocks of their variants                                       ← may spill to host

The weights and activations must fit the budget; variants fill what is left and the rest of them
wait in pinned host memory (the variant cache's host tier). Among the cuts where everything that
must fit does, :func:`place` takes the one whose fullest device (whole need over budget) is least
full, so variants spill evenly and as little as possible. Contiguous runs keep the hidden state's
trips between devices at k − 1 per forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import WorkerError

GiB = 1 << 30


class PlacementError(WorkerError):
    """The model, its activations and its variants cannot be placed on the worker's devices."""


@dataclass(frozen=True)
class BlockNeeds:
    """Bytes one block needs on its device."""

    name: str  # module name, e.g. "model.layers.7"
    weights: int  # its parameters
    variants: int  # every (layer, option) variant of its searched layers
    activations: int = 0  # kept while the model runs (its KV cache); 0 if none

    @property
    def hard(self) -> int:
        """What must be on the device (everything but the variants)."""
        return self.weights + self.activations


@dataclass(frozen=True)
class DeviceShare:
    """What one device of a placement holds."""

    device: str
    budget: int
    blocks: tuple[str, ...]
    weights: int  # of its blocks, plus the parts outside the blocks on the first device
    activations: int  # working set, kept activations, and (first device) reference and logits
    variants: int  # all variants of its blocks' searched layers

    @property
    def variant_cap(self) -> int:
        """Variant bytes kept on the device; the rest go to host memory."""
        return max(self.budget - self.weights - self.activations, 0)

    @property
    def variants_on_host(self) -> int:
        return max(self.variants - self.variant_cap, 0)

    @property
    def used(self) -> int:
        return self.weights + self.activations + min(self.variants, self.variant_cap)

    def line(self) -> str:
        span = (f"{self.blocks[0]} … {self.blocks[-1]} ({len(self.blocks)} blocks)"
                if len(self.blocks) > 1 else (self.blocks[0] if self.blocks else "no blocks"))
        host = f", {size(self.variants_on_host)} in host memory" if self.variants_on_host else ""
        return (f"{self.device}: {span}; weights {size(self.weights)} + activations "
                f"{size(self.activations)} + variants {size(min(self.variants, self.variant_cap))}"
                f" = {size(self.used)} of {size(self.budget)}{host}")


def size(nbytes: int) -> str:
    """Bytes as GiB, or MiB below a tenth of a GiB."""
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB // 10 else f"{nbytes / (1 << 20):.1f} MiB"


@dataclass(frozen=True)
class Placement:
    """A cut of the blocks into one contiguous run per device (some runs may be empty)."""

    shares: tuple[DeviceShare, ...]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.shares)

    def index_of(self) -> dict[str, int]:
        """Block name → index of its device."""
        return {b: i for i, s in enumerate(self.shares) for b in s.blocks}

    def lines(self) -> list[str]:
        return [s.line() for s in self.shares]


def place(blocks: Sequence[BlockNeeds], devices: Sequence[str], budgets: Sequence[int], *,
          fixed: int = 0, fixed_activations: int = 0, working_set: int = 0) -> Placement:
    """The cut of ``blocks`` (in model order) over ``devices`` that fits and is most balanced.

    ``budgets[d]``: bytes device ``d`` may use. ``fixed``: weights outside the blocks and
    ``fixed_activations``: the reference and output activations, both on the first device.
    ``working_set``: the activations of one block's forward, needed on every device.

    Raises:
        PlacementError: no cut fits the weights and activations (one line, with the numbers).
    """
    k, n = len(devices), len(blocks)
    if k == 0 or len(budgets) != k:
        raise PlacementError(f"placement needs one budget per device; got {len(budgets)} "
                             f"budgets for {k} devices")
    hard = [0] * (n + 1)  # prefix sums
    whole = [0] * (n + 1)
    for i, b in enumerate(blocks):
        hard[i + 1] = hard[i] + b.hard
        whole[i + 1] = whole[i] + b.hard + b.variants

    def base(d: int) -> int:
        return working_set + (fixed + fixed_activations if d == 0 else 0)

    def cost(d: int, i: int, j: int) -> float:
        """Fullness of device d holding blocks i..j-1 (inf when what must fit does not)."""
        if j == i and d > 0:
            return 0.0  # an unused device needs nothing
        if base(d) + hard[j] - hard[i] > budgets[d]:
            return math.inf
        return (base(d) + whole[j] - whole[i]) / max(budgets[d], 1)

    # best[d][j]: least max-fullness of devices 0..d holding blocks 0..j-1; cut[d][j]: where d starts
    best = [[math.inf] * (n + 1) for _ in range(k)]
    cut = [[0] * (n + 1) for _ in range(k)]
    for j in range(n + 1):
        best[0][j] = cost(0, 0, j)
    for d in range(1, k):
        for j in range(n + 1):
            for i in range(j + 1):
                value = max(best[d - 1][i], cost(d, i, j))
                if value < best[d][j]:
                    best[d][j], cut[d][j] = value, i
    if math.isinf(best[k - 1][n]):
        raise PlacementError(_no_fit(blocks, devices, budgets, fixed + fixed_activations,
                                     working_set))
    ends, j = [n], n
    for d in range(k - 1, 0, -1):
        j = cut[d][j]
        ends.append(j)
    starts = [0, *reversed(ends[1:])]
    shares = []
    for d, (i, j) in enumerate(zip(starts, reversed(ends), strict=True)):
        run = blocks[i:j]
        shares.append(DeviceShare(
            devices[d], budgets[d], tuple(b.name for b in run),
            weights=sum(b.weights for b in run) + (fixed if d == 0 else 0),
            activations=(working_set if run or d == 0 else 0) + sum(b.activations for b in run)
            + (fixed_activations if d == 0 else 0),
            variants=sum(b.variants for b in run)))
    return Placement(tuple(shares))


def _no_fit(blocks: Sequence[BlockNeeds], devices: Sequence[str], budgets: Sequence[int],
            first: int, working_set: int) -> str:
    need = first + sum(b.hard for b in blocks) + working_set * len(devices)
    largest = max((b.hard for b in blocks), default=0)
    return (f"the model does not fit its worker's {len(devices)} device(s): weights and "
            f"activations need {size(need)} (largest block {size(largest)}, plus {size(first)} "
            f"on the first device) against {' + '.join(size(b) for b in budgets)} free; give "
            "each worker more GPUs (workers.gpus) or fewer calibration samples per batch "
            "(calibration.batch_size)")


def worker_devices(gpus: float, device: str) -> tuple[str, ...]:
    """The devices of a worker given ``gpus`` GPUs (``workers.gpus``) on ``device`` ("cuda" or
    "cpu"): ``cuda:0 … cuda:k-1`` (Ray makes the worker's k GPUs those) when k > 1; otherwise
    empty, for one device (a whole GPU, a fraction of one, or the CPU)."""
    if gpus <= 1 or device != "cuda":
        return ()
    return tuple(f"cuda:{i}" for i in range(int(gpus)))
