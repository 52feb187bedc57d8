"""Threads and device of a protect run: one implementation for the CLI, the bundle configs, the workers, Ray and the apps.

Why: on a shared machine, torch's default (one OpenMP thread per core, busy-waiting between parallel regions)
made protect 40-80x slower and per-image times erratic whenever another process held a core. Defaults here:

- threads: one per process when several processes share the cores (``--workers``, torchrun, Ray actors);
  otherwise half the CPUs this process may run on (``os.sched_getaffinity``: about the physical cores on SMT
  machines, and room for a neighbour), at least 1 and at most :data:`MAX_DEFAULT_THREADS` (the surrogates are
  small: more threads buy little). A ``threads`` setting (``--threads``), else ``OMP_NUM_THREADS``, wins.
- waiting: ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning). OpenMP reads it once,
  when torch loads, so :func:`prepare_environment` must run before ``import torch`` (the CLI and the apps call
  it first; it is inherited by worker processes). A value the user set is kept.
- device: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``.

It imports nothing of the package (it lies below ``cli/``, ``workflows/`` and the configs).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_DEFAULT_THREADS", "ProtectRuntime", "available_cpus", "configure_threads", "prepare_environment",
    "resolve_threads", "select_device",
]

MAX_DEFAULT_THREADS = 4


def prepare_environment() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; call before torch is imported (later it has no effect
    in this process, but child processes still inherit it)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset, cgroups cpusets or Slurm)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | str | None = None, processes: int = 1) -> tuple[int, str]:
    """The torch/OpenMP thread count of one process and where it comes from.

    Args:
        threads: the user's setting (``--threads``, bundle key ``threads``); ``None``: the default.
        processes: how many protect processes share this machine's cores.

    Raises:
        ValueError: ``threads`` or ``OMP_NUM_THREADS`` is not a positive integer.
    """
    if threads is not None:
        n = _positive(threads, "threads")
        return n, "threads setting"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        return _positive(env.split(",")[0], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    if int(processes) > 1:
        return 1, f"one per process ({int(processes)} processes)"
    cpus = available_cpus()
    return max(1, min(MAX_DEFAULT_THREADS, cpus // 2)), f"default ({cpus} CPUs available)"


def _positive(value, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def configure_threads(threads: int | str | None = None, processes: int = 1) -> tuple[int, str]:
    """Set torch's intra-op threads (OpenMP, MKL) as :func:`resolve_threads` says, and one inter-op thread
    (protect runs no parallel graphs). Returns the count and its source."""
    n, source = resolve_threads(threads, processes)
    prepare_environment()
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:  # torch refuses once inter-op work has started (or it was set): then it stays as it is
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return n, source


def select_device(device: Any = "auto", local_rank: int | None = None):
    """The torch device of ``device``: ``auto`` (``cuda`` when available, else ``cpu``), ``cpu``, ``cuda``, ``cuda:N``,
    or a ``torch.device``. With ``local_rank``, a bare ``cuda`` is that rank's GPU (ranks share GPUs round-robin).

    Raises:
        ValueError: CUDA asked for but not available, or not a device name (one line, naming the setting).
    """
    import torch

    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device: {device!r} asked for, but CUDA is not available ({build}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if chosen.index is None and local_rank is not None:
            chosen = torch.device("cuda", int(local_rank) % count)
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(f"device: {device!r} asked for, but only {count} GPU(s) are visible")
    elif chosen.type != "cpu":
        raise ValueError(f"device: {device!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return chosen


@dataclass
class ProtectRuntime:
    """The bundle's ``runtime`` item: sets the threads when the config is parsed (before any model work) and holds
    the device the surrogates go to (``surrogate#device``: ``$@runtime.device``).

    Args:
        threads: the ``threads`` setting (``None``: :func:`resolve_threads`'s default).
        device: the ``device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        processes: protect processes sharing this machine (multi_process_inference.json: ``LOCAL_WORLD_SIZE``).
        local_rank: this process's rank on the machine (its GPU with ``cuda``), or ``None``.
        verbose: print the choice to stderr (one line).
    """

    threads: int | str | None = None
    device: Any = "auto"
    processes: int = 1
    local_rank: int | None = None
    verbose: bool = False
    thread_source: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.device = select_device(self.device, self.local_rank)
        self.threads, self.thread_source = configure_threads(self.threads, self.processes)
        cpus, processes = available_cpus(), max(1, int(self.processes))
        if self.threads * processes > cpus:  # only a user's setting can do this: say what it costs
            print(f"medlocker: warning: {self.threads} thread(s) x {processes} process(es) on {cpus} available CPU(s) "
                  f"({self.thread_source}): threads will wait for each other and per-image times vary; fewer threads "
                  "(--threads) are faster", file=sys.stderr)
        if self.verbose:
            print(f"medlocker: device {self.device}, {self.threads} thread(s) per process ({self.thread_source})",
                  file=sys.stderr)
