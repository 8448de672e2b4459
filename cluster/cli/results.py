"""Reading results back: ``best``, ``pareto``, ``compare``, ``trials`` (Parquet), ``export`` (plan),
``apply`` (checkpoint: dense or compressed-tensors) and ``report`` (HTML).

Every command here only reads the store (opened with ``create=False``); a bad study, trial,
filter or output path is a one-line error and the database is left as it was.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mpsearch.spaces.errors import MpsearchError

from .optuna import mirror_study
from .output import (
    DbOption,
    StudyOption,
    err,
    fmt_bytes,
    fmt_obj,
    open_store,
    out,
    results_table,
    trial_json,
)

if TYPE_CHECKING:
    from mpsearch.storage.plan import ScoringSource
    from mpsearch.storage.queries import Comparison
    from mpsearch.storage.store import StudyRecord, TrialRecord
    from mpsearch.workers.worker import WorkerSetup

MaxBits = Annotated[float | None, typer.Option(help="Only trials at most this avg bits.")]
MaxBytes = Annotated[float | None, typer.Option(help="Only trials at most this size (bytes).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON, with per-layer choices.")]


def _filters(max_bits: float | None, max_bytes: float | None) -> str:
    parts = [f"avg_bits <= {max_bits:g}" if max_bits is not None else "",
             f"total_bytes <= {max_bytes:,.0f}" if max_bytes is not None else ""]
    return " and ".join(p for p in parts if p) or "no filter"


def best(
    study: StudyOption,
    db: DbOption = None,
    top: Annotated[int, typer.Option(help="How many configurations.")] = 5,
    max_bits: MaxBits = None,
    max_bytes: MaxBytes = None,
    as_json: AsJson = False,
) -> None:
    """The best stored configurations of a study (feasible, completed, lowest objective)."""
    from mpsearch.storage.queries import NoResultError

    store = open_store(db)
    record = store.study(study)
    rows = store.best(study, top=top, max_bits=max_bits, max_bytes=max_bytes)
    if not rows:
        raise NoResultError(f"study {study!r} has no completed feasible trial within "
                            f"{_filters(max_bits, max_bytes)}")
    if as_json:
        out.print_json(json.dumps([trial_json(record, t) for t in rows]))
        return
    out.print(results_table(record, rows, store.baselines(study)))


def pareto(
    study: StudyOption,
    db: DbOption = None,
    max_bits: MaxBits = None,
    max_bytes: MaxBytes = None,
    feasible_only: Annotated[bool, typer.Option(
        "--feasible-only", help="Leave out trials over the study's budget.")] = False,
    as_json: AsJson = False,
) -> None:
    """Completed trials not dominated in objective and effective bits, cheapest first."""
    from mpsearch.storage.queries import NoResultError

    store = open_store(db)
    record = store.study(study)
    front = store.pareto(study, max_bits=max_bits, max_bytes=max_bytes, feasible_only=feasible_only)
    if not front:
        which = "feasible " if feasible_only else ""
        raise NoResultError(f"study {study!r} has no completed {which}trial within "
                            f"{_filters(max_bits, max_bytes)}")
    best_at: dict[int, list[str]] = {}  # trial → the budgets it is the best configuration at
    for point, chosen in store.frontier(study):
        if chosen is not None:
            best_at.setdefault(chosen.number, []).append(point.describe())
    if as_json:
        out.print_json(json.dumps([{**trial_json(record, t), "feasible": t.feasible,
                                    "best_at": best_at.get(t.number, [])} for t in front]))
        return
    out.print(_pareto_table(record, front, best_at))


def _pareto_table(study: StudyRecord, front: list[TrialRecord],
                  best_at: dict[int, list[str]]) -> Table:
    budgets = ", ".join(b.describe() for b in study.budgets)
    table = Table(title=f"study {study.name}: Pareto front (objective vs effective bits); "
                        f"{'frontier' if study.frontier else 'budget'} {budgets}",
                  title_justify="left")
    for col in ("trial", "avg bits", "bytes", "objective", "budget", "best at", "origin",
                "layers"):
        table.add_column(col, justify="right" if col in ("trial", "avg bits", "bytes",
                                                         "objective") else "left")
    for t in front:
        table.add_row(str(t.number), f"{t.avg_bits:.4f}", fmt_bytes(t.total_bytes),
                      fmt_obj(t.objective), "within" if t.feasible else "over",
                      "; ".join(best_at.get(t.number, [])) or "—", t.origin,
                      study.space.summarize(t.candidate))
    return table


def compare(
    studies: Annotated[list[str], typer.Option("--study", help="A study; give two or more.")],
    db: DbOption = None,
    max_bits: MaxBits = None,
    max_bytes: MaxBytes = None,
    top: Annotated[int, typer.Option(help="Best configurations per study.")] = 1,
    as_json: AsJson = False,
) -> None:
    """Studies side by side under one budget (the given one, else the first study's)."""
    from mpsearch.storage.queries import NoResultError

    store = open_store(db)
    result = store.compare(studies, max_bits=max_bits, max_bytes=max_bytes, top=top)
    if not any(col.best for col in result.columns):
        raise NoResultError(f"no study has a completed trial within {result.budget.describe()}")
    if as_json:
        out.print_json(json.dumps(_comparison_json(result)))
        return
    out.print(_comparison_table(result))
    for note in result.notes:
        err.print(f"note: {note}")


def _comparison_json(result: Comparison) -> dict:
    return {
        "budget": {"avg_bits": result.budget.avg_bits, "total_bytes": result.budget.total_bytes},
        "notes": list(result.notes),
        "studies": [{"study": c.study.name, "model": c.study.model,
                     "objective_name": c.study.objective, "completed": c.completed,
                     "within_budget": c.within,
                     "best": [trial_json(c.study, t) for t in c.best]} for c in result.columns],
    }


def _comparison_table(result: Comparison) -> Table:
    table = Table(title=f"studies compared at {result.budget.describe()}", title_justify="left")
    table.add_column("")
    for col in result.columns:
        table.add_column(col.study.name, justify="right")
    first = result.columns[0].best[0].objective if result.columns[0].best else None
    rows: list[list[str]] = [
        ["objective kind", *(c.study.objective for c in result.columns)],
        ["completed trials", *(str(c.completed) for c in result.columns)],
        ["within budget", *(str(c.within) for c in result.columns)],
    ]
    depth = max(len(c.best) for c in result.columns)
    for rank in range(depth):
        picks = [c.best[rank] if rank < len(c.best) else None for c in result.columns]
        tag = f"#{rank + 1} " if depth > 1 else "best "
        rows += [
            [f"{tag}trial", *("—" if t is None else str(t.number) for t in picks)],
            [f"{tag}objective", *(fmt_obj(None if t is None else t.objective) for t in picks)],
            [f"{tag}vs first", *("—" if t is None or first in (None, 0) or t.objective is None
                                 else f"{t.objective / first:.3f}×" for t in picks)],
            [f"{tag}avg bits", *("—" if t is None else f"{t.avg_bits:.4f}" for t in picks)],
            [f"{tag}bytes", *("—" if t is None else fmt_bytes(t.total_bytes) for t in picks)],
        ]
    for row in rows:
        table.add_row(*row)
    return table


def trials(
    study: StudyOption,
    out_path: Annotated[str, typer.Option("--out", help="Parquet file to write.")],
    db: DbOption = None,
) -> None:
    """Export every trial of a study to Parquet (one row per trial, a column per layer)."""
    from mpsearch.storage.export import write_parquet

    store = open_store(db)
    record = store.study(study)
    mirror_study(store, study)
    rows = store.trials(study)
    path = write_parquet(record, rows, out_path)
    err.print(f"wrote {len(rows)} trials of study {study} to {path}")


PLAN, DENSE, COMPRESSED_TENSORS, GGUF = "plan", "dense", "compressed-tensors", "gguf"
FormatOption = Annotated[str, typer.Option(
    "--format", help="plan (JSON), dense (dequantized weights), compressed-tensors (packed, a "
    "directory) or gguf (one .gguf file).")]
RuntimeOption = Annotated[str, typer.Option(
    help="compressed-tensors for transformers, or vllm (also refuses what vLLM cannot load: "
    "asymmetric or 3-bit integers, fused q/k/v or gate/up with different options).")]
VerifyOption = Annotated[bool, typer.Option(
    help="Re-score the checkpoint on the plan's calibration; print both objectives and sizes.")]


def export(
    study: StudyOption,
    out_path: Annotated[str, typer.Option("--out", help="Plan file or checkpoint directory.")],
    db: DbOption = None,
    trial: Annotated[int | None, typer.Option(help="Trial number (default: the best).")] = None,
    format: FormatOption = PLAN,
    runtime: RuntimeOption = "transformers",
    verify: VerifyOption = False,
) -> None:
    """Write one trial as a plan (JSON: options, effective bits, provenance) or a checkpoint."""
    from mpsearch.storage.models import COMPLETE
    from mpsearch.storage.plan import Plan, build_plan, write_plan
    from mpsearch.storage.queries import NoResultError

    _check_format(format, (PLAN, DENSE, COMPRESSED_TENSORS, GGUF))
    store = open_store(db)
    record = store.study(study)
    mirror_study(store, study)
    if trial is None:
        top = store.best(study, top=1)
        if not top:
            raise NoResultError(f"study {study!r} has no completed feasible trial to export; "
                                "pass --trial N")
        chosen = top[0]
    else:
        chosen = store.trial(study, trial)
        if chosen.status != COMPLETE:
            raise NoResultError(f"trial {trial} of study {study!r} is {chosen.status}, not "
                                "complete; export a completed trial")
    if format != PLAN and not chosen.feasible:
        raise NoResultError(f"trial {chosen.number} of study {study!r} is over the budget "
                            "(infeasible); export a feasible trial")
    data = build_plan(record, chosen, levels=_study_levels(record, store.url))
    if format != PLAN:
        _write_checkpoint(Plan(data, f"trial {chosen.number} of study {study}"), format, out_path,
                          None, verify, runtime)
        return
    path = write_plan(data, out_path)
    err.print(f"wrote the plan of trial {chosen.number} of study {study} (objective "
              f"{fmt_obj(chosen.objective)}, {chosen.avg_bits:.4f} avg bits) to {path}")


def apply(
    plan_path: Annotated[str, typer.Argument(metavar="PLAN", help="Plan JSON from `export`.")],
    out_dir: Annotated[str, typer.Option("--out", help="New directory for the checkpoint.")],
    model: Annotated[str | None, typer.Option(
        help="Model directory or id (default: the plan's model).")] = None,
    format: FormatOption = DENSE,
    runtime: RuntimeOption = "transformers",
    verify: VerifyOption = False,
    levels: Annotated[str | None, typer.Option(
        help="Level database root to read GPTQ/Wanda variants from (default: the plan's).")
    ] = None,
) -> None:
    """Write a checkpoint of the plan's quantized weights (loads with from_pretrained)."""
    from mpsearch.storage.plan import read_plan

    _check_format(format, (DENSE, COMPRESSED_TENSORS, GGUF))
    _write_checkpoint(read_plan(plan_path), format, out_dir, model, verify, runtime, levels)


def _study_levels(record, store_url: str) -> str | None:
    """The level database root the study's runs used (its spec's ``levels``, else beside the
    store), for the plan's provenance: an export reads the stored variants from it."""
    from mpsearch.cluster.levels import levels_root
    from mpsearch.workers.config import LevelsConfig

    try:
        cfg = LevelsConfig.model_validate(record.spec.get("levels") or {})
    except ValueError:
        return None
    root = levels_root(cfg, store_url)
    return None if root is None else str(root.resolve())


def _check_format(format: str, valid: tuple[str, ...]) -> None:
    if format not in valid:
        raise MpsearchError(f"--format {format!r} is not one of {', '.join(valid)}")


def _write_checkpoint(plan, format: str, out_dir: str, model: str | None, verify: bool,
                      runtime: str = "transformers", levels: str | None = None) -> None:
    """The plan's checkpoint in ``format`` (dense, compressed-tensors or gguf), re-scored if
    asked (a GGUF file through transformers' GGUF loader). GPTQ and Wanda variants come from
    the level database (``levels``, else the plan's) when it holds them, not computed again."""
    from mpsearch.workers.checkpoint import (
        check_plan_shapes,
        needs_calibration,
        rescore_checkpoint,
        weights_only_setup,
        write_checkpoint,
    )
    from mpsearch.workers.export_ct import export_compressed_tensors, weight_bytes
    from mpsearch.workers.export_gguf import export_gguf, gguf_tensor_bytes
    from mpsearch.workers.model_loading import inspect_model

    if runtime not in ("transformers", "vllm"):
        raise MpsearchError(f"--runtime {runtime!r} is not one of transformers, vllm")
    prov, scoring = plan.provenance, plan.scoring
    source = model or prov.get("model")
    if not source:
        raise MpsearchError(f"{plan.source}: the plan names no model; pass --model PATH")
    if verify and scoring.calibration is None:
        raise MpsearchError(f"{plan.source}: the plan records no calibration; cannot --verify")
    shapes = {layer["name"]: (layer["out_features"], layer["in_features"])
              for layer in plan.data["layers"] if "in_features" in layer and "out_features" in layer}
    from mpsearch.workers.config import ModelConfig

    info = inspect_model(ModelConfig(name=source, kind=scoring.kind))
    check_plan_shapes(info.path, info.kind, shapes)
    calibrated = any(needs_calibration(o) for o in plan.options.values()) or any(
        o.format != "fp16" for o in plan.kv_cache.values())  # an FP8 cache's scales
    setup = _scoring_setup(scoring, source) if scoring.calibration and (calibrated or verify) \
        else None
    if setup is not None and calibrated:
        setup = _with_levels(setup, levels or prov.get("levels"), scoring)
    if format in (COMPRESSED_TENSORS, GGUF):
        if setup is None:
            from mpsearch.workers.config import ModelConfig

            info = inspect_model(ModelConfig(name=source, kind=scoring.kind))
            setup = weights_only_setup(info.path, info.kind, scoring.dtype)
        path = export_compressed_tensors(setup, plan.options, out_dir, plan.data, runtime,
                                         plan.kv_cache).path \
            if format == COMPRESSED_TENSORS else export_gguf(setup, plan.options, out_dir, plan.data)
    else:
        path = write_checkpoint(source, plan.options, out_dir, kind=scoring.kind,
                                dtype=scoring.dtype, plan=plan.data, setup=setup)
    on_disk = gguf_tensor_bytes(path) if format == GGUF else weight_bytes(path)
    predicted = prov.get("total_bytes")
    err.print(f"wrote a {format} checkpoint of {source} with {len(plan.options)} quantized layers "
              f"(trial {prov.get('trial')} of study {prov.get('study')}) to {path}")
    if format == COMPRESSED_TENSORS and (path / "modules.json").is_file():
        err.print("note: in SentenceTransformer(DIR) call its transformers model once, "
                  "st[0].model(**st[0].tokenizer(['x'], return_tensors='pt')), before encoding: "
                  "sentence-transformers calls the model's forward directly, past the hook through "
                  "which compressed-tensors decompresses it (AutoModel.from_pretrained(DIR) and "
                  "vLLM load it as it is)")
    if verify:
        assert setup is not None
        value = rescore_checkpoint(path, setup, scoring.samples)
        cost = f"{predicted:.0f}" if isinstance(predicted, int | float) else "unknown"
        # six significant digits: a KL of 1e-6 is not "0.000001" against "0.000001"
        err.print(f"re-scored {_significant(value)}; stored {_significant(prov.get('objective'))}; "
                  f"on disk {on_disk} bytes; cost model {cost} bytes")


def _significant(x: object) -> str:
    return f"{x:.6g}" if isinstance(x, int | float) else "—"


def _with_levels(setup: WorkerSetup, root: str | None, scoring: ScoringSource) -> WorkerSetup:
    """``setup`` reading the level set of its model + calibration under ``root``, if built."""
    from mpsearch.cluster.levels import existing_level_set
    from mpsearch.workers.config import CalibrationConfig

    assert scoring.calibration is not None
    folder = existing_level_set(root, setup.model_path, setup.dtype, setup.texts,
                                CalibrationConfig(**scoring.calibration.section()))
    return setup if folder is None else replace(setup, level_db=str(folder))


def _scoring_setup(scoring: ScoringSource, model: str) -> WorkerSetup:
    from mpsearch.workers.checkpoint import scoring_setup
    from mpsearch.workers.config import CalibrationConfig

    assert scoring.calibration is not None
    setup = scoring_setup(model, scoring.kind, scoring.objective,
                          CalibrationConfig(**scoring.calibration.section()), scoring.dtype)
    # the objective as the study scored it: a top-k KL re-scored over the whole vocabulary is
    # another number (larger), not a check of the checkpoint
    return replace(setup, kl_top_k=scoring.kl_top_k)


def report(
    study: StudyOption,
    out_path: Annotated[str, typer.Option("--out", help="HTML file to write.")],
    db: DbOption = None,
) -> None:
    """One self-contained HTML page: Pareto front, best configuration, progress per strategy."""
    try:
        from mpsearch.storage.report import write_report
    except ImportError as exc:  # plotly: a dependency, missing from a partial install
        package = (exc.name or "plotly").partition(".")[0]
        raise MpsearchError(f"mpsearch report draws with the package {package!r}, which is not "
                            f"installed: pip install {package}") from None

    store = open_store(db)
    mirror_study(store, study)
    path = write_report(store, study, out_path)
    err.print(f"wrote the report of study {study} to {path}")
