"""Threat benchmark: the threat study on the current default protect settings, results committed.

It runs ``medlocker evaluate`` (``bundle/configs/evaluate_protection.json``) with the settings of
``configs/benchmarks/threats.json`` and writes the study's outputs plus ``bench_threats.json`` (the
settings, the machine, the cost of the run) into the output folder:

    python benchmarks/bench_threats.py                      # full study -> benchmarks/results/threats
    python benchmarks/bench_threats.py --quick --out benchmarks/results/threats_quick

The zoo's checkpoints must exist (the shipped ones live in ``bundle/models/zoo``; ``medlocker zoo train
--replace-shipped-model`` remakes them).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.cli import main as medlocker  # noqa: E402


def readme_table(results: dict) -> str:
    """The README's table: held-out accuracy per row, worst preprocessing, and the strongest removal."""
    lines = ["| row | held-out acc (clean -> protected) | worst thief preprocessing | after the best removal (attack) "
             "| white-box acc | median s/image | median queries |", "|---|---|---|---|---|---|---|"]
    removal = results.get("removal_summary") or {}
    for row, h in results["headline"].items():
        best = None
        for attack, by_row in removal.items():
            v = by_row.get(row)
            if v and v["held_out_accuracy"] is not None and (best is None or v["held_out_accuracy"] > best[1]):
                best = (attack, v["held_out_accuracy"])
        removal_cell = f"{best[1]:.2f} ({best[0]})" if best else "-"
        lines.append(
            f"| {row} | {h['held_out_clean_accuracy']:.2f} -> {h['held_out_accuracy']:.2f} | "
            f"{h['held_out_accuracy_worst_preprocessing']:.2f} | {removal_cell} | "
            f"{h['white_box_clean_accuracy']:.2f} -> {h['white_box_accuracy']:.2f} | "
            f"{h['seconds_per_image_median'] if h['seconds_per_image_median'] is not None else '-'} | "
            f"{h['queries_median'] if h['queries_median'] is not None else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/benchmarks/threats.json"))
    p.add_argument("--quick", action="store_true", help="the study's quick mode (what CI may run)")
    p.add_argument("--out", default=None, help="output folder (default: from the config)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-training", action="store_true",
                   help="skip the unauthorised-training experiment (run it separately when time is short)")
    args = p.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    mode = cfg["quick" if args.quick else "full"]
    out = Path(args.out or mode["out"])
    torch.set_num_threads(args.threads or cfg.get("threads", 1))
    cli = ["evaluate", str(out), "--quiet"] + (["--quick"] if args.quick else [])
    cli += ["--no-training"] if args.no_training else []
    if isinstance(mode.get("model"), list):  # an ensemble of zoo source members (the protect default)
        cli += ["--zoo-members", ",".join(mode["model"])]
    if mode.get("rows"):
        cli += ["--rows", ",".join(mode["rows"])]
    for key in ("n", "size", "seed", "lab_version", "model", "network", "input_size"):
        if mode.get(key) is not None and not (key == "model" and isinstance(mode[key], list)):
            cli += [f"--{key.replace('_', '-')}", str(ROOT / mode[key]) if key == "model" else str(mode[key])]
    start = time.perf_counter()
    code = medlocker(cli)
    seconds = time.perf_counter() - start
    results = json.loads((out / "threats.json").read_text())
    (out / "readme_table.md").write_text(readme_table(results))
    bench = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_threats.py" + (" --quick" if args.quick else "")
                   + (" --no-training" if args.no_training else ""),
        "config": mode, "exit_code": code, "wall_seconds": round(seconds, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "timings_seconds": results["timings_seconds"],
    }
    (out / "bench_threats.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(readme_table(results), end="")
    print(f"bench_threats: {seconds:.0f} s wall; outputs in {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
