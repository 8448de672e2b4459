"""Starting a run's workers while its driver still prepares the job (``mpsearch run``).

Before a new study's first evaluation the driver imports torch and transformers, inspects the
model (its layers on the meta device), reads the calibration texts, opens the store and the
study, takes the lease and replays the stored trials; each worker starts its process, imports
the same libraries and loads the model's weights. None of the worker's part needs the prepared
job but the model itself, so ``run`` connects to Ray and starts the actors
(:class:`~mpsearch.workers.actor.WorkerActor` with a
:class:`~mpsearch.workers.actor.ModelPreload`) as soon as the spec is read and the model found,
and they import and load while the driver prepares. (Not ``ray.init`` in a thread beside the
preparation: Ray forks its processes with a ``preexec_fn``, which can deadlock the child when
another thread holds the import lock.) The executor (:mod:`.executor`) then hands each actor
the job's setup and space, and the setup phase *loading the model* (:mod:`.warmup`) takes over
the model being loaded, or loads it itself when the preload is not what the setup loads (a
model over several GPUs, another kind).
A study that turns out to have its evaluations already stops the actors unused.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .spec import JobSpec


class EarlyWorkers:
    """The spec's worker actors, started at once (see the module docstring)."""

    def __init__(self, spec: JobSpec, address: str | None) -> None:
        from mpsearch.workers.model_paths import resolve_model_path
        from mpsearch.workers.placement import worker_devices

        from .ray_runtime import connect_for

        w = spec.workers
        path = resolve_model_path(spec.model.name)  # a missing model: one line, before Ray
        connect_for(spec, address)  # Ray's processes start before this one imports torch
        from mpsearch.workers.actor import ModelPreload, WorkerActor

        from .executor import placed

        device = spec.worker_device()
        preload = None if worker_devices(w.gpus, device) else ModelPreload(
            path, spec.model.kind, spec.model.dtype, device, max(int(w.cpus), 1))
        self._actors = [placed(WorkerActor, w.cpus, w.gpus).remote(None, None, f"w{i}", preload)
                        for i in range(w.count)]

    def take(self) -> list[Any]:
        """The started actors, once (the executor configures them)."""
        actors, self._actors = self._actors, []
        return actors

    def close(self) -> None:
        """Stop the actors nobody took (a study that already had its evaluations)."""
        import ray

        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self._actors = []
