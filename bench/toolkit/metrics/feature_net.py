"""The MNIST feature network and its torch-fidelity feature extractor ``mnist-net``.

Why a project network: torch-fidelity's standard InceptionV3 needs a 92 MB weights
download and was trained on ImageNet photographs, not on 28 x 28 digits. A small CNN
trained on MNIST by this project (``diffhpo assets build feature-net``; weights shipped
in ``assets/mnist_feature_net.pt`` with a checksum and training record) always works
offline, runs in milliseconds on a CPU, and measures what matters for digits.

:class:`MnistFeatureNet` is ``4 x (conv 3x3, batch norm, ReLU)`` with two max-pools,
global average pooling, a 128-unit fully connected layer with ReLU (the *penultimate*
features, used for FID and KID as Inception's 2048-d pool features are) and a 10-way
linear layer (the *logits*, used for the Inception Score, as Inception's logits are).

:class:`MnistNetFeatureExtractor` wraps it for torch-fidelity: it takes uint8 images
``N x C x H x W`` (1 or 3 channels, any size: RGB is averaged to grey, other sizes are
resized bilinearly to 28 x 28) and is registered under :data:`FEATURE_EXTRACTOR_NAME`
when this module is imported.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ...contracts.errors import DiffhpoError
from ..assets import verified_asset

FEATURE_EXTRACTOR_NAME = "mnist-net"
WEIGHTS_FILE = "mnist_feature_net.pt"
PENULTIMATE = "penultimate"
LOGITS = "logits"
FEATURE_DIM = 128
NUM_CLASSES = 10
# The usual MNIST pixel mean and standard deviation (of x / 255).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MnistFeatureNet(nn.Module):
    """Small CNN classifier for 28 x 28 digits; ``forward`` returns ``(features, logits)``."""

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM, num_classes: int = NUM_CLASSES):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.conv = nn.Sequential(
            *block(1, width), *block(width, width), nn.MaxPool2d(2),  # 14 x 14
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),  # 7 x 7
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(2 * width, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: float ``N x 1 x 28 x 28`` from :func:`preprocess`."""
        features = self.fc(self.conv(x))
        return features, self.head(self.dropout(features))


def to_input_size(x: torch.Tensor) -> torch.Tensor:
    """Float images ``N x C x H x W`` to the network's 28 x 28: bilinear, antialiased when
    shrinking (plain bilinear when enlarging: the antialiased kernel only adds rounding
    noise there); differentiable, the identity at 28 x 28."""
    if tuple(x.shape[-2:]) == (28, 28):
        return x
    return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=x.shape[-1] > 28)


def normalise(x01: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (``N x 1|3 x H x W``) to the network's input: grey, 28 x 28,
    standardised with MNIST's mean and std. Differentiable (the bilevel and guidance code
    call it on sampler outputs)."""
    if x01.shape[1] == 3:
        x01 = x01.mean(dim=1, keepdim=True)
    return (to_input_size(x01) - MNIST_MEAN) / MNIST_STD


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``N x C x H x W`` (C = 1 or 3) to the normalised float input of the network."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DiffhpoError(f"expected uint8 images N x 1|3 x H x W, got {images.dtype} {tuple(images.shape)}")
    return normalise(images.float() / 255.0)


def load_feature_net(weights_path: str | Path | None = None) -> MnistFeatureNet:
    """The network in eval mode, from ``weights_path`` or the shipped, checksum-verified weights."""
    path = Path(weights_path) if weights_path is not None else verified_asset(WEIGHTS_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiffhpoError(f"feature-network weights not found: {path}") from None
    net = MnistFeatureNet()
    net.load_state_dict(state)
    net.requires_grad_(False)
    return net.eval()


@torch.no_grad()
def classify(net: MnistFeatureNet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted digit of each uint8 image."""
    net.eval()
    preds = [net(preprocess(images[i : i + batch_size]))[1].argmax(dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(preds)


def accuracy(net: MnistFeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    return float((classify(net, images) == labels).double().mean())


class MnistNetFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor ``mnist-net``: ``penultimate`` (128-d) and ``logits`` (10).

    ``feature_extractor_weights_path`` (torch-fidelity's keyword) selects other weights;
    by default the shipped ones are loaded after their checksum is verified.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = load_feature_net(feature_extractor_weights_path)

    def forward(self, x):
        features, logits = self.net(preprocess(x))
        out = {PENULTIMATE: features, LOGITS: logits}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return PENULTIMATE, LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": LOGITS, "fid": PENULTIMATE, "kid": PENULTIMATE, "prc": PENULTIMATE}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)


if FEATURE_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(FEATURE_EXTRACTOR_NAME, MnistNetFeatureExtractor)
