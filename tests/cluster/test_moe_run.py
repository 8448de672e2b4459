"""A search over a tiny Mixtral through the real loop (shared local Ray), and MoE spec errors."""


import pytest
import yaml

from mpsearch.cluster.job import prepare, run_job
from mpsearch.cluster.spec import parse_spec
from mpsearch.spaces.errors import SpecError
from mpsearch.storage import COMPLETE, TrialStore

E, L = 4, 2  # the tiny Mixtral's experts per layer and blocks


def fields(model, tmp_path, **extra):
    return {"study": "moe", "model": {"name": model},
            "calibration": {"samples": 4, "seq_len": 16},
            "space": {"layers": [{"match": r"layers\.\d+\.",
                                  "options": ["int2-g32-asym", "int4-g32-asym", "int8-g32-asym"]}]},
            "budget": {"avg_bits": 4.5}, "workers": {"count": 1, "cpus": 1},
            "storage": {"url": f"sqlite:///{tmp_path / 'moe.db'}"}, **extra}


@pytest.mark.slow
def test_a_routing_weighted_search_over_a_tiny_mixtral_completes_with_expert_genes(
        ray_session, tiny_mixtral_path, tmp_path):
    spec = parse_spec(fields(tiny_mixtral_path, tmp_path, evaluations=16, searcher={
        "name": "integer-program", "params": {"proxy": True, "routing": True}}))
    store = TrialStore(spec.storage.url)
    result = run_job(spec, store)
    space = result.study.space
    experts = [g for g in space.genes if ".experts." in g.name]
    assert len(experts) == L * E and len(space.genes) == L * 4 + L * E
    assert all(ly.active == 0.5 for g in experts for ly in g.layers)  # top-2 of 4
    trials = store.trials("moe")
    # the program proposes its optimum after the probes and is done: short of 16, "stopped"
    assert result.study.status == "stopped" and {t.status for t in trials} == {COMPLETE}
    assert trials[-1].origin == "integer-program:0" and trials[-1].feasible
    probes = [t for t in trials if t.origin.endswith(":probe")]
    probed = {space.genes[g].name for t in probes for g, c in enumerate(t.choices) if c != 2}
    # one probe per attention layer, one per MoE layer (its most-routed expert stands for all)
    assert len(probes) == L * 4 + L and sum(".experts." in n for n in probed) == L
    (best,) = store.best("moe", top=1)
    assert best.avg_bits <= 4.5 and best.objective is not None
    # reported for the candidate: the plan and the results table carry its active bytes
    from mpsearch.cluster.cli.output import results_table, trial_json
    from mpsearch.storage.plan import build_plan

    active = space.cost(best.candidate).active_bytes
    assert active is not None and active < best.total_bytes
    assert build_plan(result.study, best)["provenance"]["active_bytes"] == active
    assert trial_json(result.study, best)["active_bytes"] == active
    table = results_table(result.study, [best], [])
    assert [c.header for c in table.columns][4] == "active bytes"


def test_expert_settings_and_routing_on_a_dense_model_are_refused(tiny_llama_path,
                                                                 tiny_mixtral_path, tmp_path):
    with pytest.raises(SpecError, match="space.experts: the model has no routed experts"):
        prepare(parse_spec(fields(tiny_llama_path, tmp_path, space={
            "layers": [{"match": "layers", "options": ["int4-g32-asym"]}],
            "experts": {"group": 2}})))
    with pytest.raises(SpecError, match="searcher.params.routing: .* has no routed experts"):
        prepare(parse_spec(fields(tiny_llama_path, tmp_path, searcher={
            "name": "hybrid", "params": {"proxy": True, "routing": True}})))
    with pytest.raises(SpecError, match="runtime vllm loads the experts of a layer"):
        prepare(parse_spec(fields(tiny_mixtral_path, tmp_path, space={
            "layers": [{"match": "layers", "options": ["int4-g32-sym"]}], "runtime": "vllm",
            "experts": {"group": 2}})))
    grouped = prepare(parse_spec(fields(tiny_mixtral_path, tmp_path, space={
        "layers": [{"match": "layers", "options": ["int4-g32-sym"]}],
        "experts": {"group": 2}}))).space
    assert len(grouped.genes) == L * 4 + L * E // 2


@pytest.mark.slow
def test_the_cli_says_so_in_one_line_and_stores_nothing(ray_session, tiny_llama_path, tmp_path,
                                                        cli_inprocess):
    spec = tmp_path / "dense.yaml"
    spec.write_text(yaml.safe_dump(fields(tiny_llama_path, tmp_path, space={
        "layers": [{"match": "layers", "options": ["int4-g32-asym"]}], "experts": {}})))
    # the CLI's entry point in this process, on the session's Ray instance
    res = cli_inprocess.invoke("run", str(spec))
    cli_inprocess.assert_one_line_error(res)
    assert res.stderr.startswith("error: space.experts: the model has no routed experts")
    assert not (tmp_path / "moe.db").exists()


