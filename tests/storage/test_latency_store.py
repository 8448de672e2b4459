"""Stored latency tables: keyed by device, library versions and dtype; shared by later studies."""

from __future__ import annotations

from mpsearch.spaces import LayerInfo
from mpsearch.spaces.latency import GemmPoint, LatencyEntry, Timing
from mpsearch.storage import TrialStore
from mpsearch.storage.latency import (
    LatencyKey,
    RestRecord,
    latency_table,
    layers_fingerprint,
    load_entries,
    save_entries,
    save_rest,
    stored_devices,
)

H200 = LatencyKey("NVIDIA H200", "torch 2.9.0, cuda 12.8", "bfloat16")
LAYERS = [LayerInfo("layers.0.q", 64, 64), LayerInfo("layers.0.up", 64, 128)]


def entry(out: int, kernel: str, ms: float, batch: int = 8) -> LatencyEntry:
    return LatencyEntry(GemmPoint(out, 64, kernel), batch, 1,
                        Timing(ms, ms * 0.9, ms * 1.1, ms * 0.8, ms * 1.2, 50, True),
                        "torch.nn.functional.linear (bfloat16)", kernel == "fp16")


def test_entries_round_trip_under_their_key_only(store_url):
    store = TrialStore(store_url)
    rows = [entry(64, "fp16", 0.01), entry(128, "w8a8-int8", 0.02), entry(64, "fp16", 0.5, 64)]
    assert save_entries(store, H200, rows, worker="w0") == 3
    assert save_entries(store, H200, rows[:1], worker="w1") == 0  # measured by another: kept
    got = load_entries(store, H200, 8, 1)
    assert got == {r.point: r for r in rows[:2]}
    assert load_entries(store, H200, 64, 1) == {rows[2].point: rows[2]}
    for other in (LatencyKey("NVIDIA H100", H200.versions, H200.dtype),
                  LatencyKey(H200.device, "torch 2.10.0, cuda 12.8", H200.dtype),
                  LatencyKey(H200.device, H200.versions, "float16")):
        assert load_entries(store, other, 8, 1) == {}
    assert stored_devices(store) == [H200]


def test_table_needs_the_rest_of_the_same_layers(store_url):
    store = TrialStore(store_url)
    save_entries(store, H200, [entry(64, "fp16", 0.01), entry(128, "fp16", 0.03)])
    assert latency_table(store, H200, "m", LAYERS, 8, 1) is None  # no rest measured yet
    fp = layers_fingerprint(LAYERS)
    assert save_rest(store, H200, "m", fp, 8, 1, RestRecord(1.5, 1.4, 1.6, 50))
    assert not save_rest(store, H200, "m", fp, 8, 1, RestRecord(9.0, 9.0, 9.0, 50))
    table = latency_table(store, H200, "m", LAYERS, 8, 1)
    assert table is not None and table.rest_ms == 1.5 and len(table.entries) == 2
    assert latency_table(store, H200, "m", LAYERS[:1], 8, 1) is None  # other layers searched
    assert latency_table(store, H200, "other-model", LAYERS, 8, 1) is None
