"""``python -m monai.bundle run`` manners: one-line errors, ``bundle_root`` from the config file's folder, and
default outputs that never land in the bundle (issue 20 items 6 and 8)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monai_medlocker.bundle_config import check_argument_types, check_model_output, one_line_errors, user_error
from monai_medlocker.cli import main

from test_bundle_train import make_dataset

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"


def bundle_run(configs: list[Path], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    config = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def copy_bundle(dst: Path) -> Path:
    """configs/ and models/ of the bundle in ``dst`` (the copy's models may be overwritten by a broken default)."""
    for part in ("configs", "models"):
        shutil.copytree(BUNDLE / part, dst / part)
    return dst


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ item 6: errors


def test_user_error_finds_the_cause_and_leaves_bugs_alone():
    try:
        try:
            raise FileNotFoundError("input not found: /x")
        except OSError as err:
            raise RuntimeError("Failed to evaluate ConfigExpression") from err
    except RuntimeError as wrapped:
        assert str(user_error(wrapped)) == "input not found: /x"
    assert user_error(RuntimeError("Failed to evaluate", )) is None
    assert user_error(TypeError("a bug")) is None


def test_one_line_errors_is_a_no_op_outside_monai_bundle():
    hook = sys.excepthook
    one_line_errors()  # pytest is not `python -m monai.bundle`: the hook must stay as it is
    assert sys.excepthook is hook


def test_check_argument_types_against_the_config_defaults():
    inference = str(BUNDLE / "configs" / "inference.json")
    check_argument_types(inference, {"max_queries": 8, "progress": False, "failure_opacity": 1, "seed": None,
                                     "logo": 3, "dataset_dir": "x", "meta_file": "m", "search_space#n_marks": 2,
                                     "max_queries_": "abc", "wsm_margin": "$1 + 1"})
    for key, value, expected in [("max_queries", "abc", "an integer (the config's default is 200)"),
                                 ("max_queries", 2.5, "an integer"), ("progress", "false", "True or False"),
                                 ("failure_opacity", "half", "a number"), ("search_space#n_marks", "two", "an integer")]:
        with pytest.raises(ValueError, match=f"^--{key} {value!r}: expected {re.escape(expected)}"):
            check_argument_types(inference, {key: value})
    # a list of configs is merged in order, as monai.bundle run does
    merged = [inference, str(BUNDLE / "configs" / "multi_process_inference.json")]
    with pytest.raises(ValueError, match="protector#distributed"):
        check_argument_types(merged, {"protector#distributed": "yes"})


@pytest.mark.slow
@pytest.mark.parametrize("config, args, message", [
    ("verify.json", ["--public_key", "{tmp}/owner.pub"], "{tmp}/owner.pub: public key file not found"),
    ("unlock.json", ["--owner_key", "{tmp}/owner.key"], "{tmp}/owner.key: owner key file not found"),
    ("evaluate.json", ["--dataset_dir", "{tmp}/nowhere"], "dataset folder or datalist not found: {tmp}/nowhere"),
    ("train.json", ["--dataset_dir", "{tmp}/nowhere", "--output_dir", "{tmp}/out"],
     "dataset folder or datalist not found: {tmp}/nowhere"),
    ("inference.json", ["--dataset_dir", "{tmp}/nowhere", "--output_dir", "{tmp}/out"], "input not found: {tmp}/nowhere"),
    # a wrongly typed argument is refused before it is used (it used to fail deep inside, with a TypeError)
    ("inference.json", ["--max_queries", "abc", "--output_dir", "{tmp}/out"],
     "--max_queries 'abc': expected an integer (the config's default is 200)"),
    ("train.json", ["--epochs", "abc"], "--epochs 'abc': expected an integer (the config's default is 10)"),
])
def test_a_bad_argument_is_one_line_not_a_traceback(tmp_path, config, args, message):
    proc = bundle_run([BUNDLE / "configs" / config], *(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"monai.bundle run: error: {message.format(tmp=tmp_path)}", proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_failed_train_leaves_no_empty_run_folder(tmp_path):
    """--epochs 0 fails once the trainer runs, after its checkpoint handler made the default run folder."""
    data = make_dataset(tmp_path / "ds", n=6)
    proc = bundle_run([BUNDLE / "configs" / "train.json"], "--dataset_dir", str(data), "--epochs", "0",
                      "--batch_size", "4", "--input_size", "64", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "max_epochs" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_inference_runs_from_another_folder(tmp_path):
    """bundle_root comes from the config file's folder: the zoo models are found from any working directory."""
    src, cwd = tmp_path / "in", tmp_path / "elsewhere"
    src.mkdir()
    cwd.mkdir()
    for f in (BUNDLE / "samples").glob("fundus_c*.png"):
        shutil.copy(f, src / f.name)
    proc = bundle_run([BUNDLE / "configs" / "inference.json"], "--dataset_dir", str(src), "--output_dir", "out",
                      "--max_queries", "8", "--lesion_segmenter", "masks", "--progress", "False", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cwd / "out" / "public" / "fundus_c.png").is_file()


# --------------------------------------------------------------------- item 8: the bundle's models stay as shipped


def test_check_model_output(tmp_path):
    models = tmp_path / "models"
    for inside in (models, models / "zoo", tmp_path / "x" / ".." / "models"):
        with pytest.raises(ValueError, match="replace_shipped_model"):
            check_model_output(inside, tmp_path)
        assert check_model_output(inside, tmp_path, replace_shipped_model=True) == str(inside.resolve())
    assert check_model_output(tmp_path / "models2", tmp_path) == str((tmp_path / "models2").resolve())


@pytest.mark.slow
def test_train_and_evaluate_defaults_never_touch_the_bundle(tmp_path):
    """Run from a folder holding a bundle (where the defaults used to be bundle/models and bundle/eval)."""
    bundle = copy_bundle(tmp_path / "bundle")
    shipped = tree_hashes(bundle / "models")
    data = make_dataset(tmp_path / "ds", n=12)
    tiny = ["--dataset_dir", str(data), "--epochs", "1", "--batch_size", "4", "--input_size", "64"]

    proc = bundle_run([bundle / "configs" / "train.json"], *tiny, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_hashes(bundle / "models") == shipped
    [run] = (tmp_path / "runs").glob("train-*")
    assert (run / "model.pt").is_file() and f"train: outputs go to {run}" in proc.stderr

    proc = bundle_run([bundle / "configs" / "evaluate.json"], "--dataset_dir", str(data), "--ckpt_path",
                      str(run / "model.pt"), "--input_size", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (bundle / "eval").exists()
    [report] = (tmp_path / "runs").glob("evaluate-*/eval_report.json")
    assert json.loads(report.read_text())["num_samples"] == 4

    # Writing into models/ is refused up front, in one line, unless replace_shipped_model says so.
    proc = bundle_run([bundle / "configs" / "train.json"], *tiny, "--output_dir", str(bundle / "models"), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "replace_shipped_model" in proc.stderr.strip().splitlines()[-1]
    assert tree_hashes(bundle / "models") == shipped


@pytest.mark.slow
def test_train_demo_defaults_never_touch_the_bundle(tmp_path, monkeypatch, capsys):
    bundle = copy_bundle(tmp_path / "bundle")
    shipped = tree_hashes(bundle / "models")
    monkeypatch.chdir(tmp_path)
    tiny = ["--bundle-root", str(bundle), "--n", "10", "--size", "128", "--epochs", "1", "--batch-size", "4"]

    # Replacing the shipped model without the flag fails before the lab is drawn.
    assert main(["train-demo", *tiny, "--run-dir", "r0", "--out", str(bundle / "models")]) == 2
    assert "replace_shipped_model" in capsys.readouterr().err and not (tmp_path / "r0").exists()

    assert main(["train-demo", *tiny]) == 0
    assert tree_hashes(bundle / "models") == shipped
    [run] = (tmp_path / "runs").glob("train-demo-*")
    assert (run / "lab" / "datalist.json").is_file() and (run / "models" / "model.pt").is_file()
    assert (run / "eval" / "model" / "eval_report.json").is_file()

    assert main(["train-demo", *tiny, "--run-dir", "r1", "--replace-shipped-model"]) == 0
    changed = {k for k, v in tree_hashes(bundle / "models").items() if shipped.get(k) != v}
    assert changed == {"model.pt", "val_report.json"}  # train.json's validation report sits beside its checkpoint


@pytest.mark.slow
def test_zoo_train_and_report_defaults_never_touch_the_shipped_zoo(tmp_path, monkeypatch, capsys):
    bundle = copy_bundle(tmp_path / "bundle")
    zoo_dir = bundle / "models" / "zoo"
    cfg = {"lab": {"n": 12, "size": 128, "seed": 4}, "data_dir": str(tmp_path / "lab"), "checkpoint_dir": str(zoo_dir),
           "defaults": {"epochs": 1, "batch_size": 4},
           "members": {"v": {"network": "vgg-tiny", "input_size": 64, "role": "held_out", "seed": 3}}}
    (tmp_path / "zoo.json").write_text(json.dumps(cfg))
    zoo = ["--zoo", str(tmp_path / "zoo.json"), "--bundle-root", str(bundle)]
    shipped = tree_hashes(bundle / "models")
    monkeypatch.chdir(tmp_path)

    # Training into the shipped zoo without the flag fails before the lab is drawn.
    assert main(["zoo", "train", *zoo, "--out", str(zoo_dir)]) == 2
    assert "replace_shipped_model" in capsys.readouterr().err and not (tmp_path / "lab").exists()

    assert main(["zoo", "train", *zoo]) == 0
    assert tree_hashes(bundle / "models") == shipped
    [run] = (tmp_path / "runs").glob("zoo-*")
    assert (run / "v.pt").is_file() and (run / "eval" / "v" / "eval_report.json").is_file()
    assert [r["member"] for r in json.loads((run / "zoo_report.json").read_text())["members"]] == ["v"]

    # zoo report on the shipped zoo writes its table to a new run folder; on a run folder, beside its checkpoints.
    capsys.readouterr()
    assert main(["zoo", "report", *zoo]) == 1  # v is not in the shipped zoo
    assert tree_hashes(bundle / "models") == shipped
    [report] = (tmp_path / "runs").glob("zoo-report-*/zoo_report.json")
    assert json.loads(report.read_text())["missing"] == ["v"]
    assert main(["zoo", "report", *zoo, "--out", str(run)]) == 0

    assert main(["zoo", "train", *zoo, "--replace-shipped-model"]) == 0
    changed = {k for k, v in tree_hashes(bundle / "models").items() if shipped.get(k) != v}
    assert {"zoo/v.pt", "zoo/eval/v/eval_report.json", "zoo/zoo_report.json", "zoo/zoo_report.md"} <= changed
    assert all(k.startswith("zoo/") for k in changed)
    (zoo_dir / "zoo_report.md").unlink()
    assert main(["zoo", "report", *zoo, "--replace-shipped-model"]) == 0 and (zoo_dir / "zoo_report.md").is_file()
