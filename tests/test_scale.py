"""Scale-out (issue 13 A1/A2): several processes, or Ray, give the outputs of one process for the same seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monai_medlocker.workflows.protect import ProtectItem, _partition

ROOT = Path(__file__).resolve().parents[1]
# The shipped samples by grade; their names tell nothing of it (issue 18).
SAMPLE_STEMS = {1: "fundus_q", 2: "fundus_c", 3: "fundus_m", 4: "fundus_h"}
CONFIGS = ROOT / "bundle" / "configs"
# Per-run facts (timings) differ between any two runs; everything else must be equal.
_TIMINGS = ("seconds", "certify_seconds", "total_seconds", "median_seconds_per_image")


def _inputs(tmp_path: Path) -> Path:
    """Four lab images with their mask files (masks: fast and deterministic), one in a subfolder."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for grade in (1, 2, 3, 4):
        dst = src / "sub" if grade == 4 else src
        for f in (ROOT / "bundle" / "samples").glob(f"{SAMPLE_STEMS[grade]}*.png"):
            shutil.copy(f, dst / f.name)
    return src


def _continue_from(first_out: Path, out: Path) -> Path:
    """Give ``out`` the render secret of the keyless run into ``first_out`` (how a keyless run is continued
    elsewhere): without it, another folder draws its own secret and renders its marks differently."""
    (out / "private").mkdir(parents=True)
    shutil.copy(first_out / "private" / "render_secret", out / "private" / "render_secret")
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _outputs(out: Path) -> dict:
    """Every output file's content (records and manifest without timings; the lock file left out)."""
    found = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(".medlocker.lock"):
            continue
        rel = str(p.relative_to(out))
        if p.suffix == ".json" or p.suffix == ".jsonl":
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.suffix == ".jsonl" \
                else [json.loads(p.read_text())]
            for row in rows:
                for key in _TIMINGS:
                    row.pop(key, None)
                (row.get("lesion_report") or {}).pop("seconds", None)
                row.pop("output_dir", None)
            found[rel] = rows
        else:
            found[rel] = p.read_bytes()
    return found


_SETTINGS = ["--max_queries", "8", "--lesion_segmenter", "masks", "--progress", "False", "--seed", "3"]


