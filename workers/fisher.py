"""The Fisher sensitivity proxy: the objective change a weight perturbation causes, to second order.

Every objective mpsearch scores is a divergence ``D(ref, out)`` from the full-precision output,
zero with zero gradient at the full-precision weights, so its first change under a perturbation
ΔW is second order: ``D ≈ ½ vec(ΔW)ᵀ G vec(ΔW)`` with ``G = Jᵀ H_D J`` the Gauss-Newton matrix (for
KL, the Fisher information of the next-token distributions). Its diagonal is estimated by
Monte-Carlo gradients (the "true Fisher" with sampled labels, not the empirical one): each batch
draws a pseudo-target from the full-precision output whose loss has ``E[g gᵀ] = G`` and adds
``g ⊙ g`` of every searched layer's weight gradient. The proxy of an option is then

    fisher_error = ½ Σ_ij F_ij (W_ij − Ŵ_ij)²

— the score ModelOpt's ``auto_quantize`` uses (squared gradient times squared weight change,
summed), with the ½ and the normalization that make it an estimate of the objective's delta
itself, so it compares layers with each other as well as one layer's options (the
Hessian-weighted error ``tr(ΔW H ΔWᵀ)`` of :mod:`.gptq` is a layer's own output error and does
not). Pseudo-targets per objective (:meth:`~.objectives.Objective.fisher_loss`):

- ``kl``: a token ``y_t`` drawn from the full-precision next-token distribution at each position,
  loss ``−Σ_t log q(y_t)``: ``E[g gᵀ]`` is the Fisher of the categorical, the Hessian of KL.
- ``embedding_distortion``: a direction ``v = P⊥ z / ‖r‖`` (z standard normal, P⊥ the projection
  orthogonal to the reference embedding r), loss ``Σ v · e``: ``E[v vᵀ] = P⊥/‖r‖²``, the Hessian
  of 1 − cos at r.

The gradients of independent draws are zero-mean at the full-precision weights, so the square of
a batch's summed gradient estimates the sum of its per-item Fisher diagonals without per-sample
gradients. Plain torch on a :class:`~.worker.Worker`; the worker is left at full precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from .errors import WorkerError
from .layers import Conv1D, ExpertSlice
from .worker import Worker


def _modules(worker: Worker) -> dict[str, nn.Module]:
    """The searched layers as modules, for the output side of K-FAC; routed experts (slices of
    one 3-D weight) and embeddings (their inputs are token ids, no input Hessian) are refused."""
    out = {}
    for name, module in worker.modules.items():
        if not isinstance(module, nn.Module):
            raise WorkerError(f"proxy: fisher/kfac cannot take the gradient of expert slice "
                              f"{name} (use proxy: hessian)")
        if name in worker.lookups:
            raise WorkerError(f"proxy: kfac needs a layer's input correlations, and {name} is an "
                              "embedding (token ids in): use proxy: hessian or fisher")
        out[name] = module
    return out


def fisher_error(F: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """½ Σ F ⊙ (W − Ŵ)²: the objective change ``W → Ŵ`` causes, by the diagonal Fisher ``F``."""
    delta = (W.float() - W_hat.float()).to(F.device)
    return 0.5 * float((F * delta.square()).sum())


def fisher_diagonals(worker: Worker, draws: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """The diagonal Fisher (Gauss-Newton) of the worker's objective for every searched layer's
    weight (out × in, float32), averaged over its calibration items (tokens for KL, samples for
    embeddings) so that :func:`fisher_error` is on the objective's scale. ``draws`` pseudo-targets
    per batch (more: less Monte-Carlo noise). Raises ``WorkerError`` for an objective without a
    pseudo-target (a user objective)."""
    fisher_loss = _pseudo_target_loss(worker)
    if draws < 1:
        raise WorkerError(f"fisher draws must be >= 1, got {draws}")
    worker.restore_()
    names = list(worker.modules)
    # a fused expert's gradient is its slice of the 3-D parameter's (each parameter once)
    targets = [worker.modules[n] for n in names]
    weights = [t.tensor if isinstance(t, ExpertSlice) else cast(torch.Tensor, t.weight)
               for t in targets]
    params = list({id(w): w for w in weights}.values())
    position = {id(p): i for i, p in enumerate(params)}
    F = {n: torch.zeros_like(worker.original[n], dtype=torch.float32) for n in names}

    def accumulate(loss: torch.Tensor) -> None:
        grads = torch.autograd.grad(loss, params)
        for name, target, w in zip(names, targets, weights, strict=True):
            g = grads[position[id(w)]]
            if isinstance(target, ExpertSlice):
                g = g[target.index]
            transposed = isinstance(target, Conv1D) or (
                isinstance(target, ExpertSlice) and target.transposed)
            oriented = g.t() if transposed else g
            F[name] += oriented.float().square()

    count = _each_draw(worker, fisher_loss, params, draws, seed, accumulate)
    count = max(count / draws, 1.0)
    return {n: f / (count * draws) for n, f in F.items()}


def _pseudo_target_loss(worker: Worker) -> Callable[..., tuple[torch.Tensor, float]]:
    """The objective's loss against sampled pseudo-targets (``fisher_loss``); a user objective
    has none."""
    loss = getattr(worker.objective, "fisher_loss", None)
    if loss is None:
        raise WorkerError(f"proxy: fisher needs the kl or embedding_distortion objective, not "
                          f"{worker.objective.name!r} (use proxy: hessian)")
    return cast(Callable[..., tuple[torch.Tensor, float]], loss)


def _each_draw(worker: Worker, fisher_loss: Callable[..., tuple[torch.Tensor, float]],
               params: list[torch.Tensor], draws: int, seed: int,
               backward: Callable[[torch.Tensor], None]) -> float:
    """Call ``backward`` on the pseudo-target loss of ``draws`` draws per calibration batch, with
    gradients on for ``params`` (put back as they were after); one seeded stream per device.
    Returns the objective items the losses summed over."""
    wanted = [bool(p.requires_grad) for p in params]
    generators: dict[torch.device, torch.Generator] = {}

    def generator(device: torch.device) -> torch.Generator:
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        return generators[device]

    count = 0.0
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            for batch in worker.batches:
                for _ in range(draws):
                    loss, n = fisher_loss(worker.model(**batch), batch, generator)
                    backward(loss)
                    count += n
    finally:
        for p, flag in zip(params, wanted, strict=True):
            p.requires_grad_(flag)
            p.grad = None
    return count


def output_fisher(worker: Worker, draws: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per searched layer, ``S_i = Σ_t g_ti²``: the squared gradient of the pseudo-target loss
    with respect to the layer's output ``i`` over every calibration token, per objective item
    (float32, one entry per output row). The output side of the K-FAC factorization below."""
    fisher_loss = _pseudo_target_loss(worker)
    worker.restore_()
    modules = _modules(worker)
    names = list(modules)
    params = [cast(torch.Tensor, modules[n].weight) for n in names]
    S = {n: torch.zeros(worker.original[n].shape[0], device=worker.original[n].device)
         for n in names}

    def hook_for(name: str):
        def on_output(_module, _args, output: torch.Tensor) -> None:
            def on_grad(g: torch.Tensor) -> None:
                S[name] += g.float().square().reshape(-1, g.shape[-1]).sum(dim=0).to(
                    S[name].device)
            output.register_hook(on_grad)
        return on_output

    def backward(loss: torch.Tensor) -> None:  # the hooks collect the output gradients
        torch.autograd.grad(loss, params)

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        count = _each_draw(worker, fisher_loss, params, draws, seed, backward)
    finally:
        for h in handles:
            h.remove()
    return {n: s / max(count, 1.0) for n, s in S.items()}


def kfac_error(S: torch.Tensor, H: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """¼ Σ_i S_i (ΔW H ΔWᵀ)_ii: the objective change by the Kronecker-factored Gauss-Newton,
    ``E[g_ti² x_tj x_tk] ≈ E[g_ti²] E[x_tj x_tk]`` (K-FAC), with the layer's input Hessian
    ``H = 2XᵀX/n``. Unlike the diagonal it keeps the input correlations GPTQ exploits (a GPTQ
    weight has a larger ‖ΔW‖ than round-to-nearest and a smaller output error)."""
    delta = (W.float() - W_hat.float()).to(H.device)
    rows = ((delta @ H.float()) * delta).sum(dim=1)
    return 0.25 * float((S.to(H.device) * rows).sum())
