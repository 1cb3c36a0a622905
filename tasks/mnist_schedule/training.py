"""Lower level of Application 2 (method.md): epsilon-prediction denoising training of a
diffusers ``UNet2DModel`` under a noise schedule.

The score-matching loss (Ho et al. 2020, eq. 14; method.md "Lower level")

    L_SM(theta; q) = E_{x0, t, eps} || eps_theta( sqrt(alphabar_t(q)) x0 + sqrt(1 - alphabar_t(q)) eps, t ) - eps ||^2

with ``t`` uniform on ``0 .. T-1`` (diffusers' indexing: ``alphabar[t]`` belongs to step
``t + 1``), ``eps ~ N(0, I)`` and images scaled to ``[-1, 1]``. :func:`denoising_loss` is
differentiable in the network weights *and*, through ``alphabar``, in the schedule
parameters ``q`` (the analytic ``grad_q g`` of the bilevel method).

Randomness is a pure function of ``(seed, step)`` (:class:`BatchStream`): epoch ``e``
visits the training images in the permutation drawn from ``(seed, e)``, and step ``i``'s
timesteps and noises come from ``(seed, i)``. A training can therefore resume at any step
and two runs with the same seed see the same batches, on any schedule (common random
numbers across schedules: the comparison of two schedules is not blurred by data order).

Optimiser: Adam, linear warm-up then a cosine decay to 0 over a full training (or a
constant learning rate: the single-loop networks, which have no end), gradient-norm clipping;
optional exponential moving average (EMA) of the weights (:class:`EMA`), whose copy is
the network that is sampled when enabled.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ...bench.toolkit.seeding import derive_seed

# purpose tags for derive_seed: keep the random streams of different uses apart
INIT, EPOCH, STEP = 11, 12, 13


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of the ``UNet2DModel`` (one channel, ``sample_size`` pixels square)."""

    channels: tuple[int, ...] = (16, 32, 32)
    attention: tuple[bool, ...] = (False, False, True)  # per resolution level, down path
    layers_per_block: int = 1
    norm_num_groups: int = 8
    sample_size: int = 28  # image side the network is trained and sampled at


def build_unet(spec: UNetSpec, seed: int):
    """A freshly initialised ``UNet2DModel``; the initial weights depend only on ``seed``."""
    from diffusers import UNet2DModel

    channels = tuple(int(c) for c in spec.channels)
    attention = tuple(_as_bool(a) for a in spec.attention)
    if len(attention) != len(channels):
        raise ValueError("unet_attention needs one flag per entry of unet_channels")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, INIT))
        model = UNet2DModel(
            sample_size=int(spec.sample_size), in_channels=1, out_channels=1, block_out_channels=channels,
            down_block_types=down, up_block_types=up, layers_per_block=int(spec.layers_per_block),
            norm_num_groups=int(spec.norm_num_groups), attention_head_dim=8,
        )
    return model


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on", "attn")
    return bool(v)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float32 in [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


class BatchStream:
    """Minibatches ``(x0, t, eps)`` as a pure function of ``(seed, step)`` (see module doc)."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, T: int) -> None:
        self.data, self.batch_size, self.seed, self.T = data, int(batch_size), int(seed), int(T)
        self.per_epoch = max(1, len(data) // self.batch_size)
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, EPOCH, epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.data), generator=g), epoch
        return self._perm

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, j = divmod(int(step), self.per_epoch)
        idx = self._permutation(epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        g = torch.Generator().manual_seed(derive_seed(self.seed, STEP, step))
        t = torch.randint(0, self.T, (len(idx),), generator=g)
        eps = torch.randn((len(idx),) + tuple(self.data.shape[1:]), generator=g)
        return self.data[idx], t, eps


def denoising_loss(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphabar: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo estimate of ``L_SM`` on one batch (mean over pixels and images).

    ``alphabar`` (length T) may require grad; the loss is then differentiable in ``q``.
    """
    ab = alphabar[t].to(x0.dtype).view((-1,) + (1,) * (x0.dim() - 1))  # images or vectors
    xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
    return F.mse_loss(model(xt, t).sample, eps)


class EMA:
    """Exponential moving average of a network's weights (decay warm-up ``min(d, (1+n)/(10+n))``)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.model.load_state_dict(state["model"])


@dataclass(frozen=True)
class OptimSpec:
    lr: float = 2e-3
    warmup_steps: int = 20
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0: no EMA
    decay_steps: int = 0  # > 0: cosine decay of the learning rate to 0 over this many steps; 0: constant


def make_optimizer(model: torch.nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=spec.lr)


def set_lr(opt: torch.optim.Optimizer, spec: OptimSpec, step: int) -> None:
    """Linear warm-up over ``warmup_steps``, then constant or (``decay_steps > 0``) a cosine
    decay to 0 at step ``decay_steps`` (Loshchilov & Hutter 2017)."""
    scale = min(1.0, (step + 1) / max(1, spec.warmup_steps))
    if spec.decay_steps > 0:
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(step, spec.decay_steps) / spec.decay_steps))
    for group in opt.param_groups:
        group["lr"] = spec.lr * scale


def optimizer_step(model, opt, spec: OptimSpec, step: int, loss: torch.Tensor, ema: EMA | None = None) -> None:
    """Backward, clip, Adam step at ``step``'s learning rate, EMA update."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    apply_step(model, opt, spec, step, ema)


def clip_coefficient(model, spec: OptimSpec) -> float:
    """The factor gradient-norm clipping will apply to ``model``'s current gradients (1: none)."""
    if spec.grad_clip <= 0:
        return 1.0
    norm = float(torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in model.parameters() if p.grad is not None)))
    return min(1.0, spec.grad_clip / (norm + 1e-6))


