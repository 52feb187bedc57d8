"""Grading metrics, datalist loading, the report handler, and the train/evaluate bundle configs end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_medlocker.data.datalist import check_num_classes, load_datalist
from monai_medlocker.networks import get_network, load_classifier
from monai_medlocker.workflows import (
    ClassificationReportHandler,
    classification_report,
    confusion_matrix,
    multiclass_auc,
    per_class_accuracy,
    quadratic_weighted_kappa,
    referable_metrics,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "bundle" / "configs" / "train.json"
EVAL_CONFIG = REPO / "bundle" / "configs" / "evaluate.json"


def make_dataset(root: Path, n: int = 12, num_classes: int = 5, size: int = 64) -> Path:
    """Random RGB PNGs with labels cycling 0..num_classes-1, split 2/3 training, 1/3 validation = test."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        name = f"images/fake_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
        label = i % num_classes
        items.append({"image": name, "label": label, "referable": int(label >= 2)})
    k = n * 2 // 3
    datalist = {"num_classes": num_classes, "training": items[:k], "validation": items[k:], "test": items[k:]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


# --------------------------------------------------------------------------------------- metrics


def test_kappa_perfect_and_reversed():
    y = [0, 1, 2, 3, 4, 2]
    assert quadratic_weighted_kappa(y, y, 5) == pytest.approx(1.0)
    # Full reversal on 3 classes: observed weighted disagreement 2, expected 1 -> 1 - 2 = -1.
    assert quadratic_weighted_kappa([0, 1, 2], [2, 1, 0], 3) == pytest.approx(-1.0)


def test_kappa_hand_computed():
    # O = [[1,0,0],[0,0,1],[0,0,1]], W[i,j] = (i-j)^2/4: sum(W*O) = 0.25.
    # Marginals true [1,1,1], pred [1,0,2] -> E rows [1/3, 0, 2/3]: sum(W*E) = 2/3 + 1/4 + 1/3 = 1.25.
    assert quadratic_weighted_kappa([0, 1, 2], [0, 2, 2], 3) == pytest.approx(1 - 0.25 / 1.25)


def test_kappa_undefined_and_invalid():
    assert math.isnan(quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], 5))
    with pytest.raises(ValueError, match="outside the classes 0..4"):
        quadratic_weighted_kappa([0, 5], [0, 1], 5)


