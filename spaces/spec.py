"""The job spec's sections owned by the space: which layers, which options, ties, the budget.

Options may be written in YAML as a label (``int4-g128-asym``, ``int3-g64-sym-clip``, ``nvfp4``,
``int8-ch-sym+s50``, ``fp16``; the grammar is :attr:`QuantOption.label`'s) or as a mapping of
:class:`QuantOption`'s fields (``{format: int, bits: 4, group_size: 128, symmetric: false,
sparsity_pattern: "2:4"}``); fields left out take their defaults.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .limits import MAX_BITS
from .options import QuantOption
from .space import Budget, LayerRule

OPTION_KEYS = tuple(f.name for f in fields(QuantOption))


def parse_option(value: Any) -> QuantOption:
    """An option from its label or mapping; raises ValueError (reported by pydantic) otherwise."""
    if isinstance(value, QuantOption):
        return value
    if isinstance(value, str):
        return QuantOption.from_label(value)
    if isinstance(value, dict):
        unknown = set(value) - set(OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown option keys {sorted(unknown)}; valid: {', '.join(OPTION_KEYS)}")
        try:
            return QuantOption(**value)
        except TypeError as exc:  # a field of the wrong type, e.g. bits: "four"
            raise ValueError(f"option {value}: {exc}") from None
    raise ValueError(f"an option is a label or a mapping, got {type(value).__name__}")


Option = Annotated[QuantOption, BeforeValidator(parse_option)]

# The default space: RTN integer levels at group 128 plus the uncompressed 16-bit level, the
# level set EvoPress-style searches move between.
DEFAULT_OPTIONS = ("int2-g128-asym", "int3-g128-asym", "int4-g128-asym", "int8-g128-asym", "fp16")


class LayerRuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(description="regular expression searched in the layer's module name")
    options: list[Option] = Field(default_factory=lambda: [parse_option(o) for o in DEFAULT_OPTIONS],
                                  min_length=1)

    def to_rule(self) -> LayerRule:
        return LayerRule(self.match, tuple(dict.fromkeys(self.options)))


class SpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The first rule a layer matches gives its options; layers no rule matches are not searched.
    # The default searches every Linear inside the transformer blocks (not heads or poolers).
    layers: list[LayerRuleConfig] = Field(
        default_factory=lambda: [LayerRuleConfig(match=r"(layers?|h|blocks?)\.\d+\.")],
        min_length=1)
    # Tie patterns; the layers a pattern matches share one choice per value of its capture groups.
    tie: list[str] = Field(default_factory=list)
    # Parameters not searched (embeddings, norms, heads) count in total_bytes at this many bits.
    unsearched_bits: float = Field(default=16.0, gt=0, le=MAX_BITS)
    # The runtime the result must load in (vllm, transformers, llama.cpp): options it cannot load are
    # removed, what it fuses is tied (spaces/runtime.py). None: every option, nothing added.
    runtime: Literal["vllm", "transformers", "llama.cpp"] | None = None

    def rules(self) -> list[LayerRule]:
        return [rule.to_rule() for rule in self.layers]


class BudgetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    avg_bits: float | None = Field(default=None, gt=0, le=MAX_BITS, allow_inf_nan=False,
                                   description="average effective bits")
    total_bytes: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                      description="whole-model bytes")

    @model_validator(mode="after")
    def _one_bound(self) -> BudgetConfig:
        if self.avg_bits is None and self.total_bytes is None:
            raise ValueError("give avg_bits or total_bytes (or both)")
        return self

    def to_budget(self) -> Budget:
        return Budget(self.avg_bits, self.total_bytes)
