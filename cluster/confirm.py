"""Confirmation: before ``best`` names a winner, the top configurations are re-scored on all data.

A search that screens on few calibration samples (multi-step selection, ``profile_samples``)
ranks its candidates by noisy figures, and the lowest of many noisy figures is optimistic: the
winner of the search fits its samples. With ``searcher.confirm: K`` the driver, once the loop
is done, takes the K best distinct feasible configurations of the study and makes sure each has
a figure on *every* calibration sample (``Candidate.samples = None``):

* a configuration already scored on all of them has that figure (no evaluation);
* any other is evaluated again on all of them, as a trial of its own (origin ``confirm``,
  recorded like any trial; confirmations come on top of the study's ``evaluations``).

The figure is written to every trial of that configuration as ``confirmed`` through the trial
writer (the one write path), and ``TrialStore.best`` ranks confirmed trials first, by it. A study
stopped during confirmation finishes it when resumed: configurations whose trials carry a
figure are not evaluated again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mpsearch.searcher.loop import Executor, Recorder
from mpsearch.spaces.space import Budget, Candidate, SearchSpace
from mpsearch.storage.models import COMPLETE
from mpsearch.storage.records import TrialRecord
from mpsearch.storage.writer import TrialWriter

CONFIRM_ORIGIN = "confirm"


@dataclass(frozen=True)
class ConfirmationPlan:
    """For each configuration to confirm, its trials; ``known`` holds the figure when a trial
    already has it (scored on all samples, or confirmed before)."""

    trials: dict[tuple[int, ...], list[TrialRecord]]
    known: dict[tuple[int, ...], float]

    @property
    def todo(self) -> list[tuple[int, ...]]:
        """Configurations that need an evaluation on every sample."""
        return [c for c in self.trials if c not in self.known]

    @property
    def pending(self) -> bool:
        """Whether anything is left to evaluate or to write."""
        return bool(self.todo) or any(t.confirmed is None for rows in self.trials.values()
                                      for t in rows)


def plan_confirmation(trials: Sequence[TrialRecord], top: int) -> ConfirmationPlan:
    """The ``top`` distinct feasible configurations of lowest objective (any fidelity; ties by
    trial number), with their trials and the figures already known."""
    by_choice: dict[tuple[int, ...], list[TrialRecord]] = {}
    for t in trials:
        if t.status == COMPLETE and t.feasible and t.objective is not None:
            by_choice.setdefault(t.choices, []).append(t)
    ranked = sorted(by_choice, key=lambda c: min((t.objective or 0.0, t.number)
                                                 for t in by_choice[c]))[:top]
    chosen = {c: by_choice[c] for c in ranked}
    known = {}
    for c, rows in chosen.items():
        confirmed = [t.confirmed for t in rows if t.confirmed is not None]
        full = [t.objective for t in rows if t.samples is None and t.objective is not None]
        if confirmed or full:
            known[c] = (confirmed or full)[0]
    return ConfirmationPlan(chosen, known)


def confirm_(plan: ConfirmationPlan, space: SearchSpace, budget: Budget, executor: Executor,
             recorder: Recorder, writer: TrialWriter) -> int:
    """Evaluate the plan's configurations on every sample (``slots`` at a time) and write each
    configuration's figure to its trials (and to the confirming trial); returns the evaluations
    made. A failed re-score leaves the configuration unconfirmed."""
    figures = dict(plan.known)
    todo = list(plan.todo)
    in_flight: dict[int, tuple[int, ...]] = {}
    made = 0
    while todo or in_flight:
        while todo and len(in_flight) < executor.slots:
            choices = todo.pop(0)
            candidate = Candidate(choices, None, CONFIRM_ORIGIN)
            cost = space.cost(candidate)
            key = recorder.start(candidate, cost, budget.admits(cost))
            executor.submit(key, candidate)
            in_flight[key] = choices
        for key, outcome in executor.collect():
            choices = in_flight.pop(key)
            recorder.finish(key, Candidate(choices, None, CONFIRM_ORIGIN), outcome)
            made += 1
            if outcome.objective is not None:
                figures[choices] = outcome.objective
                writer.confirm(key, outcome.objective)
    for choices, rows in plan.trials.items():
        if choices in figures:
            for t in rows:
                if t.confirmed != figures[choices]:
                    writer.confirm(t.number, figures[choices])
    return made
