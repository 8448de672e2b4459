"""Runtime profiles: what an inference runtime can load, so a search proposes only that.

``space.runtime`` (``vllm``, ``transformers`` or ``llama.cpp``) removes the options the runtime
cannot load from every layer rule (the job names them) and ties what the runtime fuses: vLLM
loads q/k/v and gate/up as one fused matrix each, with one scheme, and all experts of a layer
with one scheme. The same checks refuse, at export, a plan the target cannot hold. Pure: the
exporters in ``workers/`` ask these functions; the layouts they write are the format handlers'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import SpecError
from .options import QuantOption
from .patterns import TimedPattern
from .space import LayerRule

RUNTIMES = ("vllm", "transformers", "llama.cpp")

# What vLLM fuses: the layers one of these matches share a choice per value of the capture group.
VLLM_TIES = (
    r"^(.*\.self_attn)\.(?:q_proj|k_proj|v_proj)$",  # Llama-style q/k/v → qkv_proj
    r"^(.*\.attention\.self)\.(?:query|key|value)$",  # BERT-style q/k/v
    r"^(.*\.mlp)\.(?:gate_proj|up_proj)$",  # gate/up → gate_up_proj
    r"^(.*\.shared_experts?)\.(?:gate_proj|up_proj)$",  # a shared expert's gate/up (Qwen2-MoE)
    r"^(.*\.experts)\.\d+\.",  # every expert of a layer: one fused MoE weight
)
GGUF_BLOCK = 32


def gguf_type(option: QuantOption) -> str | None:
    """The GGUF tensor type that holds ``option`` exactly (``Q4_0``, ``F16``, …), or None."""
    if option.sparse:
        return None
    if option.format in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
        return option.format.upper()
    if option.format == "fp16":
        return "F16"
    if option.format == "mxfp4":  # E2M1 codes and an E8M0 exponent per 32: ggml's block_mxfp4
        return "MXFP4"
    if option.format == "int" and option.symmetric and option.group_size == GGUF_BLOCK \
            and option.bits in (4, 8):
        return "Q4_0" if option.bits == 4 else "Q8_0"
    return None


def refusal(runtime: str, option: QuantOption) -> str | None:
    """Why ``runtime`` cannot load ``option`` as mpsearch exports it, or None if it can."""
    if runtime not in RUNTIMES:
        raise SpecError(f"space.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "llama.cpp":
        return None if gguf_type(option) else ("llama.cpp loads q4_0, q4_1, q5_0, q5_1, q8_0, "
                                                "mxfp4, int4-g32-sym, int8-g32-sym and fp16")
    if option.sparse:
        return f"{runtime} loads no pruned weights (compressed-tensors stores none)"
    if option.format not in ("int", "fp8_e4m3", "nvfp4", "mxfp4", "fp16"):
        return (f"{runtime} loads int, fp8_e4m3, nvfp4, mxfp4 and fp16 weights through "
                "compressed-tensors")
    if runtime == "vllm" and option.format == "int" and (not option.symmetric
                                                         or option.bits not in (4, 8)):
        return "vLLM's packed integer kernels take symmetric 4- and 8-bit weights"
    return None


# Runtimes that take one KV-cache precision for the whole model (vLLM's kv_cache_dtype): their
# KV genes are tied into one.
KV_ONE_PER_MODEL = ("vllm",)


def kv_refusal(runtime: str | None, option: QuantOption) -> str | None:
    """Why ``runtime`` cannot hold a KV cache of ``option``, or None if it can."""
    if runtime == "llama.cpp" and option.format != "fp16":
        return "llama.cpp's cache types (f16, q8_0, q4_0, ...) have no fp8_e4m3"
    return None


@dataclass(frozen=True)
class RuntimeSpace:
    """Layer rules and ties restricted to a runtime, and what was removed (label → why)."""

    rules: list[LayerRule]
    ties: list[str]
    removed: dict[str, str]


def restrict(rules: Sequence[LayerRule], ties: Sequence[str], runtime: str | None,
             layers: Sequence[str] = ()) -> RuntimeSpace:
    """``rules`` without the options ``runtime`` cannot load and ``ties`` with the ones it needs
    (those that match one of the model's ``layers`` that a rule searches, and no layer a spec
    tie already ties).

    Raises :class:`SpecError` naming the rule if the runtime loads none of a rule's options.
    """
    if runtime is None:
        return RuntimeSpace(list(rules), list(ties), {})
    removed: dict[str, str] = {}
    kept_rules = []
    for i, rule in enumerate(rules):
        kept = []
        for option in rule.options:
            why = refusal(runtime, option)
            if why is None:
                kept.append(option)
            else:
                removed[option.label] = why
        if not kept:
            raise SpecError(f"space.layers[{i}] ({rule.pattern!r}): runtime {runtime} loads none "
                            f"of its options ({', '.join(o.label for o in rule.options)}); "
                            "add an option it loads")
        kept_rules.append(LayerRule(rule.pattern, tuple(kept)))
    # the layers a rule searches (a tie matching only unsearched layers would be refused)
    patterns = [TimedPattern(r.pattern, "space.layers") for r in kept_rules] if layers else []
    searched = [n for n in layers if any(p.search(n) for p in patterns)]
    user_tied = {n for n in searched for t in ties if re.search(t, n)}
    extra = [t for t in (VLLM_TIES if runtime == "vllm" else ())
             if (hit := [n for n in searched if re.search(t, n)]) and not user_tied & set(hit)]
    return RuntimeSpace(kept_rules, [*ties, *extra], removed)


def fused_conflicts(options: Mapping[str, QuantOption]) -> list[str]:
    """Messages for each set of layers vLLM fuses that a plan gives different options."""
    groups: dict[tuple[str, str], dict[str, QuantOption]] = {}
    for name, option in options.items():
        for pattern in VLLM_TIES:
            if match := re.search(pattern, name):
                groups.setdefault((pattern, match.group(1)), {})[name] = option
                break
    out = []
    for (_, prefix), members in groups.items():
        if len({o.label for o in members.values()}) > 1:
            labels = ", ".join(f"{n.removeprefix(prefix + '.')}={o.label}"
                               for n, o in members.items())
            out.append(f"{prefix}: vLLM fuses these layers into one matrix with one scheme, "
                       f"the plan gives {labels}")
    return out
