"""Budgets as additive constraints: what a configuration may spend, one row per resource.

Every budget kind is one :class:`Constraint` row over the genes of a space: a cost per (gene,
option), summed over a candidate's choices, plus a constant, divided by a unit, at most a limit:

    (constant + Σ_g costs[g][choice_g]) / divisor <= limit

``avg_bits`` is the stored bits of the searched weights over their count, ``total_bytes`` the
model's stored bits (searched and not) over 8. A kind that needs facts of the job (a latency
table measured on the workers) is built by the job and handed over in :attr:`Budget.extra`.
The cost model (:meth:`SearchSpace.constraints <.space.SearchSpace.constraints>`) turns a budget
into its rows; every strategy respects all of them (the integer program as rows of its program,
the level moves of ``searcher/levels.py`` by repairing against each). Pure values: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .space import Cost, SearchSpace

# A row admits this much over its limit: float sums of a few thousand terms (the same slack the
# stored feasibility flag and the budget filters of ``storage/records.py`` allow).
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Constraint:
    """One additive row: ``(constant + Σ_g costs[g][choice_g]) / divisor <= limit``.

    ``name`` is the budget field it comes from (``avg_bits``, ``total_bytes``, ``memory``, …) and
    ``unit`` what its value counts (``bits per weight``, ``bytes``, ``ms``), for messages.
    ``bit_cost`` is what one stored weight bit adds to the summed costs when the row charges
    weights at a fixed rate (1 for the rows in bits), None otherwise: strategies that aim at a
    bits-per-weight (a window around the budget, proxy anchors) read it.
    """

    name: str
    costs: tuple[tuple[float, ...], ...]
    constant: float
    limit: float
    unit: str
    divisor: float = 1.0
    bit_cost: float | None = None

    def value_of(self, summed: float) -> float:
        """The row's value when the costs of the choices sum to ``summed``."""
        return (summed + self.constant) / self.divisor

    def admits_sum(self, summed: float) -> bool:
        return self.value_of(summed) <= self.limit + TOLERANCE

    def summed(self, choices: Sequence[int]) -> float:
        return sum(self.costs[g][c] for g, c in enumerate(choices))

    def value(self, choices: Sequence[int]) -> float:
        return self.value_of(self.summed(choices))

    def admits(self, choices: Sequence[int]) -> bool:
        return self.admits_sum(self.summed(choices))

    def least(self) -> float:
        """The least value any configuration reaches on this row (each gene at its cheapest)."""
        return self.value_of(sum(min(c) for c in self.costs))

    @property
    def capacity(self) -> float:
        """The most the costs may sum to: ``limit · divisor − constant``."""
        return self.limit * self.divisor - self.constant

    def show(self, value: float) -> str:
        """``value`` in this row's unit: whole bytes with separators, else 6 digits."""
        number = f"{value:,.0f}" if self.unit == "bytes" else f"{value:.6g}"
        return f"{number} {self.unit}"

    def describe(self) -> str:
        return f"{self.name} <= {self.show(self.limit)}"


@dataclass(frozen=True)
class Budget:
    """Upper bounds a configuration must meet; a bound left None is not enforced.

    ``avg_bits`` and ``total_bytes`` bound the stored bits; ``extra`` holds rows the job built
    against its space (see the module doc). :meth:`admits` checks a stored :class:`Cost` against
    the two bit bounds (what a stored trial's columns can tell); whether a candidate meets the
    whole budget is :meth:`SearchSpace.feasible <.space.SearchSpace.feasible>`.
    """

    avg_bits: float | None = None
    total_bytes: float | None = None
    extra: tuple[Constraint, ...] = ()

    def admits(self, cost: Cost, tol: float = TOLERANCE) -> bool:
        if self.avg_bits is not None and cost.avg_bits > self.avg_bits + tol:
            return False
        return not (self.total_bytes is not None and cost.total_bytes > self.total_bytes + tol)

    def describe(self) -> str:
        parts = []
        if self.avg_bits is not None:
            parts.append(f"avg_bits <= {self.avg_bits:g}")
        if self.total_bytes is not None:
            parts.append(f"total_bytes <= {self.total_bytes:,.0f}")
        parts.extend(row.describe() for row in self.extra)
        return " and ".join(parts) or "no budget"


def budget_rows(space: SearchSpace, budget: Budget) -> tuple[Constraint, ...]:
    """The rows of ``budget`` over ``space``'s genes, bit bounds first."""
    bits = tuple(tuple(space.gene_bits(g, o) for o in range(n)) for g, n in enumerate(space.sizes))
    rows = []
    if budget.avg_bits is not None:
        rows.append(Constraint("avg_bits", bits, 0.0, budget.avg_bits, "bits per weight",
                               divisor=float(space.searched_params), bit_cost=1.0))
    if budget.total_bytes is not None:
        rows.append(Constraint("total_bytes", bits, space.unsearched_params * space.unsearched_bits,
                               budget.total_bytes, "bytes", divisor=8.0, bit_cost=1.0))
    for row in budget.extra:
        if len(row.costs) != len(space.genes) or any(
                len(c) != n for c, n in zip(row.costs, space.sizes, strict=True)):
            raise ValueError(f"budget row {row.name} was built for another space")
        rows.append(row)
    return tuple(rows)
