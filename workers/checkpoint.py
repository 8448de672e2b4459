"""Writing a plan's weights as a checkpoint that loads with ``from_pretrained``, and re-scoring it.

The checkpoint holds the *dequantized* weights (in the model's dtype) that a worker scores, so it
loads in any transformers runtime and reproduces the trial's objective exactly; packing them into
integer kernels is a runtime's job. Layers the plan does not name keep their original weights.
Pure torch + transformers: the caller reads the plan (``mpsearch.storage.plan``) and passes the
options.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, Gene, LayerInfo, SearchSpace

from .config import CalibrationConfig, ModelConfig
from .errors import WorkerError
from .layers import ExpertSlice, Target, oriented_shape, quantizable_targets
from .model_loading import inspect_model, load_model, load_tokenizer
from .registry import needs_calibration
from .worker import Worker, WorkerSetup

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PLAN_FILE = "mpsearch_plan.json"  # the plan, copied beside the weights it produced
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")


class CheckpointError(WorkerError):
    """A plan cannot be applied to a model, or its checkpoint cannot be written."""


def _planned_modules(model: nn.Module, options: Mapping[str, QuantOption]) -> dict[str, Target]:
    modules = quantizable_targets(model)
    missing = [name for name in options if name not in modules]
    if missing:
        raise CheckpointError(f"the model has no quantizable layer {missing[0]!r} "
                              f"({len(missing)} of the plan's {len(options)} layers are missing); "
                              "pass the model the plan was made for")
    return modules


def _prepare_out(out_dir: str | Path) -> Path:
    """The output directory, created now so an unwritable path fails before the model loads."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"output {out} exists and is not an empty directory; "
                              "choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint to {out}: {exc.strerror or exc}") from None
    return out


def _copy_side_files(source: str, out: Path) -> None:
    """Everything in the model directory but its weights and config: sentence-transformers'
    modules (``modules.json``, ``1_Pooling/``, ``2_Normalize/``), READMEs, tokenizer files."""
    src = Path(source)
    if not src.is_dir():
        return
    for item in src.iterdir():
        if item.name == "config.json" or item.name.endswith(WEIGHT_FILES) or \
                item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out / item.name)


def check_plan_shapes(model_path: str, kind: str,
                      shapes: Mapping[str, tuple[int, int]]) -> None:
    """:class:`CheckpointError` unless every layer of ``shapes`` (name → (out, in), as the plan
    records them) exists in the model with that shape: a plan made for another model is refused
    before anything is written. Reads the config only (the model on the meta device)."""
    from transformers import AutoConfig

    from .model_loading import _auto_class

    with torch.device("meta"):
        model = _auto_class(kind).from_config(AutoConfig.from_pretrained(model_path))
    modules = quantizable_targets(model)
    for name, shape in shapes.items():
        if name not in modules:
            raise CheckpointError(f"the model has no quantizable layer {name!r}; the plan was "
                                  "made for another model (pass it with --model)")
        if oriented_shape(modules[name]) != tuple(shape):
            out_f, in_f = oriented_shape(modules[name])
            raise CheckpointError(f"layer {name} is {out_f}×{in_f} in {model_path}, the plan's "
                                  f"is {shape[0]}×{shape[1]}: the plan was made for another "
                                  "model (pass it with --model)")


def weights_only_setup(model_path: str, kind: str, dtype: str = "float32") -> WorkerSetup:
    """A worker setup without calibration samples: enough to apply options whose handlers need
    no statistics (a worker on it refuses GPTQ and Wanda options, naming the layer)."""
    objective = "kl" if kind == "causal-lm" else "embedding_distortion"
    return WorkerSetup(model_path=model_path, kind=kind, objective=objective, texts=(),
                       seq_len=1, dtype=dtype)


def plan_worker(setup: WorkerSetup, options: Mapping[str, QuantOption]) -> Worker:
    """A :class:`Worker` on ``setup`` whose model has ``options`` applied: the one way a plan is
    applied, so a checkpoint or an export holds the very weights a trial was scored with (each
    option's handler from :mod:`.registry`, its statistics from ``setup``'s calibration texts).
    The worker's ``variant(name, option)`` and ``layer_inputs`` serve exports that need the
    stored parts; layers the plan does not name keep their original weights."""
    model = load_model(setup.model_path, setup.kind, setup.dtype, setup.device)
    modules = _planned_modules(model, options)
    genes = []
    for name, option in options.items():
        out_f, in_f = oriented_shape(modules[name])
        genes.append(Gene(name, (LayerInfo(name, in_f, out_f),), (option,)))
    worker = Worker(setup, SearchSpace(tuple(genes)), model=model)
    try:
        worker.apply_(Candidate((0,) * len(genes)))
    except WorkerError as exc:
        raise CheckpointError(str(exc)) from None
    for name in options:  # own, contiguous copies: the worker's cache may hand out views
        target = modules[name]
        if isinstance(target, ExpertSlice):  # its variant was copied into the parameter
            continue
        weight = cast(torch.Tensor, target.weight)
        weight.data = weight.data.contiguous().clone()
    return worker