def test_confusion_and_per_class_accuracy():
    t, p = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    np.testing.assert_array_equal(confusion_matrix(t, p, 3), [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    acc = per_class_accuracy(t, p, 4)
    np.testing.assert_allclose(acc[:3], [0.5, 1.0, 0.0])
    assert math.isnan(acc[3])  # class 3 never occurs


REF_PROBS = np.array(
    [
        [0.80, 0.10, 0.05, 0.05, 0.00],  # true 0, argmax 0, referable score 0.10
        [0.20, 0.20, 0.60, 0.00, 0.00],  # true 1, argmax 2 (false positive), score 0.60
        [0.05, 0.05, 0.10, 0.80, 0.00],  # true 2, argmax 3 (true positive), score 0.90
        [0.10, 0.60, 0.10, 0.20, 0.00],  # true 3, argmax 1 (false negative), score 0.30
    ]
)


def test_referable_metrics_hand_computed():
    m = referable_metrics([0, 1, 2, 3], REF_PROBS, 5)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(0.5)
    # positives score {0.9, 0.3}, negatives {0.1, 0.6}: 3 of 4 pairs ranked right.
    assert m["auc"] == pytest.approx(0.75)


def test_multiclass_auc_hand_computed():
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    per_class = multiclass_auc([0, 0, 1, 1], probs, 2, average="none")
    np.testing.assert_allclose(per_class, [0.75, 0.75])
    assert multiclass_auc([0, 1, 2, 0], np.eye(3)[[0, 1, 2, 0]], 3) == pytest.approx(1.0)
    # Class 2 absent: its AUC is undefined and the macro mean skips it.
    probs3 = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    auc = multiclass_auc([0, 1, 0], probs3, 3, average="none")
    assert math.isnan(auc[2]) and auc[0] == pytest.approx(1.0) and auc[1] == pytest.approx(1.0)
    assert multiclass_auc([0, 1, 0], probs3, 3) == pytest.approx(1.0)


def test_classification_report_contents():
    report = classification_report([0, 1, 2, 3], REF_PROBS, 5)
    json.dumps(report, allow_nan=False)  # strict JSON: undefined values are None
    assert report["num_samples"] == 4
    assert report["accuracy"] == pytest.approx(0.25)  # only sample 0 is right
    assert report["confusion_matrix"][1][2] == 1 and report["confusion_matrix"][3][1] == 1
    assert report["per_grade"]["4"] == {"count": 0, "predicted": 0, "accuracy": None, "auc": None}
    assert report["per_grade"]["2"]["predicted"] == 1
    assert report["referable"]["auc"] == pytest.approx(0.75)
    assert report["quadratic_weighted_kappa"] == pytest.approx(quadratic_weighted_kappa([0, 1, 2, 3], [0, 2, 3, 1], 5))
    with pytest.raises(ValueError, match="N x 5"):
        classification_report([0, 1], np.ones((2, 4)) / 4, 5)


# --------------------------------------------------------------------------------------- datalist


def test_load_datalist_resolves_paths(tmp_path):
    root = make_dataset(tmp_path / "ds", n=6)
    data = json.loads((root / "datalist.json").read_text())
    data["training"][0]["mask_MA"] = "masks/m.png"
    data["training"][0]["mask_HE"] = None
    (root / "datalist.json").write_text(json.dumps(data))
    for source in (root, root / "datalist.json"):
        items = load_datalist(source, "training")
        assert len(items) == 4
        assert items[0]["image"] == str((root / "images/fake_000.png").resolve())
        assert items[0]["mask_MA"] == str((root / "masks/m.png").resolve())
        assert items[0]["mask_HE"] is None and items[0]["referable"] == 0
    with pytest.raises(FileNotFoundError, match="mask_MA"):
        load_datalist(root, "training", check_masks=True)


def test_load_datalist_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_datalist(missing, "training")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="datalist.json"):
        load_datalist(tmp_path / "empty", "training")

    root = make_dataset(tmp_path / "ds", n=6)
    with pytest.raises(ValueError, match="'train'.*training, validation, test"):
        load_datalist(root, "train")
    with pytest.raises(ValueError, match="num_classes=3.*num_classes=5"):
        check_num_classes(root, 3)
    with pytest.raises(ValueError, match="num_classes=3.*num_classes=5"):
        load_datalist(root, "training", num_classes=3)

    data = json.loads((root / "datalist.json").read_text())
    data["training"][1]["label"] = 7
    (root / "datalist.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"fake_001\.png.*label 7"):
        load_datalist(root, "training")

    data["training"][1]["label"] = 1
    (root / "datalist.json").write_text(json.dumps(data))
    (root / "images/fake_002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"fake_002\.png"):
        load_datalist(root, "training")


# --------------------------------------------------------------------------------------- handler


def _tiny_evaluator(handler, mode="eval", softmax=True):
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 5))
    data = [{"image": torch.randn(3, 2, 2), "label": i % 5} for i in range(10)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    return SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=net, mode=mode,
        postprocessing=Activationsd(keys="pred", softmax=True) if softmax else None, val_handlers=[handler],
    )


def test_report_handler_eval_mode_and_atomic_json(tmp_path):
    out = tmp_path / "sub" / "report.json"
    handler = ClassificationReportHandler(out, num_classes=5, softmax=False, extra={"section": "x"})
    evaluator = _tiny_evaluator(handler)
    evaluator.network.train()  # SupervisedEvaluator must switch to eval mode for the forward itself
    evaluator.run()
    report = json.loads(out.read_text())
    assert report["eval_mode"] is True and report["num_samples"] == 10 and report["section"] == "x"
    assert evaluator.state.classification_report == handler.report == report
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temporary file left
    assert not evaluator.network._forward_pre_hooks  # the mode-recording hook is removed

    # A forward pass in training mode (dropout active) is refused, or recorded when allowed.
    with pytest.raises(RuntimeError, match="training mode"):
        _tiny_evaluator(ClassificationReportHandler(None, 5, softmax=False), mode="train").run()
    lenient = ClassificationReportHandler(None, 5, softmax=False, require_eval_mode=False)
    _tiny_evaluator(lenient, mode="train").run()
    assert lenient.report["eval_mode"] is False

    # softmax=False on logits would silently distort the AUC: refused.
    with pytest.raises(ValueError, match="not probabilities"):
        _tiny_evaluator(ClassificationReportHandler(None, 5, softmax=False), softmax=False).run()
    on_logits = ClassificationReportHandler(None, 5, softmax=True)
    _tiny_evaluator(on_logits, softmax=False).run()
    assert on_logits.report["num_samples"] == 10 and on_logits.report["eval_mode"] is True


# --------------------------------------------------------------------------------------- bundle


def run_bundle(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("bundle") / "ds", n=12)
    out = root.parent / "out"
    proc = run_bundle(
        TRAIN_CONFIG, "--dataset_dir", str(root), "--output_dir", str(out),
        "--epochs", "1", "--batch_size", "4", "--input_size", "64",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, out


@pytest.mark.slow
def test_train_writes_plain_state_dict(trained):
    _, out = trained
    ckpt = out / "model.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    net = get_network("resnet-tiny", 5, 64)
    net.load_state_dict(state)  # a plain state_dict: no wrapper keys
    loaded = load_classifier(ckpt, "resnet-tiny", 5, 64)
    assert not loaded.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    val = json.loads((out / "val_report.json").read_text())
    assert val["eval_mode"] is True and val["num_samples"] == 4 and val["section"] == "validation"


@pytest.mark.slow
def test_evaluate_writes_report(trained):
    root, out = trained
    eval_dir = root.parent / "eval"
    proc = run_bundle(
        EVAL_CONFIG, "--dataset_dir", str(root), "--ckpt_path", str(out / "model.pt"),
        "--output_dir", str(eval_dir), "--input_size", "64",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((eval_dir / "eval_report.json").read_text())
    expected = {
        "num_samples", "num_classes", "accuracy", "quadratic_weighted_kappa", "auc_macro", "per_grade",
        "referable", "confusion_matrix", "eval_mode", "network_name", "checkpoint", "section",
    }
    assert expected <= set(report)
    assert report["eval_mode"] is True
    assert report["num_samples"] == 4 and report["section"] == "test" and report["network_name"] == "resnet-tiny"
    assert sum(map(sum, report["confusion_matrix"])) == 4
    assert set(report["referable"]) >= {"accuracy", "sensitivity", "specificity", "auc"}
    assert "kappa=" in proc.stdout + proc.stderr  # the key numbers are printed

    # The same checkpoint under another architecture is a clear error, not a silent mismatch.
    proc = run_bundle(
        EVAL_CONFIG, "--dataset_dir", str(root), "--ckpt_path", str(out / "model.pt"),
        "--output_dir", str(eval_dir / "x"), "--input_size", "64", "--network_name", "densenet-tiny",
    )
    assert proc.returncode != 0
    assert "does not fit network 'densenet-tiny'" in proc.stderr


@pytest.mark.slow
def test_train_num_classes_mismatch_fails(tmp_path):
    root = make_dataset(tmp_path / "ds", n=6)
    out = str(tmp_path / "o")
    proc = run_bundle(TRAIN_CONFIG, "--dataset_dir", str(root), "--output_dir", out, "--num_classes", "3")
    assert proc.returncode != 0
    assert "num_classes=3" in proc.stderr and "num_classes=5" in proc.stderr
    assert not (tmp_path / "o" / "model.pt").exists()


@pytest.mark.slow
def test_train_missing_dataset_dir_fails(tmp_path):
    missing = tmp_path / "no_such_dataset"
    proc = run_bundle(TRAIN_CONFIG, "--dataset_dir", str(missing), "--output_dir", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert f"dataset folder or datalist not found: {missing}" in proc.stderr
