"""Fixtures of the worker tests: a trial scored by a real worker, for the export round trips."""

import pytest

EXPORT_CALIBRATION = {"source": "stdlib-docs", "samples": 4, "seq_len": 24, "batch_size": 2}


@pytest.fixture
def scored_trial():
    """``scored_trial(model_path, objective, dtype, labels)``: a worker, the options of a candidate
    that uses every label at least once (over every layer of the numbered blocks that
    ``first_rules``, LayerRules, leave), its objective and its cost."""
    from mpsearch.spaces import Candidate, parse_option
    from mpsearch.spaces.space import LayerRule, build_space
    from mpsearch.workers.checkpoint import scoring_setup
    from mpsearch.workers.config import ModelConfig
    from mpsearch.workers.model_loading import inspect_model
    from mpsearch.workers.worker import Worker

    def score(model_path: str, objective: str, dtype: str, labels, pattern=r"\.\d+\.",
              unsearched_bits: float | None = None, first_rules=()):
        from mpsearch.cluster.spec import DTYPE_BITS

        if unsearched_bits is None:  # as a job spec fills it in: the scored dtype's width
            unsearched_bits = DTYPE_BITS[dtype]
        info = inspect_model(ModelConfig(name=model_path))
        options = tuple(parse_option(label) for label in labels)
        space = build_space(info.layers, [*first_rules, LayerRule(pattern, options)],
                            total_params=info.total_params, unsearched_bits=unsearched_bits)
        setup = scoring_setup(model_path, "auto", objective, EXPORT_CALIBRATION, dtype)
        worker = Worker(setup, space)
        candidate = Candidate(tuple(i % len(g.options) for i, g in enumerate(space.genes)))
        outcome = worker.evaluate(candidate)
        assert outcome.objective is not None and outcome.objective > 0, outcome
        return worker, space.decode(candidate), outcome.objective, space.cost(candidate)

    return score
