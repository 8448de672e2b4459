"""The job spec: one pydantic model, assembled from the sections each package owns.

Loaded from YAML with a safe loader (a spec is data, never code) and validated strictly: unknown
keys are refused and every error names its field. The validated spec is stored with the study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mpsearch.searcher.registry import SearcherConfig
from mpsearch.spaces.errors import SpecError, validation_message
from mpsearch.spaces.files import read_text_file
from mpsearch.spaces.limits import MAX_EVALUATIONS, MAX_SEED, non_finite_field
from mpsearch.spaces.spec import BudgetConfig, SpaceConfig
from mpsearch.storage.config import StorageConfig
from mpsearch.workers.config import (
    CalibrationConfig,
    LevelsConfig,
    ModelConfig,
    ObjectiveName,
    WorkersConfig,
)

SPEC_VERSION: Literal[1] = 1
DTYPE_BITS = {"float32": 32.0, "bfloat16": 16.0, "float16": 16.0}  # model.dtype → bits per value

__all__ = ["JobSpec", "SPEC_VERSION", "StorageConfig", "WorkersConfig", "load_spec", "parse_spec"]


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = SPEC_VERSION
    study: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelConfig = Field(default_factory=ModelConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    budget: BudgetConfig
    # auto: KL of next-token distributions for causal LMs, embedding distortion for encoders.
    objective: ObjectiveName = "auto"
    # KL on the full-precision model's top-k tokens only (k/V of the reference's memory, a lower
    # bound of the full KL); None keeps the whole vocabulary.
    kl_top_k: int | None = Field(default=None, ge=1, le=10_000_000)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    # Completed evaluations to run (uniform baselines included; failed ones are not counted).
    evaluations: int = Field(default=200, ge=1, le=MAX_EVALUATIONS)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    levels: LevelsConfig = Field(default_factory=LevelsConfig)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        field = non_finite_field(data)
        if field is not None:  # YAML's 1e309 or .inf: no budget, and not JSON
            raise ValueError(f"{field} is not a finite number")
        return data

    @model_validator(mode="after")
    def _unsearched_bits(self) -> JobSpec:
        """Unsearched parameters are charged at the scored dtype's width unless the spec says
        otherwise: a float32 study scores (and exports) its embeddings in float32, so its
        total_bytes counts them at 32 bits, as the checkpoint holds them."""
        if self.space.unsearched_bits is None:
            space = self.space.model_copy(update={"unsearched_bits": DTYPE_BITS[self.model.dtype]})
            object.__setattr__(self, "space", space)  # frozen: filled in once, at validation
        return self

    def worker_device(self) -> str:
        """The device a worker scores on: ``model.device``, with "auto" meaning CUDA when the
        workers have GPUs."""
        if self.model.device == "auto":
            return "cuda" if self.workers.gpus > 0 else "cpu"
        return self.model.device

    def identity(self) -> dict[str, Any]:
        """The parts that define what a study searches: a rerun must keep them unchanged.

        Where it runs (workers, storage) and for how long (evaluations) may change. Fields added
        after studies were stored (:data:`_LATER_DEFAULTS`) are left out at their default, so a
        study stored before them keeps its identity.
        """
        identity = self.model_dump(mode="json", exclude={"workers", "storage", "evaluations",
                                                         "levels"})
        for section, defaults in _LATER_DEFAULTS.items():
            for key, default in defaults.items():
                if identity[section].get(key) == default:
                    del identity[section][key]
        for rule in identity["space"]["layers"]:  # option fields added later, at their default
            for option in rule["options"]:
                for key, default in _LATER_OPTION_DEFAULTS.items():
                    if option.get(key) == default:
                        del option[key]
        return identity


# Spec fields added after studies were stored, with their defaults (see ``JobSpec.identity``).
_LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "calibration": {"split": "train", "subset": None, "chat_template": False},
    "space": {"experts": None, "kv_cache": None},
    "budget": {"memory": None, "active_bytes": None, "latency": None},
    "searcher": {"baselines": True, "confirm": 0, "fidelity": "auto"},
}
# QuantOption fields added after studies were stored (a weight-only option: no activations).
_LATER_OPTION_DEFAULTS: dict[str, Any] = {"activations": ""}


def format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = validation_message(err, JobSpec)
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: field '{field}': {msg}{more}"


def parse_spec(data: Any, source: str = "spec") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a mapping of fields, got {type(data).__name__}")
    field = non_finite_field(data)
    if field is not None:
        raise SpecError(f"{source}: field '{field}': not a finite number (YAML reads 1e309 and "
                        ".inf as infinity); give a finite value")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    spec.searcher.check()
    return spec


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    text = read_text_file(path, "job spec", SpecError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}:{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: the YAML is nested too deeply") from None
    return parse_spec(data, str(path))
