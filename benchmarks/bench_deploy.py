"""Overhead of the MONAI Deploy app (apps/medlocker_deploy) on top of the protect time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_deploy.py --runs 3 --out benchmarks/results/deploy.json

One DICOM folder (the bundle's two Ophthalmic Photography samples and its four 512 px synthetic
images as OP 8 Bit instances, each with its lesion masks) is protected ``--runs`` times by the app
(``.venv-deploy/bin/python apps/medlocker_deploy``) and by ``medlocker protect`` (``.venv``), in
alternating order, with the same settings and a fresh owner key. For each run: the whole process's wall clock and the
protect chain's own seconds, summed over the images (the app's ``private/summary.json``
``protect_seconds``; for ``medlocker protect`` the sum of its manifest's per-image ``seconds``).
Overhead = wall - protect seconds; the app's overhead on top of ``medlocker protect``'s is the difference of their medians. The import of the SDK
(``monai.deploy.operators``, which imports holoscan) is timed on its own. Both outputs are checked to
hold the same pixels. The load average is recorded: figures from a loaded machine are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "bundle" / "samples"
# The shipped samples by grade; their names tell nothing of it (issue 18).
SAMPLE_STEMS = {1: "fundus_q", 2: "fundus_c", 3: "fundus_m", 4: "fundus_h"}
APP = ROOT / "apps" / "medlocker_deploy"
LESIONS = ("EX", "HE", "MA", "SE")


def make_input(folder: Path) -> list[str]:
    """The benchmark's DICOM folder; the names of its instances."""
    from monai_medlocker.io.dicom_build import fundus_dataset

    folder.mkdir(parents=True)
    names = []
    for stem in ("op8_colour", "op8_redfree"):
        for path in SAMPLES.glob(f"{stem}*"):
            shutil.copy(path, folder / path.name)
        names.append(f"{stem}.dcm")
    for grade in (1, 2, 3, 4):
        rgb = np.asarray(Image.open(SAMPLES / f"{SAMPLE_STEMS[grade]}.png").convert("RGB"))
        fundus_dataset(rgb, iod="op8", series_number=10 + grade).save_as(folder / f"sample{grade}.dcm",
                                                                        enforce_file_format=True)
        for lesion in LESIONS:
            shutil.copy(SAMPLES / f"{SAMPLE_STEMS[grade]}_{lesion}.png", folder / f"sample{grade}_{lesion}.png")
        names.append(f"sample{grade}.dcm")
    return names


def _timed(argv: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - t0, done


def run_app(python: Path, source: Path, out: Path, settings: list[str], env: dict) -> dict:
    wall, done = _timed([str(python), str(APP), "-i", str(source), "-o", str(out), *settings], env)
    if done.returncode != 0:
        raise RuntimeError(f"the Deploy app failed ({done.returncode}): {done.stderr[-3000:]}")
    summary = json.loads((out / "private" / "summary.json").read_text())
    return {"wall_seconds": wall, "protect_seconds": summary["protect_seconds"], "images": len(summary["protected"])}


def run_protect(source: Path, out: Path, settings: list[str], env: dict) -> dict:
    entry = "import sys; from monai_medlocker.cli import main; sys.exit(main(sys.argv[1:]))"
    wall, done = _timed([sys.executable, "-c", entry, "protect", str(source), str(out), "--quiet", *settings], env)
    if done.returncode != 0:
        raise RuntimeError(f"medlocker protect failed ({done.returncode}): {done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "private" / "manifest.jsonl").read_text().splitlines()]
    return {"wall_seconds": wall, "protect_seconds": round(sum(r["seconds"] for r in rows), 3),
            "images": sum(r["status"] == "protected" for r in rows)}


def sdk_import_seconds(python: Path, env: dict, runs: int) -> float:
    code = "import time; t = time.perf_counter(); import monai.deploy.operators; print(time.perf_counter() - t)"
    times = []
    for _ in range(runs):
        done = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"import monai.deploy.operators failed: {done.stderr[-2000:]}")
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def same_pixels(a: Path, b: Path, names: list[str]) -> bool:
    return all(np.array_equal(pydicom.dcmread(a / "public" / n).pixel_array, pydicom.dcmread(b / "public" / n).pixel_array)
               for n in names)


def _median(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-queries", type=int, default=None, help="query budget per mark (default: the config's)")
    parser.add_argument("--deploy-python", default=str(ROOT / ".venv-deploy" / "bin" / "python"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "deploy.json"))
    args = parser.parse_args(argv)
    python = Path(args.deploy_python)
    if not python.is_file():
        parser.error(f"{python} is missing: run scripts/setup_deploy_env.sh first")
    settings = ["--seed", str(args.seed)] + (["--max-queries", str(args.max_queries)] if args.max_queries else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        work = Path(tmp)
        names = make_input(work / "in")
        # Signed with an owner key, as a data manager would: each image's keyed rendering then comes from the key,
        # not from a per-folder secret, so the two runs' pixels can be compared.
        keygen = subprocess.run([sys.executable, "-m", "monai_medlocker.cli", "keygen", str(work / "owner")], env=env,
                                capture_output=True, text=True, cwd=ROOT)
        if keygen.returncode != 0:
            raise RuntimeError(f"medlocker keygen failed: {keygen.stderr[-2000:]}")
        settings = settings + ["--key", str(work / "owner.key")]
        app_rows, cli_rows = [], []
        for run in range(args.runs):
            order = [("app", app_rows), ("cli", cli_rows)]
            for kind, rows in (order if run % 2 == 0 else order[::-1]):
                out = work / f"{kind}{run}"
                rows.append(run_app(python, work / "in", out, settings, env) if kind == "app"
                            else run_protect(work / "in", out, settings, env))
        identical = all(same_pixels(work / f"app{r}", work / f"cli{r}", names) for r in range(args.runs))
        import_seconds = sdk_import_seconds(python, env, args.runs)
    for rows in (app_rows, cli_rows):
        for r in rows:
            r["overhead_seconds"] = round(r["wall_seconds"] - r["protect_seconds"], 3)
            r["wall_seconds"] = round(r["wall_seconds"], 3)
    result = {
        "benchmark": "bench_deploy",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_deploy.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "images": len(names), "settings": settings[:-1] + ["<a fresh owner key>"], "runs": args.runs,
        "deploy_app": {"median_wall_seconds": _median(app_rows, "wall_seconds"),
                       "median_protect_seconds": _median(app_rows, "protect_seconds"),
                       "median_overhead_seconds": _median(app_rows, "overhead_seconds"), "rows": app_rows},
        "medlocker_protect": {"median_wall_seconds": _median(cli_rows, "wall_seconds"),
                              "median_protect_seconds": _median(cli_rows, "protect_seconds"),
                              "median_overhead_seconds": _median(cli_rows, "overhead_seconds"), "rows": cli_rows},
        "sdk_import_seconds": round(import_seconds, 3),
        "same_pixels": identical,
    }
    app, cli = result["deploy_app"], result["medlocker_protect"]
    result["app_overhead_over_protect_cli_seconds"] = round(app["median_wall_seconds"] - cli["median_wall_seconds"], 3)
    result["app_protect_step_ratio"] = round(app["median_protect_seconds"] / cli["median_protect_seconds"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("deploy_app", "medlocker_protect")}, indent=2))
    print(f"app: wall {app['median_wall_seconds']} s, protect {app['median_protect_seconds']} s, overhead "
          f"{app['median_overhead_seconds']} s; medlocker protect: wall {cli['median_wall_seconds']} s, protect "
          f"{cli['median_protect_seconds']} s, overhead {cli['median_overhead_seconds']} s")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
