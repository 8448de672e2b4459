"""The job spec's sections owned by the space: which layers, which options, ties, the budget.

Options may be written in YAML as a label (``int4-g128-asym``, ``int3-g64-sym-clip``, ``nvfp4``,
``int8-ch-sym+s50``, ``fp16``; the grammar is :attr:`QuantOption.label`'s) or as a mapping of
:class:`QuantOption`'s fields (``{format: int, bits: 4, group_size: 128, symmetric: false,
sparsity_pattern: "2:4"}``); fields left out take their defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from .budget import MemoryBudget
from .kv_cache import KV_FORMATS
from .limits import MAX_BITS, MAX_LATENCY_ROWS
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


class ExpertsConfig(BaseModel):
    """How the routed experts of a MoE model are searched (:mod:`.experts`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # expert: an expert's matrices share one choice; matrix: each expert matrix is a gene.
    per: Literal["expert", "matrix"] = "expert"
    # Consecutive experts of a layer that share one choice (per: expert); 1: each expert alone.
    group: int = Field(default=1, ge=1, le=1 << 20)


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
    # None: the width of model.dtype (32 for float32, 16 for bfloat16 and float16), which is how
    # they are scored and exported; the job spec fills it in (cluster/spec.py).
    unsearched_bits: float | None = Field(default=None, gt=0, le=MAX_BITS)
    # The runtime the result must load in (vllm, transformers, llama.cpp): options it cannot load are
    # removed, what it fuses is tied (spaces/runtime.py). None: every option, nothing added.
    runtime: Literal["vllm", "transformers", "llama.cpp"] | None = None
    # Routed experts (MoE models only): None searches each expert as one gene in a MoE model.
    experts: ExpertsConfig | None = None
    # KV-cache precisions to search (causal LMs): per attention layer, or one for the model when
    # the runtime takes one (vLLM's kv_cache_dtype). None: the 16-bit cache, not searched.
    kv_cache: list[Option] | None = Field(default=None, min_length=1)

    @field_validator("kv_cache")
    @classmethod
    def _kv_formats(cls, value: list[QuantOption] | None) -> list[QuantOption] | None:
        for option in value or ():
            if option.format not in KV_FORMATS or option.activations or option.sparse:
                raise ValueError(f"space.kv_cache: {option.label} is not a KV-cache precision; "
                                 f"valid: {', '.join(KV_FORMATS)}")
        return value

    def rules(self) -> list[LayerRule]:
        return [rule.to_rule() for rule in self.layers]


def _bound(item: Any) -> Callable[[Any], Any]:
    """The validator of a budget bound of ``item``'s type: one value, or a non-empty list of them
    (a frontier; sorted, repeats dropped). Errors name the offending entry of a list."""
    adapter: TypeAdapter[float] = TypeAdapter(item)

    def one(value: Any, where: str = "") -> float:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"{where}{exc.errors()[0]['msg'].lower()}, got {value!r}") from None

    def check(value: Any) -> float | list[float] | None:
        if value is None:
            return None
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("a frontier needs at least one budget")
            return sorted({one(v, f"entry {i}: ") for i, v in enumerate(value)})
        return one(value)

    return check


# Budget kinds whose rows need facts of the job (a measured table): the job adds them.
JOB_BUILT_KINDS = ("latency",)

# Every budget kind takes one value, or a list of them to search a frontier in one study; a new
# kind declares its value type and its bound the same way (``X | list[X] | None``, ``_bound(X)``).
Bits = Annotated[float, Field(gt=0, le=MAX_BITS, allow_inf_nan=False)]
Bytes = Annotated[float, Field(gt=0, allow_inf_nan=False)]
BitsBound = Annotated[float | list[float] | None, PlainValidator(_bound(Bits))]
BytesBound = Annotated[float | list[float] | None, PlainValidator(_bound(Bytes))]


