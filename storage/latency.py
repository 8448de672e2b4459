"""Stored latency tables: measured GEMM times and forward-pass constants, keyed by the device.

A GEMM's time depends on the device, on the libraries whose kernels ran it and on the dtype of
its activations, on the layer's shape, the kernel and the rows of its input; not on the model, the
calibration data or the search. So an entry row (``mps_latency``) is keyed by
(device name, library versions, dtype, out, in, kernel, batch, tokens), and any later study on
that device with a layer of that shape reads it instead of measuring it again. The rest of a
forward pass (``mps_latency_rest``) is the model's, so it is keyed by the device, versions, dtype,
the model path, a fingerprint of the searched layers (what was taken out of the forward pass)
and the batch and tokens.

Both tables live in the store's database (``Base`` of :mod:`.models`) and are created on first
use, as :mod:`.profiles`' table is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Index, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from mpsearch.spaces.latency import GemmPoint, LatencyEntry, LatencyTable, Timing
from mpsearch.spaces.space import LayerInfo

from .errors import translating
from .models import Base
from .store import TrialStore


class LatencyRow(Base):
    __tablename__ = "mps_latency"
    __table_args__ = (
        UniqueConstraint("device", "versions", "dtype", "out_features", "in_features", "kernel",
                         "batch", "tokens"),
        Index("ix_mps_latency_key", "device", "versions", "dtype", "batch", "tokens"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device: Mapped[str] = mapped_column(String(200))  # e.g. "NVIDIA H200"
    versions: Mapped[str] = mapped_column(String(200))  # e.g. "torch 2.9.0, cuda 12.8"
    dtype: Mapped[str] = mapped_column(String(20))  # the activations' dtype
    out_features: Mapped[int]
    in_features: Mapped[int]
    kernel: Mapped[str] = mapped_column(String(100))  # spaces.latency.kernel_key
    batch: Mapped[int]
    tokens: Mapped[int]
    ms: Mapped[float]  # median per call
    p10: Mapped[float]
    p90: Mapped[float]
    min_ms: Mapped[float]
    max_ms: Mapped[float]
    repeats: Mapped[int]
    graph: Mapped[bool]  # timed as CUDA graph replays
    runs_as: Mapped[str] = mapped_column(String(300))  # what ran: the op, or dequantize + matmul
    fast: Mapped[bool]  # False: no kernel of its own, timed as dequantize + matmul
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


class LatencyRestRow(Base):
    __tablename__ = "mps_latency_rest"
    __table_args__ = (
        UniqueConstraint("device", "versions", "dtype", "model", "layers", "batch", "tokens"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device: Mapped[str] = mapped_column(String(200))
    versions: Mapped[str] = mapped_column(String(200))
    dtype: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(String(500))
    layers: Mapped[str] = mapped_column(String(64))  # layers_fingerprint(searched layers)
    batch: Mapped[int]
    tokens: Mapped[int]
    ms: Mapped[float]
    p10: Mapped[float]
    p90: Mapped[float]
    repeats: Mapped[int]
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


@dataclass(frozen=True, order=True)
class LatencyKey:
    """Where entries were measured: the device, the kernels' libraries, the activations' dtype."""

    device: str
    versions: str
    dtype: str


@dataclass(frozen=True)
class RestRecord:
    ms: float
    p10: float
    p90: float
    repeats: int


def layers_fingerprint(layers: Iterable[LayerInfo]) -> str:
    """sha256 of the searched layers' names and shapes: what the rest's forward took out."""
    payload = json.dumps(sorted([ly.name, ly.in_features, ly.out_features] for ly in layers))
    return hashlib.sha256(payload.encode()).hexdigest()


def _ensure_tables(engine: Engine) -> None:
    for row in (LatencyRow, LatencyRestRow):
        row.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]


def load_entries(store: TrialStore, key: LatencyKey, batch: int, tokens: int
                 ) -> dict[GemmPoint, LatencyEntry]:
    """Every stored entry of ``key`` at ``batch`` × ``tokens``, by GEMM point."""
    with translating(store.url, "read latency table"):
        _ensure_tables(store.engine)
        with Session(store.engine) as s:
            rows = s.scalars(select(LatencyRow).where(
                LatencyRow.device == key.device, LatencyRow.versions == key.versions,
                LatencyRow.dtype == key.dtype, LatencyRow.batch == batch,
                LatencyRow.tokens == tokens)).all()
            return {p: LatencyEntry(p, r.batch, r.tokens, Timing(
                        r.ms, r.p10, r.p90, r.min_ms, r.max_ms, r.repeats, r.graph), r.runs_as, r.fast)
                    for r in rows for p in [GemmPoint(r.out_features, r.in_features, r.kernel)]}


def save_entries(store: TrialStore, key: LatencyKey, entries: Sequence[LatencyEntry],
                 worker: str | None = None) -> int:
    """Store measured entries; those already stored (by another worker) are skipped. Returns how
    many were added."""
    if not entries:
        return 0
    with translating(store.url, "save latency table"):
        _ensure_tables(store.engine)
        for _attempt in range(2):  # a concurrent writer may insert the same entry between our
            try:  # read and our insert; the second round sees its rows and skips them
                return _insert_entries(store.engine, key, entries, worker)
            except IntegrityError:
                continue
        return _insert_entries(store.engine, key, entries, worker)


def _insert_entries(engine: Engine, key: LatencyKey, entries: Sequence[LatencyEntry],
                    worker: str | None) -> int:
    now = datetime.now(UTC).replace(tzinfo=None)
    with Session(engine) as s, s.begin():
        have = {tuple(r) for r in s.execute(select(
            LatencyRow.out_features, LatencyRow.in_features, LatencyRow.kernel, LatencyRow.batch,
            LatencyRow.tokens).where(LatencyRow.device == key.device,
                                     LatencyRow.versions == key.versions,
                                     LatencyRow.dtype == key.dtype))}
        added = 0
        for e in entries:
            ident = (e.point.out_features, e.point.in_features, e.point.kernel, e.batch, e.tokens)
            if ident in have:
                continue
            have.add(ident)
            s.add(LatencyRow(device=key.device, versions=key.versions, dtype=key.dtype,
                             out_features=e.point.out_features, in_features=e.point.in_features,
                             kernel=e.point.kernel, batch=e.batch, tokens=e.tokens,
                             ms=e.timing.ms, p10=e.timing.p10, p90=e.timing.p90,
                             min_ms=e.timing.min_ms, max_ms=e.timing.max_ms,
                             repeats=e.timing.repeats, graph=e.timing.graph,
                             runs_as=e.runs_as[:300], fast=e.fast,
                             worker=worker, created_at=now))
            added += 1
        return added


def load_rest(store: TrialStore, key: LatencyKey, model: str, layers: str, batch: int,
              tokens: int) -> RestRecord | None:
    with translating(store.url, "read latency table"):
        _ensure_tables(store.engine)
        with Session(store.engine) as s:
            row = s.scalars(select(LatencyRestRow).where(
                LatencyRestRow.device == key.device, LatencyRestRow.versions == key.versions,
                LatencyRestRow.dtype == key.dtype, LatencyRestRow.model == model,
                LatencyRestRow.layers == layers, LatencyRestRow.batch == batch,
                LatencyRestRow.tokens == tokens)).first()
            return None if row is None else RestRecord(row.ms, row.p10, row.p90, row.repeats)


def save_rest(store: TrialStore, key: LatencyKey, model: str, layers: str, batch: int,
              tokens: int, rest: RestRecord, worker: str | None = None) -> bool:
    """Store the rest of a forward pass unless one is stored for the same key; True if added."""
    with translating(store.url, "save latency table"):
        _ensure_tables(store.engine)
        if load_rest(store, key, model, layers, batch, tokens) is not None:
            return False
        try:
            with Session(store.engine) as s, s.begin():
                s.add(LatencyRestRow(device=key.device, versions=key.versions, dtype=key.dtype,
                                     model=model, layers=layers, batch=batch, tokens=tokens,
                                     ms=rest.ms, p10=rest.p10, p90=rest.p90,
                                     repeats=rest.repeats, worker=worker,
                                     created_at=datetime.now(UTC).replace(tzinfo=None)))
        except IntegrityError:  # another worker stored it first
            return False
        return True


def stored_devices(store: TrialStore) -> list[LatencyKey]:
    """The keys some entry is stored under (for an error naming what is there)."""
    with translating(store.url, "read latency table"):
        _ensure_tables(store.engine)
        with Session(store.engine) as s:
            rows = s.execute(select(LatencyRow.device, LatencyRow.versions,
                                    LatencyRow.dtype).distinct()).all()
            return sorted(LatencyKey(*r) for r in rows)


def latency_table(store: TrialStore, key: LatencyKey, model: str, layers: Sequence[LayerInfo],
                  batch: int, tokens: int) -> LatencyTable | None:
    """The stored table of ``key`` for a model's searched ``layers``, or None without a rest."""
    rest = load_rest(store, key, model, layers_fingerprint(layers), batch, tokens)
    if rest is None:
        return None
    return LatencyTable(key.device, key.versions, key.dtype, batch, tokens,
                        load_entries(store, key, batch, tokens), rest.ms)
