"""Map network names to MONAI 2D classifiers with 3 input channels and N classes.

Every network is built without pretrained weights: nothing can be downloaded here, and the
surrogates are trained on the synthetic fundus lab (or on a user's own data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from monai.networks.blocks import ChannelSELayer
from monai.networks.nets import DenseNet, DenseNet121, EfficientNet, EfficientNetBN, ResNet, SEResNet50, ViT
from monai.networks.nets.resnet import ResNetBlock

__all__ = [
    "NETWORK_NAMES", "HybridViT", "ModelSpec", "Surrogate", "SEResNetBlock", "VGGTiny", "get_network", "model_spec", "load_classifier",
    "load_surrogate",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a classifier expects: its input size and intensity normalisation (on [0, 1] RGB)."""

    name: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict)


class _ViTClassifier(torch.nn.Module):
    """MONAI's ViT returns (logits, hidden_states); surrogates must return logits only."""

    def __init__(self, num_classes: int, input_size: int, hidden_size: int = 192, num_layers: int = 6, num_heads: int = 3):
        super().__init__()
        self.vit = ViT(
            in_channels=3,
            img_size=(input_size, input_size),
            patch_size=(16, 16),
            hidden_size=hidden_size,
            mlp_dim=4 * hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=True,
            num_classes=num_classes,
            spatial_dims=2,
            post_activation="none",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)[0]


class HybridViT(torch.nn.Module):
    """A hybrid Vision Transformer: a 3-layer strided conv stem, then MONAI's ``ViT`` on its feature map.

    As in the ViT paper's hybrid models, the stem replaces the linear patch embedding: each token is a
    2 x 2 patch of the stem's 1/8-resolution map (an 16 x 16 px receptive field, 64 tokens at 128 px).
    A plain ViT with 16 px patches did not learn on this lab from scratch on a CPU budget (train
    accuracy at chance after 6 epochs at lr 1e-4 to 1e-3); the hybrid does.
    """

    def __init__(self, num_classes: int, input_size: int, hidden_size: int = 128, num_layers: int = 4,
                 num_heads: int = 4, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"HybridViT needs an input_size divisible by 16, got {input_size}.")
        layers: list[torch.nn.Module] = []
        channels = 3
        for width in widths:
            layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(width),
                       torch.nn.ReLU(inplace=True)]
            channels = width
        self.stem = torch.nn.Sequential(*layers)
        side = input_size // 8
        self.vit = ViT(
            in_channels=channels, img_size=(side, side), patch_size=(2, 2), hidden_size=hidden_size,
            mlp_dim=4 * hidden_size, num_layers=num_layers, num_heads=num_heads, classification=True,
            num_classes=num_classes, spatial_dims=2, post_activation="none",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(self.stem(x))[0]


def _resnet_tiny(num_classes: int, input_size: int) -> torch.nn.Module:
    # The CPU default: a 4-stage basic-block ResNet with a strided stem (about 0.3 M parameters).
    return ResNet(
        "basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=3,
        conv1_t_stride=2, num_classes=num_classes,
    )


def _densenet_tiny(num_classes: int, input_size: int) -> torch.nn.Module:
    return DenseNet(2, 3, num_classes, init_features=16, growth_rate=12, block_config=(2, 4, 6, 4))


class SEResNetBlock(ResNetBlock):
    """MONAI's basic ResNet block with a squeeze-and-excitation gate (MONAI's ``ChannelSELayer``) before the sum.

    MONAI's ``SENet`` builds only bottleneck blocks of ImageNet widths (tens of MB); this keeps the SE-ResNet
    design at CPU size.
    """

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 2, stride: int = 1, downsample=None, **kwargs):
        super().__init__(in_planes, planes, spatial_dims=spatial_dims, stride=stride, downsample=downsample, **kwargs)
        self.se = ChannelSELayer(spatial_dims, planes, r=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.act(out + residual)


def _seresnet_tiny(num_classes: int, input_size: int) -> torch.nn.Module:
    return ResNet(
        SEResNetBlock, [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=3,
        conv1_t_stride=2, num_classes=num_classes,
    )


# EfficientNet-B0's stages (MONAI's block strings) at half width and half depth: 0.6 M parameters.
_EFFICIENTNET_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


def _efficientnet_tiny(num_classes: int, input_size: int) -> torch.nn.Module:
    return EfficientNet(
        _EFFICIENTNET_B0_BLOCKS, spatial_dims=2, in_channels=3, num_classes=num_classes, width_coefficient=0.5,
        depth_coefficient=0.5, dropout_rate=0.2, image_size=input_size, drop_connect_rate=0.1,
        # MONAI's default BatchNorm momentum (0.01) leaves the running statistics far from the data after a short
        # CPU training: right in train mode, at chance in eval mode (measured: 0.37 vs 0.20 after 4 epochs).
        norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
    )


class VGGTiny(torch.nn.Module):
    """A plain VGG-style CNN (torchvision's VGG does not import beside this torch build).

    A stride-2 3x3 stem (for CPU cost), then four stages of two 3x3 conv + BatchNorm + ReLU layers and a 2x2 max
    pool (widths 16-32-64-128), global average pooling and a linear classifier: no residuals, no attention.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[torch.nn.Module] = [
            torch.nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(widths[0]),
            torch.nn.ReLU(inplace=True),
        ]
        channels = widths[0]
        for width in widths:
            for _ in range(2):
                layers += [torch.nn.Conv2d(channels, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width),
                           torch.nn.ReLU(inplace=True)]
                channels = width
            layers.append(torch.nn.MaxPool2d(2))
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _resnet(layers: list[int], block: str) -> Callable[[int, int], torch.nn.Module]:
    def build(num_classes: int, input_size: int) -> torch.nn.Module:
        return ResNet(
            block, layers, [64, 128, 256, 512], spatial_dims=2, n_input_channels=3,
            conv1_t_size=7, conv1_t_stride=2, num_classes=num_classes,
        )

    return build


_BUILDERS: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "resnet-tiny": _resnet_tiny,
    "densenet-tiny": _densenet_tiny,
    "resnet18": _resnet([2, 2, 2, 2], "basic"),
    "resnet50": _resnet([3, 4, 6, 3], "bottleneck"),
    "densenet121": lambda n, s: DenseNet121(spatial_dims=2, in_channels=3, out_channels=n),
    "seresnet50": lambda n, s: SEResNet50(spatial_dims=2, in_channels=3, num_classes=n, pretrained=False),
    "efficientnet-b0": lambda n, s: EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=n
    ),
    "vit": lambda n, s: _ViTClassifier(n, s),
    # CPU-sized members of the threat study's model zoo (configs/zoo.json): one per family.
    "seresnet-tiny": _seresnet_tiny,
    "efficientnet-tiny": _efficientnet_tiny,
    "vit-tiny": lambda n, s: HybridViT(n, s),
    "vgg-tiny": lambda n, s: VGGTiny(n),
}

NETWORK_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def model_spec(name: str, input_size: int = 224) -> ModelSpec:
    """The preprocessing contract of a named network."""
    _check_name(name)
    if input_size < 32:
        raise ValueError(f"input_size must be >= 32 px, got {input_size}.")
    if name in ("vit", "vit-tiny") and input_size % 16:
        raise ValueError(f"vit needs an input_size divisible by its 16 px patches, got {input_size}.")
    return ModelSpec(name=name, input_size=input_size)


def get_network(name: str = "resnet-tiny", num_classes: int = 5, input_size: int = 224) -> torch.nn.Module:
    """Build a named 2D classifier with 3 input channels and ``num_classes`` outputs.

    Args:
        name: one of ``NETWORK_NAMES``; ``resnet-tiny`` is the small fast CPU default.
        num_classes: number of output logits (5 for ICDR grades 0-4).
        input_size: side of the square model input (used by size-dependent networks such as ViT).

    Raises:
        ValueError: an unknown name or a number of classes below 2.
    """
    model_spec(name, input_size)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    return _BUILDERS[name](num_classes, input_size)


def load_classifier(
    checkpoint: str | Path, name: str = "resnet-tiny", num_classes: int = 5, input_size: int = 224
) -> torch.nn.Module:
    """Build a network and load a plain state_dict checkpoint (``weights_only=True``), in eval mode.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the checkpoint does not fit the network (wrong architecture or class count).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    net = get_network(name, num_classes, input_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors for a file that is not a checkpoint
        raise ValueError(f"{path} is not a readable model checkpoint (a plain state_dict): {err}".splitlines()[0]) from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} does not fit network {name!r} with {num_classes} classes: {str(err).splitlines()[0]}"
        ) from err
    return net.eval()


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORK_NAMES)}.")


