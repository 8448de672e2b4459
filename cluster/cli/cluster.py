"""Cluster commands: ``submit`` a job to Ray, see the ``status`` of studies, ``resume`` a study."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mpsearch.spaces.errors import SpecError

from ..errors import ClusterError
from .optuna import mirror_study
from .output import DbOption, err, fmt_obj, open_store, out

if TYPE_CHECKING:
    from mpsearch.searcher.registry import SearcherConfig
    from mpsearch.storage.strategies import StrategyRun


def submit(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Job spec (YAML).")],
    address: Annotated[str, typer.Option(
        envvar="RAY_API_SERVER_ADDRESS",
        help="Ray dashboard of the cluster, e.g. http://HEAD:8265.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a search job to a Ray cluster (Jobs API); prints the job id."""
    from .. import submit as jobs

    jobs.spec_data(spec_path)  # a bad spec is refused before the cluster is contacted
    client = jobs.job_client(address)
    job_id = jobs.submit(spec_path, address, client)
    out.print(job_id, highlight=False)
    if not wait:
        err.print(f"follow it with: ray job logs --follow {job_id} --address {address}",
                  highlight=False)
        return
    status = jobs.wait(client, job_id, on_status=lambda s: err.print(f"job {job_id}: {s}",
                                                                     highlight=False))
    if status != "SUCCEEDED":
        logs = (client.get_job_logs(job_id) or "").strip().splitlines()
        reason = next((ln for ln in reversed(logs) if ln.startswith("error:")), None)
        raise ClusterError(f"job {job_id} ended {status}" + (f": {reason}" if reason else
                                                                 f"; see ray job logs {job_id}"))


def status(
    study: Annotated[str | None, typer.Option("--study", help="Only this study.")] = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Progress of the studies in a store: trials done, best so far, whether a driver runs it."""
    from mpsearch.storage.progress import study_progress

    store = open_store(db)
    rows = study_progress(store, study)
    if study is not None:
        mirror_study(store, study)
    from mpsearch.storage.strategies import strategy_history

    history = {p.name: strategy_history(store, store.study(p.name)) for p in rows}
    if as_json:
        out.print_json(json.dumps([{
            "study": p.name, "status": p.status, "evaluations": p.evaluations,
            "completed": p.completed, "failed": p.failed, "running": p.running, "best": p.best,
            "driver": p.driver, "phase": p.phase if p.driver else None,
            "searcher": p.searcher_state,
            "strategies": [{"name": s.name, "params": s.params, "from_trial": s.from_trial}
                           for s in ran(history[p.name])]} for p in rows]))
        return
    table = Table(title=f"studies in {store.masked_url}",
                  title_justify="left")
    # one strategy a line ("→ optuna from trial 37" below the first), never broken inside a line
    strategies = {p.name: "\n→ ".join(s.name if not s.from_trial else
                                       f"{s.name} from trial {s.from_trial}"
                                       for s in ran(history[p.name])) for p in rows}
    widest = max((len(line) for text in strategies.values() for line in text.split("\n")),
                 default=0)
    for col in ("study", "status", "phase", "completed", "failed", "running", "best", "strategy",
                "generation", "driver"):
        table.add_column(col, min_width=widest if col == "strategy" else None)
    for p in rows:
        generation = _find(p.searcher_state, "generation")
        driver = "—" if p.driver is None else f"{p.driver} ({p.heartbeat_age:.0f} s ago)"
        phase = p.phase if p.driver is not None and p.phase else "—"  # only while it runs
        table.add_row(p.name, p.status, phase, f"{p.completed}/{p.evaluations}", str(p.failed),
                      str(p.running), fmt_obj(p.best), strategies[p.name],
                      "—" if generation is None else str(generation), driver)
    out.print(table)


def ran(history: list[StrategyRun]) -> list[StrategyRun]:
    """The strategies that proposed trials or run now: a step another replaced at its own
    first trial (the spec's strategy of an imported study) is left out."""
    return [s for s, after in zip(history, [*history[1:], None], strict=True)
            if after is None or after.from_trial > s.from_trial]


def _find(state: object, key: str) -> object:
    """The first value of ``key`` in a nested state snapshot (stages of a sequential searcher)."""
    if isinstance(state, dict):
        if key in state:
            return state[key]
        values = list(state.values())
    elif isinstance(state, list):
        values = state
    else:
        return None
    for value in reversed(values):  # the later stage is the one running
        found = _find(value, key)
        if found is not None:
            return found
    return None


def resume(
    study: Annotated[str, typer.Option("--study", help="Study to continue.")],
    db: DbOption = None,
    extend: Annotated[int, typer.Option(
        min=0, help="Add this many evaluations to the study's budget first.")] = 0,
    spec_path: Annotated[str | None, typer.Option(
        "--spec", help="The study's spec file, to run with changed workers/evaluations; what "
        "defines the search must match the stored spec.")] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address; default: RAY_ADDRESS, else a new local instance.")] = None,
    top: Annotated[int, typer.Option(help="Best configurations to show at the end.")] = 5,
    searcher: Annotated[str | None, typer.Option(
        "--searcher", help="Continue with this strategy, told every stored trial first.")] = None,
    params: Annotated[str | None, typer.Option(
        "--params", help="With --searcher: its parameters as a JSON object.")] = None,
) -> None:
    """Continue a study after a crash (from its stored spec), or extend a finished one;
    --searcher switches it to another strategy."""
    from mpsearch.storage.config import StorageConfig
    from mpsearch.storage.errors import StudyConflictError

    from ..spec import load_spec, parse_spec
    from .run import run_with_progress

    store = open_store(db)
    record = store.study(study)
    # the stored URL is masked (or an env: reference): this store is where the study lives
    record_spec = {**record.spec, "storage": {"url": store.url}}
    spec = parse_spec(record_spec, f"the stored spec of study {study!r}")
    if spec_path is not None:
        given = load_spec(spec_path)
        if given.study != study:
            raise StudyConflictError(f"{spec_path}: names study {given.study!r}, not {study!r}")
        stored = spec.identity()  # the run itself also checks the calibration texts' fingerprint
        if given.identity() != stored:
            fields = sorted(k for k, v in given.identity().items() if stored.get(k) != v)
            raise StudyConflictError(
                f"{spec_path}: differs from the spec study {study!r} was run with "
                f"(field{'s' if len(fields) > 1 else ''} {', '.join(fields) or '?'}); only "
                "workers, storage and evaluations may change: restore it, or run a new study")
        spec = given
    spec = spec.model_copy(update={"storage": StorageConfig(url=store.url)})
    switch_to = None if searcher is None and params is None else \
        switch_config(searcher, params, spec.searcher.baselines)
    run_with_progress(spec, store, address, top, extend=extend, switch_to=switch_to)


def switch_config(name: str | None, params: str | None, baselines: bool) -> SearcherConfig:
    """The strategy of ``resume --searcher NAME --params JSON``, checked before anything runs."""
    from mpsearch.searcher.registry import SearcherConfig

    if name is None:
        raise SpecError("--params: give the strategy it is for with --searcher NAME")
    try:
        values = json.loads(params) if params is not None else {}
    except json.JSONDecodeError as exc:
        raise SpecError(f"--params: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(values, dict):
        raise SpecError(f"--params: a JSON object of parameters, got {type(values).__name__}")
    config = SearcherConfig(name=name, params=values, baselines=baselines)
    config.check()
    return config
