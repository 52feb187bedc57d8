"""What keeping the original DICOM file adds to the restore payload, per source encoding.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_source_archive.py --size 1024

Builds one synthetic fundus as OP 8-bit native RGB, YBR_FULL native, RLE and JPEG Baseline files and
reports each file's size and the size of :func:`monai_medlocker.io.dicom.source_archive` (what the
restore payload carries so that unlock gives the file back byte for byte). Writes
``benchmarks/results/source_archive.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.data.synthetic import synthesize_fundus  # noqa: E402
from monai_medlocker.io.dicom import read_fundus_dicom, source_archive  # noqa: E402
from monai_medlocker.io.dicom_build import fundus_dataset  # noqa: E402


def _ybr_full(rgb: np.ndarray):
    from pydicom.pixels import convert_color_space

    ds = fundus_dataset(rgb, iod="op8")
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = np.ascontiguousarray(convert_color_space(rgb, "RGB", "YBR_FULL")).tobytes()
    return ds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in px (default: 1024)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "source_archive.json"))
    args = parser.parse_args(argv)
    rgb = synthesize_fundus(args.size, seed=args.seed, grade=2).image
    builders = {"native RGB": lambda: fundus_dataset(rgb, iod="op8"), "YBR_FULL native": lambda: _ybr_full(rgb),
                "RLE": lambda: fundus_dataset(rgb, iod="op8", transfer_syntax="rle"),
                "JPEG Baseline": lambda: fundus_dataset(rgb, iod="op8", transfer_syntax="jpeg-baseline")}
    rows = {}
    for name, build in builders.items():
        buffer = io.BytesIO()
        build().save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        pixels = read_fundus_dicom(name, data).pixels
        rows[name] = {"file_bytes": len(data), "archive_bytes": len(source_archive(data, pixels))}
        print(f"{name:16s} file {len(data) / 1e6:7.3f} MB  archive {rows[name]['archive_bytes'] / 1e3:9.1f} KB")
    Path(args.out).write_text(json.dumps({"size": args.size, "seed": args.seed, "encodings": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
