"""Mixture-of-experts layers in a search space: which layers are routed experts, how they group.

mpsearch names a routed expert's matrices ``<moe>.experts.<e>.<matrix>`` in both layouts it
discovers (``workers/layers.py``): a separate ``nn.Linear`` per expert matrix (the module's own
name, e.g. ``model.layers.0.mlp.experts.3.w1``) and a fused 3-D expert parameter of the newer
transformers classes (``model.layers.0.mlp.experts.3.gate_up_proj``: slice 3 of the experts
module's ``gate_up_proj [E, 2I, H]``). Shared experts (Qwen2-MoE's ``shared_expert``,
DeepSeek's ``shared_experts``) carry no index: they are dense layers, used by every token.

A routed expert is used by ``top_k`` of a layer's ``E`` experts per token, so it counts in the
*active* parameters (what one token reads) with the fraction ``top_k / E``
(:attr:`~.space.LayerInfo.active`). By default each expert is one gene (its matrices share a
choice); ``space.experts.group: n`` ties ``n`` consecutive experts of a layer, ``per: matrix``
leaves every expert matrix a gene of its own. Pure: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import SpecError

EXPERT = re.compile(r"^(?P<moe>.*\.experts)\.(?P<index>\d+)\.")


def expert_of(name: str) -> tuple[str, int] | None:
    """(the MoE layer's experts prefix, the expert's index) of a routed expert's matrix, else None."""
    match = EXPERT.match(name)
    return None if match is None else (match["moe"], int(match["index"]))


def expert_groups(names: Iterable[str], group: int) -> dict[str, str]:
    """Layer name → tie key for the routed experts among ``names``: the matrices of experts
    ``[k·group, (k+1)·group)`` of one MoE layer share the key ``<moe>[k·group:(k+1)·group]``."""
    out = {}
    for name in names:
        found = expert_of(name)
        if found is not None:
            moe, index = found
            start = index // group * group
            out[name] = f"{moe}[{start}:{start + group}]"
    return out


def experts_per_layer(names: Iterable[str]) -> dict[str, int]:
    """MoE layer (experts prefix) → how many of its experts appear in ``names``."""
    seen: dict[str, set[int]] = {}
    for name in names:
        found = expert_of(name)
        if found is not None:
            seen.setdefault(found[0], set()).add(found[1])
    return {moe: len(indices) for moe, indices in seen.items()}


def expert_group_for(names: Iterable[str], per: str = "expert", group: int = 1,
                     given: bool = False, runtime: str | None = None) -> int | None:
    """The ``expert_group`` of :func:`~.space.build_space` for a model with layers ``names``
    under ``space.experts`` (``given``: the spec sets it; otherwise its defaults apply).

    Raises :class:`SpecError` when the spec sets ``space.experts`` for a model without routed
    experts, or asks vLLM for experts of one layer with different choices.
    """
    counts = experts_per_layer(names)
    if not counts:
        if given:
            raise SpecError("space.experts: the model has no routed experts (no layer named "
                            "'<...>.experts.<n>.<matrix>', no fused 3-D expert parameter); "
                            "remove space.experts")
        return None
    fewest = min(counts.values())
    if runtime == "vllm" and given and (per == "matrix" or group < fewest):
        raise SpecError(f"space.experts: runtime vllm loads the experts of a layer as one fused "
                        f"weight with one scheme, so they share one choice; leave space.experts "
                        f"out (or set group to at least {fewest})")
    return None if per == "matrix" else group
