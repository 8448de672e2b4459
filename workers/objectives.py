"""Objectives a worker scores candidates with: what each keeps of the full-precision output, and how
a candidate's output on the same batch is compared with it (lower is better).

Contract (who calls what): the worker calls :meth:`Objective.reference` once per calibration batch
on the full-precision model and keeps the result; for every candidate it calls
:meth:`Objective.score` once per batch with that reference (sliced to the samples being scored)
and sums the returned ``(total, count)`` tensors over batches; the objective is Σtotal / Σcount.
``extras`` are further (total, count) sums the worker reports beside the objective, turned into
their final numbers by :meth:`Objective.finish`. Scores stay tensors (no host sync per batch), so a
GPU evaluation synchronizes once.

- ``kl``: KL(P_fp ‖ P_candidate) of next-token distributions, optionally on the teacher's top-k
  (``top_k``): the reference keeps only the k largest full-precision log-probabilities and their
  token ids, and the KL is taken between the (k + 1)-bucket distributions "each top-k token, or
  any other token" — exact as k → vocabulary, a lower bound of the full KL otherwise, and k/V of
  its memory. Perplexity of the candidate on the calibration tokens is reported as an extra.
- ``embedding_distortion``: 1 − cosine of mean-pooled embeddings (encoders).
- a user objective (an entry point of group ``mpsearch.objectives``, or
  ``path/to/file.py:function``; :mod:`.objective_registry` says which names a spec may give).
  ``function(reference, output, batch)`` gets the
  full-precision model's main output tensor (``logits`` for causal LMs, ``last_hidden_state`` for
  encoders; batch × seq × …), the candidate's on the same batch, and the batch (``input_ids``,
  ``attention_mask``); it returns the batch's mean loss as a float or 0-d tensor. Batches are
  averaged weighted by their number of samples. The package or file must exist on every worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import WorkerError
from .objective_registry import load_user_objective
from .scoring import embedding_distortion, mean_pool

Batch = dict[str, torch.Tensor]
Sums = tuple[torch.Tensor, torch.Tensor]
Generators = Callable[[torch.device], torch.Generator]  # the seeded generator of a device


def slice_reference(ref: Any, n: int) -> Any:
    """The reference of the first ``n`` samples (references are tensors or tuples of them)."""
    return tuple(r[:n] for r in ref) if isinstance(ref, tuple) else ref[:n]


class Objective:
    """Base class: see the module docstring for the contract."""

    name = "objective"

    def reference(self, output: Any, batch: Batch) -> Any:
        raise NotImplementedError

    def score(self, ref: Any, output: Any, batch: Batch) -> tuple[Sums, dict[str, Sums]]:
        raise NotImplementedError

    def finish(self, extras: dict[str, float]) -> dict[str, float]:
        """Final extra numbers from the mean of each extra (default: the means themselves)."""
        return extras

    # Objectives with a Fisher pseudo-target (see .fisher) define
    # ``fisher_loss(output, batch, generators) -> (loss, items)``: a loss of the full-precision
    # output whose gradient g has E[g gᵀ] = the objective's Hessian at the reference, summed
    # over the batch's ``items`` (the objective's count).


def _valid_next(mask: torch.Tensor) -> torch.Tensor:
    """Positions t whose next token t+1 exists and is not padding (batch × (seq − 1))."""
    return (mask[:, 1:] * mask[:, :-1]).float()


class KLObjective(Objective):
    name = "kl"

    def __init__(self, top_k: int | None = None) -> None:
        if top_k is not None and top_k < 1:
            raise WorkerError(f"kl_top_k must be a positive number of tokens, got {top_k}")
        self.top_k = top_k

    def reference(self, output: Any, batch: Batch) -> Any:
        logp = torch.log_softmax(output.logits.float(), dim=-1)
        if self.top_k is None or self.top_k >= logp.shape[-1]:
            return logp
        values, indices = logp.topk(self.top_k, dim=-1)
        return values, indices

    def score(self, ref: Any, output: Any, batch: Batch) -> tuple[Sums, dict[str, Sums]]:
        valid = _valid_next(batch["attention_mask"])
        logq = torch.log_softmax(output.logits.float(), dim=-1)[:, :-1]  # once, for KL and NLL
        if isinstance(ref, tuple):
            kl = topk_kl(ref[0][:, :-1], ref[1][:, :-1], logq)
        else:  # KL(P_fp ‖ P_candidate), clamped: equal distributions can round to -1e-8
            logp = ref[:, :-1]
            kl = (logp.exp() * (logp - logq)).sum(dim=-1).clamp(min=0)
        nll = -logq.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        count = valid.sum()
        return ((kl * valid).sum(), count), {"perplexity": ((nll * valid).sum(), count)}

    def fisher_loss(self, output: Any, batch: Batch,
                    generator: Generators) -> tuple[torch.Tensor, float]:
        """−Σ log q(y_t), y_t drawn from the (full-precision) model's own next-token
        distribution at every valid position: the categorical's Fisher, KL's Hessian."""
        logq = torch.log_softmax(output.logits.float(), dim=-1)[:, :-1]
        probs = logq.detach().exp().reshape(-1, logq.shape[-1])
        y = torch.multinomial(probs, 1, generator=generator(probs.device)).reshape(logq.shape[:-1])
        valid = _valid_next(batch["attention_mask"]).to(logq.device)
        nll = -logq.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (nll * valid).sum(), float(valid.sum())

    def finish(self, extras: dict[str, float]) -> dict[str, float]:
        nll = extras["perplexity"]
        return {"perplexity": math.exp(nll) if nll < 700 else math.inf}


def topk_kl(ref_values: torch.Tensor, ref_indices: torch.Tensor,
            logq: torch.Tensor) -> torch.Tensor:
    """KL between the (k + 1)-bucket distributions: each of the teacher's top-k tokens, the rest.

    Σ_{i∈top-k} p_i (log p_i − log q_i) + p_rest (log p_rest − log q_rest), with p_rest = 1 − Σp_i
    and q_rest = 1 − Σq_i; per position (… × k inputs, … outputs).
    """
    logq_k = logq.gather(-1, ref_indices)
    p_k = ref_values.exp()
    head = (p_k * (ref_values - logq_k)).sum(dim=-1)
    p_rest = (1 - p_k.sum(dim=-1)).clamp(min=0)
    q_rest = (1 - logq_k.exp().sum(dim=-1)).clamp(min=torch.finfo(torch.float32).tiny)
    tail = torch.xlogy(p_rest, p_rest) - torch.xlogy(p_rest, q_rest)
    return (head + tail).clamp(min=0)


class EmbeddingObjective(Objective):
    name = "embedding_distortion"

    def reference(self, output: Any, batch: Batch) -> Any:
        return mean_pool(output.last_hidden_state, batch["attention_mask"])

    def score(self, ref: Any, output: Any, batch: Batch) -> tuple[Sums, dict[str, Sums]]:
        emb = mean_pool(output.last_hidden_state, batch["attention_mask"])
        d = embedding_distortion(ref, emb)
        return (d.sum(), torch.tensor(float(d.shape[0]), device=d.device)), {}

    def fisher_loss(self, output: Any, batch: Batch,
                    generator: Generators) -> tuple[torch.Tensor, float]:
        """Σ v · e with v = P⊥z/‖r‖ (z standard normal, P⊥ orthogonal to the full-precision
        embedding r = e): E[v vᵀ] = P⊥/‖r‖², the Hessian of 1 − cos(r, e) at e = r."""
        emb = mean_pool(output.last_hidden_state, batch["attention_mask"]).float()
        r = emb.detach()
        norm = r.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        u = r / norm
        z = torch.randn(r.shape, generator=generator(r.device), device=r.device)
        v = (z - (z * u).sum(dim=-1, keepdim=True) * u) / norm
        return (v * emb).sum(), float(emb.shape[0])


def main_output(output: Any) -> torch.Tensor:
    """A model output's main tensor: logits for causal LMs, the last hidden state for encoders."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


class UserObjective(Objective):
    def __init__(self, path: str) -> None:
        self.name = path
        self.fn = load_user_objective(path)

    def reference(self, output: Any, batch: Batch) -> Any:
        return main_output(output).detach().clone()

    def score(self, ref: Any, output: Any, batch: Batch) -> tuple[Sums, dict[str, Sums]]:
        value = torch.as_tensor(self.fn(ref, main_output(output), batch), dtype=torch.float64)
        n = float(batch["input_ids"].shape[0])
        return (value.reshape(()) * n, torch.tensor(n, dtype=torch.float64)), {}


def make_objective(name: str, top_k: int | None = None) -> Objective:
    """The objective called ``name``: ``kl``, ``embedding_distortion``, or a user objective (a
    registered name or ``path/to/file.py:function``, see :mod:`.objective_registry`)."""
    if name == "kl":
        return KLObjective(top_k)
    if name == "embedding_distortion":
        return EmbeddingObjective()
    return UserObjective(name)  # validated at spec time (objective_registry.check_objective)
