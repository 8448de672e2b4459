"""Moving genes between compression levels while keeping a configuration within budget.

A gene's *levels* are its options sorted by stored bits, cheapest first. Raising a level spends
bits; lowering one saves them. Shared by the random and evolutionary strategies.
"""

from __future__ import annotations

import random

from mpsearch.spaces.space import Budget, Candidate, SearchSpace


class LevelMap:
    """Per gene, option indices in increasing cost, and each option's position in that order."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.order = [sorted(range(n), key=lambda o, g=g: (space.gene_bits(g, o), o))
                      for g, n in enumerate(space.sizes)]
        self.rank = [{opt: r for r, opt in enumerate(order)} for order in self.order]

    def level(self, gene: int, option: int) -> int:
        return self.rank[gene][option]

    def option(self, gene: int, level: int) -> int:
        return self.order[gene][level]

    def top(self, gene: int) -> int:
        return len(self.order[gene]) - 1


def repair_down(choices: list[int], levels: LevelMap, budget: Budget, rng: random.Random,
                keep: frozenset[int] = frozenset()) -> bool:
    """Lower random genes one level at a time (sparing ``keep``) until ``choices`` fits ``budget``.

    Returns False if even lowering everything lowerable does not fit (the caller discards it).
    """
    space = levels.space
    bits = sum(space.gene_bits(g, c) for g, c in enumerate(choices))
    while not budget.admits(space.cost_of_bits(bits)):
        lowerable = [g for g, c in enumerate(choices) if levels.level(g, c) > 0 and g not in keep]
        if not lowerable:
            if keep:
                keep = frozenset()
                continue
            return False
        g = rng.choice(lowerable)
        new = levels.option(g, levels.level(g, choices[g]) - 1)
        bits += space.gene_bits(g, new) - space.gene_bits(g, choices[g])
        choices[g] = new
    return True


def fill_up(choices: list[int], levels: LevelMap, budget: Budget, rng: random.Random) -> None:
    """Raise random genes one level at a time while the result still fits ``budget``."""
    space = levels.space
    bits = sum(space.gene_bits(g, c) for g, c in enumerate(choices))
    open_genes = [g for g, c in enumerate(choices) if levels.level(g, c) < levels.top(g)]
    while open_genes:
        g = rng.choice(open_genes)
        new = levels.option(g, levels.level(g, choices[g]) + 1)
        delta = space.gene_bits(g, new) - space.gene_bits(g, choices[g])
        if budget.admits(space.cost_of_bits(bits + delta)):
            choices[g], bits = new, bits + delta
            if levels.level(g, new) == levels.top(g):
                open_genes.remove(g)
        else:
            open_genes.remove(g)


def as_candidate(choices: list[int], origin: str) -> Candidate:
    return Candidate(tuple(choices), origin=origin)


def switch_levels(choices: list[int], levels: LevelMap, budget: Budget, rng: random.Random,
                  max_switches: int, fill: bool = False) -> bool:
    """EvoPress's level switch, in place: raise 1..``max_switches`` random genes one level, then
    lower other random genes until the budget holds again (any layer sizes: by the cost model);
    with ``fill``, then raise random genes while the budget still holds (spend the slack).

    Returns False when no repair fits (``choices`` is then garbage; the caller retries).
    """
    raised: set[int] = set()
    for _ in range(rng.randint(1, max_switches)):
        raisable = [g for g, c in enumerate(choices) if levels.level(g, c) < levels.top(g)]
        if not raisable:
            break
        g = rng.choice(raisable)
        choices[g] = levels.option(g, levels.level(g, choices[g]) + 1)
        raised.add(g)
    if not repair_down(choices, levels, budget, rng, frozenset(raised)):
        return False
    if fill:
        fill_up(choices, levels, budget, rng)
    return True
