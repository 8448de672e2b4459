"""Sensitivity profiles: what compressing one gene alone costs, measured and by cheap proxies.

For every (gene, option) — a gene is one layer, or a tie group whose layers share a choice — the
profile holds the objective of the model with *only that gene* compressed (every other layer at
full precision) and its change ``delta`` from the full-precision model, plus two proxies that need
no forward pass of the candidate:

- ``weight_error`` = Σ ‖W − Ŵ‖²_F over the gene's layers (weight reconstruction error);
- ``hessian_error`` = Σ tr((W − Ŵ) H (W − Ŵ)ᵀ) with the layer's GPTQ Hessian H = 2XᵀX/n: the
  layer's own output error per calibration row (GPTQ's eq. 1), i.e. a Hessian-weighted error
  (an embedding's: each row's squared error weighted by how often calibration tokens look it up).

Pure functions of a :class:`~.worker.Worker`; the profile leaves the worker at full precision.
Storage (so a second study reuses them) is :mod:`mpsearch.storage.profiles`; spreading the pairs
over Ray workers is ``mpsearch profile`` (:mod:`mpsearch.cluster.profiling`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import SearchSpace

from .errors import WorkerError
from .fisher import fisher_diagonals, fisher_error, kfac_error, output_fisher
from .level_db import stored_option
from .worker import Worker, WorkerSetup

Pair = tuple[str, QuantOption]  # (gene name, option)


@dataclass(frozen=True)
class ProfileMeasurement:
    """One (gene, option) of a profile; ``value``/``delta`` are None when it failed (``error``)."""

    layer: str  # the gene's name: a lone layer's module name, or a tie group's name
    option: QuantOption
    value: float | None
    delta: float | None
    weight_error: float | None
    hessian_error: float | None
    seconds: float
    error: str | None = None


def profile_pairs(space: SearchSpace) -> list[Pair]:
    """Every (gene, option) of ``space``, in gene then option order."""
    return [(gene.name, option) for gene in space.genes for option in gene.options]


def _proxies(worker: Worker, layers: Iterable[str], option: QuantOption,
             hessians: bool) -> tuple[float, float | None]:
    w_err, h_err = 0.0, 0.0 if hessians else None
    for name in layers:
        W = worker.original[name]
        W_hat = worker.variant(name, option).to(W.device, non_blocking=False)
        w_err += float((W.float() - W_hat.float()).square().sum())
        if h_err is not None:
            h_err += worker.output_error(name, W, W_hat)
    return w_err, h_err


@torch.inference_mode()
def measure_profile(worker: Worker, pairs: Iterable[Pair], samples: int | None = None,
                    hessians: bool = True) -> list[ProfileMeasurement]:
    """Measure each (gene, option) of ``pairs`` on ``worker`` (first ``samples`` samples).

    ``hessians=False`` skips the Hessian-weighted proxy (and the calibration pass it needs). A
    pair whose compression or score fails is returned with its ``error``, never with a value.
    """
    genes = {gene.name: gene for gene in worker.space.genes}
    pairs = list(pairs)
    unknown = [name for name, _ in pairs if name not in genes]
    if unknown:
        raise WorkerError(f"profile: no gene {unknown[0]!r} in the space "
                          f"(genes: {', '.join(list(genes)[:3])}, ...)")
    weighted = [name for name, _ in pairs if genes[name].layers]  # KV genes have no weights
    if hessians and weighted:
        worker.hessian(genes[weighted[0]].layers[0].name)  # gather now: it restores fp weights
    worker.restore_()
    base = worker.score(samples)
    out = []
    for gene_name, option in pairs:
        start = time.perf_counter()
        layers = [layer.name for layer in genes[gene_name].layers]
        try:
            w_err, h_err = _proxies(worker, layers, option, hessians)
            for name in layers:
                worker.set_layer_(name, option)
            for attention in genes[gene_name].kv:  # a KV gene: its caches quantized
                worker.set_kv_(attention.name, option)
            value = worker.score(samples)
            if not math.isfinite(value):
                raise WorkerError(f"objective is not finite ({value})")
            out.append(ProfileMeasurement(gene_name, option, value, value - base, w_err, h_err,
                                          time.perf_counter() - start))
        except WorkerError as exc:
            out.append(ProfileMeasurement(gene_name, option, None, None, None, None,
                                          time.perf_counter() - start, str(exc)))
        finally:
            for name in layers:
                worker.set_layer_(name, None)
            for attention in genes[gene_name].kv:
                worker.set_kv_(attention.name, None)
    return out


def layer_proxy(worker: Worker, name: str, option: QuantOption) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ) of layer ``name`` under ``option``, read from the worker's level
    database when it holds it, else computed (and stored there)."""
    levels = worker.levels
    stored = levels.load_proxy(name, option) if levels is not None else None
    if stored is not None and "hessian_error" in stored:
        return float(stored["hessian_error"])
    W = worker.original[name]
    if stored_option(option) or (name, option) in worker.cache:
        W_hat = worker.variant(name, option).to(W.device, non_blocking=False)
    else:  # cheap to make again: not cached now (the search caches what it uses)
        with torch.inference_mode():
            W_hat = worker._compress(name, option)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # a proxy: 10 mantissa bits are plenty
    try:
        value = worker.output_error(name, W, W_hat)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if levels is not None:
        levels.save_proxy(name, option, {"hessian_error": value})
    return value


