"""``medlocker protect IN OUT``: the bundle's inference.json (protect workflow) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_medlocker.bundle_config import bundle_root, parse_bundle_config, run_workflow
from monai_medlocker.cli._output import json_summary, print_json, results_to_stderr
from monai_medlocker.cli.keygen import add_passphrase_options, read_passphrase
from monai_medlocker.watermark.optimizers import OPTIMIZERS

PROTECTION_LEVELS = ("mark", "shield", "strong")  # shield.LEVELS, named here so that --help imports no torch


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "protect", help="watermark a folder or datalist of fundus images",
        description="Protect every PNG/JPEG/DICOM fundus image in IN (a folder or a datalist .json) and write lossless "
        "PNGs (derived DICOM instances for DICOM inputs) to OUT/public (the part to publish: nothing in it reveals the "
        "grade or how to remove the mark) and the owner's records, manifest.jsonl and summary.json to OUT/private "
        "(keep it). Inputs are never modified.",
    )
    p.add_argument("input", help="folder of images (masks beside them) or a datalist JSON")
    p.add_argument("output", help="output folder (must not be inside the input folder)")
    add_protect_options(p)
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--workers", type=int, default=1, metavar="N",
                       help="protect with N processes on this machine (as torchrun with multi_process_inference.json: "
                       "the images are split across them; one manifest and summary)")
    scale.add_argument("--ray", metavar="ADDRESS", help="run the per-image steps on a Ray cluster: 'auto' (the cluster "
                       "this machine belongs to), HOST:PORT, or 'local' (a private instance); every node must see IN "
                       "and OUT at the same paths")
    p.add_argument("--ray-actors", dest="ray_actors", type=int, metavar="N",
                   help="with --ray: this many actors (default: one per GPU of the cluster, else one per CPU)")
    p.add_argument("--json", action="store_true", help="print one machine-readable summary (JSON) on stdout, with each "
                   "image's name, image id, status and error (the human-readable summary then goes to stderr)")
    p.set_defaults(func=run)


def add_protect_options(p: argparse.ArgumentParser) -> None:
    """The protect settings shared by ``protect`` and ``pacs protect`` (each maps to an inference.json key)."""
    p.add_argument("--bundle-root", help="the MedLocker bundle folder (default: the one beside the package)")
    p.add_argument("--model", dest="ckpt_path", help="one surrogate checkpoint (plain state_dict) "
                   "instead of the default, the zoo's resnet + densenet ensemble at 128 px (bundle models/zoo)")
    p.add_argument("--network", dest="network_name", help="network name of --model (e.g. resnet-tiny)")
    p.add_argument("--num-classes", dest="num_classes", type=int)
    p.add_argument("--input-size", dest="input_size", type=int, help="input size of --model (default 224)")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--max-queries", dest="max_queries", type=int, help="query budget per mark")
    p.add_argument("--space", dest="search_space", help="'paper', 'full', or a JSON object of SearchSpace fields")
    p.add_argument("--level", choices=PROTECTION_LEVELS, help="protection level: 'mark' (the visible mark alone, the "
                   "default), 'shield' (mark + perceptual shield, SSIM >= 0.98 and PSNR >= 38 dB off the marks), 'strong' "
                   "(mark + a stronger perceptual shield, more visible change); --shield/--no-shield override it")
    shield = p.add_mutually_exclusive_group()
    shield.add_argument("--shield", nargs="?", const="{}", metavar="JSON",
                        help="also perturb the lesion-free field of view outside the logo (the shield against logo "
                        "removal): by default at most 4/255 in blocks; '{\"kind\": \"perceptual\"}' for a smooth field "
                        "within a per-pixel JND budget (cap 12/255); a JSON object of ShieldSettings fields")
    shield.add_argument("--no-shield", dest="shield", action="store_const", const="off", help="no shield")
    p.add_argument("--logo", help="RGBA logo PNG (default: the shipped owner logo)")
    p.add_argument("--seed", type=int)
    p.add_argument("--on-infeasible", dest="on_infeasible", choices=("raise", "skip"))
    p.add_argument("--on-failure", dest="on_failure", choices=("cap", "mark", "withhold", "best"),
                   help="an image the surrogates were not fooled on: publish the best attempt with its opacity capped at "
                   "--failure-opacity (cap, default), a plain visible mark at that opacity (mark), nothing (withhold: "
                   "reported, exit code 1) or the attempt as it is (best); the summary names every such image")
    p.add_argument("--failure-opacity", dest="failure_opacity", type=float, help="opacity of cap and mark (default 0.5)")
    p.add_argument("--wsm-margin", dest="wsm_margin", type=int, help="pixels added around each lesion box")
    p.add_argument("--on-missing-anatomy", dest="on_missing_anatomy", choices=("fallback", "refuse"),
                   help="when the optic disc or the fovea cannot be located (nor is given in the datalist as optic_disc / "
                   "fovea): keep a conservative central zone clear instead (fallback, default) or refuse the image")
    p.add_argument("--lesion-segmenter", dest="lesion_segmenter", choices=("builtin", "masks", "network"),
                   help="lesion source for images without mask files: the built-in detector (default), a trained "
                   "segmenter (--segmenter-checkpoint), or 'masks' to require masks")
    p.add_argument("--segmenter-checkpoint", dest="segmenter_checkpoint",
                   help="trained lesion segmenter state_dict for --lesion-segmenter network")
    p.add_argument("--dicom-encoding", dest="dicom_encoding", choices=("explicit", "rle", "jpeg-ls"),
                   help="transfer syntax of derived DICOM instances (lossless only; default: explicit, uncompressed)")
    p.add_argument("--keep-identity", dest="keep_identity", action="store_true", default=None,
                   help="DICOM: publish the patient, study and equipment identity as it is (a clinic's own PACS round "
                   "trip); default: de-identify by DICOM PS3.15 Annex E (Basic Profile with the Retain UIDs Option)")
    p.add_argument("--keep-free-text", dest="keep_free_text", action="store_true", default=None,
                   help="DICOM, with --keep-identity: publish ImageComments and other free text that can carry findings "
                   "(default: dropped)")
    p.add_argument("--keep-private", dest="keep_private", action="store_true", default=None,
                   help="DICOM, with --keep-identity: publish other vendors' private elements (at any depth) on purpose "
                   "(default: removed; they may carry identity or findings)")
    p.add_argument("--retain-dates", dest="retain_dates", action="store_true", default=None,
                   help="DICOM de-identification: keep dates and times (Retain Longitudinal Temporal Information "
                   "Full Dates Option)")
    p.add_argument("--replace-uids", dest="retain_uids", action="store_false", default=None,
                   help="DICOM de-identification without the Retain UIDs Option: published UIDs (and image ids) are "
                   "keyed hashes of the source's (the derived series then leaves its source study)")
    p.add_argument("--key", dest="owner_key", help="owner key (from medlocker keygen): sign a certificate and seal a "
                   "restore payload into each protected image")
    add_passphrase_options(p, "protects the --key file")
    p.add_argument("--render-secret", dest="render_secret", metavar="FILE",
                   help="without --key: reuse this render secret (e.g. an earlier run's OUT/private/render_secret), so "
                   "that the same images, seed and settings give the same marks and outcomes in another output folder "
                   "(default: a new random secret per output folder)")
    p.add_argument("--redo", action="store_true", default=None,
                   help="resuming into an output folder made with other output-changing settings (key, optimizer, "
                   "search space, model, logo, seed): protect its images again with these settings instead of refusing")
    p.add_argument("--public-names", dest="public_names", choices=("keep", "opaque"),
                   help="names of the published files: keep the input's relative paths (default; a warning names "
                   "those that look like labels), or opaque: a keyed hash, the originals kept in private/names.json "
                   "and given back by unlock")
    p.add_argument("--wait", action="store_true", default=None,
                   help="if another run is writing to the output folder, wait for it instead of refusing")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch/OpenMP threads per process (default: OMP_NUM_THREADS if set, else 1 per process with "
                   "--workers, else half the CPUs this process may use, 1 to 4); idle threads never busy-wait")
    p.add_argument("--device", help="where the surrogates run: auto (default: cuda when available, else cpu), cpu, "
                   "cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def protect_overrides(args: argparse.Namespace) -> dict:
    """inference.json overrides from the shared protect options (``None`` = keep the config's value)."""
    return {
        "ckpt_path": args.ckpt_path and str(Path(args.ckpt_path).resolve()),
        "network_name": args.network_name,
        "num_classes": args.num_classes,
        "input_size": args.input_size,
        "optimizer": args.optimizer,
        "max_queries": args.max_queries,
        "search_space": search_space_option(args.search_space),
        "shield": shield_option(getattr(args, "shield", None)),
        "level": getattr(args, "level", None),
        "logo": args.logo and str(Path(args.logo).resolve()),
        "seed": args.seed,
        "on_infeasible": args.on_infeasible,
        "on_failure": args.on_failure,
        "failure_opacity": args.failure_opacity,
        "wsm_margin": args.wsm_margin,
        "on_missing_anatomy": args.on_missing_anatomy,
        "lesion_segmenter": args.lesion_segmenter,
        "segmenter_checkpoint": args.segmenter_checkpoint and str(Path(args.segmenter_checkpoint).resolve()),
        "progress": False if args.quiet else None,
        "threads": args.threads,
        "device": args.device,
        "dicom_encoding": args.dicom_encoding,
        "keep_identity": args.keep_identity,
        "keep_free_text": args.keep_free_text,
        "keep_private": args.keep_private,
        "retain_dates": args.retain_dates,
        "retain_uids": args.retain_uids,
        "owner_key": args.owner_key and str(Path(args.owner_key).resolve()),
        "owner_key_passphrase": read_passphrase(args),
        "render_secret": getattr(args, "render_secret", None) and str(Path(args.render_secret).resolve()),
        "redo": args.redo,
        "wait": args.wait,
        "public_names": args.public_names,
    }


def search_space_option(value: str | None):
    """The ``--space`` value as the config takes it (``None``, a name, or a dict), checked now.

    Raises:
        ValueError: not JSON, or not a search space (the message names ``--space``).
    """
    from monai_medlocker.watermark.problem import SearchSpace

    if value is None:
        return None
    space = value
    if value.lstrip().startswith("{"):
        try:
            space = json.loads(value)
        except ValueError as err:
            raise ValueError(f"--space: {value!r} is not valid JSON ({err})") from err
    try:
        SearchSpace.from_config(space)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--space: {err}") from err
    return space


def shield_option(value: str | None):
    """The ``--shield`` value as the config takes it: ``None`` (keep the config's), ``False`` (off) or a dict.

    Raises:
        ValueError: not a JSON object of shield settings (the message names ``--shield``).
    """
    from monai_medlocker.watermark.shield import ShieldSettings

    if value is None:
        return None
    if value == "off":
        return False
    try:
        settings = json.loads(value)
        ShieldSettings(**settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--shield: {value!r} is not a JSON object of shield settings ({err})") from err
    return settings


def run(args: argparse.Namespace) -> int:
    from monai_medlocker.workflows.protect import PRIVATE_DIR

    root = bundle_root(args.bundle_root)
    overrides = {"dataset_dir": str(Path(args.input).resolve()), "output_dir": str(Path(args.output).resolve()),
                 **protect_overrides(args)}
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    with results_to_stderr(args.json):  # --json: stdout holds the JSON summary alone
        if args.workers > 1:
            code = run_workers(root, overrides, args.workers, json_output=args.json)
            if not args.json:
                return code
            summary_file = Path(args.output) / PRIVATE_DIR / "summary.json"
            if code not in (0, 1) or not summary_file.is_file():
                return code  # the run failed before its summary (the error is on stderr)
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
        else:
            parser = parse_bundle_config("inference.json", root, overrides)
            protect_many = None
            if args.ray:
                from monai_medlocker.workflows.ray_protect import RayProtect

                protect_many = RayProtect(args.ray, root, overrides, actors=args.ray_actors)
            summary = parser.get_parsed_content("protector").run(protect_many=protect_many)
    if args.json:
        print_json(json_summary("protect", summary, manifest_rows(Path(args.output))))
    return int(summary["exit_code"])


def manifest_rows(output_dir: Path) -> list[dict]:
    """The rows of a protect run's ``private/manifest.jsonl`` (one per image)."""
    from monai_medlocker.workflows.protect import PRIVATE_DIR

    path = output_dir / PRIVATE_DIR / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


MULTI_PROCESS_CONFIGS = ["inference.json", "multi_process_inference.json"]


def run_workers(root: Path, overrides: dict, workers: int, json_output: bool = False) -> int:
    """Run inference.json + multi_process_inference.json in ``workers`` local processes, as ``torchrun`` would.

    Each process gets torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...)
    and runs the merged config's initialize/run/finalize. When one process fails, the others are
    stopped (they would wait for it at the final gather). Returns rank 0's exit code (or the first
    failure's).
    """
    import multiprocessing
    import socket
    import time

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(workers),
           "LOCAL_WORLD_SIZE": str(workers)}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(rank, env, str(root), overrides, workers, json_output),
                         name=f"medlocker-rank{rank}")
             for rank in range(workers)]
    for proc in procs:
        proc.start()
    try:
        while any(p.is_alive() for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                time.sleep(2.0)  # let the others report the same problem, then stop them
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    codes = [p.exitcode for p in procs]
    failed = [c for c in codes if c]
    return codes[0] if codes[0] else (abs(failed[0]) if failed else 0)


def _worker(rank: int, env: dict, root: str, overrides: dict, workers: int, json_output: bool = False) -> None:
    import os
    import sys

    if json_output:  # the parent prints the JSON summary: the ranks' stdout goes to stderr
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    from monai_medlocker.cli import _user_error

    try:
        run_workflow(parse_bundle_config(MULTI_PROCESS_CONFIGS, Path(root), overrides))
    except (ValueError, OSError, RuntimeError) as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"medlocker protect: error: {cause}", file=sys.stderr)
        sys.exit(2)
