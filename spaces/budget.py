"""Budgets as additive constraints: what a configuration may spend, one row per resource.

Every budget kind is one :class:`Constraint` row over the genes of a space: a cost per (gene,
option), summed over a candidate's choices, plus a constant, divided by a unit, at most a limit:

    (constant + Σ_g costs[g][choice_g]) / divisor <= limit

``avg_bits`` is the stored bits of the searched weights over their count, ``total_bytes`` the
model's stored bits (searched and not) over 8, ``memory`` those plus the KV cache at a context
and batch (and an allowance for activations), over 8. A kind that needs facts of the job (a latency
table measured on the workers) is built by the job and handed over in :attr:`Budget.extra`.
The cost model (:meth:`SearchSpace.constraints <.space.SearchSpace.constraints>`) turns a budget
into its rows; every strategy respects all of them (the integer program as rows of its program,
the level moves of ``searcher/levels.py`` by repairing against each). Pure values: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import SpecError

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
class MemoryBudget:
    """Serving memory: the stored weights plus the KV cache of ``batch`` sequences of ``context``
    tokens, plus a stated allowance for activations and the runtime's workspace, in bytes."""

    bytes: float
    context: int
    batch: int = 1
    activations: float = 0.0

    @property
    def tokens(self) -> int:
        """Tokens the KV cache holds at this load."""
        return self.context * self.batch

    def describe(self) -> str:
        extra = f" + {self.activations:,.0f} B activations" if self.activations else ""
        return (f"memory <= {self.bytes:,.0f} bytes (weights + KV cache at context "
                f"{self.context} × batch {self.batch}{extra})")


@dataclass(frozen=True)
class Budget:
    """Upper bounds a configuration must meet; a bound left None is not enforced.

    ``avg_bits`` and ``total_bytes`` bound the stored bits, ``memory`` the bytes of serving (see
    :func:`memory_row`); ``extra`` holds rows the job built
    against its space (see the module doc). :meth:`admits` checks a stored :class:`Cost` against
    the two bit bounds (what a stored trial's columns can tell); whether a candidate meets the
    whole budget is :meth:`SearchSpace.feasible <.space.SearchSpace.feasible>`.
    """

    avg_bits: float | None = None
    total_bytes: float | None = None
    memory: MemoryBudget | None = None
    # bytes of weights one token reads (MoE: routed experts count top_k / E; see active_row)
    active_bytes: float | None = None
    extra: tuple[Constraint, ...] = ()

    def admits(self, cost: Cost, tol: float = TOLERANCE) -> bool:
        if self.avg_bits is not None and cost.avg_bits > self.avg_bits + tol:
            return False
        return not (self.total_bytes is not None and cost.total_bytes > self.total_bytes + tol)

    def to_dict(self) -> dict[str, Any]:
        """The spec's bounds as JSON (``extra`` rows are the job's, rebuilt from their source)."""
        out = {"avg_bits": self.avg_bits, "total_bytes": self.total_bytes,
               "memory": None if self.memory is None else asdict(self.memory)}
        if self.active_bytes is not None:  # only then: points stored before carry none
            out["active_bytes"] = self.active_bytes
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        """Read :meth:`to_dict`'s output (points stored before ``memory`` existed have none)."""
        memory = data.get("memory")
        return cls(data.get("avg_bits"), data.get("total_bytes"),
                   None if memory is None else MemoryBudget(**memory), data.get("active_bytes"))

    def describe(self) -> str:
        parts = []
        if self.avg_bits is not None:
            parts.append(f"avg_bits <= {self.avg_bits:g}")
        if self.total_bytes is not None:
            parts.append(f"total_bytes <= {self.total_bytes:,.0f}")
        if self.memory is not None:
            parts.append(self.memory.describe())
        if self.active_bytes is not None:
            parts.append(f"active_bytes <= {self.active_bytes:,.0f}")
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
    if budget.memory is not None:
        rows.append(memory_row(space, budget.memory, bits))
    if budget.active_bytes is not None:
        rows.append(active_row(space, budget.active_bytes))
    for row in budget.extra:
        if len(row.costs) != len(space.genes) or any(
                len(c) != n for c, n in zip(row.costs, space.sizes, strict=True)):
            raise ValueError(f"budget row {row.name} was built for another space")
        rows.append(row)
    return tuple(rows)


def memory_row(space: SearchSpace, memory: MemoryBudget,
               bits: tuple[tuple[float, ...], ...]) -> Constraint:
    """The memory row, in bits over 8: each weight gene's stored bits, each KV gene's cache at
    the load (``context × batch`` tokens; a quantized cache adds its two fp32 scales per layer),
    and as the constant the unsearched weights, the cache of attention layers no KV gene chooses
    for (16-bit) and the activation allowance. Exact from the model's config: every attention
    layer caches a key and a value of ``kv_heads × head_dim`` per token (no sliding window)."""
    if not space.attention:
        raise SpecError("budget.memory: the model has no attention layers whose KV cache the cost "
                        "model knows (a causal LM with k_proj/v_proj or GPT-2's c_attn); "
                        "bound its weights with total_bytes instead")
    tokens = memory.tokens
    costs = tuple(
        tuple(b + g.option_kv_bits(o, tokens) for o, b in enumerate(gene_bits))
        for g, gene_bits in zip(space.genes, bits, strict=True))
    constant = (space.unsearched_params * space.unsearched_bits + space.fixed_kv_bits(tokens)
                + 8 * memory.activations)
    return Constraint("memory", costs, constant, memory.bytes, "bytes", divisor=8.0, bit_cost=1.0)


def active_row(space: SearchSpace, limit: float) -> Constraint:
    """The active-bytes row: the bytes of weights one token reads, in bits over 8 (each gene's
    :meth:`~.space.SearchSpace.gene_active_bits`: a routed expert's stored bits × top_k / E;
    the unsearched parameters one token uses at ``unsearched_bits``). No fixed rate per stored
    bit (experts count a fraction of theirs), so no ``bit_cost``."""
    costs = tuple(tuple(space.gene_active_bits(g, o) for o in range(n))
                  for g, n in enumerate(space.sizes))
    unsearched = (space.unsearched_params if space.unsearched_active_params is None
                  else space.unsearched_active_params)
    return Constraint("active_bytes", costs, unsearched * space.unsearched_bits, limit, "bytes",
                      divisor=8.0)
