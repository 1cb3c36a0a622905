"""The networks of ``reward-mnist``: the pre-trained unconditional MNIST DDPM and the
guidance classifier, their seeded builders (``diffhpo assets build mnist-ddpm`` and
``diffhpo assets build guidance-classifier``) and loaders.

Pre-trained model (``assets/mnist_ddpm.pt``)
    A diffusers ``UNet2DModel`` (:data:`UNET_CONFIG`: 28 x 28 x 1, channels 16/32/64, one
    ResNet block per level, self-attention at 7 x 7; about 0.69 M parameters, 2.7 MB)
    trained by epsilon-prediction denoising (Ho et al. 2020) on mnist5k's train split
    (4,000 images, never the held-out split used as FID reference) under diffusers'
    cosine schedule (``squaredcos_cap_v2``, T = 1000). Adam with warm-up and cosine
    decay, gradient clipping, and an exponential moving average (EMA) of the weights: the
    EMA copy is what is shipped: :data:`DDPM_STEPS` = 16,000 steps of 64 (about 2 h on 2
    CPU cores; ``--checkpoints DIR`` spreads it over several runs). Sampled with diffusers'
    ``DDIMScheduler`` (:data:`SAMPLE_STEPS` steps, "trailing" spacing so the first step is
    t = T); reward-mnist uses ``eta = 1`` (ancestral steps). Measured on 1,000 samples
    (``benchmarks/mnist_ddpm_quality.py``): eta = 1 gives 85.9% classified with probability
    >= 0.9, FID 1.1 and IS 8.15 against the held-out split (mnist-net), every digit 62 to 126
    times; deterministic DDIM (eta = 0) 83.3%, FID 3.6, IS 7.77, digit 1 only 32 times. The
    build's training history monitors 200 deterministic DDIM samples; it rose from 65% at
    2,000 steps to 80% at 16,000 (a 4,000-step training reached 63%).

Guidance classifier (``assets/mnist_guidance_classifier.pt``)
    The lower-level reward's network: a LeNet-style CNN (:class:`GuidanceClassifier`,
    two 5 x 5 convolutions, SiLU, average pooling, a 64-unit hidden layer; about 114 k parameters), a different
    architecture and training from the held-out feature network of the metrics (which
    gives the upper-level score), trained on clean mnist5k train images for a few epochs
    without augmentation or noise. *Not* noise-robust, by choice: guidance evaluates it on
    the predicted clean image ``x0_hat`` (Algorithm 5), and a plain classifier can be
    over-optimised, which is what the upper score (the other network) must reveal. SiLU
    instead of ReLU gives smooth input gradients. Input: float images in [-1, 1] (the
    diffusion model's range), differentiable.

Both builders are deterministic for a seed, torch version and thread count
(:func:`diffhpo.bench.toolkit.assets._deterministic`), like the feature network's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

DDPM_FILE = "mnist_ddpm.pt"
GUIDANCE_FILE = "mnist_guidance_classifier.pt"

UNET_CONFIG: dict = {
    "sample_size": 28,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [16, 32, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}
SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}
SAMPLE_STEPS = 25

DDPM_STEPS = 16000
DDPM_BATCH = 64
DDPM_LR = 1e-3
DDPM_WARMUP = 200
DDPM_EMA = 0.999
DDPM_EVAL_EVERY = 1000
DDPM_EVAL_SAMPLES = 200
CONFIDENCE = 0.9

GUIDANCE_EPOCHS = 4
GUIDANCE_BATCH = 64
GUIDANCE_LR = 2e-3


# --- helpers shared by the builders and the task ------------------------------------------


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float32 in [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def build_unet(config: dict | None = None):
    from diffusers import UNet2DModel

    return UNet2DModel(**dict(config or UNET_CONFIG))


def feature_net_logits(net, images: torch.Tensor) -> torch.Tensor:
    """Logits of the metrics' feature network for float images in [-1, 1], differentiable
    (the same normalisation as :func:`diffhpo.bench.toolkit.metrics.feature_net.preprocess`)."""
    from ...bench.toolkit.metrics.feature_net import normalise

    return net(normalise((images.float() + 1.0) / 2.0))[1]


@torch.no_grad()
def confidence(images_uint8: torch.Tensor, net=None, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max softmax probability, predicted digit)`` of each uint8 image under the feature network."""
    from ...bench.toolkit.metrics.feature_net import load_feature_net, preprocess

    net = net or load_feature_net()
    probs = torch.cat([F.softmax(net(preprocess(images_uint8[i : i + batch_size]))[1], dim=1)
                       for i in range(0, len(images_uint8), batch_size)])
    conf, pred = probs.max(dim=1)
    return conf, pred


