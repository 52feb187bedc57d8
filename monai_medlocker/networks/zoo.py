"""The threat study's model zoo: named, seeded classifiers of several families, split into roles.

A zoo is described by a JSON file (``configs/zoo.json``): the lab it is trained on, where its
checkpoints live, and one entry per member with its network, input size, training seed and role.
``source`` members may be queried by the watermark optimizer; ``held_out`` members are queried by
nothing but the evaluation, so that effectiveness is measured on models the optimizer never saw.
``candidate`` members are sources under trial: the optimizer may query one when it is named (a benchmark
variant, ``--zoo-members``), but no default uses them: they are not among the ``source`` members, and
the threat study neither scores them nor attacks them in its transfer matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_medlocker.networks.factory import NETWORK_NAMES, Surrogate, load_surrogate

__all__ = ["ROLES", "ZooMember", "Zoo", "load_zoo_config", "load_zoo_surrogates", "load_protect_surrogates"]

ROLES = ("source", "held_out", "candidate")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ZooMember:
    """One zoo model: what to build, how it was trained, and what the study may do with it."""

    name: str
    network: str
    input_size: int
    role: str
    seed: int
    checkpoint: Path
    train: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.network.split("-")[0]

    def load(self, num_classes: int = 5) -> Surrogate:
        """The member as a :class:`Surrogate` (eval mode).

        Raises:
            FileNotFoundError: the checkpoint is missing (train it with ``medlocker zoo train --replace-shipped-model``).
            ValueError: the checkpoint does not fit this member's architecture or class count.
        """
        if not self.checkpoint.is_file():
            raise FileNotFoundError(
                f"zoo member {self.name!r}: checkpoint not found: {self.checkpoint} (train it into the zoo's checkpoint_dir "
                "with `medlocker zoo train --replace-shipped-model`)"
            )
        return Surrogate.from_checkpoint(self.checkpoint, self.network, num_classes, self.input_size)


@dataclass(frozen=True)
class Zoo:
    """A zoo config read from JSON: its lab recipe and members."""

    path: Path
    lab: dict
    data_dir: Path
    checkpoint_dir: Path
    members: dict[str, ZooMember]
    num_classes: int = 5

    def by_role(self, role: str) -> list[ZooMember]:
        if role not in ROLES:
            raise ValueError(f"zoo role must be one of {ROLES}, got {role!r}.")
        return [m for m in self.members.values() if m.role == role]

    def select(self, names: list[str] | None) -> list[ZooMember]:
        """Members by name (all when ``names`` is None), with an error that lists the known names."""
        if names is None:
            return list(self.members.values())
        unknown = [n for n in names if n not in self.members]
        if unknown:
            raise ValueError(f"{self.path}: unknown zoo member(s) {unknown}; known: {', '.join(self.members)}.")
        return [self.members[n] for n in names]


def _resolve(path: str | Path, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (base / p)


def load_zoo_config(path: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> Zoo:
    """Read a zoo description (default ``configs/zoo.json`` of the source checkout).

    Relative paths in the file are relative to the project root (the folder above ``configs/``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed JSON, an unknown network or role, or a member without a network.
    """
    path = Path(path) if path is not None else PROJECT_ROOT / "configs" / "zoo.json"
    if not path.is_file():
        raise FileNotFoundError(f"zoo config not found: {path}")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("members"), dict) or not data["members"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'members' object.")
    base = path.resolve().parent.parent if path.resolve().parent.name == "configs" else path.resolve().parent
    ckpt_dir = _resolve(checkpoint_dir if checkpoint_dir is not None else data.get("checkpoint_dir", "zoo"), base)
    defaults = dict(data.get("defaults", {}))
    num_classes = int(defaults.pop("num_classes", 5))
    members = {}
    for name, spec in data["members"].items():
        if not isinstance(spec, dict) or "network" not in spec:
            raise ValueError(f"{path}: zoo member {name!r} needs an object with a 'network'.")
        if spec["network"] not in NETWORK_NAMES:
            raise ValueError(f"{path}: zoo member {name!r} has unknown network {spec['network']!r}; "
                             f"expected one of {', '.join(NETWORK_NAMES)}.")
        role = spec.get("role", "held_out")
        if role not in ROLES:
            raise ValueError(f"{path}: zoo member {name!r} has role {role!r}; expected one of {ROLES}.")
        train = {**defaults, **{k: v for k, v in spec.items() if k in ("epochs", "batch_size", "learning_rate", "adversarial_epsilon")}}
        members[name] = ZooMember(
            name=name, network=spec["network"], input_size=int(spec.get("input_size", 224)), role=role,
            seed=int(spec.get("seed", 0)), checkpoint=ckpt_dir / f"{name}.pt", train=train,
        )
    return Zoo(path=path, lab=dict(data.get("lab", {})), data_dir=_resolve(data.get("data_dir", "runs/zoo_lab"), base),
               checkpoint_dir=ckpt_dir, members=members, num_classes=num_classes)


def load_zoo_surrogates(members: list[str] | None = None, zoo_config: str | Path | None = None,
                        checkpoint_dir: str | Path | None = None, device: Any = None) -> list[Surrogate]:
    """Zoo models as a protect ensemble: the named members, or every ``source`` member when ``members`` is None.

    ``device`` (e.g. ``"cuda:1"``, as ``load_surrogate`` takes it) moves every network there.

    Only source members may be queried by the optimizer: asking for a held-out one is an error, since
    the threat study's transfer figures would no longer be measured on models the optimizer never saw.

    Raises:
        ValueError: an unknown or held-out member, or an empty list.
        FileNotFoundError: a member's checkpoint is missing.
    """
    zoo = load_zoo_config(zoo_config, checkpoint_dir)
    chosen = zoo.by_role("source") if members is None else zoo.select(list(members))
    if not chosen:
        raise ValueError(f"{zoo.path}: no zoo members to load (asked for {members!r}).")
    held_out = [m.name for m in chosen if m.role == "held_out"]
    if held_out:
        raise ValueError(f"{zoo.path}: zoo member(s) {held_out} are held out (only the evaluation may query them); "
                         f"source members: {', '.join(m.name for m in zoo.by_role('source'))}.")
    surrogates = [m.load(zoo.num_classes) for m in chosen]
    if device is not None:
        for s in surrogates:
            s.network.to(device)
    return surrogates


def load_protect_surrogates(members: list[str] | None = None, checkpoint: str | Path | None = None,
                            name: str = "resnet-tiny", num_classes: int = 5, input_size: int = 224,
                            zoo_config: str | Path | None = None, checkpoint_dir: str | Path | None = None,
                            device: Any = None) -> list[Surrogate]:
    """The protect surrogate(s) of ``inference.json``: one checkpoint when ``checkpoint`` is given (``--model``),
    else the zoo ensemble of :func:`load_zoo_surrogates` (``members``; every source member when None)."""
    if checkpoint is not None:
        return [load_surrogate(checkpoint, name, num_classes, input_size, device=device)]
    return load_zoo_surrogates(members, zoo_config, checkpoint_dir, device=device)