def write_checkpoint(model: str, options: Mapping[str, QuantOption], out_dir: str | Path,
                     kind: str = "auto", dtype: str = "float32",
                     plan: Mapping[str, Any] | None = None,
                     setup: WorkerSetup | None = None) -> Path:
    """Load ``model``, compress the layers of ``options``, save model, tokenizer and plan.

    ``kind`` is ``auto``, ``causal-lm`` or ``encoder`` (auto: from the config, as a search does);
    ``dtype`` is the dtype the trial was scored in, and the checkpoint's. The options are applied
    by :func:`plan_worker` on ``setup``; those that need calibration inputs
    (:func:`~.registry.needs_calibration`) need ``setup`` given (:func:`scoring_setup` builds it
    from a plan's provenance); without it the model loads without calibration samples.
    """
    from transformers import AutoTokenizer

    out = _prepare_out(out_dir)
    info = inspect_model(ModelConfig(name=model, kind=kind))  # type: ignore[arg-type]
    calibrated = [name for name, option in options.items() if needs_calibration(option)]
    if calibrated and setup is None:
        raise CheckpointError(f"layer {calibrated[0]} uses {options[calibrated[0]].label}, which "
                              "needs calibration inputs, and the plan records no calibration")
    if setup is None:
        setup = weights_only_setup(info.path, info.kind, dtype)
    loaded = cast("PreTrainedModel", plan_worker(setup, options).model.cpu())
    try:
        _copy_side_files(info.path, out)  # sentence-transformers' modules, READMEs
        loaded.save_pretrained(out)
        AutoTokenizer.from_pretrained(info.path).save_pretrained(out)
        if plan is not None:
            (out / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint to {out}: {exc.strerror or exc}") from None
    return out


def scoring_setup(model: str, kind: str, objective: str,
                  calibration: CalibrationConfig | Mapping[str, Any],
                  dtype: str = "float32") -> WorkerSetup:
    """The worker setup that scores against ``model`` on a spec's calibration section."""
    from .calibration import load_texts

    cfg = calibration if isinstance(calibration, CalibrationConfig) else \
        CalibrationConfig(**calibration)
    info = inspect_model(ModelConfig(name=model, kind=kind))  # type: ignore[arg-type]
    return WorkerSetup(model_path=info.path, kind=info.kind, objective=objective,
                       texts=tuple(load_texts(cfg, info.path)), seq_len=cfg.seq_len,
                       batch_size=cfg.batch_size, dtype=dtype)


def rescore_checkpoint(checkpoint: str | Path, setup: WorkerSetup,
                       samples: int | None = None) -> float:
    """The objective of ``checkpoint`` against the full-precision ``setup.model_path``.

    Scored by a :class:`Worker` exactly as a trial is: the worker computes its reference from the
    original model on ``setup.texts``, then scores the checkpoint as ``from_pretrained`` loads it
    (dense, or packed formats such as compressed-tensors, which decompress on the first forward).
    """
    worker = Worker(setup, SearchSpace(()))  # no searched layer: only the reference is needed
    path = Path(checkpoint)
    if path.suffix == ".gguf":  # transformers' GGUF loader (dequantizes to float32, then dtype)
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(setup.model_path)
        if config.model_type == "gpt2" and config.n_positions != 1024:
            raise CheckpointError(
                f"cannot re-score {path.name} with transformers: its GGUF loader reads GPT-2's "
                f"context length into n_ctx and keeps n_positions at 1,024, and this GPT-2 has "
                f"{config.n_positions} positions (the file itself is complete; llama.cpp loads it)")

    try:  # the consumer's loader: whatever it raises, the checkpoint does not load
        if path.suffix == ".gguf":
            model: nn.Module = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=getattr(torch, setup.dtype))
            worker.model = model.to(setup.device).eval()
        else:
            worker.model = load_model(str(path), setup.kind, setup.dtype, setup.device)
            load_tokenizer(str(path))  # the checkpoint's tokenizer must load too
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"cannot re-score {path.name}: transformers does not load it "
                              f"({type(exc).__name__}: {first[:300]})") from None
    return worker.score(samples)
