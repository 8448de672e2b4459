"""The Fisher proxy: its diagonal against the closed form on a one-Linear encoder, and its estimate
against the measured objective change on MiniLM, and on tiny causal LMs."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.spaces.spec import parse_option
from mpsearch.workers.errors import WorkerError
from mpsearch.workers.fisher import fisher_diagonals, fisher_error
from mpsearch.workers.layers import discover_layers
from mpsearch.workers.profile import measure_proxies, profile_pairs
from mpsearch.workers.worker import Worker, WorkerSetup


class OneLinear(nn.Module):
    """An "encoder" whose one token's hidden state is W x (x fixed per input id)."""

    def __init__(self, inputs: torch.Tensor, width: int) -> None:
        super().__init__()
        self.x = inputs
        self.proj = nn.Linear(inputs.shape[1], width, bias=False)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.proj(self.x[input_ids]))


def one_linear_worker(objective: str = "embedding_distortion"):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    model = OneLinear(x, 5)
    space = build_space(discover_layers(model), [LayerRule("proj", (parse_option("int4-g4-asym"),
                                                                    parse_option("fp16")))])
    ids = torch.arange(3).reshape(3, 1)
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    setup = WorkerSetup(model_path="", kind="encoder", objective=objective, texts=(), seq_len=1)
    return Worker(setup, space, model=model, batches=batches), x, model


def test_fisher_diagonal_of_the_cosine_distance_is_its_closed_form():
    worker, x, model = one_linear_worker()
    F = fisher_diagonals(worker, draws=4000)["proj"]
    # by hand: 1 - cos(r, r + Δx) ≈ ½ |P⊥ Δx|² / |r|², r = W x, so per sample
    # G_ij = (1 - u_i²) x_j² / |r|², averaged over the three samples
    W = model.proj.weight.detach()
    expected = torch.zeros_like(W)
    for xs in x:
        r = W @ xs
        u = r / r.norm()
        expected += torch.outer(1 - u.square(), xs.square()) / r.norm().square()
    expected /= len(x)
    assert torch.allclose(F, expected, rtol=0.15, atol=1e-3 * float(expected.max()))
    # ½ Σ F ΔW² is the diagonal of the quadratic form that is the objective's change to second
    # order: checked against the objective measured after a small perturbation
    delta = 1e-2 * torch.randn_like(W)
    assert fisher_error(F, W, W + delta) == pytest.approx(fisher_error(expected, W, W + delta),
                                                          rel=0.1)
    quadratic = sum(0.5 * float(((delta @ xs) - ((delta @ xs) @ (W @ xs)) * (W @ xs)
                                 / (W @ xs).norm().square()).square().sum())
                    / float((W @ xs).norm().square()) for xs in x) / len(x)
    model.proj.weight.data = W + delta
    measured = worker.score()
    model.proj.weight.data = W
    assert measured == pytest.approx(quadratic, rel=0.05)


def test_fisher_error_is_half_the_weighted_squared_change():
    F = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    W = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    W_hat = torch.tensor([[0.0, -1.0], [1.0, 0.5]])
    # ½ (1·0.25 + 2·0 + 3·1 + 4·0.25) = 2.125
    assert fisher_error(F, W, W_hat) == pytest.approx(2.125)


def test_fisher_proxy_refuses_a_user_objective(tmp_path):
    path = tmp_path / "obj.py"
    path.write_text("def mse(ref, out, batch):\n    return ((ref - out) ** 2).mean()\n")
    worker, _, _ = one_linear_worker(f"{path}:mse")
    with pytest.raises(WorkerError, match="proxy: fisher needs the kl or embedding_distortion"):
        fisher_diagonals(worker)


def proxied_worker(path: str, objective: str, pattern: str):
    from mpsearch.workers.checkpoint import scoring_setup
    from mpsearch.workers.config import ModelConfig
    from mpsearch.workers.model_loading import inspect_model

    info = inspect_model(ModelConfig(name=path))
    space = build_space(info.layers, [LayerRule(pattern, tuple(map(parse_option, LABELS)))])
    setup = scoring_setup(path, "auto", objective, {"source": "stdlib-docs", "samples": 16,
                                                    "seq_len": 32, "batch_size": 8}, "float32")
    worker = Worker(setup, space)
    return worker, measure_proxies(worker, profile_pairs(space), kind="fisher")


LABELS = ["int3-g32-asym", "int4-g32-asym", "int8-g32-asym", "fp16"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fisher_proxy_orders_the_options_of_causal_lms(arch, tiny_gpt2_path, tiny_llama_path):
    """KL's pseudo-targets on GPT-2 (transposed Conv1D weights) and Llama layers."""
    worker, proxy = proxied_worker(tiny_gpt2_path if arch == "gpt2" else tiny_llama_path, "kl",
                                   r"\.0\.")
    for gene in worker.space.genes:
        by = {label: proxy[(gene.name, label)] for label in LABELS}
        assert by["int3-g32-asym"] > by["int4-g32-asym"] > by["int8-g32-asym"] > 0
        assert by["fp16"] < 1e-2 * by["int8-g32-asym"]  # float32 → fp16 rounding only
    assert all(o is None for o in worker.current.values())  # left at full precision


def test_fisher_proxy_is_the_measured_delta_across_layers_of_minilm(minilm_path):
    """What the Hessian-weighted error cannot do: one number comparable across layers. On the real
    MiniLM each layer's int4 proxy is its measured objective change within a factor of two."""
    worker, proxy = proxied_worker(minilm_path, "embedding_distortion", r"layer\.0\.")
    ratios = []
    for gene in worker.space.genes:
        for layer in gene.layers:
            worker.set_layer_(layer.name, parse_option("int4-g32-asym"))
        ratios.append(proxy[(gene.name, "int4-g32-asym")] / worker.score())
        worker.restore_()
    assert len(ratios) == 6 and all(0.5 < r < 2 for r in ratios), ratios
    # the Kronecker-factored form, GPTQ included, where the diagonal overestimates 5-33×
    kfac = measure_proxies(worker, [(g.name, parse_option("int4-g32-asym-gptq"))
                                    for g in worker.space.genes], kind="kfac")
    for gene in worker.space.genes:
        for layer in gene.layers:
            worker.set_layer_(layer.name, parse_option("int4-g32-asym-gptq"))
        ratio = kfac[(gene.name, "int4-g32-asym-gptq")] / worker.score()
        worker.restore_()
        assert 0.25 < ratio < 1.5, (gene.name, ratio)
