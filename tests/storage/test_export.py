"""Parquet export round-trips into pandas: one row per trial, the documented columns and types."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mpsearch.spaces import SearchSpace
from mpsearch.storage import StoreError, write_parquet


def test_parquet_round_trip_into_pandas(builder, tmp_path):
    study = builder.study()
    builder.add(study, (1, 3), 0.25, origin="uniform")
    builder.add(study, (0, 2), None)  # failed
    builder.add(study, (2, 2), "running")
    store = builder.store
    trials = store.trials("s")
    path = write_parquet(store.study("s"), trials, tmp_path / "t.parquet")

    df = pd.read_parquet(path)
    assert list(df.columns) == [
        "number", "status", "origin", "objective", "avg_bits", "total_bytes", "feasible",
        "samples", "seed", "worker", "error", "eval_seconds", "started_at", "finished_at",
        "extra", "choices", "blk.0.fc", "blk.1.fc"]
    assert len(df) == 3
    assert str(df["number"].dtype) == "int64" and str(df["objective"].dtype) == "float64"
    assert str(df["feasible"].dtype) == "bool"
    assert str(df["started_at"].dtype) == "datetime64[us]"
    assert df["number"].tolist() == [0, 1, 2]
    assert df["status"].tolist() == ["complete", "failed", "running"]
    assert df["objective"].iloc[0] == 0.25 and df["objective"].iloc[1:].isna().all()
    assert df["error"].iloc[1] == "boom" and pd.isna(df["finished_at"].iloc[2])
    assert df["extra"].isna().all()  # no extra numbers were recorded for these trials
    assert [list(c) for c in df["choices"]] == [[1, 3], [0, 2], [2, 2]]
    assert df["blk.0.fc"].tolist() == ["int4-g128-asym", "int2-g128-asym", "int8-g128-asym"]
    assert df["blk.1.fc"].tolist() == ["fp16", "int8-g128-asym", "int8-g128-asym"]
    for row, t in zip(df.itertuples(), trials, strict=True):
        assert (row.avg_bits, row.total_bytes, row.seed) == (t.avg_bits, t.total_bytes, t.seed)
        assert row.started_at.to_pydatetime() == t.started_at

    meta = pq.read_schema(path).metadata
    assert meta[b"mpsearch.study"] == b"s"
    assert SearchSpace.from_dict(json.loads(meta[b"mpsearch.space"])) == study.space


def test_parquet_unwritable_path(builder, tmp_path):
    study = builder.study()
    with pytest.raises(StoreError, match="cannot write"):
        write_parquet(study, [], tmp_path / "no" / "dir" / "t.parquet")
