"""How far a compressed model's outputs are from the full-precision model's (lower is better).

Both objectives compare against a reference computed once per worker from the full-precision
model on the same batch, so one evaluation costs one forward pass of the candidate.
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


def next_token_kl(ref_logprobs: torch.Tensor, logits: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(P_fp ‖ P_candidate) of next-token distributions over valid positions, and their count.

    ``ref_logprobs`` and ``logits`` are (batch × seq × vocab); position t predicts token t+1, so the
    last position and padding are excluded.
    """
    logq = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    logp = ref_logprobs[:, :-1].float()
    # KL ≥ 0; identical distributions can round to -1e-8, which would read as "better than fp".
    kl = (logp.exp() * (logp - logq)).sum(dim=-1).clamp(min=0)  # batch × (seq-1)
    valid = (mask[:, 1:] * mask[:, :-1]).to(kl.dtype)
    return (kl * valid).sum(), valid.sum()