class MemoryConfig(BaseModel):
    """``budget.memory``: the bytes a server may use for this model at a load (spaces/budget.py:
    weights + KV cache of ``batch`` sequences of ``context`` tokens + ``activations``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bytes: BytesBound = Field(description="bytes of weights, KV cache and activation allowance")
    context: int = Field(gt=0, description="tokens per sequence the KV cache holds")
    batch: int = Field(default=1, gt=0, description="sequences served at once")
    activations: float = Field(default=0.0, ge=0, allow_inf_nan=False,
                               description="bytes allowed for activations and workspace")

    @model_validator(mode="after")
    def _has_bytes(self) -> MemoryConfig:
        if self.bytes is None:
            raise ValueError("budget.memory needs bytes (e.g. bytes: 24.0e9)")
        return self

    def to_memory(self) -> MemoryBudget | list[MemoryBudget]:
        """The memory bound, or one per entry of a list of bytes (a frontier)."""
        def at(b: float) -> MemoryBudget:
            return MemoryBudget(b, self.context, self.batch, self.activations)

        return [at(b) for b in self.bytes] if isinstance(self.bytes, list) else \
            at(float(self.bytes or 0))

class LatencyBudgetConfig(BaseModel):
    """``budget.latency``: a forward pass of ``batch`` sequences of ``tokens`` new tokens takes at
    most ``ms`` milliseconds, by the latency table of the device (``spaces/latency.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ms: float = Field(gt=0, le=1e7, allow_inf_nan=False, description="milliseconds per forward")
    # 8 sequences of one new token each: a decode step of a small serving batch.
    batch: int = Field(default=8, ge=1, le=MAX_LATENCY_ROWS)
    tokens: int = Field(default=1, ge=1, le=MAX_LATENCY_ROWS)
    # The device the latency is budgeted on (its name as torch reports it, e.g. "NVIDIA H200").
    # None: the workers' own device, which measures the table if none is stored. A named device
    # whose table is stored may be searched for on workers of any kind.
    device: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _rows(self) -> LatencyBudgetConfig:
        if self.batch * self.tokens > MAX_LATENCY_ROWS:
            raise ValueError(f"batch × tokens is at most {MAX_LATENCY_ROWS:,} rows, got "
                             f"{self.batch * self.tokens:,}")
        return self


class BudgetConfig(BaseModel):
    """The budget: each bound one number, or one of them a list (a frontier searched at once).

    ``avg_bits: [3.0, 3.5, 4.0]`` searches three budgets in one study: the same level database,
    profile and evaluations serve all of them (``searcher/frontier.py``). The bounds given as
    numbers apply at every point of the frontier. Any bound can be the list; only one may be,
    since the points of a frontier are ordered along one axis.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    avg_bits: BitsBound = Field(default=None, description="average effective bits")
    total_bytes: BytesBound = Field(default=None, description="whole-model bytes")
    memory: MemoryConfig | None = Field(default=None, description="weights + KV cache at a load")
    active_bytes: BytesBound = Field(default=None, description="weight bytes one token reads (MoE)")
    # Built by the job from the device's latency table (cluster/latency.py), not by to_budgets.
    latency: LatencyBudgetConfig | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> BudgetConfig:
        given = self._bounds()
        if not any(v is not None for v in given.values()) and self.latency is None:
            raise ValueError("give avg_bits, total_bytes, memory, active_bytes or latency (or "
                             "several)")
        lists = [k for k, v in given.items() if isinstance(v, list)]
        if len(lists) > 1:
            raise ValueError(f"only one budget kind may be a list (a frontier has one axis); "
                             f"got lists for {', '.join(lists)}")
        return self

    def _bounds(self) -> dict[str, Any]:
        """The bounds :meth:`to_budgets` builds (the kinds the job builds are left out)."""
        bounds = {name: getattr(self, name) for name in type(self).model_fields
                  if name not in JOB_BUILT_KINDS}
        if self.memory is not None:
            bounds["memory"] = self.memory.to_memory()
        return bounds

    @property
    def axis(self) -> str | None:
        """The bound given as a list (the frontier's axis), None for a one-budget study."""
        return next((k for k, v in self._bounds().items() if isinstance(v, list)), None)

    def to_budgets(self) -> tuple[Budget, ...]:
        """Every budget point, tightest first: one for a plain budget, one per list entry else."""
        given = self._bounds()
        axis = self.axis
        values = given[axis] if axis is not None else [None]
        assert isinstance(values, list)
        return tuple(Budget(**{**given, **({axis: v} if axis else {})})
                     for v in values)

    def to_budget(self) -> Budget:
        """The loosest point: what a trial must meet to be feasible for the study at all."""
        return self.to_budgets()[-1]
