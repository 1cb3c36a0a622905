"""Differentiable image rewards, chosen by name: the registry :data:`REWARDS`.

A reward is called as ``reward(images, cond)`` on float images in [-1, 1] (``N x C x H x W``,
the decoded model output) and returns one value per image, differentiable with respect to
the images (guided sampling, paper Algorithm 5, takes its gradient). ``cond`` is the
batch's condition: a target digit (MNIST) or a prompt (Stable Diffusion); rewards that do
not depend on it ignore it.

Rewards are built by factories ``factory(ctx: RewardContext) -> Reward`` registered under a
name. Built in:

``colourfulness``
    Hasler & Suesstrunk (2003) colourfulness ``sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 +
    mu_yb^2)`` of the pixels in [0, 1], ``rg = R - G``, ``yb = (R + G)/2 - B``. No weights.
``aesthetic``
    An aesthetic-style linear head on unit-normalised CLIP image embeddings (the form of
    LAION's linear aesthetic predictor: ``Linear(d, 1)`` on ``e / |e|``). Weights from
    ``aesthetic_weights`` = a torch file holding ``weight`` (1 x d) and ``bias`` (1) for
    the CLIP model in use. ``aesthetic_weights = "random:SEED"`` makes a *random* seeded
    head: for tests only, and labelled so in the reward's description.
``clip-score``
    ``100 * cos(CLIP image embedding, CLIP text embedding of the prompt)``: the
    differentiable form of the CLIP score (no clamp at 0; the reported CLIP score of the
    metrics is ``100 * max(cos, 0)`` with CLIP's own image processor).
``resnet18-head``
    The paper's lower reward (method.md, "What the reference code actually does"): a linear
    head on the 512-d pooled features of a torchvision ResNet-18, ``w . f(x) + 0`` with
    ``w ~ N(0, I / 512)`` drawn from ``resnet_head_seed`` (the reference code's head is random
    and *unseeded*; ours is seeded). Images go to [0, 1], 224 x 224 (bilinear, antialiased)
    and ImageNet normalisation. Backbone weights by path: ``resnet_weights`` = a torch
    state dict of ``torchvision.models.resnet18`` (e.g. the ImageNet one); ``random:SEED``
    is a randomly initialised backbone, for offline tests only.
``ink``
    Mean ink of MNIST-like images (stroke-thickness proxy, reward-mnist ``objective=bold``).
``classifier-logprob``
    ``log p(c | x)`` under the MNIST guidance classifier (shipped, or ``classifier_weights``).
``feature-net-logprob``
    ``log p(c | x)`` under the metrics' held-out MNIST feature network (shipped, or
    ``feature_net_weights``).

External packages add rewards through the ``diffhpo.rewards`` entry-point group; the value
is a factory::

    [project.entry-points."diffhpo.rewards"]
    sharpness = "my_package.rewards:make_sharpness"

    # my_package/rewards.py
    from diffhpo.tasks.reward.rewards import Reward
    def make_sharpness(ctx):
        def fn(images, cond):
            return -(images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        return Reward("sharpness", fn, "minus mean vertical gradient")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from ...bench.contracts.errors import DiffhpoError
from ...bench.contracts.registry import Registry


@dataclass
class RewardContext:
    """What a reward factory gets: options (strings from the task's settings), the device,
    and a loader of the task's CLIP model (``clip()`` returns ``(CLIPModel, CLIPProcessor)``,
    loaded once, or raises when the task has none)."""

    options: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    clip: Callable[[], tuple[Any, Any]] | None = None

    def get_clip(self) -> tuple[Any, Any]:
        if self.clip is None:
            raise DiffhpoError("this reward needs a CLIP model, and the task provides none")
        return self.clip()


@dataclass
class Reward:
    """A named differentiable reward ``fn(images in [-1, 1], cond) -> tensor (N,)``."""

    name: str
    fn: Callable[[torch.Tensor, Any], torch.Tensor]
    description: str = ""
    weights_id: str = ""  # identifies the weights (checksum or path) for the bank cache key

    def __call__(self, images: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out = self.fn(images, cond)
        if out.dim() != 1 or out.shape[0] != images.shape[0]:
            raise DiffhpoError(f"reward {self.name!r} must return one value per image, got shape {tuple(out.shape)}")
        return out


RewardFactory = Callable[[RewardContext], Reward]
REWARDS: Registry[RewardFactory] = Registry("reward", "diffhpo.rewards")


def make_reward(name: str, ctx: RewardContext) -> Reward:
    """Build the reward registered as ``name``."""
    reward = REWARDS.get(name)(ctx)
    if not isinstance(reward, Reward):
        reward = Reward(name, reward)
    return reward


# --- colour ---------------------------------------------------------------------------------


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness of float images in [-1, 1] (0 for grey images)."""
    x = (images.float() + 1.0) / 2.0
    if x.shape[1] == 1:
        return x.new_zeros(x.shape[0]) + 0.0 * x.sum(dim=(1, 2, 3))  # keep the graph
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    sd = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + 1e-12)
    mu = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + 1e-12)
    return sd + 0.3 * mu


