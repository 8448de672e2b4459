"""MC-MoE in the profile-based strategies: routing-weighted proxies, one probe per MoE layer."""

import pytest

from mpsearch.searcher import IntegerProgramSearcher
from mpsearch.searcher.base import Evaluation, SearchContext
from mpsearch.searcher.ip_searcher import IntegerProgramParams
from mpsearch.searcher.profiling import ProfileMeasurer, shared_expert_anchors
from mpsearch.spaces.errors import SpecError
from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Budget, Gene, LayerInfo, SearchSpace

OPTIONS = (QuantOption("int", 2, 64), QuantOption("int", 4, 64), QuantOption("fp16", 16, None))
E = 4


def moe_space() -> SearchSpace:
    genes = [Gene("model.layers.0.self_attn.q_proj",
                  (LayerInfo("model.layers.0.self_attn.q_proj", 64, 64),), OPTIONS)]
    for e in range(E):
        prefix = f"model.layers.0.mlp.experts.{e}"
        genes.append(Gene(f"{prefix}.gate_up_proj+1", (
            LayerInfo(f"{prefix}.gate_up_proj", 64, 128, 0.5),
            LayerInfo(f"{prefix}.down_proj", 64, 64, 0.5)), OPTIONS))
    return SearchSpace(tuple(genes))


ROUTED = [0.2, 0.9, 0.6, 0.3]  # fraction of tokens routed to each expert (sums to top_k = 2)
ROUTING = {f"model.layers.0.mlp.experts.{e}.{m}": ROUTED[e] for e in range(E)
           for m in ("gate_up_proj", "down_proj")}


def test_the_experts_of_a_layer_share_the_probe_of_the_most_routed_one():
    space = moe_space()
    anchors = {g: 0 for g in range(len(space.genes))}  # every gene's anchor: option 0
    shared = shared_expert_anchors(space, anchors, ROUTING)
    assert shared == {1: 2, 2: 2, 3: 2, 4: 2}  # expert 1 is routed most; q keeps its own
    # proxies already weighted by routing (cluster/warmup.py): a rarely routed expert's is small
    proxy = {(g, o): (1.0 + g) * (3 - o) * (ROUTED[g - 1] if g else 1.0)
             for g in range(len(space.genes)) for o in range(2)}
    wanted = [(g, o) for g in range(len(space.genes)) for o in range(2)]
    m = ProfileMeasurer(space, wanted, proxy=proxy, anchors=anchors, shared=shared)
    asked = m.ask(10)
    assert len(asked) == 3  # the base, q's probe, expert 1's probe
    base = asked[0].choices
    results = [Evaluation(c, 1.0 + sum(x != b for x, b in zip(c.choices, base, strict=True))
                          * (0.5 if c.choices[0] != base[0] else 2.0))
               for c in asked]
    m.tell(results)
    assert m.done
    profile = m.profile()
    lead = profile[(2, 0)]
    assert lead == pytest.approx(2.0)
    for g in (1, 3, 4):
        for o in range(2):
            assert profile[(g, o)] == pytest.approx(lead * proxy[(g, o)] / proxy[(2, 0)])
    assert profile[(1, 0)] < profile[(4, 0)]  # expert 0 (0.2 routed) below expert 3 (0.3)


def test_routing_needs_proxies_and_the_routing_fractions():
    with pytest.raises(ValueError, match="routing: true .* needs proxy: true"):
        IntegerProgramParams(routing=True)
    with pytest.raises(ValueError, match="anchors: false has none"):
        IntegerProgramParams(proxy="fisher", anchors=False, routing=True)
    space = moe_space()
    proxy = {(g.name, o.label): 1.0 for g in space.genes for o in g.options}
    with pytest.raises(SpecError, match="routing fractions"):
        IntegerProgramSearcher(space, Budget(avg_bits=4.5), 0,
                               IntegerProgramParams(proxy=True, routing=True),
                               SearchContext(proxy=proxy))
    needs = IntegerProgramSearcher.needs(IntegerProgramParams(proxy=True, routing=True))
    assert needs.routing and needs.proxy
