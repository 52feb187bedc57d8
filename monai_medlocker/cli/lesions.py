"""``medlocker lesions IN OUT``: per-type lesion masks and the WSM for each image, as protect builds them.

For each image ``<stem>`` it writes ``OUT/<stem>_MA.png``, ``_HE``, ``_EX``, ``_SE`` (0/255 at the
lesion threshold), ``OUT/<stem>_wsm.png`` (255 = forbidden to the logo) and
``OUT/<stem>_lesions.json`` (boxes, lesion source, the detector's confidence and warnings); then
``OUT/lesions_summary.json``. The lesion source follows the protect workflow: mask files beside an
image (or ``mask_*`` keys in a datalist) win, otherwise ``--lesion-segmenter`` decides. The WSM
settings (threshold, minimum size, margins) default to the bundle's ``inference.json``, so that
this command shows exactly the WSM that ``medlocker protect`` would use. Bad images are reported
and the batch goes on; the exit code is 1 if any image failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
from monai_medlocker.cli._output import json_summary, print_json, print_result

__all__ = ["add_subparser", "run"]


def add_subparser(subparsers) -> None:
    """Register the ``lesions`` subcommand."""
    p = subparsers.add_parser(
        "lesions", help="write per-type lesion masks and the WSM for each image",
        description="Detect (or read) the lesions of every image in IN (a folder, a datalist .json or one image) "
        "and write per-type masks <stem>_MA/_HE/_EX/_SE.png, the WSM <stem>_wsm.png (non-zero = forbidden) and "
        "<stem>_lesions.json to OUT, with the protect workflow's settings.",
    )
    p.add_argument("input", help="folder of images, datalist JSON, or one image file")
    p.add_argument("output", help="output folder (must not be inside the input folder)")
    p.add_argument("--bundle-root", help="the MedLocker bundle folder (default: the one beside the package)")
    p.add_argument("--lesion-segmenter", dest="lesion_segmenter", choices=("builtin", "masks", "network"),
                   help="lesion source for images without mask files (default: inference.json's, 'builtin')")
    p.add_argument("--segmenter-checkpoint", dest="segmenter_checkpoint", help="state_dict for 'network'")
    p.add_argument("--ignore-masks", action="store_true", help="run the segmenter even where mask files exist")
    p.add_argument("--threshold", dest="lesion_threshold", type=float, help="lesion probability threshold")
    p.add_argument("--min-size", dest="lesion_min_size", type=int, help="drop components smaller than this (px)")
    p.add_argument("--wsm-margin", dest="wsm_margin", type=int, help="pixels added around each lesion box")
    p.add_argument("--wsm-margin-fraction", dest="wsm_margin_fraction", type=float,
                   help="extra margin as a fraction of the image's shorter side")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--json", action="store_true", help="print one machine-readable summary (JSON) on stdout, with each "
                   "image's name, status and error (the human-readable lines then go to stderr)")
    p.set_defaults(func=run)


def _items(source: Path):
    from monai_medlocker.io.image import SUPPORTED_SUFFIXES
    from monai_medlocker.lesions.masks import find_mask_files
    from monai_medlocker.workflows.protect import ProtectItem, find_protect_items

    if source.is_file() and source.suffix.lower() in SUPPORTED_SUFFIXES:
        return [ProtectItem(source, Path(source.name), find_mask_files(source))]
    return find_protect_items(source)


def run(args: argparse.Namespace) -> int:
    from monai_medlocker.io.outdir import OutputLock, clean_temporaries, prepare_output_dir
    from monai_medlocker.lesions.source import LesionSource
    from monai_medlocker.transforms.array import LesionBBoxMask

    source, out_dir = Path(args.input), Path(args.output)
    in_root = (source if source.is_dir() else source.parent).resolve()
    out_root = out_dir.resolve()
    if source.is_dir() and (out_root == in_root or in_root in out_root.parents):
        raise ValueError(f"output folder {out_dir} is the input folder or inside it; choose a separate folder "
                         "(masks written there would be read back as user masks)")
    parser = parse_bundle_config("inference.json", bundle_root(args.bundle_root), {
        key: getattr(args, key) for key in ("lesion_threshold", "lesion_min_size", "wsm_margin", "wsm_margin_fraction",
                                            "lesion_segmenter")})
    settings = {key: parser.get_parsed_content(key) for key in
                ("lesion_threshold", "lesion_min_size", "wsm_margin", "wsm_margin_fraction", "lesion_segmenter")}
    segmenter = settings["lesion_segmenter"]
    checkpoint = (args.segmenter_checkpoint or parser.get_parsed_content("segmenter_checkpoint")) \
        if segmenter == "network" else None
    lesions = LesionSource(segmenter, checkpoint)
    wsm_tf = LesionBBoxMask(settings["lesion_threshold"], settings["lesion_min_size"], settings["wsm_margin"],
                            settings["wsm_margin_fraction"])
    zones = parser.get_parsed_content("anatomy")  # the disc and macula zones protect adds

    items = _items(source)
    prepare_output_dir(out_dir)
    with OutputLock(out_dir, command="medlocker lesions"):
        clean_temporaries(out_dir)
        return _run(args, items, out_dir, source, settings, lesions, wsm_tf, zones)


def _run(args, items, out_dir: Path, source: Path, settings: dict, lesions, wsm_tf, zones) -> int:
    from monai_medlocker.io.image import ImageReadError, atomic_write_bytes, load_rgb, portable_name, save_png
    from monai_medlocker.io.files import name_too_long
    from monai_medlocker.io.outdir import inside_output
    from monai_medlocker.lesions.builtin import LESION_CHANNELS

    rows = []
    start = time.perf_counter()
    for item in items:
        stem_path = out_dir / item.relative.with_suffix("")
        row = {"image": portable_name(item.relative), "status": None}
        t0 = time.perf_counter()
        try:
            if item.problem is not None:
                raise ImageReadError(item.problem)
            inside_output(out_dir, stem_path)  # never through a symlink or out of the folder
            for suffix in (*(f"_{t}.png" for t in LESION_CHANNELS), "_wsm.png", "_lesions.json"):
                too_long = name_too_long(stem_path.with_name(stem_path.name + suffix))  # before this item's first write
                if too_long:
                    raise ImageReadError(f"{item.image}: its output {too_long}")
            image = load_rgb(item.image)
            maps, lesion_source, report = lesions(item.image, image, [] if args.ignore_masks else item.masks)
            anatomy = zones({"image_path": item.image, "original": image.transpose(2, 0, 1), **item.anatomy})
            boxes, channels = wsm_tf.boxes(maps, anatomy["anatomy_boxes"])
            wsm = np.asarray(wsm_tf(maps, anatomy["anatomy_boxes"]))[0]
            for c, t in enumerate(LESION_CHANNELS):
                save_png(stem_path.with_name(f"{stem_path.name}_{t}.png"),
                         ((maps[c] > settings["lesion_threshold"]) * 255).astype(np.uint8))
            save_png(stem_path.with_name(f"{stem_path.name}_wsm.png"), (wsm * 255).astype(np.uint8))
            record = {
                "image": item.relative.as_posix(), "lesion_source": lesion_source,
                "masks": [m.name for m in item.masks] if lesion_source == "masks" else [],
                "wsm_boxes": boxes.tolist(),
                "wsm_box_types": [LESION_CHANNELS[c] if c >= 0 else "anatomy" for c in channels.tolist()],
                "anatomy": anatomy["anatomy"],
                "wsm_area_fraction": round(float(wsm.mean()), 5), "settings": settings, "lesion_report": report,
            }
            atomic_write_bytes(stem_path.with_name(f"{stem_path.name}_lesions.json"),
                               json.dumps(record, indent=2).encode())
            row.update(status="done", lesion_source=lesion_source, boxes=len(boxes),
                       wsm_area_fraction=record["wsm_area_fraction"])
            if report and report.get("warnings"):
                row.update(confidence=report.get("confidence"), warnings=report["warnings"])
        except (ImageReadError, ValueError, OSError) as err:
            row.update(status="failed", error=str(err))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        if not args.quiet:
            extra = row.get("error") or f"{row['lesion_source']}, {row['boxes']} boxes, WSM {100 * row['wsm_area_fraction']:.1f}%"
            print_result(f"{row['image']}: {row['status']} ({extra})", args.json)

    failures = [{"image": r["image"], "error": r["error"]} for r in rows if r["status"] == "failed"]
    summary = {
        "input": str(source), "output_dir": str(out_dir), "images": len(rows),
        "done": sum(r["status"] == "done" for r in rows), "failures": failures,
        "low_confidence": [{"image": r["image"], "confidence": r["confidence"], "warnings": r["warnings"]}
                           for r in rows if r.get("warnings")],
        "settings": settings, "total_seconds": round(time.perf_counter() - start, 2), "rows": rows,
        "exit_code": 1 if failures else 0,
    }
    atomic_write_bytes(out_dir / "lesions_summary.json", json.dumps(summary, indent=2).encode())
    print_result("\n".join([f"medlocker lesions: {summary['done']}/{summary['images']} images -> {out_dir}"]
                            + [f"  FAILED {f['image']}: {f['error']}" for f in failures]), args.json)
    for f in summary["low_confidence"]:  # a warning: stderr
        print(f"  LOW-CONFIDENCE {f['image']}: {'; '.join(f['warnings'])}", file=sys.stderr)
    if args.json:
        print_json(json_summary("lesions", {k: v for k, v in summary.items() if k != "rows"}, rows))
    return summary["exit_code"]