PROXY_KINDS = ("hessian", "fisher", "kfac")


def measure_proxies(worker: Worker, pairs: Iterable[Pair],
                    on_gene: Callable[[], None] | None = None,
                    kind: str = "hessian") -> dict[tuple[str, str], float]:
    """The proxy error of each (gene, option), by (gene name, option label): ``hessian``, the
    Hessian-weighted output error (below), or ``fisher``, the Fisher estimate of the objective's
    change (:func:`fisher_proxies`), or ``kfac``, its Kronecker-factored form that keeps the input
    correlations (:func:`kfac_proxies`)."""
    if kind == "fisher":
        return fisher_proxies(worker, pairs, on_gene)
    if kind == "kfac":
        return kfac_proxies(worker, pairs, on_gene)
    if kind != "hessian":
        raise WorkerError(f"proxy: unknown kind {kind!r}; valid: {', '.join(PROXY_KINDS)}")
    return hessian_proxies(worker, pairs, on_gene)


def fisher_proxies(worker: Worker, pairs: Iterable[Pair],
                   on_gene: Callable[[], None] | None = None,
                   draws: int = 1) -> dict[tuple[str, str], float]:
    """½ Σ F ⊙ (W − Ŵ)² of each (gene, option), summed over the gene's layers: an estimate of the
    objective's delta from one backward pass per calibration batch (:mod:`.fisher`), on the same
    scale for every layer. Scores no candidate."""
    diag = fisher_diagonals(worker, draws)
    return _summed_over_layers(worker, pairs, on_gene,
                               lambda name, W, W_hat: fisher_error(diag[name], W, W_hat))


def kfac_proxies(worker: Worker, pairs: Iterable[Pair],
                 on_gene: Callable[[], None] | None = None) -> dict[tuple[str, str], float]:
    """¼ Σ_i S_i (ΔW H ΔWᵀ)_ii of each (gene, option), summed over the gene's layers: the
    Fisher estimate of the objective's delta with the output gradients' squares ``S``
    (:func:`~.fisher.output_fisher`, one backward pass per batch) and the GPTQ Hessian of the
    inputs. On MiniLM it is each layer's measured delta within 0.4–0.9× for RTN and GPTQ alike,
    where the diagonal Fisher overestimates GPTQ's 5–33×."""
    S = output_fisher(worker)
    return _summed_over_layers(
        worker, pairs, on_gene,
        lambda name, W, W_hat: kfac_error(S[name], worker.hessian(name), W, W_hat))


def _summed_over_layers(worker: Worker, pairs: Iterable[Pair], on_gene: Callable[[], None] | None,
                        error: Callable[[str, torch.Tensor, torch.Tensor], float],
                        ) -> dict[tuple[str, str], float]:
    """``error(layer name, W, Ŵ)`` of each (gene, option), summed over the gene's layers."""
    genes = {gene.name: gene for gene in worker.space.genes}
    out = {}
    with torch.inference_mode():
        for gene_name, option in pairs:
            total = 0.0
            for layer in genes[gene_name].layers:
                W = worker.original[layer.name]
                W_hat = worker.variant(layer.name, option).to(W.device, non_blocking=False)
                total += error(layer.name, W, W_hat)
            out[(gene_name, option.label)] = total
            if on_gene is not None:
                on_gene()
    return out


@torch.inference_mode()
def hessian_proxies(worker: Worker, pairs: Iterable[Pair],
                    on_gene: Callable[[], None] | None = None) -> dict[tuple[str, str], float]:
    """The Hessian-weighted output error of each (gene, option), by (gene name, option label).

    Scores no candidate: one pass over the worker's calibration samples gathers the Hessians
    (the pass GPTQ needs anyway), the rest is arithmetic on the weights. Strategies with
    ``proxy: true`` measure one option per gene and scale the others by these. Per-layer values
    are kept in the level database, so a later study on the same model and calibration reads
    them. ``on_gene`` is called after each pair (progress).
    """
    genes = {gene.name: gene for gene in worker.space.genes}
    out = {}
    for gene_name, option in pairs:
        out[(gene_name, option.label)] = sum(layer_proxy(worker, layer.name, option)
                                             for layer in genes[gene_name].layers)
        if on_gene is not None:
            on_gene()
    return out


def space_proxies(setup: WorkerSetup, space: SearchSpace,
                  kind: str = "hessian") -> dict[tuple[str, str], float]:
    """:func:`measure_proxies` of every (gene, option) of ``space``, on a worker of its own."""
    return measure_proxies(Worker(setup, space), profile_pairs(space), kind=kind)
