"""The search space: which layers are searched, what each may become, and which must agree.

A space is built from plain values (layer shapes discovered by a worker, rules from the job spec),
so it imports no torch and can be pickled to every worker. Layers tied together form one *gene*:
a candidate holds one option index per gene, and every layer of the gene takes that option.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .budget import TOLERANCE, Budget, Constraint, budget_rows
from .errors import BudgetError, SpecError
from .experts import expert_groups
from .kv_cache import AttentionInfo, kv_bits
from .options import QuantOption
from .patterns import TimedPattern


@dataclass(frozen=True)
class LayerInfo:
    """Shape of one quantizable layer, as discovered in the model (``nn.Linear``, GPT-2 Conv1D,
    one expert's slice of a fused 3-D expert parameter, see :mod:`.experts`, or an
    ``nn.Embedding`` whose weight is its own: ``kind`` ``"embedding"``, shape vocabulary × width,
    so ``in_features`` is the width its groups run along, as a GGUF ``token_embd`` is blocked)."""

    name: str
    in_features: int
    out_features: int
    # Fraction of tokens that use the layer: top_k / E for a routed expert, 1 otherwise.
    active: float = 1.0
    kind: str = "linear"  # or "embedding": a lookup, whose inputs are token ids

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features

    @property
    def active_numel(self) -> float:
        """Parameters of the layer one token uses, on average over tokens."""
        return self.numel * self.active

    def to_list(self) -> list[Any]:
        """[name, in, out], plus ``active`` where it is not 1 and ``kind`` where it is not a
        linear layer (a dense linear layer's list is unchanged)."""
        out: list[Any] = [self.name, self.in_features, self.out_features]
        if self.kind != "linear":
            return [*out, self.active, self.kind]
        return out if self.active == 1.0 else [*out, self.active]


@dataclass(frozen=True)
class Gene:
    """Layers that share one choice (a tie group, or a lone layer), and the options they share.

    A *KV gene* has no weight layers: its choice is the KV-cache precision of the attention
    layers in ``kv`` (``space.kv_cache``); it stores no weight bits, and costs cache bytes.
    """

    name: str
    layers: tuple[LayerInfo, ...]
    options: tuple[QuantOption, ...]
    kv: tuple[AttentionInfo, ...] = ()

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def option_kv_bits(self, index: int, tokens: int) -> float:
        """Bits of the KV cache of this gene's attention layers holding ``tokens`` tokens."""
        return sum(kv_bits(a, self.options[index], tokens) for a in self.kv)

    def option_bits(self, index: int) -> float:
        """Total bits this gene stores under option ``index``."""
        option = self.options[index]
        return sum(option.effective_bits(layer.in_features) * layer.numel for layer in self.layers)

    def option_active_bits(self, index: int) -> float:
        """Bits of this gene one token reads under option ``index`` (routed experts: top_k / E)."""
        option = self.options[index]
        return sum(option.effective_bits(layer.in_features) * layer.active_numel
                   for layer in self.layers)


@dataclass(frozen=True)
class Candidate:
    """One configuration: an option index per gene.

    ``samples`` asks the worker to score on only the first ``samples`` calibration samples (a
    cheaper, noisier fidelity); ``None`` means all of them.
    """

    choices: tuple[int, ...]
    samples: int | None = None
    # Which strategy proposed it (stored with the trial); not part of the candidate's identity.
    origin: str = field(default="", compare=False)

    def at_fidelity(self, samples: int | None) -> Candidate:
        return Candidate(self.choices, samples, self.origin)


@dataclass(frozen=True)
class Cost:
    """What a candidate costs: average effective bits over searched weights, and model bytes.

    ``active_bytes``: the bytes of weights one token reads (routed experts count top_k / E of
    theirs, shared experts and dense layers all); equal to ``total_bytes`` for a dense model.
    """

    avg_bits: float
    total_bytes: float
    active_bytes: float | None = None


@dataclass(frozen=True)
class SearchSpace:
    """Genes to choose for, plus what is not searched (counted in bytes at ``unsearched_bits``)."""

    genes: tuple[Gene, ...]
    unsearched_params: int = 0
    unsearched_bits: float = 16.0
    # The model's attention layers (what a memory budget charges for the KV cache); empty when
    # the job has no memory budget and no KV choice (the cost model then needs no cache facts).
    attention: tuple[AttentionInfo, ...] = ()
    # Of the unsearched parameters, those one token uses (None: all; routed experts left out of
    # the search count top_k / E of theirs).
    unsearched_active_params: float | None = None
    _gene_bits: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    _gene_active_bits: tuple[tuple[float, ...], ...] = field(init=False, repr=False,
                                                             compare=False)
    _searched_params: int = field(init=False, repr=False, compare=False)
    _gene_size: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    # budget id → (budget, its rows): the rows of the few budgets a search uses, built once
    _rows: dict[int, tuple[Budget, tuple[Constraint, ...]]] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        bits = tuple(tuple(g.option_bits(i) for i in range(len(g.options))) for g in self.genes)
        object.__setattr__(self, "_gene_bits", bits)
        active = tuple(tuple(g.option_active_bits(i) for i in range(len(g.options)))
                       for g in self.genes)
        object.__setattr__(self, "_gene_active_bits", active)
        object.__setattr__(self, "_searched_params", sum(g.numel for g in self.genes))
        # what orders a gene's options: stored bits, or a KV gene's cache bits per token
        size = tuple(b if g.layers else tuple(g.option_kv_bits(i, 1) for i in range(len(b)))
                     for g, b in zip(self.genes, bits, strict=True))
        object.__setattr__(self, "_gene_size", size)

    # -- shape -------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        return tuple(layer for gene in self.genes for layer in gene.layers)

    @property
    def searched_params(self) -> int:
        return self._searched_params  # precomputed: every cost evaluation divides by it

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of options of each gene."""
        return tuple(len(g.options) for g in self.genes)

    def gene_bits(self, gene: int, option: int) -> float:
        """Total stored bits of gene ``gene`` under option ``option`` (precomputed)."""
        return self._gene_bits[gene][option]

    def gene_size(self, gene: int, option: int) -> float:
        """What orders a gene's options cheapest first: its stored bits, or for a KV gene (no
        weights) its cache bits per token."""
        return self._gene_size[gene][option]

    def fixed_kv_bits(self, tokens: int) -> float:
        """Bits of the KV cache of the attention layers no KV gene chooses for (16-bit)."""
        chosen = {a.name for g in self.genes for a in g.kv}
        return sum(kv_bits(a, None, tokens) for a in self.attention if a.name not in chosen)

    def gene_active_bits(self, gene: int, option: int) -> float:
        """Bits of gene ``gene`` one token reads under option ``option`` (precomputed; additive
        over genes, like :meth:`gene_bits`)."""
        return self._gene_active_bits[gene][option]

    @property
    def total_params(self) -> int:
        """Every parameter of the model: searched and not."""
        return self._searched_params + self.unsearched_params

    @property
    def active_params(self) -> float:
        """Parameters one token uses: routed experts count top_k / E of theirs."""
        unsearched = (self.unsearched_params if self.unsearched_active_params is None
                      else self.unsearched_active_params)
        return sum(layer.active_numel for layer in self.layers) + unsearched

    @property
    def has_experts(self) -> bool:
        return any(layer.active < 1.0 for layer in self.layers) or (
            self.unsearched_active_params is not None
            and self.unsearched_active_params < self.unsearched_params)

    # -- cost --------------------------------------------------------------------------------
    def cost_of_bits(self, searched_bits: float) -> Cost:
        total_bits = searched_bits + self.unsearched_params * self.unsearched_bits
        return Cost(searched_bits / self.searched_params, total_bits / 8)

    def searched_bits(self, candidate: Candidate) -> float:
        self.validate(candidate)
        return sum(self._gene_bits[g][c] for g, c in enumerate(candidate.choices))

    def cost(self, candidate: Candidate) -> Cost:
        cost = self.cost_of_bits(self.searched_bits(candidate))
        unsearched = (self.unsearched_params if self.unsearched_active_params is None
                      else self.unsearched_active_params)
        active = sum(self._gene_active_bits[g][c] for g, c in enumerate(candidate.choices))
        return Cost(cost.avg_bits, cost.total_bytes,
                    (active + unsearched * self.unsearched_bits) / 8)

    def constraints(self, budget: Budget) -> tuple[Constraint, ...]:
        """``budget`` as additive rows over this space's genes (:mod:`.budget`)."""
        hit = self._rows.get(id(budget))
        if hit is None or hit[0] is not budget:
            hit = (budget, budget_rows(self, budget))
            if len(self._rows) > 16:  # a search uses one budget; a sweep a handful
                self._rows.clear()
            self._rows[id(budget)] = hit
        return hit[1]

    def feasible(self, candidate: Candidate, budget: Budget) -> bool:
        """Whether ``candidate`` meets every row of ``budget``."""
        self.validate(candidate)
        return all(row.admits(candidate.choices) for row in self.constraints(budget))

    def cheapest(self) -> Candidate:
        """The configuration of least stored bits (each gene at its cheapest option; a KV gene
        at its smallest cache)."""
        return Candidate(tuple(min(range(len(b)), key=b.__getitem__) for b in self._gene_size))

    def check_budget(self, budget: Budget, label: str = "budget") -> None:
        """Raise :class:`BudgetError` naming the minimum when no configuration meets ``budget``:
        the bit bounds below the cheapest configuration, a row that even each gene's cheapest
        option exceeds, or rows of stored bits (and weightless genes' costs) that their common
        least point does not meet together. Rows of other costs are checked one by one.
        ``label`` names the budget in the message: "budget", or a frontier's point."""
        cheapest = self.cheapest()
        least = self.cost(cheapest)
        if not budget.admits(least):
            raise BudgetError(
                f"{label} {budget.describe()} is below the cheapest configuration of the space "
                f"(avg_bits {least.avg_bits:.4f}, total_bytes {least.total_bytes:,.0f}); "
                "raise the budget or add cheaper options")
        rows = self.constraints(budget)
        for row in rows:
            if row.least() > row.limit + TOLERANCE:
                raise BudgetError(
                    f"{label} {row.name}: {row.show(row.limit)} is below the smallest "
                    f"configuration of the space ({row.show(row.least())}); raise the budget or "
                    "add cheaper options")
        if all(row.bit_cost is not None for row in rows):
            # rows of stored bits plus costs of genes without weights (a KV cache): each is at
            # its least where every gene takes its least bits, ties broken by the other costs
            least_all = [min((self.gene_bits(g, o), sum(row.costs[g][o] for row in rows), o)
                             for o in range(n))[2] for g, n in enumerate(self.sizes)]
            fits = all(row.admits(least_all) for row in rows)
        else:  # a row of other costs (latency): the rows' least need not meet at one point;
            fits = True  # each row's own least was checked above
        if not fits:
            raise BudgetError(
                f"{label} {budget.describe()}: no configuration meets every bound at once (the "
                f"one of least stored bits does not); raise a bound or add cheaper options")

    # -- encoding ----------------------------------------------------------------------------
    def validate(self, candidate: Candidate) -> None:
        if len(candidate.choices) != len(self.genes):
            raise ValueError(f"candidate has {len(candidate.choices)} choices, space has "
                             f"{len(self.genes)} genes")
        for gene, choice in zip(self.genes, candidate.choices, strict=True):
            if not 0 <= choice < len(gene.options):
                raise ValueError(f"choice {choice} out of range for gene {gene.name}")

    def decode(self, candidate: Candidate) -> dict[str, QuantOption]:
        """Layer name → option, for every searched layer."""
        self.validate(candidate)
        return {
            layer.name: gene.options[choice]
            for gene, choice in zip(self.genes, candidate.choices, strict=True)
            for layer in gene.layers
        }

    def encode(self, assignment: Mapping[str, QuantOption]) -> Candidate:
        """The candidate giving each layer the option in ``assignment`` (tied layers must agree)."""
        choices = []
        for gene in self.genes:
            picked = {assignment[layer.name] for layer in gene.layers}
            if len(picked) != 1:
                raise ValueError(f"tied layers of {gene.name} were given different options")
            choices.append(gene.options.index(picked.pop()))
        return Candidate(tuple(choices))

    def uniform_options(self) -> list[QuantOption]:
        """Options every weight gene offers, in the order of the first: the uniform baselines."""
        weights = [g for g in self.genes if g.layers] or list(self.genes)
        common = set(weights[0].options).intersection(*(g.options for g in weights[1:]))
        return [o for o in weights[0].options if o in common]

    def uniform(self, option: QuantOption) -> Candidate:
        """Every weight gene at ``option``; a KV gene at its 16-bit cache (the serving default)
        unless ``option`` is one of its precisions."""
        return Candidate(tuple(
            g.options.index(option) if option in g.options or g.layers else
            max((g.option_kv_bits(o, 1), -o, o) for o in range(len(g.options)))[2]
            for g in self.genes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description, stored with a study so trials decode without the model."""
        out: dict[str, Any] = {
            "unsearched_params": self.unsearched_params,
            "unsearched_bits": self.unsearched_bits,
            "genes": [{"name": g.name,
                       "layers": [ly.to_list() for ly in g.layers],
                       "options": [o.to_dict() for o in g.options],
                       **({"kv": [[a.name, a.kv_heads, a.head_dim] for a in g.kv]} if g.kv else {})}
                      for g in self.genes],
        }
        if self.attention:  # only then: spaces stored before carry none
            out["attention"] = [[a.name, a.kv_heads, a.head_dim] for a in self.attention]
        if self.unsearched_active_params is not None:  # a dense space's dict stays as it was
            out["unsearched_active_params"] = self.unsearched_active_params
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        genes = tuple(
            Gene(g["name"], tuple(LayerInfo(*ly) for ly in g["layers"]),
                 tuple(QuantOption.from_dict(o) for o in g["options"]),
                 tuple(AttentionInfo(*a) for a in g.get("kv", ())))
            for g in data["genes"])
        return cls(genes, data["unsearched_params"], data["unsearched_bits"],
                   tuple(AttentionInfo(*a) for a in data.get("attention", ())),
                   data.get("unsearched_active_params"))

    def decode_kv(self, candidate: Candidate) -> dict[str, QuantOption]:
        """Attention layer → its KV-cache option, for every attention layer a KV gene holds."""
        self.validate(candidate)
        return {a.name: gene.options[choice]
                for gene, choice in zip(self.genes, candidate.choices, strict=True)
                for a in gene.kv}

    def summarize(self, candidate: Candidate) -> str:
        """Compact per-option layer counts, e.g. ``int3-g128-asym×10 int4-g128-asym×26``; KV-cache
        choices as ``kv:fp8_e4m3×2``."""
        counts: dict[str, int] = {}
        for option in self.decode(candidate).values():
            counts[option.label] = counts.get(option.label, 0) + 1
        for option in self.decode_kv(candidate).values():
            counts[f"kv:{option.label}"] = counts.get(f"kv:{option.label}", 0) + 1
        return " ".join(f"{label}×{n}" for label, n in sorted(counts.items()))


@dataclass(frozen=True)
class LayerRule:
    """Layers whose name matches ``pattern`` (``re.search``, under the time limit of
    :mod:`.patterns`) may take ``options``."""

    pattern: str
    options: tuple[QuantOption, ...]


def build_space(
    layers: Sequence[LayerInfo],
    rules: Sequence[LayerRule],
    ties: Iterable[str] = (),
    total_params: int | None = None,
    unsearched_bits: float = 16.0,
    attention: Sequence[AttentionInfo] = (),
    expert_group: int | None = None,
    kv_options: Sequence[QuantOption] = (),
    kv_tied: bool = False,
) -> SearchSpace:
    """Apply the spec's layer rules and tie patterns to the discovered layers.

    The first rule a layer matches decides its options; layers no rule matches are not searched.
    A tie pattern groups the layers it matches by the values of its capture groups: with
    ``layer\\.(\\d+)\\.attention\\.self\\.(query|key|value)`` nothing is tied, with
    ``layer\\.(\\d+)\\.attention\\.self\\.(?:query|key|value)`` q/k/v are tied within each block, and
    a pattern without groups ties every layer it matches. ``attention`` (the model's, for a
    memory budget or a KV choice) is kept for the cost model. ``kv_options`` adds a KV gene per
    attention layer (``{name}.kv_cache``), or one for them all (``kv_cache``) with ``kv_tied``.

    ``expert_group``: routed experts that no tie pattern ties share one choice per
    ``expert_group`` consecutive experts of a MoE layer, their matrices included
    (:func:`.experts.expert_groups`); None: expert matrices are layers like any other.
    """
    compiled = [(rule, TimedPattern(rule.pattern, "space.layers")) for rule in rules]
    chosen: dict[str, tuple[LayerInfo, tuple[QuantOption, ...]]] = {}
    for rule, regex in compiled:
        matched = [layer for layer in layers if regex.search(layer.name)]
        if not matched:
            raise SpecError(f"space.layers: pattern '{rule.pattern}' matches no quantizable layer "
                            f"(e.g. {', '.join(layer.name for layer in layers[:3])})")
        for layer in matched:
            if layer.name in chosen:
                continue
            for option in rule.options:
                reason = option.accepts(layer.in_features)
                if not reason and layer.kind == "embedding" and option.activations:
                    reason = ("it quantizes the layer's inputs, and an embedding's inputs are "
                              "token ids; give it a weight-only option")
                if reason:
                    raise SpecError(f"space.layers: option {option.label} cannot be applied to "
                                    f"layer {layer.name}: {reason}")
            chosen[layer.name] = (layer, rule.options)
    if not chosen:
        raise SpecError("space.layers: no layer is searched")

    order = [layer.name for layer in layers if layer.name in chosen]
    group_of: dict[str, str] = {}
    for pattern in ties:
        regex = TimedPattern(pattern, "space.tie")
        hits = [name for name in order if regex.search(name)]
        if not hits:
            raise SpecError(f"space.tie: pattern '{pattern}' matches no searched layer")
        for name in hits:
            match = regex.search(name)
            assert match is not None
            key = f"{pattern}{match.groups()}"
            if name in group_of and group_of[name] != key:
                raise SpecError(f"space.tie: layer {name} is matched by two tie patterns")
            group_of[name] = key
    if expert_group is not None:
        for name, key in expert_groups(order, expert_group).items():
            group_of.setdefault(name, key)

    genes: list[Gene] = []
    members: dict[str, list[str]] = {}
    for name in order:
        members.setdefault(group_of.get(name, name), []).append(name)
    for names in members.values():
        option_sets = {chosen[n][1] for n in names}
        if len(option_sets) != 1:
            raise SpecError(f"space.tie: tied layers {names[0]} and others have different options")
        gene_name = names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}"
        genes.append(Gene(gene_name, tuple(chosen[n][0] for n in names), option_sets.pop()))

    searched = sum(gene.numel for gene in genes)
    unsearched = 0 if total_params is None else max(total_params - searched, 0)
    # routed experts left out of the search: a token reads top_k / E of their parameters
    idle = sum(layer.numel - layer.active_numel for layer in layers if layer.name not in chosen)
    active = unsearched - idle if idle and total_params is not None else None
    if kv_options:  # the KV cache's precision: a gene per attention layer, or one for them all
        assert attention, "a KV choice needs the model's attention layers"
        kv = tuple(dict.fromkeys(kv_options))
        if kv_tied:
            genes.append(Gene("kv_cache", (), kv, tuple(attention)))
        else:
            genes.extend(Gene(f"{a.name}.kv_cache", (), kv, (a,)) for a in attention)
    return SearchSpace(tuple(genes), unsearched, unsearched_bits, tuple(attention), active)