def _bundle_run(configs: list[str], src: Path, out: Path, nproc: int | None = None) -> subprocess.CompletedProcess:
    config = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc else [sys.executable]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(ROOT / "bundle"),
           "--dataset_dir", str(src), "--output_dir", str(out), *_SETTINGS]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=out.parent)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    base = tmp_path_factory.mktemp("one")
    src = _inputs(base)
    done = _bundle_run(["inference.json"], src, base / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    return src, _outputs(base / "out"), base / "out"


def test_torchrun_two_processes_equal_one_process(one_process, tmp_path):
    src, expected, first = one_process
    done = _bundle_run(["inference.json", "multi_process_inference.json"], src, _continue_from(first, tmp_path / "out"),
                       nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    got = _outputs(tmp_path / "out")
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    manifest = got["private/manifest.jsonl"]
    assert sorted(r["image"] for r in manifest) == ["fundus_c.png", "fundus_m.png", "fundus_q.png", "sub/fundus_h.png"]
    assert [r["status"] for r in manifest] == ["protected"] * 4
    assert done.stdout.count("MedLocker protect: 4/4 images protected") == 1  # rank 0 alone reports


def test_protect_workers_equals_one_process(one_process, tmp_path):
    src, expected, first = one_process
    out = _continue_from(first, tmp_path / "out")
    cmd = [sys.executable, "-m", "monai_medlocker.cli", "protect", str(src), str(out), "--workers", "2",
           "--max-queries", "8", "--lesion-segmenter", "masks", "--quiet", "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outputs(out) == expected


def test_partition_never_repeats_and_keeps_clashing_names_together(tmp_path):
    from monai_medlocker.workflows.protect import DatasetProtector

    src = tmp_path / "in"
    src.mkdir()
    names = ["a.png", "a.jpg", "b.png", "c.png", "d.png", "e.png", "a.bmp", "f.png", "f.dcm"]
    for n in names:
        (src / n).write_bytes(bytes(128) + b"DICM" if n.endswith(".dcm") else b"")
    items = [ProtectItem(image=src / n, relative=Path(n)) for n in names]
    protector = DatasetProtector.__new__(DatasetProtector)
    protector.output_dir = tmp_path / "out"
    protector.certifier = None
    protector.public_names = "keep"  # public files named as the inputs: a.png and a.jpg clash
    groups = protector._output_groups(items)
    assert [0, 1, 6] in groups  # a.png, a.jpg, a.bmp all write public/a.png
    assert [7] in groups and [8] in groups  # f.png and f.dcm: their own images and records
    protector.certifier = object()  # with an owner key they would share public/f.medlocker.json
    assert [7, 8] in protector._output_groups(items)
    for world in (1, 2, 3, 5, 9):
        shares = [_partition(groups, rank, world) for rank in range(world)]
        flat = sorted(i for share in shares for i in share)
        assert flat == list(range(len(items))), (world, shares)
        owner = [next(r for r, share in enumerate(shares) if 0 in share)]
        assert all(i in shares[owner[0]] for i in (1, 6))


def test_ray_local_two_actors_equals_one_process(one_process, tmp_path_factory):
    """A private local Ray instance with 2 actors (its temporary folder inside the test's folder)."""
    pytest.importorskip("ray", reason="the ray extra (scripts/setup.sh installs it)")
    src, expected, first = one_process
    base = tmp_path_factory.mktemp("r")  # short: Ray's socket paths must stay under 107 characters
    _continue_from(first, base / "out")
    cmd = [sys.executable, "-m", "monai_medlocker.cli", "protect", str(src), str(base / "out"), "--ray", "local",
           "--ray-actors", "2", "--max-queries", "8", "--lesion-segmenter", "masks", "--quiet", "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "RAY_TMPDIR": str(base / "ray")}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outputs(base / "out") == expected
    assert any((base / "ray").iterdir())  # Ray's session lived here


def test_ray_retries_a_dead_actor(tmp_path_factory, monkeypatch):
    """An actor killed mid-task is restarted and its image protected: no failed row, same outputs as the others."""
    ray = pytest.importorskip("ray", reason="the ray extra (scripts/setup.sh installs it)")
    from monai_medlocker.workflows import ray_protect

    base = tmp_path_factory.mktemp("k")
    src = _inputs(base)
    flag = base / "die-once"
    flag.write_text("")

    class Dying(ray_protect._ProtectActor):
        def protect(self, item, out_path):
            if flag.exists():  # the first task kills its actor's process, once
                flag.unlink()
                os._exit(1)
            return super().protect(item, out_path)

    monkeypatch.setattr(ray_protect, "_ProtectActor", Dying)
    from monai_medlocker.bundle_config import bundle_root, parse_bundle_config

    overrides = {"dataset_dir": str(src), "output_dir": str(base / "out"), "max_queries": 8, "lesion_segmenter": "masks",
                 "progress": False, "seed": 3}
    runner = ray_protect.RayProtect("local", bundle_root(), overrides, actors=1, max_retries=2, num_cpus=1,
                                    _temp_dir=str(base / "ray"))
    summary = parse_bundle_config("inference.json", bundle_root(), overrides).get_parsed_content("protector").run(
        protect_many=runner)
    assert not ray.is_initialized()
    assert summary["protected"] == 4 and summary["failures"] == [], summary
    assert not flag.exists()


def test_builtin_detector_reruns_give_identical_files(tmp_path):
    """Two runs with the built-in detector write the same bytes (its timing stays out of the published image),
    so that any two ways of running (processes, Ray) can be compared file by file."""
    import numpy as np
    from PIL import Image

    from conftest import TinyConv
    from monai_medlocker.data.synthetic import synthesize_fundus
    from monai_medlocker.networks import Surrogate, model_spec
    from monai_medlocker.workflows.protect import DatasetProtector

    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(synthesize_fundus(384, seed=60 + i, grade=2, lab_version=1).image).save(src / f"x{i}.png")
    outs = []
    for name in ("a", "b"):
        if name == "b":
            _continue_from(tmp_path / "a", tmp_path / name)
        surrogate = Surrogate(TinyConv(), model_spec("resnet-tiny", 64))
        DatasetProtector(src, tmp_path / name, surrogate, watermark={"max_queries": 4}, progress=False).run()
        outs.append(_outputs(tmp_path / name))
    pngs = [k for k in outs[0] if k.startswith("public/") and k.endswith(".png")]  # not private/montage.png
    assert pngs and all(isinstance(outs[0][k], bytes) for k in pngs)
    assert outs[0] == outs[1]
    assert np.asarray(Image.open(tmp_path / "a" / pngs[0])).shape == (384, 384, 3)