@dataclass
class Surrogate:
    """A classifier in eval mode plus its preprocessing contract: what the optimizers attack."""

    network: torch.nn.Module
    spec: ModelSpec

    def __post_init__(self) -> None:
        if not isinstance(self.network, torch.nn.Module):
            raise TypeError(f"Surrogate.network must be a torch.nn.Module, got {type(self.network).__name__}.")
        if not isinstance(self.spec, ModelSpec):
            raise TypeError(f"Surrogate.spec must be a ModelSpec, got {type(self.spec).__name__}.")
        # BatchNorm/dropout in train mode would make every prediction wrong in a different way.
        self.network.eval()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> torch.device:
        """Where the network's weights are: inputs go there, logits come back to the caller's device."""
        param = next(self.network.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, name: str = "resnet-tiny", num_classes: int = 5, input_size: int = 224
    ) -> "Surrogate":
        return cls(load_classifier(checkpoint, name, num_classes, input_size), model_spec(name, input_size))


def load_surrogate(
    checkpoint: str | Path, name: str = "resnet-tiny", num_classes: int = 5, input_size: int = 224,
    device: str | torch.device | None = None,
) -> Surrogate:
    """A :class:`Surrogate` from a named network and a plain state_dict checkpoint (for bundle configs).

    ``device`` (e.g. ``"cuda:1"``, one GPU per rank in multi_process_inference.json) moves the network there.
    """
    surrogate = Surrogate.from_checkpoint(checkpoint, name, num_classes, input_size)
    if device is not None:
        surrogate.network.to(device)
    return surrogate
