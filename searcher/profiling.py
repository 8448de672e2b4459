"""Sensitivity profiles: a (gene × option) table of objective deltas, given or measured by ask/tell.

The profile is relative to the *base* configuration, every gene at its most expensive level
(fp16 in the default spaces): ``profile[g, o] = f(base with gene g at option o) - f(base)``, the
single-gene perturbations of ZeroQ / HAWQ-style profiles. The base options themselves are 0 by
definition. A profile may be given as a value (e.g. read from the profile table the job runner
fills) with keys ``(gene, option)`` where a gene is its index or name and an option its index,
label or :class:`QuantOption`; every entry that is needed and missing is measured, never taken as
zero. Each measurement is an evaluation of the search and counts toward its budget.

With a *proxy* (a per-(gene, option) error computed from the weights and calibration statistics
without scoring a candidate, e.g. the Hessian-weighted output error of
:mod:`mpsearch.workers.profile`), one *anchor* entry per gene is measured and the gene's other
entries are predicted as ``delta[g, anchor] · proxy[g, o] / proxy[g, anchor]``. The proxy ranks a
layer's options well but not layers against each other (on MiniLM its log-correlation with the
measured deltas across layers is 0.2, the scaled prediction's error within a layer ±21 %): the one
probe supplies what the proxy lacks, how much a layer's output error moves the objective. It cuts
the probes to one per gene, and lets the program choose among every option of the space.

Probes are measurements, not proposals: a single-gene perturbation of the base is usually over
the budget, so it is recorded as an infeasible trial (like the uniform baselines above budget)
and never reported as a result. A probe that fails excludes that option of that gene.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.experts import expert_of
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace

from .base import Evaluation
from .levels import LevelMap

ProfileKey = tuple[int, int]  # (gene index, option index)


def normalize_profile(space: SearchSpace, profile: Mapping[tuple[Any, Any], float]
                      ) -> dict[ProfileKey, float]:
    """Profile keys as (gene index, option index); unknown genes or options are refused."""
    gene_index = {g.name: i for i, g in enumerate(space.genes)}
    out: dict[ProfileKey, float] = {}
    for (gene, option), value in profile.items():
        g = gene if isinstance(gene, int) else gene_index.get(gene)
        if g is None or not 0 <= g < len(space.genes):
            raise SpecError(f"profile: unknown gene {gene!r} (genes are named like "
                            f"{space.genes[0].name!r}, or given by index)")
        options = space.genes[g].options
        if isinstance(option, int):
            o: int | None = option if 0 <= option < len(options) else None
        else:
            label = option.label if isinstance(option, QuantOption) else option
            o = next((i for i, opt in enumerate(options) if opt.label == label), None)
        if o is None:
            raise SpecError(f"profile: gene {space.genes[g].name!r} has no option {option!r} "
                            f"(valid: {', '.join(opt.label for opt in options)})")
        out[(g, o)] = float(value)
    return out


def base_candidate(space: SearchSpace) -> Candidate:
    """Every gene at its most expensive level: the configuration profiles are relative to."""
    levels = LevelMap(space)
    return Candidate(tuple(levels.option(g, levels.top(g)) for g in range(len(space.genes))))


def wanted_entries(space: SearchSpace, labels: Sequence[str] | None) -> list[ProfileKey]:
    """The (gene, option) entries a profile needs: ``labels`` only, or every option."""
    base = base_candidate(space).choices
    keys = []
    for g, gene in enumerate(space.genes):
        for o, opt in enumerate(gene.options):
            if o != base[g] and (labels is None or opt.label in labels):
                keys.append((g, o))
    return keys


def proxy_anchors(space: SearchSpace, wanted: Iterable[ProfileKey],
                  proxy: Mapping[ProfileKey, float], bits_per_weight: float) -> dict[int, int]:
    """Per gene, the wanted option to measure when the rest are scaled by ``proxy``: the one
    nearest ``bits_per_weight`` (the budget's; the lowest proxy among equals), where the program
    decides. Genes with a wanted entry lacking a positive proxy are left out (measured in full)."""
    by_gene: dict[int, list[int]] = {}
    for g, o in wanted:
        by_gene.setdefault(g, []).append(o)
    anchors = {}
    for g, options in by_gene.items():
        values = [proxy.get((g, o), 0.0) for o in options]
        if all(math.isfinite(v) and v > 0 for v in values):
            numel = space.genes[g].numel
            anchors[g] = min(options, key=lambda o: (
                abs(space.gene_bits(g, o) / numel - bits_per_weight), proxy[(g, o)]))
    return anchors


def shared_expert_anchors(space: SearchSpace, anchors: Mapping[int, int],
                          routing: Mapping[str, float] | None) -> dict[int, int]:
    """Gene → the gene whose anchor probe stands for it (MC-MoE, ``routing: true``): the genes
    made of routed experts of one MoE layer share the probe of the one whose experts receive the
    most calibration tokens (by ``routing``: layer → routed fraction). Only genes with an anchor
    take part; other genes keep their own probes."""
    layers: dict[str, list[int]] = {}
    for g, gene in enumerate(space.genes):
        moes = {found[0] if (found := expert_of(layer.name)) else None for layer in gene.layers}
        moe = moes.pop() if len(moes) == 1 else None
        if moe is not None and g in anchors:
            layers.setdefault(moe, []).append(g)
    weight = routing or {}
    out = {}
    for genes in layers.values():
        lead = max(genes, key=lambda g: (sum(weight.get(layer.name, 0.0)
                                             for layer in space.genes[g].layers), -g))
        out.update(dict.fromkeys(genes, lead))
    return out


class ProfileMeasurer:
    """Measures the missing entries of a profile through ask/tell; ``done`` once all are known.

    With ``proxy`` and ``anchors`` (gene → option), only the anchors of those genes are missing;
    their other entries are predicted from it (see the module doc). With ``shared`` (gene → the
    gene whose anchor stands for it, :func:`shared_expert_anchors`), a gene is predicted from
    that gene's anchor: ``delta[g, o] = delta[a, anchor] · proxy[g, o] / proxy[a, anchor]``.
    """

    def __init__(self, space: SearchSpace, wanted: Iterable[ProfileKey],
                 given: Mapping[ProfileKey, float] | None = None, samples: int | None = None,
                 origin: str = "profile", proxy: Mapping[ProfileKey, float] | None = None,
                 anchors: Mapping[int, int] | None = None,
                 shared: Mapping[int, int] | None = None) -> None:
        self.space, self.samples, self.origin = space, samples, origin
        self.base = base_candidate(space).choices
        self.given = dict(given or {})
        self.wanted = list(wanted)
        self.proxy, self.anchors = dict(proxy or {}), dict(anchors or {})
        self.shared = dict(shared or {})
        self.missing = [(g, o) for g, o in self.wanted if (g, o) not in self.given
                        and self.shared.get(g, g) == g and self.anchors.get(g, o) == o]
        self.measured: dict[tuple[int, ...], float | None] = {}  # probe choices → objective
        self.queue = [self._probe(k) for k in self.missing]
        if self.missing:
            self.queue.insert(0, self.base)
        self.in_flight: set[tuple[int, ...]] = set()

    def _probe(self, key: ProfileKey) -> tuple[int, ...]:
        g, o = key
        choices = list(self.base)
        choices[g] = o
        return tuple(choices)

    @property
    def evaluations_needed(self) -> int:
        return len(self.queue) + len(self.in_flight)

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while self.queue and len(out) < n:
            choices = self.queue.pop(0)
            if choices in self.measured:
                continue
            self.in_flight.add(choices)
            out.append(Candidate(choices, self.samples, f"{self.origin}:probe"))
        return out

    def tell(self, results: Sequence[Evaluation]) -> None:
        """Record probes (also ones told from an earlier run, or the fp16 uniform baseline)."""
        for r in results:
            c = r.candidate
            if c.samples != self.samples:
                continue
            differs = sum(a != b for a, b in zip(c.choices, self.base, strict=True))
            if differs <= 1 and (c.choices not in self.measured or r.ok):
                self.measured[c.choices] = r.objective
                self.in_flight.discard(c.choices)

    @property
    def done(self) -> bool:
        return not self.queue and not self.in_flight

    def profile(self) -> dict[ProfileKey, float]:
        """The given entries plus the measured deltas; a failed probe's entry is left out."""
        out = dict(self.given)
        base = self.measured.get(self.base)
        if self.missing and base is None:
            return out
        for key in self.missing:
            value = self.measured.get(self._probe(key))
            if value is not None and base is not None:
                out[key] = value - base
        for g, o in self.wanted:
            a = self.shared.get(g, g)
            anchor = self.anchors.get(a)
            if (g, o) not in out and anchor is not None and (a, anchor) in out:
                # a layer that the anchor's probe did not move is taken as insensitive
                out[(g, o)] = max(out[(a, anchor)], 0.0) * self.proxy[(g, o)] / self.proxy[(a, anchor)]
        return out


def loss_matrix(space: SearchSpace, profile: Mapping[ProfileKey, float],
                wanted: Iterable[ProfileKey]) -> np.ndarray:
    """(genes × options) losses for the knapsack: the profile, 0 at the base, ``inf`` where an
    option is not wanted or its probe failed."""
    base = base_candidate(space).choices
    loss = np.full((len(space.genes), max(space.sizes)), np.inf)
    for g, o in enumerate(base):
        loss[g, o] = 0.0
    for key in wanted:
        if key in profile:
            loss[key] = profile[key]
    return loss
