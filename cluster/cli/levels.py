"""``mpsearch levels``: build a spec's level database ahead of time, or list what is stored.

Building runs the same setup phases as ``mpsearch run`` (the statistics, each stored level with
its layers done/total, the proxies) on the spec's workers, then stops. ``--show`` lists the root
the spec names (every model + calibration set under it: its options, layers done/planned, proxies,
bytes on disk) without starting Ray or importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .output import err, out
from .phases import PhaseDisplay


def levels(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Job spec (YAML).")],
    show: Annotated[bool, typer.Option(
        "--show", help="List what the level database holds; build nothing.")] = False,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address; default: RAY_ADDRESS, else a new local instance.")] = None,
) -> None:
    """Build the level database of a spec's model and calibration ahead of time (or --show it)."""
    from mpsearch.cluster.levels import levels_root
    from mpsearch.cluster.spec import load_spec
    from mpsearch.spaces.errors import SpecError

    spec = load_spec(spec_path)
    root = levels_root(spec.levels, spec.storage.url)
    if root is None:
        raise SpecError("levels.enabled is false in the spec: there is no level database")
    if show:
        _show(root)
        return
    folder = _build(spec, address)
    err.print(f"level database built: {folder}", highlight=False)
    _show(root, only=folder)


def _build(spec, address: str | None) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mpsearch.cluster.levels import build_levels

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=err)
    phases = PhaseDisplay(progress, err)
    phases.phase("prepare", "preparing the job", 0)
    progress.start()
    try:
        folder = build_levels(spec, address, phases)
    except BaseException:
        progress.live.transient = True  # an error is the command's last word: one line
        progress.live.stop()
        raise
    phases.phase("search", "done", 0)  # every phase line is complete
    if progress.live.is_started:
        progress.stop()
    return folder


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _show(root: Path, only: Path | None = None) -> None:
    from mpsearch.workers.level_keys import stored_sets

    sets = [s for s in stored_sets(root) if only is None or s.path == only]
    if not sets:
        out.print(f"level database {root}: nothing stored", highlight=False)
        return
    out.print(f"level database {root}: {len(sets)} model + calibration set"
              f"{'s' if len(sets) != 1 else ''}, {_gb(sum(s.bytes for s in sets))}",
              highlight=False)
    for s in sets:
        m = s.manifest
        calib = m.get("calibration") or {}
        out.print(f"set {s.key}: {m.get('model', '?')} ({m.get('dtype', '?')}), calibration "
                  f"{calib.get('source', '?')} {calib.get('samples', '?')}×"
                  f"{calib.get('seq_len', '?')}, {_gb(s.bytes)}", highlight=False, soft_wrap=True)
        table = Table()
        for col in ("option", "layers", "proxies", "on disk"):
            table.add_column(col, justify="left" if col == "option" else "right")
        for o in s.options:
            done = f"{o.layers}/{o.planned}" if o.planned else str(o.layers)
            table.add_row(o.label, done if o.layers or o.planned else "—", str(o.proxies),
                          _gb(o.bytes))
        out.print(table)
