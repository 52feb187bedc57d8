"""Protect on a Ray cluster: per-image tasks on actors that each keep one protector (and its model) loaded.

The driver (``medlocker protect IN OUT --ray ADDRESS``) runs :meth:`DatasetProtector.run` as usual:
it holds the output lock, checks an earlier run's settings, skips what is done and reports name
clashes, and writes the one manifest and summary. Only the per-image step
(:meth:`DatasetProtector.protect_timed`) runs on the actors, each built from the same bundle config
and settings, so that the outputs equal a local run's for the same seed. Every node must see the
input and output folders at the same paths (a shared file system). An actor that dies is restarted
and its task retried (``max_retries``); a bad image is a failed row, as locally, not a retry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["RayProtect"]


class _ProtectActor:
    """One protector built from the bundle config, kept for every image this actor is given."""

    def __init__(self, root: str, configs: Sequence[str], overrides: dict, gpu: bool) -> None:
        from monai_medlocker.bundle_config import parse_bundle_config

        parser = parse_bundle_config(list(configs), Path(root), overrides)
        parser["threads"] = overrides.get("threads") or 1  # its Ray resource request (runtime.ProtectRuntime sets it)
        if gpu:
            parser["device"] = "cuda"  # Ray gives each GPU actor its own device as cuda:0
        self.protector = parser.get_parsed_content("protector")

    def protect(self, item, out_path: Path) -> dict:
        return self.protector.protect_timed(item, out_path)


class RayProtect:
    """The ``protect_many`` step of :meth:`DatasetProtector.run` on a Ray cluster.

    Args:
        address: the cluster (``"auto"``: the one this machine belongs to; ``"host:port"``; ``"local"``:
            start a private instance for this run).
        bundle_root: the bundle folder the actors read ``configs`` from.
        overrides: the config settings of this run (as the CLI gives them).
        configs: the bundle configs, merged in order (default ``inference.json``).
        actors: how many actors (default: one per GPU of the cluster unless ``overrides`` say ``device: cpu``, else
            one per CPU, or per ``threads`` CPUs: each actor runs ``threads`` torch threads, default 1).
        max_retries: restarts of a dead actor, and retries of its task.
        init_kwargs: more ``ray.init`` arguments (e.g. ``_temp_dir``, ``num_cpus`` for ``"local"``).
    """

    def __init__(self, address: str, bundle_root: str | Path, overrides: dict, configs: Sequence[str] = ("inference.json",),
                 actors: int | None = None, max_retries: int = 3, **init_kwargs) -> None:
        if actors is not None and actors < 1:
            raise ValueError(f"actors must be at least 1, got {actors}")
        self.address, self.root, self.configs = address, str(bundle_root), list(configs)
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.actors, self.max_retries, self.init_kwargs = actors, int(max_retries), init_kwargs
        self.used: dict | None = None  # actors and resources of the last call, for the summary

    def __call__(self, jobs: list[tuple]) -> Iterator[dict]:
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as err:
            raise RuntimeError("--ray needs Ray: pip install 'monai-medlocker[ray]'") from err
        if not jobs:
            return
        started = not ray.is_initialized()
        if started:
            # The actors import this package; they run one thread each (runtime.ProtectRuntime), never busy-waiting.
            env = {"PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                             os.environ.get("PYTHONPATH")) if p),
                   "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
            ray.init(address=None if self.address == "local" else self.address, runtime_env={"env_vars": env},
                     include_dashboard=False, log_to_driver=False, **self.init_kwargs)
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0)) if str(self.overrides.get("device", "auto")) != "cpu" else 0
            threads = int(self.overrides.get("threads") or 1)
            count = min(len(jobs), self.actors or gpus or max(1, int(resources.get("CPU", 1)) // threads))
            actor_class = ray.remote(num_cpus=threads, num_gpus=1 if gpus else 0, max_restarts=self.max_retries,
                                     max_task_retries=self.max_retries)(_ProtectActor)
            pool = [actor_class.remote(self.root, self.configs, self.overrides, bool(gpus)) for _ in range(count)]
            self.used = {"actors": count, "gpus_per_actor": 1 if gpus else 0, "cluster_cpus": resources.get("CPU", 0)}
            # In order, each as it finishes: the caller's progress bar moves with the work.
            yield from ActorPool(pool).map(lambda actor, job: actor.protect.remote(*job), jobs)
            for actor in pool:
                ray.kill(actor)
        finally:
            if started:
                ray.shutdown()
