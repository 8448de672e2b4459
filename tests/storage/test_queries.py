"""Read-side queries on constructed studies with known answers, on SQLite and PostgreSQL."""

import random

import pytest

from mpsearch.storage import NoResultError, StoreError, StudyNotFoundError, pareto_front
from mpsearch.storage.errors import TrialNotFoundError


@pytest.fixture
def known(builder):
    """Trials whose best and Pareto answers are worked out by hand (avg bits in comments)."""
    study = builder.study()
    add = builder.add
    add(study, (1, 1), 0.30, origin="uniform")  # 0: 4.25, dominated by 6
    add(study, (0, 2), 0.10)  # 1: 5.25
    add(study, (3, 3), 0.0, origin="uniform")  # 2: 16, over budget
    add(study, (0, 0), None)  # 3: 2.25, failed
    add(study, (2, 0), "running")  # 4: 5.25, in flight
    add(study, (2, 1), 0.10)  # 5: 6.25, ties trial 1 on objective, costs more
    add(study, (1, 0), 0.20)  # 6: 3.25
    add(study, (2, 2), 0.001)  # 7: 8.25, over budget, lowest finite objective
    add(study, (2, 0), 0.10)  # 8: 5.25, duplicate point of trial 1
    return builder.store


def numbers(rows):
    return [t.number for t in rows]


def test_best_ties_by_number_and_never_infeasible_failed_or_running(known):
    assert numbers(known.best("s", top=10)) == [1, 5, 8, 6, 0]
    assert numbers(known.best("s", top=2)) == [1, 5]
    assert numbers(known.best("s", top=10, max_bits=5.25)) == [1, 8, 6, 0]
    assert numbers(known.best("s", top=10, origin="uniform")) == [0]
    assert known.best("s", max_bits=2.25) == []  # only the failed trial is that cheap


def test_budget_filters_allow_float_slack(builder):
    study = builder.study()
    store = builder.store
    n = store.start_trial(study.id, builder.space.cheapest(), 4.25 + 1e-12, 100.0, True, 0)
    store.finish_trial(study.id, n, 0.5, "w0", None, 0.1)
    assert numbers(store.best("s", max_bits=4.25, max_bytes=100)) == [n]
    assert numbers(store.pareto("s", max_bits=4.25)) == [n]


def test_pareto_known_front(known):
    front = known.pareto("s")
    assert numbers(front) == [6, 1, 7, 2]
    assert [t.feasible for t in front] == [True, True, False, False]
    assert [t.avg_bits for t in front] == [3.25, 5.25, 8.25, 16.0]
    assert numbers(known.pareto("s", feasible_only=True)) == [6, 1]
    assert numbers(known.pareto("s", max_bits=5.25)) == [6, 1]
    assert known.pareto("s", max_bits=2.25) == []


def brute_front(points):
    """Non-dominated points by definition (O(n²)); among equal points the lowest number.

    ``points`` maps number → (bits, objective, number)."""
    keep = []
    for b, o, n in points.values():
        dominated = any((b2 <= b and o2 <= o and (b2 < b or o2 < o)) or (b2, o2) == (b, o) and n2 < n
                        for b2, o2, n2 in points.values())
        if not dominated:
            keep.append(n)
    return sorted(keep, key=lambda n: points[n])


@pytest.mark.parametrize("seed", range(20))
def test_pareto_scan_matches_definition(seed):
    rng = random.Random(seed)
    # few distinct values, so ties on either coordinate and exact duplicates are common
    points = [(rng.choice([2.25, 3.0, 4.25, 5.0, 8.25]), rng.choice([0.0, 0.1, 0.2, 0.3, 0.5]), n)
              for n in range(60)]
    kept = set(pareto_front(sorted((b, o) for b, o, _ in points)))
    assert kept == {points[n][:2] for n in brute_front({p[2]: p for p in points})}


def test_store_pareto_matches_definition(builder):
    """The database's window-function scan keeps exactly what the definition keeps."""
    study = builder.study()
    store, rng = builder.store, random.Random(7)
    points = []
    for n in range(80):
        bits, objective = rng.choice([2.25, 3.0, 4.25, 5.0]), rng.choice([0.0, 0.1, 0.2, 0.5])
        status = rng.choice(["complete"] * 8 + ["failed", "running"])
        store.start_trial(study.id, builder.space.cheapest(), bits, 1.0, bits <= 4.25, 0)
        if status != "running":
            store.finish_trial(study.id, n, objective if status == "complete" else None, "w0",
                               None, 0.1)
        if status == "complete":
            points.append((bits, objective, n))
    by_number = {n: (b, o, n) for b, o, n in points}
    expected = [n for n in brute_front(by_number) if n in by_number]
    assert numbers(store.pareto("s")) == expected
    feasible = {n: p for n, p in by_number.items() if p[0] <= 4.25}
    assert numbers(store.pareto("s", feasible_only=True)) == brute_front(feasible)


def test_compare_same_budget_side_by_side(builder):
    a = builder.study("a")
    b = builder.study("b", model="other-model")
    builder.add(a, (1, 1), 0.30)  # 4.25
    builder.add(a, (1, 2), 0.05)  # 6.25
    builder.add(b, (2, 2), 0.01, feasible=True)  # 8.25: within b's own budget, not a's
    builder.add(b, (1, 0), 0.20)  # 3.25
    builder.add(b, (0, 0), None)  # failed
    result = builder.store.compare(["a", "b"])
    assert result.budget.avg_bits == 6.25  # the first study's budget
    (ca, cb) = result.columns
    assert (ca.completed, ca.within, numbers(ca.best)) == (2, 2, [1])
    assert (cb.completed, cb.within, numbers(cb.best)) == (2, 1, [1])
    assert any("b differ from a in model" in note for note in result.notes)
    tighter = builder.store.compare(["a", "b"], max_bits=4.25, top=3)
    assert [numbers(c.best) for c in tighter.columns] == [[0], [1]]
    assert builder.store.compare(["a", "b"], max_bits=2.0).columns[0].best == ()


def test_compare_needs_two_existing_studies(builder):
    builder.study("a")
    with pytest.raises(StoreError, match="at least two studies"):
        builder.store.compare(["a"])
    with pytest.raises(StudyNotFoundError, match="no study 'zz'"):
        builder.store.compare(["a", "zz"])


def test_trial_lookup(known):
    assert known.trial("s", 3).status == "failed"
    with pytest.raises(TrialNotFoundError, match="no trial 99; its trials are 0..8"):
        known.trial("s", 99)
    with pytest.raises(StudyNotFoundError):
        known.pareto("nope")
    assert issubclass(NoResultError, StoreError)
