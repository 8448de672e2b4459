"""Moving genes between compression levels while keeping a configuration within budget.

A gene's *levels* are its options sorted by stored bits (a KV gene's: cache bits per token),
cheapest first; options of equal bits form a *tier* (RTN and GPTQ at one width; nf4 and mxfp4
beside int4-g128). Moves go one tier up or down and land on a random option of that tier: every
move spends or saves bits (a move within a tier would let "spend the slack" wander through
formats forever and never raise anything), and formats mix as genes move. Shared by the random,
evolutionary and Optuna strategies.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

from mpsearch.spaces.budget import TOLERANCE
from mpsearch.spaces.space import Budget, Candidate, SearchSpace


class LevelMap:
    """Per gene, option indices in increasing cost, and each option's position in that order.

    ``allowed`` restricts each gene to some of its options (e.g. a window around the budget);
    moves then never leave them.
    """

    def __init__(self, space: SearchSpace, allowed: Sequence[Collection[int]] | None = None) -> None:
        self.space = space
        self.order = [sorted((o for o in range(n) if allowed is None or o in allowed[g]),
                             key=lambda o: (space.gene_size(g, o), o))
                      for g, n in enumerate(space.sizes)]
        self.rank = [{opt: r for r, opt in enumerate(order)} for order in self.order]
        self.tiers: list[list[list[int]]] = []  # per gene, options grouped by equal bits
        self.tier_of: list[dict[int, int]] = []
        for g, order in enumerate(self.order):
            tiers: list[list[int]] = []
            for o in order:
                if tiers and math.isclose(space.gene_size(g, o), space.gene_size(g, tiers[-1][0]),
                                          rel_tol=1e-12):
                    tiers[-1].append(o)
                else:
                    tiers.append([o])
            self.tiers.append(tiers)
            self.tier_of.append({o: t for t, tier in enumerate(tiers) for o in tier})
        self._tier_count = [len(tiers) for tiers in self.tiers]

    def level(self, gene: int, option: int) -> int:
        return self.rank[gene][option]

    def option(self, gene: int, level: int) -> int:
        return self.order[gene][level]

    def top(self, gene: int) -> int:
        return len(self.order[gene]) - 1

    def can_move(self, gene: int, option: int, direction: int) -> bool:
        """Whether ``option`` has a tier above (``direction`` 1) or below (-1) it."""
        t = self.tier_of[gene][option] + direction
        return 0 <= t < self._tier_count[gene]

    def move(self, gene: int, option: int, direction: int, rng: random.Random) -> int:
        """A random option of the tier above (1) or below (-1) ``option``'s."""
        tier = self.tiers[gene][self.tier_of[gene][option] + direction]
        return tier[0] if len(tier) == 1 else rng.choice(tier)


def budget_bits_per_weight(space: SearchSpace, budget: Budget) -> float:
    """The most average bits per searched weight ``budget`` admits: over the rows that charge
    weights at a fixed rate (``Constraint.bit_cost``), what is left for the searched weights
    when every other cost of the row is at its least, at that rate."""
    bounds = []
    for row in space.constraints(budget):
        if row.bit_cost is None:
            continue
        # what the row charges beyond the weights' bits (e.g. a searched KV cache), at its least
        others = sum(min(c - row.bit_cost * space.gene_bits(g, o) for o, c in enumerate(costs))
                     for g, costs in enumerate(row.costs))
        bounds.append((row.capacity - others) / row.bit_cost / space.searched_params)
    return min(bounds, default=float("inf"))


def budget_window(space: SearchSpace, budget: Budget, width: int) -> list[set[int]]:
    """Per gene, the options within ``width`` cost tiers of the budget's tier.

    The budget's tier is the one whose bits per weight are nearest the budget's. The window is
    widened downwards until the cheapest configuration inside it fits, so a feasible one always
    exists (if the budget admits any).
    """
    target = budget_bits_per_weight(space, budget)
    tiers = LevelMap(space).tiers
    rows = space.constraints(budget)
    centers = [min(range(len(ts)), key=lambda t: abs(
        space.gene_bits(g, ts[t][0]) / max(space.genes[g].numel, 1) - target))
        for g, ts in enumerate(tiers)]
    below = width
    while True:
        window = [{o for tier in ts[max(0, c - below):c + width + 1] for o in tier}
                  for ts, c in zip(tiers, centers, strict=True)]
        cheapest = [min((space.gene_bits(g, o), o) for o in w)[1] for g, w in enumerate(window)]
        if all(row.admits(cheapest) for row in rows) or all(c - below <= 0 for c in centers):
            return window
        below += 1


