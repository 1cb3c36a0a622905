"""Networks shipped in ``assets/``: where they are, their checksums, and how they were made.

Every shipped network ``assets/<stem>.pt`` comes with ``assets/<stem>.json``, the
*training record* written by the builder that trained it: the seed, the data, the
epochs, the result (e.g. held-out accuracy), the torch version, the wall time and the
weights' SHA-256. :func:`verified_asset` returns the path of a shipped file after
checking it against that checksum, so a corrupted or hand-edited file fails loudly.

Builders are seeded functions ``build(out_dir, seed) -> record`` registered in
:data:`ASSETS` under a short name; ``diffhpo assets build NAME --out DIR --seed N`` runs
one (see :mod:`diffhpo.bench.assets_cli`). To add an asset (e.g. an MNIST DDPM), write a
builder that trains, saves with :func:`save_asset` and returns its record, then call
:func:`register_asset` (a task's own networks register from the task's package, e.g.
``tasks/reward/__init__.py``).

Builders train on CPU and are deterministic for a given seed, torch version and thread
count (``torch.use_deterministic_algorithms`` is on while they run); bit-identical
weights across machines are not promised.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from . import atomic
from .errors import DiffhpoError

if TYPE_CHECKING:
    import torch

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class AssetSpec:
    """A shipped network: its file in ``assets/`` and the builder that makes it."""

    name: str
    filename: str
    description: str
    build: Callable[..., dict]


ASSETS: dict[str, AssetSpec] = {}


def all_assets() -> dict[str, AssetSpec]:
    """Every registered asset: this module's, and those the tasks register when the task
    registry loads them (a task's networks are built by code in its own package)."""
    from .registry import TASKS

    TASKS.load_entry_points()
    return ASSETS


def register_asset(spec: AssetSpec) -> AssetSpec:
    if spec.name in ASSETS:
        raise ValueError(f"asset {spec.name!r} is already registered")
    ASSETS[spec.name] = spec
    return spec


# --- files, records, checksums ------------------------------------------------------------


def record_path(weights_path: str | Path) -> Path:
    """``x/foo.pt`` -> ``x/foo.json``."""
    return Path(weights_path).with_suffix(".json")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(weights_path: str | Path) -> dict:
    path = record_path(weights_path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffhpoError(f"training record {path} is missing") from None


def verified_asset(filename: str, directory: str | Path | None = None) -> Path:
    """Path of ``filename`` in ``directory`` (default: the shipped ``assets/``) after a checksum check."""
    path = Path(directory or ASSETS_DIR) / filename
    if not path.exists():
        raise DiffhpoError(f"asset {path} is missing; rebuild it with `diffhpo assets build` or reinstall diffhpo")
    expected = read_record(path).get("sha256")
    actual = sha256_file(path)
    if actual != expected:
        raise DiffhpoError(
            f"asset {path} does not match its record {record_path(path).name} "
            f"(sha256 {actual[:12]}..., expected {str(expected)[:12]}...); rebuild it with `diffhpo assets build`"
        )
    return path


def save_asset(state_dict: dict, out_dir: str | Path, filename: str, record: dict) -> dict:
    """Write ``out_dir/filename`` (a detached, contiguous copy of the state dict) and its
    JSON record; return the full record."""
    import torch

    state = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    # Serialise in memory: torch.save names the zip records after the target file, so
    # saving to a temporary name would make the bytes (and the checksum) depend on it.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    full = {
        "file": filename,
        **record,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "num_threads": torch.get_num_threads(),
    }
    atomic.write_text(record_path(path), json.dumps(full, indent=2) + "\n")
    return full


@contextmanager
def _deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed torch, turn deterministic algorithms on, and restore the previous setting."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(previous)


# --- feature network -------------------------------------------------------------------------

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

    from .data import load_mnist
    from .metrics.feature_net import WEIGHTS_FILE, MnistFeatureNet, accuracy, preprocess

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


def build_asset(name: str, out_dir: str | Path | None = None, seed: int = 0, log=None, **options) -> dict:
    """Run the builder of ``name`` (default output: the shipped ``assets/``); ``options`` go to
    the builder as keyword arguments."""
    if name not in all_assets():
        raise DiffhpoError(f"unknown asset {name!r}; valid: {', '.join(ASSETS)}")
    return ASSETS[name].build(Path(out_dir) if out_dir is not None else ASSETS_DIR, seed=seed, log=log, **options)


if __name__ == "__main__":  # pragma: no cover - convenience: python -m diffhpo.bench.assets NAME
    build_asset(sys.argv[1] if len(sys.argv) > 1 else "feature-net", log=print)
