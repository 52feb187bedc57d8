"""What ``public/`` tells of the grade through lengths and time stamps, on a bigger lab batch than the test's.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_side_channels.py --per-grade 8 --size 256

Protects ``5 x per-grade`` lab images (grades interleaved, lesion masks given, the tests' tiny
surrogate and 4 queries: the lengths do not depend on the model) with a fixed owner key, then prints
each feature of ``tests/test_side_channels.py`` (read from ``public/`` alone): constant, or its
Spearman rho with the grade and referable AUC. Chance is |rho| <= 0.2 and AUC 0.5 +/- 0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_side_channels as sc  # noqa: E402
from monai_medlocker.workflows.protect import DatasetProtector  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-grade", type=int, default=8, help="images per grade (default: 8)")
    parser.add_argument("--size", type=int, default=256, help="image side in px (default: 256)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medlocker-side-channels-") as tmp:
        src, out = Path(tmp) / "lab", Path(tmp) / "release"
        src.mkdir()
        items = sc._lab_batch(src, per_grade=args.per_grade, size=args.size)
        DatasetProtector(src / "datalist.json", out, sc._surrogate(), owner_key=sc._owner(), **sc.FAST).run()
        grades = {str(Path(i["image"]).with_suffix("")): i["label"] for i in items}
        table = sc.feature_table(sc.public_features(out / "public"), grades)
    print(json.dumps({"images": len(grades), "size": args.size, "features": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