class _Use:
    """The summed costs of ``choices`` on each row of a budget, kept as genes move.

    The tests are :meth:`Constraint.admits_sum <mpsearch.spaces.budget.Constraint.admits_sum>`'s
    arithmetic, operation for operation (so the searcher and the stored feasibility flag agree at
    the boundary), unrolled here because they run tens of times per proposed candidate.
    """

    def __init__(self, space: SearchSpace, budget: Budget, choices: Sequence[int]) -> None:
        self.rows = space.constraints(budget)
        self.sums = [row.summed(choices) for row in self.rows]
        self._terms = [(row.costs, row.constant, row.divisor, row.limit + TOLERANCE)
                       for row in self.rows]

    def fits(self) -> bool:
        return all(row.admits_sum(s) for row, s in zip(self.rows, self.sums, strict=True))

    def fits_after(self, gene: int, old: int, new: int) -> bool:
        for (costs, constant, divisor, bound), s in zip(self._terms, self.sums, strict=True):
            if ((s + (costs[gene][new] - costs[gene][old])) + constant) / divisor > bound:
                return False
        return True

    def relieves(self, gene: int, old: int, new: int) -> bool:
        """Whether moving ``gene`` from ``old`` to ``new`` lowers a row that is over."""
        return any(not row.admits_sum(s) and row.costs[gene][new] < row.costs[gene][old]
                   for row, s in zip(self.rows, self.sums, strict=True))

    def relieving_moves(self, choices: Sequence[int]) -> list[tuple[int, int]]:
        """(gene, option) moves to any option, not only a tier down, that lower a row that is
        over, raise no other row that is over and put no row over that is not: for rows that
        do not fall with the bits (a latency, where a dequantized 2-bit layer is slower than an
        8-bit one with a kernel). Each such move lowers the excess, so repairs end."""
        over = [not row.admits_sum(s) for row, s in zip(self.rows, self.sums, strict=True)]
        moves = []
        for g, c in enumerate(choices):
            for o in range(len(self.rows[0].costs[g]) if self.rows else 0):
                deltas = [row.costs[g][o] - row.costs[g][c] for row in self.rows]
                if (any(d < 0 and bad for d, bad in zip(deltas, over, strict=True))
                        and all(d <= 0 for d, bad in zip(deltas, over, strict=True) if bad)
                        and all(row.admits_sum(s + d) for row, s, d, bad
                                in zip(self.rows, self.sums, deltas, over, strict=True) if not bad)):
                    moves.append((g, o))
        return moves

    def move(self, gene: int, old: int, new: int) -> None:
        self.sums = [s + (row.costs[gene][new] - row.costs[gene][old])
                     for row, s in zip(self.rows, self.sums, strict=True)]


def repair_down(choices: list[int], levels: LevelMap, budget: Budget, rng: random.Random,
                keep: frozenset[int] = frozenset()) -> bool:
    """Lower random genes one tier at a time (sparing ``keep``) until ``choices`` meets every row
    of ``budget``; a gene is lowered only when that lowers a row that is over. When no tier down
    helps (a row that does not fall with the bits), a gene moves to any option that lowers the
    excess (:meth:`_Use.relieving_moves`), among the options ``levels`` holds.

    Returns False if even lowering everything lowerable does not fit (the caller discards it).
    """
    use = _Use(levels.space, budget, choices)
    while not use.fits():
        lowerable = [g for g, c in enumerate(choices) if levels.can_move(g, c, -1) and g not in keep
                     and any(use.relieves(g, c, o) for o in levels.tiers[g][levels.tier_of[g][c] - 1])]
        if not lowerable:
            if keep:
                keep = frozenset()
                continue
            moves = [(g, o) for g, o in use.relieving_moves(choices) if o in levels.rank[g]]
            if not moves:  # (only options of the map: an Optuna study's window holds no others)
                return False
            g, new = rng.choice(moves)
            use.move(g, choices[g], new)
            choices[g] = new
            continue
        g = rng.choice(lowerable)
        new = levels.move(g, choices[g], -1, rng)
        use.move(g, choices[g], new)
        choices[g] = new
    return True


def fill_up(choices: list[int], levels: LevelMap, budget: Budget, rng: random.Random) -> None:
    """Raise random genes one tier at a time while the result still meets ``budget``."""
    use = _Use(levels.space, budget, choices)
    open_genes = [g for g, c in enumerate(choices) if levels.can_move(g, c, 1)]
    while open_genes:
        g = rng.choice(open_genes)
        new = levels.move(g, choices[g], 1, rng)
        if use.fits_after(g, choices[g], new):
            use.move(g, choices[g], new)
            choices[g] = new
            if not levels.can_move(g, new, 1):
                open_genes.remove(g)
        else:
            open_genes.remove(g)


def as_candidate(choices: list[int], origin: str) -> Candidate:
    return Candidate(tuple(choices), origin=origin)


def switch_levels(choices: list[int], levels: LevelMap, budget: Budget, rng: random.Random,
                  max_switches: int, fill: bool = False) -> bool:
    """EvoPress's level switch, in place: raise 1..``max_switches`` random genes one tier, then
    lower other random genes until the budget holds again (any layer sizes: by the cost model);
    with ``fill``, then raise random genes while the budget still holds (spend the slack).

    Returns False when no repair fits (``choices`` is then garbage; the caller retries).
    """
    raised: set[int] = set()
    for _ in range(rng.randint(1, max_switches)):
        raisable = [g for g, c in enumerate(choices) if levels.can_move(g, c, 1)]
        if not raisable:
            break
        g = rng.choice(raisable)
        choices[g] = levels.move(g, choices[g], 1, rng)
        raised.add(g)
    if not repair_down(choices, levels, budget, rng, frozenset(raised)):
        return False
    if fill:
        fill_up(choices, levels, budget, rng)
    return True
