"""Which weights to prune: magnitude and Wanda masks, unstructured or 2:4, as pure tensor functions.

Weights are compared within each output row (Wanda's "per output" comparison group, Sun et al.,
2023, "A Simple and Effective Pruning Approach for Large Language Models", §3), for both scores, so
the score is the only difference between the methods and every row keeps the same count. The
score is |W_ij| (magnitude) or |W_ij| · ‖X_j‖₂ (Wanda, eq. 1), where ‖X_j‖₂ is the norm of input
feature j over the calibration tokens; without those norms Wanda falls back to magnitude.
"""

from __future__ import annotations

import torch


def prune_score(w: torch.Tensor, method: str = "magnitude",
                act_norm: torch.Tensor | None = None) -> torch.Tensor:
    """The importance of each weight of ``w`` (out × in): higher is kept first."""
    score = w.detach().float().abs()
    if method == "magnitude" or act_norm is None:
        return score
    if method != "wanda":
        raise ValueError(f"unknown sparsity_method {method!r}; valid: magnitude, wanda")
    if act_norm.shape != (w.shape[1],):
        raise ValueError(f"act_norm has shape {tuple(act_norm.shape)}; expected ({w.shape[1]},), "
                         "one norm per input feature")
    return score * act_norm.to(score.device, torch.float32).reshape(1, -1)


def prune_mask(w: torch.Tensor, sparsity: float, pattern: str = "unstructured",
               method: str = "magnitude", act_norm: torch.Tensor | None = None) -> torch.Tensor:
    """A boolean mask of ``w``'s shape, True where the weight is kept.

    ``unstructured``: in each row, the ``round(sparsity · in)`` lowest-scoring weights are pruned.
    ``2:4``: in each run of 4 consecutive weights of a row, the 2 highest-scoring are kept
    (``sparsity`` is then 0.5 and ignored).
    """
    out_features, in_features = w.shape
    score = prune_score(w, method, act_norm)
    if pattern == "2:4":
        if in_features % 4:
            raise ValueError(f"2:4 sparsity needs in_features divisible by 4, got {in_features}")
        quads = score.reshape(out_features, in_features // 4, 4)
        keep = torch.zeros_like(quads, dtype=torch.bool)
        keep.scatter_(2, quads.topk(2, dim=2).indices, True)
        return keep.reshape(w.shape)
    if pattern != "unstructured":
        raise ValueError(f"unknown sparsity_pattern {pattern!r}; valid: unstructured, 2:4")
    keep = torch.ones_like(score, dtype=torch.bool)
    pruned = round(sparsity * in_features)
    if pruned:
        keep.scatter_(1, score.topk(pruned, dim=1, largest=False).indices, False)
    return keep
