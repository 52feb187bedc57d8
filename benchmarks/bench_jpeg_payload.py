"""Does a JPEG Baseline DICOM source's restore archive tell the grade by its size? (issue 18 item 1)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_jpeg_payload.py --per-grade 8 --size 1024 \
        --out benchmarks/results/side_channels/jpeg_payload_1024.json

A compressed DICOM original is kept whole in the encrypted restore payload (``io.dicom.source_archive``).
At 1024 px its JPEG stream outgrows ``seal.SOURCE_ARCHIVE_ALLOWANCE``, so the payload's padding bucket (a
power of two, public) follows the stream's size. For ``5 x per-grade`` lab images (grades interleaved,
written as OP 8-bit JPEG Baseline instances) this measures the archive's size and its power-of-two
doubling against the grade (Spearman rho, referable AUC: chance is |rho| <= 0.2, AUC 0.5 +/- 0.1), and
against the size of a JPEG of the decoded pixels, which anyone holding the published image can make.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import mannwhitneyu, spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_common import result_header  # noqa: E402
from monai_medlocker.certify.seal import SOURCE_ARCHIVE_ALLOWANCE  # noqa: E402
from monai_medlocker.data.lab.render import synthesize_fundus  # noqa: E402
from monai_medlocker.io.dicom import read_fundus_dicom, source_archive  # noqa: E402
from monai_medlocker.io.dicom_build import fundus_dataset  # noqa: E402


def referable_auc(values: np.ndarray, grades: np.ndarray) -> float:
    """AUC of ``values`` for grade >= 2 against grade < 2 (Mann-Whitney U over the pair count)."""
    pos, neg = values[grades >= 2], values[grades < 2]
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-grade", type=int, default=8)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=700)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for i in range(5 * args.per_grade):
        grade = i % 5
        image = synthesize_fundus(args.size, seed=args.seed + i, grade=grade).image
        buf = io.BytesIO()
        fundus_dataset(image, iod="op8", transfer_syntax="jpeg-baseline").save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        pixels = read_fundus_dicom(f"lab{i}.dcm", data).pixels
        archive = len(source_archive(data, pixels))
        again = io.BytesIO()
        Image.fromarray(pixels).save(again, format="JPEG", quality=90)
        rows.append({"grade": grade, "archive_bytes": archive, "over_allowance": archive > SOURCE_ARCHIVE_ALLOWANCE,
                     "doubling": int(archive - 1).bit_length(), "jpeg_of_pixels_bytes": len(again.getvalue())})
        print(f"{i + 1}/{5 * args.per_grade} grade {grade}: archive {archive} B", file=sys.stderr, flush=True)
    g = np.array([r["grade"] for r in rows])
    size = np.array([r["archive_bytes"] for r in rows])
    doubling = np.array([r["doubling"] for r in rows])
    public = np.array([r["jpeg_of_pixels_bytes"] for r in rows])
    result = {
        **result_header("restore archive size of JPEG Baseline DICOM sources against the grade", __file__, argv),
        "images": {"n": len(rows), "size": args.size, "seed": args.seed, "grades": "i % 5"},
        "allowance_bytes": SOURCE_ARCHIVE_ALLOWANCE,
        "over_allowance": int(sum(r["over_allowance"] for r in rows)),
        "archive_size": {"rho_grade": round(float(spearmanr(size, g)[0]), 3),
                         "referable_auc": round(referable_auc(size, g), 3),
                         "rho_jpeg_of_published_pixels": round(float(spearmanr(size, public)[0]), 3)},
        "doubling": {"values": sorted(set(doubling.tolist())),
                     "rho_grade": round(float(spearmanr(doubling, g)[0]), 3) if len(set(doubling)) > 1 else None,
                     "referable_auc": round(referable_auc(doubling, g), 3)},
        "chance": "|rho| <= 0.2 and AUC 0.5 +/- 0.1",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("over_allowance", "archive_size", "doubling")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
