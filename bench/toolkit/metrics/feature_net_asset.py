"""The feature network's asset: how ``assets/mnist_feature_net.pt`` was built
(``diffhpo assets build feature-net``), registered as the asset ``feature-net``.

Apart from :mod:`.feature_net` (the network and its torch-fidelity extractor), so that the asset
registry (:mod:`diffhpo.bench.toolkit.assets`) and the network do not import each other: this
module imports both.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..assets import AssetSpec, _deterministic, register_asset, save_asset
from ..data import load_mnist
from .feature_net import WEIGHTS_FILE, MnistFeatureNet, accuracy, preprocess

if TYPE_CHECKING:
    import torch

FEATURE_NET_EPOCHS = 12
FEATURE_NET_BATCH = 64
FEATURE_NET_LR = 3e-3


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random rotation (+-12 deg), scale (0.9-1.1) and shift (+-2 px) of float images."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # grid units: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def build_feature_net(
    out_dir: str | Path,
    seed: int = 0,
    *,
    epochs: int = FEATURE_NET_EPOCHS,
    train_images: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the MNIST feature network on mnist5k's train split and save it with its record.

    AdamW with a one-cycle learning-rate schedule, batch 64, random affine augmentation
    (digits in generated images are not perfectly centred). Evaluated on mnist5k's
    held-out split, which it never sees during training. About a minute and a half on 2
    CPU cores. ``epochs`` and ``train_images`` (the first N training images; default all
    4,000) exist for quick test builds; the shipped weights use the defaults.
    """
    import torch
    import torch.nn.functional as F

    log = log or (lambda line: None)
    started = time.perf_counter()
    train_x, train_y = load_mnist("mnist5k", "train")
    train_x, train_y = train_x[:train_images], train_y[:train_images]
    held_x, held_y = load_mnist("mnist5k", "heldout")
    with _deterministic(seed) as gen:
        net = MnistFeatureNet()
        inputs = preprocess(train_x)
        background = float(preprocess(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).flatten()[0])
        steps_per_epoch = math.ceil(len(inputs) / FEATURE_NET_BATCH)
        opt = torch.optim.AdamW(net.parameters(), lr=FEATURE_NET_LR, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, FEATURE_NET_LR, total_steps=epochs * steps_per_epoch)
        history = []
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(inputs), generator=gen)
            total, count = 0.0, 0
            for start in range(0, len(order), FEATURE_NET_BATCH):
                idx = order[start : start + FEATURE_NET_BATCH]
                # shift so that the background is 0 while warping: padding then looks like background
                x = random_affine(inputs[idx] - background, gen) + background
                loss = F.cross_entropy(net(x)[1], train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                count += len(idx)
            net.eval()
            acc = accuracy(net, held_x, held_y)
            history.append({"epoch": epoch + 1, "train_loss": round(total / count, 5), "heldout_accuracy": acc})
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / count:.4f}, held-out accuracy {acc:.4f}")
    final_acc = history[-1]["heldout_accuracy"] if history else accuracy(net.eval(), held_x, held_y)
    default_run = epochs == FEATURE_NET_EPOCHS and train_images is None
    record = {
        "asset": "feature-net",
        "description": "MNIST feature network for FID/KID (penultimate, 128-d) and IS (logits)",
        "architecture": "MnistFeatureNet(width=32, feature_dim=128): 4 conv3x3-BN-ReLU, 2 max-pools, GAP, fc128, fc10",
        "parameters": sum(p.numel() for p in net.parameters()),
        "seed": seed,
        "dataset": "mnist5k",
        "train_size": len(train_x),
        "heldout_size": len(held_x),
        "epochs": epochs,
        "batch_size": FEATURE_NET_BATCH,
        "optimizer": f"AdamW(lr={FEATURE_NET_LR}, weight_decay=1e-4), OneCycleLR",
        "augmentation": "random affine: rotation +-12 deg, scale 0.9-1.1, shift +-2 px",
        "heldout_accuracy": final_acc,
        "history": history,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "command": f"diffhpo assets build feature-net --seed {seed}" if default_run
        else f"build_feature_net(seed={seed}, epochs={epochs}, train_images={train_images})",
    }
    return save_asset(net.state_dict(), out_dir, WEIGHTS_FILE, record)


register_asset(
    AssetSpec(
        name="feature-net",
        filename="mnist_feature_net.pt",
        description="MNIST CNN for FID/KID/IS (torch-fidelity feature extractor 'mnist-net')",
        build=build_feature_net,
    )
)
