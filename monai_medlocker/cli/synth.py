"""``medlocker synth OUT_DIR``: write a synthetic fundus lab (images, lesion masks, MONAI datalist)."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

__all__ = ["add_subparser", "run", "write_dicom"]


def add_subparser(subparsers) -> None:
    """Register the ``synth`` subcommand."""
    p = subparsers.add_parser(
        "synth", help="generate a synthetic fundus dataset with lesion masks and DR grades",
        description="Write N procedural colour fundus photographs with IDRiD-style lesion masks (MA, HE, EX, SE), "
        "ICDR grades computed from the lesions, and a MONAI datalist.json with training/validation/test splits. "
        "The dataset is a pure function of its arguments.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (refused if it already holds a dataset)")
    p.add_argument("--n", type=int, default=100, help="number of images (default: 100)")
    p.add_argument("--size", type=int, default=256, help="image side in px, 128..2048 (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed, >= 0 (default: 0)")
    p.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions summing to 1 (default: 0.7 0.15 0.15)")
    p.add_argument("--grade-weights", dest="grade_weights", nargs="+", default=None, metavar="W",
                   help="relative frequency of grades 0..4: five numbers, or a preset name: uniform (default) or "
                        "eyepacs (73/7/15/2.5/2.5 %%, the real-world imbalance)")
    p.add_argument("--lab-version", dest="lab_version", type=int, default=None,
                   help="lab version: 1 the original lab (earlier results and the demo models), 2 the realistic lab "
                        "with camera artefacts and DR look-alikes (default: 2)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0 = one per CPU; default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset previously written to OUT_DIR")
    p.add_argument("--dicom", action="store_true",
                   help="also write every image as a DICOM file under OUT_DIR/dicom/ (one patient, one study, "
                        "one series; IMG0001.dcm is synth_00000.png); the datalist stays PNG-based")
    p.add_argument("--iod", choices=("op8", "vl", "sc"), default=None,
                   help="SOP class of the DICOM files (with --dicom): op8 = Ophthalmic Photography 8 Bit "
                        "(default), vl = VL Photographic, sc = Secondary Capture")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print a one-line summary; invalid arguments raise ``ValueError``."""
    from monai_medlocker.data.synthetic import DEFAULT_LAB_VERSION, generate_dataset

    if args.iod is not None and not args.dicom:
        raise ValueError("--iod only applies together with --dicom")
    dicom_dir = Path(args.out_dir) / "dicom"
    if args.dicom:
        if args.n > 9999:
            raise ValueError(f"--dicom writes at most 9999 images (IMG0001..IMG9999.dcm), got --n {args.n}")
        own = _own_dicom_files(dicom_dir)
        if own and not args.overwrite:
            raise ValueError(f"{dicom_dir} already holds DICOM files; refusing to overwrite them "
                             "(pass --overwrite, or choose another folder)")
    lab_version = DEFAULT_LAB_VERSION if args.lab_version is None else args.lab_version
    path = generate_dataset(
        args.out_dir, n=args.n, size=args.size, seed=args.seed, split=tuple(args.split),
        grade_weights=_grade_weights(args.grade_weights), progress=not args.quiet, overwrite=args.overwrite,
        workers=args.workers, lab_version=lab_version,
    )
    datalist = json.loads(Path(path).read_text(encoding="utf-8"))
    splits = {name: len(datalist.get(name, [])) for name in ("training", "validation", "test")}
    grades = Counter(item["label"] for name in splits for item in datalist.get(name, []))
    if args.dicom:
        files = write_dicom(Path(args.out_dir), datalist, iod=args.iod or "op8", overwrite=args.overwrite)
        print(f"medlocker synth: wrote {len(files)} DICOM files ({args.iod or 'op8'}) to {dicom_dir}")
    print(
        f"medlocker synth: wrote {sum(splits.values())} images of {args.size}x{args.size} px (lab v{lab_version}) "
        f"to {path}; "
        + ", ".join(f"{name} {count}" for name, count in splits.items())
        + "; grades " + " ".join(f"{g}:{grades.get(g, 0)}" for g in range(5))
    )
    return 0


def _grade_weights(values: list[str] | None) -> list[float] | str | None:
    """``--grade-weights``: one preset name, or five numbers (checked by ``generate_dataset``)."""
    if values is None:
        return None
    if len(values) == 1 and not re.fullmatch(r"[-+0-9.eE]+", values[0]):
        return values[0]
    try:
        return [float(v) for v in values]
    except ValueError as err:
        raise ValueError(f"--grade-weights takes five numbers (grades 0..4) or one preset name (uniform, eyepacs), "
                         f"got {' '.join(values)!r}") from err


_OWN_DICOM = re.compile(r"^IMG\d{4}\.dcm$")


def _own_dicom_files(dicom_dir: Path) -> list[Path]:
    return sorted(p for p in dicom_dir.iterdir() if _OWN_DICOM.match(p.name)) if dicom_dir.is_dir() else []


def write_dicom(out_dir: Path, datalist: dict, iod: str = "op8", overwrite: bool = False) -> list[Path]:
    """Write the dataset's images (in index order) as one DICOM study under ``out_dir/dicom/``.

    One synthetic patient, one study and one series whose UIDs are derived from the dataset's seed and size,
    so the files are a pure function of the ``synth`` arguments; each image's eye (``OD``/``OS``) becomes its
    Image Laterality. With ``overwrite`` earlier ``IMG####.dcm`` files are deleted first (nothing else is).
    """
    import numpy as np
    from PIL import Image
    from pydicom.uid import generate_uid

    from monai_medlocker.io.dicom_build import write_fundus_study

    items = sorted((item for name in ("training", "validation", "test") for item in datalist.get(name, [])),
                   key=lambda item: item["image"])
    images = [np.asarray(Image.open(out_dir / item["image"]).convert("RGB")) for item in items]
    lateralities = ["L" if item.get("eye") == "OS" else "R" for item in items]
    dicom_dir = out_dir / "dicom"
    if overwrite:
        for p in _own_dicom_files(dicom_dir):
            p.unlink()
    key = ["medlocker synth", str(datalist.get("seed")), str(datalist.get("size")), str(len(items))]
    return write_fundus_study(
        images, dicom_dir, iod=iod, laterality=lateralities,
        patient_id=f"MLK-SYNTH-{datalist.get('seed', 0)}", patient_name="Synthetic^Fundus",
        study_uid=generate_uid(entropy_srcs=[*key, "study"]), series_uid=generate_uid(entropy_srcs=[*key, iod]),
        study_description="MedLocker synthetic fundus study", accession_number="",
    )