def _make_colourfulness(ctx: RewardContext) -> Reward:
    return Reward("colourfulness", lambda images, cond: colourfulness(images),
                  "Hasler-Suesstrunk colourfulness of the image (no weights)", "none")


# --- CLIP-based -----------------------------------------------------------------------------


def clip_pixel_values(images: torch.Tensor, processor, size: int) -> torch.Tensor:
    """Differentiable CLIP preprocessing of float images in [-1, 1]: resize the shorter side
    to ``size`` (bicubic, antialiased), centre crop, normalise with the processor's mean/std
    (what ``CLIPImageProcessor`` does to uint8 images, without the uint8 rounding)."""
    x = (images.float() + 1.0) / 2.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    ip = getattr(processor, "image_processor", processor)
    mean = torch.tensor(ip.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(output) -> torch.Tensor:
    return output if torch.is_tensor(output) else output.pooler_output


def clip_image_embeddings(model, processor, images: torch.Tensor) -> torch.Tensor:
    """Projected CLIP image embeddings of float images in [-1, 1] (differentiable)."""
    size = int(model.config.vision_config.image_size)
    pixels = clip_pixel_values(images, processor, size).to(next(model.parameters()).dtype)
    return _features(model.get_image_features(pixel_values=pixels)).float()


def clip_text_embeddings(model, processor, texts: list[str]) -> torch.Tensor:
    tok = getattr(processor, "tokenizer", processor)
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    inputs = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.no_grad():
        return _features(model.get_text_features(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))).float()


def _make_clip_score(ctx: RewardContext) -> Reward:
    cache: dict[str, torch.Tensor] = {}

    def fn(images: torch.Tensor, cond: Any) -> torch.Tensor:
        model, processor = ctx.get_clip()
        prompt = str(cond)
        if prompt not in cache:
            cache[prompt] = clip_text_embeddings(model, processor, [prompt])[0]
        img = clip_image_embeddings(model, processor, images)
        return 100.0 * F.cosine_similarity(img, cache[prompt].to(img.device).unsqueeze(0), dim=-1)

    return Reward("clip-score", fn, "100 x cosine of CLIP image and prompt embeddings (differentiable)",
                  str(ctx.options.get("clip_model", "")))


