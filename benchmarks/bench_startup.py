"""Start-up time of the commands that need no model (issue 13 A5: at most 2 s each).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_startup.py --runs 5 --compare /work/main \
        --out benchmarks/results/startup.json

Each command runs ``--runs`` times in a fresh interpreter (wall clock of the whole process, median
reported); ``--compare`` times the same commands on another checkout (e.g. main before the change).
One PNG is protected with a fresh owner key first, so that ``grant``, ``verify`` and ``unlock`` do
real work. ``python -X importtime`` gives the top-level imports of ``medlocker --help``. The load
average is recorded: figures taken on a loaded machine are slower than on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from monai_medlocker.cli import main; sys.exit(main(sys.argv[1:]))"


def _commands(work: Path) -> dict[str, list[str]]:
    out = str(work / "protected")
    return {
        "--help": ["--help"],
        "keygen": ["keygen", str(work / "keys" / "k{run}")],
        "grant": ["grant", "--key", str(work / "owner.key"), "--images", out, "--out", str(work / "grants" / "g{run}.grant")],
        "verify": ["verify", out, "--pub", str(work / "owner.pub"), "--quiet"],
        "unlock": ["unlock", out, str(work / "unlocked" / "u{run}"), "--key", str(work / "owner.key"), "--quiet"],
    }


def _run(repo: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    # cwd=repo: ``python -c`` puts the working folder first on sys.path, ahead of PYTHONPATH.
    done = subprocess.run([sys.executable, "-c", ENTRY, *argv], env=env, capture_output=True, text=True, cwd=repo)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"medlocker {' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def _top_imports(repo: Path, argv: list[str], top: int = 6) -> list[dict]:
    """The slowest top-level imports (cumulative ms) of one command, from ``python -X importtime``."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", ENTRY, *argv], env=env, capture_output=True, text=True,
                          cwd=repo)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            rows.append({"module": m.group(2), "cumulative_ms": round(int(m.group(1)) / 1000, 1)})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def _time_repo(repo: Path, work: Path, runs: int) -> dict:
    rows = {}
    for name, argv in _commands(work).items():
        seconds = []
        for run in range(runs):
            seconds.append(_run(repo, [a.format(run=f"{repo.name}{run}") for a in argv]))
        rows[name] = {"seconds_median": round(statistics.median(seconds), 3), "seconds": [round(s, 3) for s in seconds]}
        print(repo, name, rows[name], file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    where = subprocess.run([sys.executable, "-c", "import monai_medlocker; print(monai_medlocker.__file__)"], env=env,
                           capture_output=True, text=True, cwd=repo).stdout.strip()
    return {"repo": str(repo), "package_imported_from": where, "commands": rows,
            "help_top_imports": _top_imports(repo, ["--help"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--compare", help="another checkout to time the same way (e.g. /work/main, before the change)")
    p.add_argument("--target", type=float, default=2.0, help="seconds each command may take to start")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/startup.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        work = Path(tmp)
        for sub in ("keys", "grants", "unlocked", "src"):
            (work / sub).mkdir()
        for f in (ROOT / "bundle" / "samples").glob("fundus_c*.png"):
            shutil.copy(f, work / "src" / f.name)
        _run(ROOT, ["keygen", str(work / "owner")])
        _run(ROOT, ["protect", str(work / "src"), str(work / "protected"), "--key", str(work / "owner.key"),
                    "--lesion-segmenter", "masks", "--max-queries", "10", "--quiet"])
        load_before = os.getloadavg()
        results = {"config": vars(args), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_before": load_before},
                   "after": _time_repo(ROOT, work, args.runs)}
        if args.compare:
            results["before"] = _time_repo(Path(args.compare).resolve(), work, args.runs)
        results["machine"]["loadavg_after"] = os.getloadavg()
    after = results["after"]["commands"]
    results["all_within_target"] = all(r["seconds_median"] <= args.target for r in after.values())
    if "before" in results:
        results["speedup_median"] = {k: round(results["before"]["commands"][k]["seconds_median"] / after[k]["seconds_median"], 2)
                                     for k in after}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("before", "after")} | {"after": after}, indent=2))
    return 0 if results["all_within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
