"""The latency table: measured GEMM times per (layer shape, kernel, batch, tokens), and what a
candidate's forward pass costs by it.

A serving engine runs each searched layer as one GEMM (or as what its option runs as: a
dequantization and a matmul where there is no fast kernel), and everything else of the forward
pass (embeddings, norms, attention, the residual stream, the unsearched head) does not depend on
the candidate. So a candidate's latency is predicted as

    latency(c) = Σ_layers t(out, in, kernel(option of the layer), batch, tokens) + t_rest

with ``t`` read from a table the workers measured on their device (``workers/latency.py`` says
exactly how) and ``t_rest`` the measured forward pass with every searched layer's GEMM taken out.
The table is keyed by the device and the library versions (``storage/latency.py``); this module
holds only values, so the searchers can cost candidates without torch.

:func:`kernel_key` maps an option to what its time depends on: the rounding (GPTQ, MSE clipping)
changes the integers, not the kernel, so ``int4-g128-asym-gptq`` times as ``int4-g128-asym``;
sparsity is not exploited by any kernel measured here, so a sparse option times as its dense base
format (the table entry says so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .budget import Constraint
from .errors import BudgetError
from .options import QuantOption
from .space import Candidate, Gene, LayerInfo, SearchSpace

LATENCY_ROW = "latency"  # the budget row's name (Constraint.name)
# The activation schemes of the W8A8 options, by the option's ``activations`` field.
W8A8_KERNELS = {"int8": "w8a8-int8", "fp8_e4m3": "w8a8-fp8"}


def kernel_key(option: QuantOption) -> str:
    """The kernel an option's layer runs as: ``fp16`` (the model's dtype), ``w8a8-int8``,
    ``w8a8-fp8``, ``int{b}-{g|ch}-{sym|asym}`` or a format name (``nf4``, ``fp8_e4m3``...)."""
    if option.activations:  # W8A8: the activations are quantized too, per token
        return W8A8_KERNELS[option.activations]
    if option.format == "int":
        group = "ch" if option.group_size is None else f"g{option.group_size}"
        return f"int{option.bits}-{group}-{'sym' if option.symmetric else 'asym'}"
    return option.format


@dataclass(frozen=True, order=True)
class GemmPoint:
    """One GEMM to time: a layer's shape (out × in) under one kernel."""

    out_features: int
    in_features: int
    kernel: str


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: the median over ``repeats`` timed runs, and their spread."""

    ms: float
    p10: float
    p90: float
    min_ms: float
    max_ms: float
    repeats: int
    graph: bool = False  # timed as a CUDA graph replay (False: eager calls, or a CPU)


@dataclass(frozen=True)
class LatencyEntry:
    """One measured time of ``point`` at ``batch`` × ``tokens`` input rows.

    ``runs_as`` names what ran (the torch op, or "dequantize + matmul"); ``fast`` is False
    where the option has no kernel of its own and was timed as what it would run as.
    """

    point: GemmPoint
    batch: int
    tokens: int
    timing: Timing
    runs_as: str
    fast: bool

    @property
    def ms(self) -> float:
        return self.timing.ms


def gemm_points(space: SearchSpace) -> list[GemmPoint]:
    """The distinct (shape, kernel) GEMMs ``space``'s candidates can run, sorted."""
    return sorted({GemmPoint(layer.out_features, layer.in_features, kernel_key(option))
                   for gene in space.genes for layer in gene.layers for option in gene.options})


@dataclass(frozen=True)
class LatencyTable:
    """The measured times a latency budget costs candidates with, at one ``batch`` × ``tokens``.

    ``rest_ms`` is the measured forward pass of the model with every searched layer's GEMM
    taken out (the constant of every candidate); ``device`` and ``versions`` say where it was
    measured (the key it is stored under).
    """

    device: str
    versions: str
    dtype: str
    batch: int
    tokens: int
    entries: Mapping[GemmPoint, LatencyEntry]
    rest_ms: float

    def missing(self, space: SearchSpace) -> list[GemmPoint]:
        return [p for p in gemm_points(space) if p not in self.entries]

    def layer_ms(self, layer: LayerInfo, option: QuantOption) -> float:
        point = GemmPoint(layer.out_features, layer.in_features, kernel_key(option))
        entry = self.entries.get(point)
        if entry is None:
            raise BudgetError(f"budget.latency: the latency table of {self.device} has no entry "
                              f"for {point.out_features}x{point.in_features} {point.kernel}")
        return entry.ms

    def gene_ms(self, gene: Gene, option: int) -> float:
        """Milliseconds of every layer of ``gene`` under its option ``option``."""
        return sum(self.layer_ms(layer, gene.options[option]) for layer in gene.layers)

    def gene_costs(self, space: SearchSpace) -> tuple[tuple[float, ...], ...]:
        """Per gene, per option, its milliseconds: the additive part of the latency."""
        return tuple(tuple(self.gene_ms(g, i) for i in range(len(g.options))) for g in space.genes)

    def constraint(self, space: SearchSpace, ms: float) -> Constraint:
        """The latency budget as an additive row: Σ gene costs + the rest <= ``ms``."""
        return Constraint(LATENCY_ROW, self.gene_costs(space), self.rest_ms, ms, "ms")

    def candidate_ms(self, space: SearchSpace, candidate: Candidate) -> float:
        """Predicted forward latency of ``candidate``: its layers' GEMMs plus the rest."""
        space.validate(candidate)
        return self.rest_ms + sum(self.gene_ms(g, c)
                                  for g, c in zip(space.genes, candidate.choices, strict=True))

    def forward_ms(self, points: Iterable[GemmPoint]) -> float:
        """Predicted forward latency of a model whose searched layers run ``points`` (one per
        layer): the same sum as :meth:`candidate_ms`, given the kernels instead of options."""
        return self.rest_ms + sum(self.entries[p].ms for p in points)

    def describe_entries(self, points: Iterable[GemmPoint] | None = None) -> list[str]:
        """One line per entry: shape, kernel, median and spread, what ran."""
        keys = sorted(self.entries) if points is None else list(points)
        return [f"{p.out_features}x{p.in_features} {p.kernel}: {t.ms:.4f} ms "
                f"(p10 {t.p10:.4f}, p90 {t.p90:.4f}, n={t.repeats}) {self.entries[p].runs_as}"
                for p in keys for t in [self.entries[p].timing]]
