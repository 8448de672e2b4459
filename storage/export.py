"""Exporting a study's trials to Parquet, one row per trial.

Schema: ``number`` (int64), ``status``, ``origin`` (string), ``objective`` (float64, null when
failed or running), ``avg_bits``, ``total_bytes`` (float64), ``feasible`` (bool), ``samples``
(int64, null = all), ``seed`` (int64), ``worker``, ``error`` (string), ``eval_seconds``
(float64), ``started_at``, ``finished_at`` (timestamp[us]), ``extra`` (string: JSON of further
numbers such as perplexity, null when none), ``choices`` (list<int32>, the option
index of each gene), then one string column per searched layer, named after the layer, holding
its option label (``int4-g128-asym``). File metadata carries the study name and its space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import StoreError
from .store import StudyRecord, TrialRecord

if TYPE_CHECKING:  # pyarrow is imported when a table is built, not by every user of the store
    import pyarrow as pa

# The fixed columns: name and pyarrow type factory (called when a table is built).
_FIXED = [
    ("number", "int64"), ("status", "string"), ("origin", "string"),
    ("objective", "float64"), ("avg_bits", "float64"), ("total_bytes", "float64"),
    ("feasible", "bool_"), ("samples", "int64"), ("seed", "int64"),
    ("worker", "string"), ("error", "string"), ("eval_seconds", "float64"),
    ("started_at", "timestamp"), ("finished_at", "timestamp"),
]


def trials_table(study: StudyRecord, trials: list[TrialRecord]) -> pa.Table:
    import pyarrow as pa

    columns: dict[str, list] = {name: [getattr(t, name) for t in trials] for name, _ in _FIXED}
    fields = [pa.field(name, pa.timestamp("us") if typ == "timestamp" else getattr(pa, typ)())
              for name, typ in _FIXED]
    columns["extra"] = [json.dumps(t.extra, sort_keys=True) if t.extra else None for t in trials]
    fields.append(pa.field("extra", pa.string()))
    columns["choices"] = [list(t.choices) for t in trials]
    fields.append(pa.field("choices", pa.list_(pa.int32())))
    for layer in study.space.layers:
        columns[layer.name] = []
        fields.append(pa.field(layer.name, pa.string()))
    for t in trials:
        for name, option in study.space.decode(t.candidate).items():
            columns[name].append(option.label)
    meta = {"mpsearch.study": study.name,
            "mpsearch.space": json.dumps(study.space.to_dict())}
    return pa.table(columns, schema=pa.schema(fields, metadata=meta))


def write_parquet(study: StudyRecord, trials: list[TrialRecord], out: str | Path) -> Path:
    import pyarrow.parquet as pq

    path = Path(out)
    table = trials_table(study, trials)
    try:
        with path.open("wb") as f:  # a file, not a URI: pyarrow reads "s3://..." or "http:..." as one
            pq.write_table(table, f)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
