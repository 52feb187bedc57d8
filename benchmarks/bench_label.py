"""Overhead of the MONAI Label app (apps/monailabel_medlocker) on top of the protect step (issue 12 target).

    OMP_NUM_THREADS=1 .venv-label/bin/python benchmarks/bench_label.py --repeats 5 \
        --out benchmarks/results/label/overhead.json

Runs in ``.venv-label`` (it needs monailabel). On the sample images (synthetic grades 1-4, masks in
``masks/``) with the bundle's default protect settings it times, per request:

* ``step``: ``DatasetProtector.protect_timed`` alone, the per-image step ``medlocker protect`` runs;
* ``in_process``: ``MONAILabelApp.infer`` of the ``medlocker_protect`` task;
* ``http``: ``POST /infer/medlocker_protect`` to ``monailabel start_server`` on loopback, the whole
  round trip with the multipart answer read.

The overhead of a call is its time minus the protect step's own time inside that same call (the
task's ``latencies.protect``): the datastore lookup, reading the output back for the public
record's hash, the response copy, MONAI Label's infer machinery and, over HTTP, the routing, the
multipart encoding and the transfer.

The three are interleaved image by image, ``--repeats`` rounds. Medians are reported; the server's
start-up time (until ``/info/`` answers) is reported once. The load average is recorded: this
machine is shared, so absolute seconds are noisy and the ratios matter more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from label_server import APP, LabelServer  # noqa: E402

IMAGES = ("fundus_q", "fundus_c", "fundus_m", "fundus_h")


def make_studies(root: Path) -> Path:
    studies = root / "studies"
    (studies / "masks").mkdir(parents=True)
    for name in IMAGES:
        shutil.copy(ROOT / "bundle" / "samples" / f"{name}.png", studies)
        for mask in (ROOT / "bundle" / "samples").glob(f"{name}_*.png"):
            shutil.copy(mask, studies / "masks")
    return studies


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label" / "overhead.json"))
    args = parser.parse_args(argv)

    # No datastore file watcher (here and in the server): its thread would trip over the work folder's removal at the end.
    os.environ.setdefault("MONAI_LABEL_DATASTORE_AUTO_RELOAD", "false")
    import monailabel
    import torch
    from monailabel.interfaces.utils.app import app_instance

    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench-label-"))
    try:
        studies = make_studies(work)
        app = app_instance(app_dir=str(APP), studies=str(studies), conf={"output": str(work / "out-in-process")})
        steps = app.steps
        rows = []
        with LabelServer(studies, {"output": str(work / "out-server")}, work, threads=threads, start_timeout=300) as server:
            for round_ in range(args.repeats):
                for name in IMAGES:
                    out = work / "out-step" / f"{name}.png"
                    out.parent.mkdir(exist_ok=True)
                    t0 = time.perf_counter()
                    outcome = steps.protector.protect_timed(steps.item(studies / f"{name}.png"), out)
                    step = time.perf_counter() - t0
                    if "error" in outcome:
                        raise RuntimeError(outcome["error"])

                    t0 = time.perf_counter()
                    result = app.infer({"model": "medlocker_protect", "image": name})
                    in_process = time.perf_counter() - t0
                    os.unlink(result["file"])

                    t0 = time.perf_counter()
                    params, data = server.protect(name)
                    http = time.perf_counter() - t0
                    if params["protected_sha256"] != result["params"]["protected_sha256"]:
                        raise RuntimeError(f"{name}: the server and the in-process task gave different pixels")
                    rows.append({"round": round_, "image": name, "step_s": round(step, 4),
                                 "in_process_s": round(in_process, 4),
                                 "in_process_step_s": result["params"]["latencies"]["protect"],
                                 "http_s": round(http, 4), "http_step_s": params["latencies"]["protect"],
                                 "response_bytes": len(data)})
            start_seconds = server.start_seconds
        steps.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    in_process_wrapper = [r["in_process_s"] - r["in_process_step_s"] for r in rows]
    http_wrapper = [r["http_s"] - r["http_step_s"] for r in rows]
    step = _median([r["step_s"] for r in rows])
    summary = {
        "median_step_s": step,
        "median_in_process_s": _median([r["in_process_s"] for r in rows]),
        "median_in_process_overhead_s": _median(in_process_wrapper),
        "max_in_process_overhead_s": round(max(in_process_wrapper), 4),
        "median_http_s": _median([r["http_s"] for r in rows]),
        "median_http_overhead_s": _median(http_wrapper),
        "max_http_overhead_s": round(max(http_wrapper), 4),
        "in_process_overhead_fraction_of_step": round(_median(in_process_wrapper) / step, 4),
        "http_overhead_fraction_of_step": round(_median(http_wrapper) / step, 4),
        "server_start_s": round(start_seconds, 2),
    }
    report = {
        "command": "OMP_NUM_THREADS=1 .venv-label/bin/python benchmarks/bench_label.py " + " ".join(argv or sys.argv[1:]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": threads,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"monailabel": monailabel.__version__, "torch": torch.__version__},
        "settings": "bundle inference.json defaults (medlocker optimizer), masks from masks/",
        "images": list(IMAGES), "repeats": args.repeats, "summary": summary, "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
