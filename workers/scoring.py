"""How far a compressed encoder's embeddings are from the full-precision model's (lower is better).

The reference embeddings are computed once per worker from the full-precision model on the same
batch, so one evaluation costs one forward pass of the candidate. The causal-LM objective (KL of
next-token distributions) lives with its scorer in :mod:`mpsearch.workers.objectives`.
"""

from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``mask`` is 1 (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def embedding_distortion(reference: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Per sample, 1 − cosine(reference, candidate) of the pooled embeddings."""
    cos = torch.nn.functional.cosine_similarity(reference.float(), embeddings.float(), dim=-1)
    return 1.0 - cos
