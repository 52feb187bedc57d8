"""Adversarial training of source models (workflows.robust; issue 17 item 3)."""

import json

import pytest
import torch
from monai.engines import default_prepare_batch

from monai_medlocker.networks import Surrogate, get_network
from monai_medlocker.networks.factory import ModelSpec
from monai_medlocker.networks.preprocess import preprocess_for_model
from monai_medlocker.workflows.robust import AdversarialBatch, adversarial_prepare_batch


def _batch(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    spec = ModelSpec("resnet-tiny", size)
    return images, preprocess_for_model(images, spec), torch.arange(n) % 5, spec


def test_adversarial_batch_stays_within_its_budget_and_raises_the_loss():
    images, inputs, labels, spec = _batch()
    torch.manual_seed(0)
    net = get_network("resnet-tiny", 5, 32)
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    stats = bn.running_mean.clone()
    net.train()
    prepare = AdversarialBatch(net, 4 / 255, spec)
    adversarial, targets = prepare({"image": inputs, "label": labels})
    assert torch.equal(targets, labels)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    pixels = adversarial * std + mean
    assert float((pixels - images).abs().max()) <= 4 / 255 + 1e-5
    assert float((pixels - images).abs().max()) > 3 / 255  # the signed step reaches the bound somewhere
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    # the attack neither leaves the model in eval mode nor moves its batch-norm statistics
    assert net.training and torch.equal(bn.running_mean, stats)
    net.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy
        assert loss(net(adversarial), labels) > loss(net(inputs), labels)


def test_zero_budget_is_the_default_batch_and_a_bad_budget_is_refused():
    net = get_network("resnet-tiny", 5, 32)
    spec = ModelSpec("resnet-tiny", 32)
    assert adversarial_prepare_batch(net, 0, spec) is default_prepare_batch
    assert isinstance(adversarial_prepare_batch(net, 2, spec), AdversarialBatch)
    with pytest.raises(ValueError, match="epsilon"):
        AdversarialBatch(net, 0.5, spec)


def test_zoo_member_with_an_adversarial_budget_trains_and_records_it(tmp_path):
    from monai_medlocker.cli import main as medlocker

    cfg = {"lab": {"n": 12, "size": 128, "seed": 4}, "data_dir": str(tmp_path / "lab"),
           "checkpoint_dir": str(tmp_path / "ckpt"), "defaults": {"epochs": 1, "batch_size": 4},
           "members": {"v": {"network": "vgg-tiny", "input_size": 64, "role": "held_out", "seed": 2},
                       "r": {"network": "resnet-tiny", "input_size": 64, "role": "source", "seed": 3,
                             "adversarial_epsilon": 2}}}
    zoo = tmp_path / "zoo.json"
    zoo.write_text(json.dumps(cfg))
    assert medlocker(["zoo", "train", "--zoo", str(zoo), "--out", str(tmp_path / "ckpt"), "--members", "v"]) == 0
    assert medlocker(["zoo", "train", "--zoo", str(zoo), "--out", str(tmp_path / "ckpt"), "--members", "r"]) == 0
    assert (tmp_path / "ckpt" / "r.pt").is_file()
    report = json.loads((tmp_path / "ckpt" / "eval" / "r" / "eval_report.json").read_text())
    assert report["zoo"]["adversarial_epsilon"] == 2
    # training one member keeps the others' rows in the zoo's report
    zoo_report = json.loads((tmp_path / "ckpt" / "zoo_report.json").read_text())
    assert [r["member"] for r in zoo_report["members"]] == ["v", "r"]


@pytest.mark.parametrize("epsilon", [0, 2])
def test_train_config_wires_the_budget_into_the_trainer(epsilon):
    from monai_medlocker.bundle_config import bundle_root, parse_bundle_config

    parser = parse_bundle_config("train.json", bundle_root(None), {"adversarial_epsilon": epsilon,
                                                                      "input_size": 64})
    prepare = parser.get_parsed_content("train#trainer#prepare_batch")
    if epsilon:
        assert isinstance(prepare, AdversarialBatch) and prepare.epsilon == pytest.approx(2 / 255)
    else:
        assert prepare is default_prepare_batch


def test_candidate_members_are_queried_only_when_named(tmp_path):
    """A source under trial (role candidate) is in no default: not a source, not scored by the study."""
    from monai_medlocker.networks import get_network, load_zoo_surrogates
    from monai_medlocker.networks.zoo import load_zoo_config

    ckpt = tmp_path / "zoo"
    ckpt.mkdir()
    members = {"s": ("resnet-tiny", "source"), "c": ("resnet-tiny", "candidate"), "h": ("vgg-tiny", "held_out")}
    for name, (network, _) in members.items():
        torch.save(get_network(network, 5, 64).state_dict(), ckpt / f"{name}.pt")
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps({"checkpoint_dir": str(ckpt), "members": {
        n: {"network": net, "input_size": 64, "role": role} for n, (net, role) in members.items()}}))
    zoo = load_zoo_config(path)
    assert [m.name for m in zoo.by_role("source")] == ["s"] and [m.name for m in zoo.by_role("candidate")] == ["c"]
    assert len(load_zoo_surrogates(None, path)) == 1 and len(load_zoo_surrogates(["s", "c"], path)) == 2
    with pytest.raises(ValueError, match="held out"):
        load_zoo_surrogates(["c", "h"], path)
    from monai_medlocker.workflows.threat_study import ThreatStudy

    study = ThreatStudy(tmp_path / "out", load_zoo_surrogates(["s"], path), zoo=path, n=2, size=128,
                        rows=["none"], attacks=[], transfer_matrix=False, progress=False)
    models, roles = study._load_models()
    assert "c" not in models and roles["h"] == "held_out"


def test_target_shift_that_is_a_multiple_of_the_classes_is_refused():
    from monai_medlocker.watermark.shield import _ensemble_loss

    net = get_network("resnet-tiny", 5, 32)
    surrogate = Surrogate(net, ModelSpec("resnet-tiny", 32))
    batch = torch.rand(1, 3, 32, 32)
    assert torch.isfinite(_ensemble_loss(batch, [surrogate], torch.tensor([1]), None, 32, target_shift=2))
    with pytest.raises(ValueError, match="multiple"):
        _ensemble_loss(batch, [surrogate], torch.tensor([1]), None, 32, target_shift=5)