def apply_step(model, opt, spec: OptimSpec, step: int, ema: EMA | None = None) -> None:
    """Clip the gradients already in ``model`` and take the step."""
    if spec.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
    set_lr(opt, spec, step)
    opt.step()
    if ema is not None:
        ema.update(model)


def train(
    model,
    alphabar: torch.Tensor,
    stream: BatchStream,
    spec: OptimSpec,
    steps: Iterable[int],
    opt: torch.optim.Optimizer | None = None,
    ema: EMA | None = None,
) -> list[float]:
    """Denoising training on the given global ``steps`` (ranges resume a training); returns the losses."""
    opt = opt or make_optimizer(model, spec)
    alphabar = alphabar.detach()
    model.train()
    losses = []
    for step in steps:
        x0, t, eps = stream.batch(step)
        loss = denoising_loss(model, x0, t, eps, alphabar)
        optimizer_step(model, opt, spec, step, loss, ema)
        losses.append(loss.item())
    return losses


def train_checkpointed(
    model,
    alphabar: torch.Tensor,
    stream: BatchStream,
    spec: OptimSpec,
    total_steps: int,
    *,
    ema: EMA | None = None,
    checkpoints: Sequence[float] = (),
    on_checkpoint: Callable[[float, torch.nn.Module], None] | None = None,
) -> list[float]:
    """:func:`train` over ``range(total_steps)``, stopping at each checkpoint (a fraction of
    the training) to call ``on_checkpoint(fraction, network)`` with the network to sample
    (the EMA copy when enabled). The steps, batches and optimiser state are those of one
    uninterrupted :func:`train` call: a checkpoint only samples, so the trained weights are
    the same with or without checkpoints. ``fraction`` is the measured progress
    (steps done / total steps): a trial stopped there costs that fraction of a training."""
    opt = make_optimizer(model, spec)
    ends = sorted({int(round(f * total_steps)) for f in checkpoints} - {0, total_steps}) if on_checkpoint else []
    losses: list[float] = []
    start = 0
    for end in [*ends, total_steps]:
        losses += train(model, alphabar, stream, spec, range(start, end), opt=opt, ema=ema)
        start = end
        if end < total_steps:
            on_checkpoint(end / total_steps, ema.model if ema is not None else model)
    return losses


def epochs_to_steps(epochs: float, n_images: int, batch_size: int) -> int:
    return max(1, int(math.ceil(epochs * n_images / batch_size)))