def test_an_active_bytes_budget_is_the_cost_models_row_and_the_program_meets_it(
        tiny_mixtral_path, tiny_llama_path, tmp_path):
    import itertools

    import numpy as np

    from mpsearch.searcher.ip_searcher import IntegerProgramSearcher
    from mpsearch.spaces.space import Budget, Candidate

    from .test_memory_budget import _additive, _run

    options = ["int2-g32-asym", "int4-g32-asym", "fp16"]
    job = prepare(parse_spec(fields(tiny_mixtral_path, tmp_path, space={
        "layers": [{"match": r"layers\.0\.(mlp|self_attn\.q_proj)", "options": options}]},
        budget={"active_bytes": 1e12})))
    space = job.space
    assert len(space.genes) == 1 + E  # q_proj and the four experts of block 0: 243 configurations
    (row,) = space.constraints(job.budget)
    rng = np.random.default_rng(0)
    for _ in range(10):
        c = Candidate(tuple(int(rng.integers(n)) for n in space.sizes))
        assert row.value(c.choices) == pytest.approx(space.cost(c).active_bytes, rel=1e-15)
    everything = [Candidate(c) for c in itertools.product(*(range(n) for n in space.sizes))]
    active = sorted(row.value(c.choices) for c in everything)
    f = _additive(space, 5)
    for at in (0.2, 0.6):
        budget = Budget(avg_bits=9.0, active_bytes=active[int(at * len(active))])
        best = min(f(c) for c in everything if space.feasible(c, budget))
        solution, ok = _run(IntegerProgramSearcher(space, budget, 0), f, 100)[-1]
        assert ok and f(solution) == pytest.approx(best, abs=1e-12)
        assert space.cost(solution).active_bytes <= budget.active_bytes + 1e-6
    with pytest.raises(SpecError, match="budget.active_bytes: .* has no routed experts"):
        prepare(parse_spec(fields(tiny_llama_path, tmp_path, budget={"active_bytes": 1e9})))


def test_a_routed_experts_proxy_is_weighted_by_its_share_of_the_tokens():
    from mpsearch.cluster.warmup import _all_proxies
    from mpsearch.spaces import parse_option
    from mpsearch.spaces.space import Gene, LayerInfo, SearchSpace

    int4 = parse_option("int4-g32-asym")
    q = LayerInfo("model.layers.0.self_attn.q_proj", 64, 64)
    up, down = (LayerInfo(f"model.layers.0.mlp.experts.1.{m}", 64, 64, 0.5) for m in ("up", "down"))
    space = SearchSpace((Gene("q", (q,), (int4,)), Gene("e1", (up, down), (int4,))))
    computed = {(q.name, int4.label): 3.0, (up.name, int4.label): 2.0,
                (down.name, int4.label): 5.0}
    routing = {up.name: 0.25, down.name: 0.25}
    assert _all_proxies(space, None, computed, routing) == {("q", int4.label): 3.0,
                                                            ("e1", int4.label): 0.25 * 7.0}
    assert _all_proxies(space, None, computed) == {("q", int4.label): 3.0, ("e1", int4.label): 7.0}


def test_a_study_stored_before_the_serving_fields_keeps_its_identity(tiny_llama_path, tmp_path):
    """Fields added since (space.experts, budget.active_bytes, …) are left out at their defaults,
    so a rerun of a spec stored before them is the same study; given, they count."""
    spec = parse_spec(fields(tiny_llama_path, tmp_path))
    identity = spec.identity()
    assert set(identity["space"]) == {"layers", "tie", "unsearched_bits", "runtime"}
    assert set(identity["budget"]) == {"avg_bits", "total_bytes"}
    assert set(identity["searcher"]) == {"name", "params"}
    moe = parse_spec(fields(tiny_llama_path, tmp_path, budget={"avg_bits": 4.5,
                                                               "active_bytes": 1e6}))
    assert moe.identity()["budget"]["active_bytes"] == 1e6


@pytest.mark.parametrize("name", ["evolutionary", "evolutionary-population", "hybrid",
                                  "integer-program", "optuna", "random"])
def test_every_strategy_meets_an_active_bytes_budget(tiny_mixtral_path, tmp_path, name):
    from mpsearch.searcher import SearchContext, SearcherConfig, make_searcher

    from .test_memory_budget import _additive, _run

    options = ["int2-g32-asym", "int4-g32-asym", "int8-g32-asym", "fp16"]
    probe = prepare(parse_spec(fields(tiny_mixtral_path, tmp_path, space={
        "layers": [{"match": r"layers\.\d+\.", "options": options}]},
        budget={"active_bytes": 1e12})))
    (row,) = probe.space.constraints(probe.budget)
    top = row.value(probe.space.uniform(probe.space.uniform_options()[-1]).choices)
    bound = row.least() + 0.4 * (top - row.least())
    job = prepare(parse_spec(fields(tiny_mixtral_path, tmp_path, space={
        "layers": [{"match": r"layers\.\d+\.", "options": options}]},
        budget={"active_bytes": bound})))
    f = _additive(job.space)
    params = {"hybrid": {"seeds": 2}}.get(name, {})
    searcher = make_searcher(SearcherConfig(name=name, params=params), job.space, job.budget, 0,
                             SearchContext(study=f"active-{name}"))
    proposed = [(c, ok) for c, ok in _run(searcher, f, 80, slots=2)
                if not c.origin.endswith(":probe") and c.origin != "uniform"]
    assert proposed
    for c, ok in proposed:
        active = job.space.cost(c).active_bytes
        assert ok and active is not None and active <= bound + 1e-6, (name, c, active, bound)
