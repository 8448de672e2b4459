"""The per-layer plan: one stored trial as a JSON file a runtime (or ``mpsearch apply``) can use.

A plan names, for every searched layer, the option the trial gave it (every field of
:class:`QuantOption`: format, bits, group size, symmetry, sparsity, ...), its label and the cost
model's effective bits (and, when the study searched it, each attention layer's KV-cache
precision under ``kv_cache``), and records where it came from (study, trial, objective, model, dtype,
calibration, spec hash, mpsearch version). Layers not in the plan keep their original weights.
Plain data, no torch: :mod:`mpsearch.workers.checkpoint` turns a plan into weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from mpsearch.spaces.errors import MpsearchError
from mpsearch.spaces.options import QuantOption

from .records import CalibrationRecord, StudyRecord, TrialRecord

PLAN_FORMAT = "mpsearch-plan"
PLAN_VERSION = 1
_OPTION_FIELDS = tuple(f.name for f in fields(QuantOption))


class PlanError(MpsearchError):
    """A plan file cannot be read, is not a plan, or cannot be written."""


def mpsearch_version() -> str:
    try:
        return metadata.version("mpsearch")
    except metadata.PackageNotFoundError:  # running from a tree that was never installed
        return "unknown"


def build_plan(study: StudyRecord, trial: TrialRecord,
               levels: str | None = None) -> dict[str, Any]:
    """The plan of ``trial`` (a JSON-able dict; see ``docs/storage.md`` for every key).
    ``levels``: the level database root the study used (``apply`` reads GPTQ variants there)."""
    layers: list[dict[str, Any]] = []
    kv_cache: list[dict[str, Any]] = []
    for gene, choice in zip(study.space.genes, trial.choices, strict=True):
        option = gene.options[choice]
        kv_cache.extend({"attention": a.name, "gene": gene.name, "label": option.label,
                         **option.to_dict()} for a in gene.kv)
        for layer in gene.layers:
            layers.append({
                "name": layer.name, "gene": gene.name,
                "in_features": layer.in_features, "out_features": layer.out_features,
                "label": option.label, **option.to_dict(),
                "effective_bits": option.effective_bits(layer.in_features),
            })
    return {
        "format": PLAN_FORMAT, "version": PLAN_VERSION,
        "provenance": {
            "study": study.name, "trial": trial.number, "origin": trial.origin,
            "objective_name": study.objective, "objective": trial.objective,
            # KL on the reference's top-k tokens: what the objective was (null: every token)
            **({"kl_top_k": study.spec["kl_top_k"]} if study.spec.get("kl_top_k") else {}),
            "samples": trial.samples,  # scored on the first N calibration samples; null = all
            "avg_bits": trial.avg_bits, "total_bytes": trial.total_bytes,
            # MoE: the bytes of weights one token reads (docs/moe.md); a dense plan has none
            **({"active_bytes": study.space.cost(trial.candidate).active_bytes}
               if study.space.has_experts else {}),
            "feasible": trial.feasible,
            "budget": {"avg_bits": study.budget.avg_bits,
                       "total_bytes": study.budget.total_bytes},
            "model": study.model, "model_kind": study.kind, "dtype": study.dtype,
            "calibration": None if study.calibration is None else study.calibration.section(),
            "spec_hash": study.spec_hash, "mpsearch_version": mpsearch_version(),
            **({"levels": levels} if levels is not None else {}),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "unsearched_bits": study.space.unsearched_bits,
        "layers": layers,
        **({"kv_cache": kv_cache} if kv_cache else {}),  # a searched KV-cache precision
    }


@dataclass(frozen=True)
class ScoringSource:
    """What a plan says its objective was measured against: enough to score a checkpoint the
    same way (``mpsearch apply --verify``)."""

    model: str
    kind: str
    dtype: str
    objective: str
    calibration: CalibrationRecord | None
    samples: int | None  # scored on the first N calibration samples; None = all
    kl_top_k: int | None = None  # KL on the reference's top-k tokens; None = the whole vocabulary


@dataclass(frozen=True)
class Plan:
    """A plan read back from JSON: its provenance and each layer's option."""

    data: dict[str, Any]
    source: str

    @property
    def provenance(self) -> dict[str, Any]:
        return self.data["provenance"]

    @property
    def scoring(self) -> ScoringSource:
        """The provenance as typed values (the defaults are those of a plan that omits them)."""
        p = self.provenance
        section = p.get("calibration")
        calibration = None
        if isinstance(section, dict):
            try:
                calibration = CalibrationRecord(**section)
            except TypeError as exc:
                raise PlanError(f"{self.source}: provenance.calibration: {exc}") from None
        return ScoringSource(str(p.get("model")), p.get("model_kind", "auto"),
                             p.get("dtype", "float32"), str(p.get("objective_name")),
                             calibration, p.get("samples"), p.get("kl_top_k"))

    @property
    def options(self) -> dict[str, QuantOption]:
        """Layer name → option, in plan order."""
        return {layer["name"]: _option(layer, self.source) for layer in self.data["layers"]}


    @property
    def kv_cache(self) -> dict[str, QuantOption]:
        """Attention layer → its KV-cache precision, for a plan of a study that searched it."""
        return {entry["attention"]: _option(entry, self.source)
                for entry in self.data.get("kv_cache", ())}


def _option(layer: dict[str, Any], source: str) -> QuantOption:
    try:
        return QuantOption.from_dict({k: layer[k] for k in _OPTION_FIELDS if k in layer})
    except (TypeError, ValueError) as exc:
        raise PlanError(f"{source}: layer {layer.get('name', layer.get('attention'))!r}: "
                        f"{exc}") from None


def write_plan(plan: dict[str, Any], out: str | Path) -> Path:
    path = Path(out)
    try:
        path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"cannot write plan {path}: {exc.strerror or exc}") from None
    return path


def read_plan(source: str | Path) -> Plan:
    """Read and check a plan file; :class:`PlanError` names what is wrong."""
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not JSON ({exc}); pass a file written by `mpsearch export`") from None
    except (ValueError, RecursionError) as exc:  # a NUL in the path; JSON nested too deeply
        raise PlanError(f"cannot read plan {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise PlanError(f"{path}: not an mpsearch plan (no \"format\": \"{PLAN_FORMAT}\"); "
                        "pass a file written by `mpsearch export`")
    if data.get("version") != PLAN_VERSION:
        raise PlanError(f"{path}: plan version {data.get('version')!r}, this mpsearch reads "
                        f"version {PLAN_VERSION}")
    layers = data.get("layers")
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(ly, dict) and "name" in ly for ly in layers)):
        raise PlanError(f"{path}: field 'layers' must be a non-empty list of layers with a 'name'")
    if not isinstance(data.get("provenance"), dict):
        raise PlanError(f"{path}: field 'provenance' is missing")
    for layer in layers:  # every option is checked now, not at first use
        _option(layer, str(path))
    kv = data.get("kv_cache", [])
    if not isinstance(kv, list) or not all(isinstance(e, dict) and "attention" in e for e in kv):
        raise PlanError(f"{path}: field 'kv_cache' must be a list of entries with an 'attention'")
    plan = Plan(data, str(path))
    plan.kv_cache  # noqa: B018  (checked now, not at first use)
    return plan