def load_linear_head(spec: str, dim: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(weight (dim,), bias (), label)`` of a linear head from a file, or ``random:SEED``."""
    spec = str(spec or "").strip()
    if not spec:
        raise DiffhpoError(
            "reward 'aesthetic' needs --option aesthetic_weights=PATH (a torch file with 'weight' 1 x d and "
            "'bias' for the CLIP model's embedding size d, e.g. a LAION linear aesthetic head); "
            "'random:SEED' gives a random head for tests"
        )
    if spec.startswith("random:"):
        seed = int(spec.split(":", 1)[1])
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(dim, generator=g) / dim**0.5
        return weight, torch.zeros(()), f"RANDOM linear head (seed {seed}; for tests only, not an aesthetic model)"
    try:
        state = torch.load(spec, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiffhpoError(f"aesthetic_weights {spec}: no such file") from None
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    keys = {k.split(".")[-1]: v for k, v in state.items()}
    if "weight" not in keys:
        raise DiffhpoError(f"aesthetic_weights {spec}: expected a state dict with 'weight' and 'bias'")
    weight = keys["weight"].float().reshape(-1)
    if weight.numel() != dim:
        raise DiffhpoError(f"aesthetic_weights {spec}: head has {weight.numel()} inputs, the CLIP embedding has {dim}")
    bias = keys.get("bias", torch.zeros(1)).float().reshape(-1)[0]
    from ...bench.toolkit.assets import sha256_file

    return weight, bias, f"linear head from {spec} (sha256 {sha256_file(spec)[:12]})"


def _make_aesthetic(ctx: RewardContext) -> Reward:
    state: dict[str, Any] = {}

    def head():
        if not state:
            model, _ = ctx.get_clip()
            dim = int(model.config.projection_dim)
            w, b, label = load_linear_head(ctx.options.get("aesthetic_weights", ""), dim)
            state.update(w=w, b=b, label=label)
        return state

    def fn(images: torch.Tensor, cond: Any) -> torch.Tensor:
        model, processor = ctx.get_clip()
        h = head()
        e = clip_image_embeddings(model, processor, images)
        e = e / e.norm(dim=-1, keepdim=True)
        return e @ h["w"].to(e.device) + h["b"].to(e.device)

    spec = str(ctx.options.get("aesthetic_weights", ""))
    desc = ("aesthetic-style linear head on unit CLIP image embeddings"
            + (" -- RANDOM head, tests only" if spec.startswith("random:") else f" ({spec})"))
    return Reward("aesthetic", fn, desc, spec)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_resnet18(spec: str) -> tuple[torch.nn.Module, str]:
    """A torchvision ResNet-18 without its classifier (``fc = Identity``: 512-d features),
    eval mode, from a state-dict file or ``random:SEED``; and its label for the bank key."""
    from torchvision.models import resnet18

    spec = str(spec or "").strip()
    if not spec:
        raise DiffhpoError("reward 'resnet18-head' needs --option resnet_weights=PATH (a torchvision resnet18 state "
                           "dict, e.g. the ImageNet weights); 'random:SEED' gives a random backbone for tests")
    if spec.startswith("random:"):
        seed = int(spec.split(":", 1)[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = resnet18(weights=None)
        label = f"RANDOM resnet18 (seed {seed}; tests only)"
    else:
        net = resnet18(weights=None)
        try:
            state = torch.load(spec, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DiffhpoError(f"resnet_weights {spec}: no such file") from None
        net.load_state_dict(state)
        from ...bench.toolkit.assets import sha256_file

        label = f"resnet18 from {spec} (sha256 {sha256_file(spec)[:12]})"
    net.fc = torch.nn.Identity()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), label


def _make_resnet18_head(ctx: RewardContext) -> Reward:
    spec = str(ctx.options.get("resnet_weights", ""))
    seed = int(ctx.options.get("resnet_head_seed", 0))
    net, label = load_resnet18(spec)
    net = net.to(ctx.device)
    w = torch.randn(512, generator=torch.Generator().manual_seed(seed)) / 512**0.5
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def fn(images: torch.Tensor, cond: Any) -> torch.Tensor:
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        x = (x - mean.to(x.device)) / std.to(x.device)
        return net(x) @ w.to(x.device)

    return Reward("resnet18-head", fn, f"seeded random linear head (seed {seed}) on {label}", f"{label}|head{seed}")


# --- MNIST ----------------------------------------------------------------------------------


def _digits(cond: Any, n: int, device) -> torch.Tensor:
    if torch.is_tensor(cond):
        c = cond.to(device=device, dtype=torch.long).reshape(-1)
    else:
        c = torch.as_tensor([int(cond)], dtype=torch.long, device=device)
    return c.expand(n) if c.numel() == 1 else c


def _class_logprob(logits: torch.Tensor, cond: Any) -> torch.Tensor:
    """``log p(c | x)`` per image from a classifier's logits (``cond``: one digit or one per image)."""
    logp = F.log_softmax(logits, dim=1)
    return logp.gather(1, _digits(cond, len(logits), logp.device)[:, None])[:, 0]


def _make_classifier_logprob(ctx: RewardContext) -> Reward:
    from ...bench.toolkit.assets import sha256_file, verified_asset
    from .mnist_models import GUIDANCE_FILE, load_guidance_classifier

    path = ctx.options.get("classifier_weights") or None
    net = load_guidance_classifier(path).to(ctx.device)

    def fn(images: torch.Tensor, cond: Any) -> torch.Tensor:
        return _class_logprob(net(images.float()), cond)

    sha = sha256_file(path or verified_asset(GUIDANCE_FILE))
    return Reward("classifier-logprob", fn, "log p(c | x) under the MNIST guidance classifier", sha[:16])


def _make_feature_net_logprob(ctx: RewardContext) -> Reward:
    from ...bench.toolkit.assets import sha256_file, verified_asset
    from ...bench.toolkit.metrics.feature_net import WEIGHTS_FILE, load_feature_net
    from .mnist_models import feature_net_logits

    path = ctx.options.get("feature_net_weights") or None
    net = load_feature_net(path).to(ctx.device)

    def fn(images: torch.Tensor, cond: Any) -> torch.Tensor:
        return _class_logprob(feature_net_logits(net, images), cond)

    sha = sha256_file(path or verified_asset(WEIGHTS_FILE))
    return Reward("feature-net-logprob", fn, "log p(c | x) under the metrics' MNIST feature network", sha[:16])


def ink(images: torch.Tensor) -> torch.Tensor:
    """Mean ink of MNIST-like images in [-1, 1]: the fraction of the pixel range that is on,
    averaged over pixels (0 blank, 1 all white); the proxy of stroke thickness (issue 16)."""
    return ((images.float() + 1) / 2).flatten(1).mean(1)


def stroke_area(images: torch.Tensor) -> torch.Tensor:
    """A second, held-out measurement of stroke thickness: the fraction of 2x2-pooled pixels
    that are on (a smooth threshold at half intensity, sigmoid of width 0.05, so that it is
    differentiable)."""
    x = (images.float() + 1) / 2
    pooled = F.avg_pool2d(x.reshape((-1, 1) + tuple(x.shape[-2:])), 2)
    return torch.sigmoid((pooled - 0.5) / 0.05).flatten(1).mean(1)


def _make_ink(ctx: RewardContext) -> Reward:
    return Reward("ink", lambda images, cond: ink(images), "mean ink (stroke-thickness proxy)", "ink-v1")


REWARDS.register("colourfulness", _make_colourfulness)
REWARDS.register("ink", _make_ink)
REWARDS.register("resnet18-head", _make_resnet18_head)
REWARDS.register("aesthetic", _make_aesthetic)
REWARDS.register("clip-score", _make_clip_score)
REWARDS.register("classifier-logprob", _make_classifier_logprob)
REWARDS.register("feature-net-logprob", _make_feature_net_logprob)