def confident_fraction(images_uint8: torch.Tensor, threshold: float = CONFIDENCE, net=None) -> float:
    """Fraction of images the feature network classifies with probability >= ``threshold``."""
    conf, _ = confidence(images_uint8, net)
    return float((conf >= threshold).double().mean())


# --- the DDPM -------------------------------------------------------------------------------


@dataclass
class PretrainedDdpm:
    """A loaded pixel-space model: the UNet (eval mode, no grad) and its scheduler config."""

    unet: torch.nn.Module
    scheduler_config: dict
    source: str
    sample_steps: int = SAMPLE_STEPS

    def eps(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        return self.unet(x, t).sample

    def scheduler(self, steps: int | None = None):
        from .guidance import ddim_scheduler

        return ddim_scheduler(self.scheduler_config, steps or self.sample_steps)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        return (c.in_channels, size, size)


def load_mnist_ddpm(source: str | Path | None = None) -> PretrainedDdpm:
    """The shipped DDPM (checksum-verified) when ``source`` is empty, else a diffusers
    ``DDPMPipeline`` folder or hub id holding ``unet/`` and ``scheduler/`` (loaded with
    ``from_pretrained``; a hub id needs the network or the Hugging Face cache)."""
    from ...bench.toolkit.assets import verified_asset
    from ...bench.contracts.errors import DiffhpoError

    if not source:
        return load_built_ddpm(verified_asset(DDPM_FILE), label=f"assets/{DDPM_FILE}")
    from diffusers import DDIMScheduler, UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(str(source), subfolder="unet")
        sched = dict(DDIMScheduler.from_pretrained(str(source), subfolder="scheduler").config)
    except (OSError, ValueError) as exc:
        raise DiffhpoError(
            f"MNIST diffusion model {str(source)!r} could not be loaded ({str(exc).splitlines()[0]}); "
            "leave the option empty for the shipped model or give a DDPMPipeline folder (unet/, scheduler/)"
        ) from None
    sched.setdefault("timestep_spacing", "trailing")
    unet.requires_grad_(False).eval()
    return PretrainedDdpm(unet=unet, scheduler_config=sched, source=str(source))


def load_built_ddpm(path: str | Path, label: str | None = None) -> PretrainedDdpm:
    """A DDPM file written by :func:`build_mnist_ddpm` (its JSON record beside it: the UNet
    and scheduler configs), in eval mode, no grad. No checksum check: the shipped file goes
    through :func:`load_mnist_ddpm`, which verifies it first."""
    from ...bench.toolkit.assets import read_record

    record = read_record(path)
    unet = build_unet(record["unet_config"])
    unet.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    unet.requires_grad_(False).eval()
    return PretrainedDdpm(unet=unet, scheduler_config=dict(record["scheduler_config"]),
                          source=label or f"{path} ({record['steps']} steps)")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _sample_quality(model: PretrainedDdpm, n: int, seed: int, net, steps: int = SAMPLE_STEPS) -> dict:
    from ...bench.toolkit.metrics.images import to_uint8
    from .guidance import sample_images

    noise = torch.randn((n,) + model.image_shape, generator=torch.Generator().manual_seed(seed))
    run = sample_images(model.eps, lambda: model.scheduler(steps), noise, batch_size=100)
    conf, pred = confidence(to_uint8(run.samples), net)
    return {
        "confident_fraction": round(float((conf >= CONFIDENCE).double().mean()), 4),
        "mean_confidence": round(float(conf.mean()), 4),
        "digit_counts": torch.bincount(pred, minlength=10).tolist(),
    }


def build_mnist_ddpm(
    out_dir: str | Path,
    seed: int = 0,
    *,
    steps: int = DDPM_STEPS,
    train_images: int | None = None,
    eval_every: int = DDPM_EVAL_EVERY,
    eval_samples: int = DDPM_EVAL_SAMPLES,
    eval_steps: int = SAMPLE_STEPS,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the unconditional MNIST DDPM on mnist5k's train split and save the EMA weights
    with their record (architecture, schedule, training history with sample quality).

    Each step: a batch of 64 images (epochs visit the images in a seeded permutation),
    timesteps uniform on 0..T-1, ``x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) eps``,
    loss ``|| eps_theta(x_t, t) - eps ||^2``. Every ``eval_every`` steps the EMA model draws
    ``eval_samples`` images (DDIM, :data:`SAMPLE_STEPS` steps, fixed noise) and the
    feature network measures the fraction classified with probability >= 0.9.
    ``steps``, ``train_images`` and ``eval_steps`` exist for quick test builds and longer
    trainings (``diffhpo assets build mnist-ddpm --steps N``); the record says which were used.

    ``checkpoint_dir``: after every evaluation the whole training state (network, EMA,
    optimiser, batch generator, epoch order, history) is written there, and a build with the
    same settings resumes from it: an interrupted build loses at most ``eval_every`` steps,
    and the resumed weights are bit-identical to an uninterrupted build's (same seed, torch
    version and thread count). Hours of CPU training can so be spread over several runs.
    """
    import copy

    from diffusers import DDPMScheduler

    from ...bench.toolkit.assets import _deterministic, save_asset
    from ...bench.toolkit.data import load_mnist
    from ...bench.toolkit.metrics.feature_net import load_feature_net

    log = log or (lambda line: None)
    started = time.perf_counter()
    images, _ = load_mnist("mnist5k", "train")
    images = images[:train_images]
    data = to_unit_range(images)
    train_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                   if k not in ("set_alpha_to_one", "steps_offset")})
    alphabar = train_sched.alphas_cumprod.float()
    T = train_sched.config.num_train_timesteps
    net = load_feature_net()
    history = []
    ckpt = _DdpmCheckpoint(checkpoint_dir, seed=seed, steps=steps, train_images=len(data),
                           eval_every=eval_every, eval_samples=eval_samples, eval_steps=eval_steps)
    with _deterministic(seed) as gen:
        unet = build_unet()
        ema = copy.deepcopy(unet).requires_grad_(False).eval()
        opt = torch.optim.Adam(unet.parameters(), lr=DDPM_LR)
        per_epoch = max(1, len(data) // DDPM_BATCH)
        order = None
        running = 0.0
        start, spent = 0, 0.0
        state = ckpt.load()
        if state is not None:
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            order, history, start, spent = state["order"], state["history"], state["step"], state["elapsed_s"]
            started -= spent
            log(f"resumed from {ckpt.path} at step {start}/{steps}")
        for step in range(start, steps):
            epoch, j = divmod(step, per_epoch)
            if j == 0:
                order = torch.randperm(len(data), generator=gen)
            x0 = data[order[j * DDPM_BATCH : (j + 1) * DDPM_BATCH]]
            t = torch.randint(0, T, (len(x0),), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            ab = alphabar[t].view(-1, 1, 1, 1)
            unet.train()
            loss = F.mse_loss(unet(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = DDPM_LR * _lr_factor(step, steps, DDPM_WARMUP)
            opt.step()
            decay = min(DDPM_EMA, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), unet.parameters()):
                    e.lerp_(p.detach(), 1.0 - decay)
            running += loss.item()
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                n_avg = (step % eval_every) + 1
                model = PretrainedDdpm(ema, dict(SCHEDULER_CONFIG), "training")
                with torch.random.fork_rng(devices=[]):
                    quality = _sample_quality(model, eval_samples, seed=12345, net=net, steps=eval_steps)
                entry = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 2),
                         "train_loss": round(running / n_avg, 5), **quality,
                         "elapsed_s": round(time.perf_counter() - started, 1)}
                history.append(entry)
                running = 0.0
                ckpt.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                           "gen": gen.get_state(), "order": order, "history": history, "step": step + 1,
                           "elapsed_s": entry["elapsed_s"]})
                log(f"step {step + 1}/{steps}: loss {entry['train_loss']:.4f}, "
                    f"confident {quality['confident_fraction']:.3f}, digits {quality['digit_counts']}, "
                    f"{entry['elapsed_s']:.0f} s")
    default_run = train_images is None and eval_steps == SAMPLE_STEPS
    steps_flag = "" if steps == DDPM_STEPS else f" --steps {steps}"
    record = {
        "asset": "mnist-ddpm",
        "description": "unconditional MNIST DDPM (epsilon prediction), the pre-trained model of reward-mnist",
        "architecture": "diffusers UNet2DModel, see unet_config",
        "unet_config": UNET_CONFIG,
        "scheduler_config": SCHEDULER_CONFIG,
        "sample_steps": SAMPLE_STEPS,
        "parameters": sum(p.numel() for p in ema.parameters()),
        "seed": seed,
        "dataset": "mnist5k",
        "train_size": len(data),
        "steps": steps,
        "batch_size": DDPM_BATCH,
        "optimizer": f"Adam(lr={DDPM_LR}), warm-up {DDPM_WARMUP} steps then cosine decay to 5%, grad-norm clip 1.0",
        "ema_decay": DDPM_EMA,
        "weights": "EMA",
        "quality_check": f"fraction of {eval_samples} DDIM samples (fixed noise) classified with probability "
                         f">= {CONFIDENCE} by the feature network",
        "history": history,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "resumed": ckpt.resumed,
        "command": f"diffhpo assets build mnist-ddpm --seed {seed}{steps_flag}" if default_run
        else f"build_mnist_ddpm(seed={seed}, steps={steps}, train_images={train_images}, eval_steps={eval_steps})",
    }
    return save_asset(ema.state_dict(), out_dir, DDPM_FILE, record)


class _DdpmCheckpoint:
    """The training state of one DDPM build in ``folder`` (or nowhere when ``folder`` is
    None), under a name made of every setting the weights depend on."""

    def __init__(self, folder: str | Path | None, **settings) -> None:
        import hashlib
        import json

        self.resumed = False
        self.path = None
        if folder is not None:
            blob = json.dumps({**settings, "unet": UNET_CONFIG, "scheduler": SCHEDULER_CONFIG, "batch": DDPM_BATCH,
                               "lr": DDPM_LR, "warmup": DDPM_WARMUP, "ema": DDPM_EMA, "torch": torch.__version__,
                               "threads": torch.get_num_threads()}, sort_keys=True)
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.path = Path(folder) / f"mnist_ddpm_{hashlib.sha256(blob.encode()).hexdigest()[:16]}.ckpt"

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        self.resumed = True
        return torch.load(self.path, weights_only=True)

    def save(self, state: dict) -> None:
        from ...bench.toolkit.cache import torch_save_atomic

        if self.path is not None:
            torch_save_atomic(state, self.path)


# --- the guidance classifier --------------------------------------------------------------


class GuidanceClassifier(nn.Module):
    """LeNet-style digit classifier on float images in [-1, 1]; ``forward`` returns logits."""

    def __init__(self, width: int = 16, hidden: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2), nn.SiLU(), nn.AvgPool2d(2),  # 14 x 14
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.SiLU(), nn.AvgPool2d(2),  # 7 x 7
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(2 * width * 49, hidden), nn.SiLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        return self.fc(self.conv(x))


def load_guidance_classifier(weights_path: str | Path | None = None) -> GuidanceClassifier:
    """The guidance classifier in eval mode, from a path or the shipped, verified weights."""
    from ...bench.toolkit.assets import read_record, verified_asset

    path = Path(weights_path) if weights_path else verified_asset(GUIDANCE_FILE)
    record = read_record(path)
    net = GuidanceClassifier(**record.get("init", {}))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.requires_grad_(False).eval()


def build_guidance_classifier(
    out_dir: str | Path,
    seed: int = 0,
    *,
    epochs: int = GUIDANCE_EPOCHS,
    train_images: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the guidance classifier on clean mnist5k train images (Adam, batch 64,
    cross-entropy, no augmentation) and save it with its record (held-out accuracy)."""
    from ...bench.toolkit.assets import _deterministic, save_asset
    from ...bench.toolkit.data import load_mnist

    log = log or (lambda line: None)
    started = time.perf_counter()
    train_x, train_y = load_mnist("mnist5k", "train")
    train_x, train_y = to_unit_range(train_x[:train_images]), train_y[:train_images]
    held_x, held_y = load_mnist("mnist5k", "heldout")
    held_x = to_unit_range(held_x)
    history = []
    with _deterministic(seed) as gen:
        net = GuidanceClassifier()
        opt = torch.optim.Adam(net.parameters(), lr=GUIDANCE_LR)
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(train_x), generator=gen)
            total = 0.0
            for start in range(0, len(order), GUIDANCE_BATCH):
                idx = order[start : start + GUIDANCE_BATCH]
                loss = F.cross_entropy(net(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            net.eval()
            with torch.no_grad():
                acc = float((net(held_x).argmax(1) == held_y).double().mean())
            history.append({"epoch": epoch + 1, "train_loss": round(total / len(train_x), 5),
                            "heldout_accuracy": acc})
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / len(train_x):.4f}, held-out accuracy {acc:.4f}")
    default_run = epochs == GUIDANCE_EPOCHS and train_images is None
    record = {
        "asset": "guidance-classifier",
        "description": "MNIST guidance classifier: the lower-level reward r2 = log p(c | x) of reward-mnist",
        "architecture": "GuidanceClassifier(width=16, hidden=64): conv5x5-SiLU-avgpool x2, fc64-SiLU, fc10; "
                        "input float in [-1, 1]",
        "init": {"width": 16, "hidden": 64},
        "parameters": sum(p.numel() for p in net.parameters()),
        "seed": seed,
        "dataset": "mnist5k",
        "train_size": len(train_x),
        "heldout_size": len(held_x),
        "epochs": epochs,
        "batch_size": GUIDANCE_BATCH,
        "optimizer": f"Adam(lr={GUIDANCE_LR})",
        "augmentation": "none (clean images; not noise-robust by choice)",
        "heldout_accuracy": history[-1]["heldout_accuracy"] if history else None,
        "history": history,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "command": f"diffhpo assets build guidance-classifier --seed {seed}" if default_run
        else f"build_guidance_classifier(seed={seed}, epochs={epochs}, train_images={train_images})",
    }
    return save_asset(net.state_dict(), out_dir, GUIDANCE_FILE, record)
