"""Task ``reward-sd``: the paper's first application (method.md, Application 1) on Stable
Diffusion: tune the KL strength lambda of reward-guided sampling so that the CLIP score of
the guided images is highest.

* Pre-trained model: the components of a diffusers ``StableDiffusionPipeline`` loaded from
  ``--option model=`` (a hub id, default ``runwayml/stable-diffusion-v1-5``, found in the
  Hugging Face cache or downloaded; or a local folder), sampled with DDIM (``steps``, 50 in
  the paper) and classifier-free guidance (``cfg``, 7.5) at ``size`` x ``size`` pixels, in
  ``dtype`` on ``device``.
* Conditions: the prompts (``--option prompts=fox,horse`` or ``prompts_file=`` with one
  prompt per line).
* Lower-level reward ``r2``: a differentiable image reward from the registry
  (:mod:`.rewards`, ``--option reward=``; default ``colourfulness``, which needs no weights;
  ``aesthetic`` with ``aesthetic_weights=PATH`` is the aesthetic-style head), evaluated on
  the VAE-decoded predicted image at every step (paper Algorithm 5).
* Upper score ``r1``: the CLIP score of the metrics (``100 * max(cos, 0)`` of CLIP image and
  prompt embeddings, :class:`~diffhpo.bench.toolkit.metrics.ClipScorer`) with ``--option
  clip_model=``; metric ``clip_score`` = mean over images and prompts. The weighted-sum
  baseline guides with its differentiable form (``clip-score`` reward: ``100 * cos``).
* FID/KID/IS: against the *un-guided* pre-trained model's images for the same prompts and
  seeds (as the paper's code does; so ``none`` has FID 0 by construction), Inception
  backend when its weights are local (``inception_weights=``, ``$DIFFHPO_INCEPTION_WEIGHTS``
  or torch hub's cache), else the offline ``mnist-net`` backend (``fid_backend`` says
  which; ``mnist-net`` on photographs is only a smoke-test stand-in).

Profiles: ``smoke`` (CI) uses tiny *random* models built from configs (``model`` and
``clip_model`` = ``tiny-random``, :mod:`.tiny`; 16 x 16 images, 3 steps): it runs offline in
seconds and checks the machinery, not image quality. ``quick`` and ``paper`` use the real
models (25 and 50 DDIM steps, 512 x 512), for a GPU.

``offline = False``: the default matrix (``--task all``) skips this task, since its weights
are a download; name it explicitly (``--task reward-sd``) with local or cached weights, or
run the ``smoke`` profile.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...bench.contracts.errors import DiffhpoError
from ...bench.contracts.options import option
from ...bench.contracts.task import Metric
from .common import PREMISE_METRICS, RewardTask
from .guidance import GRAD_THROUGH
from .options import RewardOptions
from .tiny import TINY

DEFAULT_MODEL = "runwayml/stable-diffusion-v1-5"


@dataclass(frozen=True)
class RewardSdOwn:
    """reward-sd's own options; :class:`RewardSdConfig` adds the shared ones."""

    model: str = option(DEFAULT_MODEL, "Stable Diffusion: a saved pipeline folder or a hub id in the cache")
    prompts: tuple = option(("fox", "horse"), "prompts, distinct (or prompts_file)")
    prompts_file: str = option("", "a text file with one prompt per line (overrides prompts)")
    clip_model: str = option("openai/clip-vit-base-patch32", "CLIP for the upper score: a folder or a cached hub id")
    reward: str = option("colourfulness", "r2, by reward-registry name")
    aesthetic_weights: str = option("", "weights of the 'aesthetic' linear head (a file, or random:SEED)")
    resnet_weights: str = option("", "reward=resnet18-head: torchvision resnet18 state dict (a file, or random:SEED)")
    resnet_head_seed: int = option(0, "reward=resnet18-head: seed of the random linear head", ge=0)
    cfg: float = option(7.5, "classifier-free guidance scale", ge=1, le=50)
    size: int = option(512, "image side in pixels (a multiple of the VAE's scale)", ge=8, le=2048)
    dtype: str = option("auto", "auto: float16 on a GPU, float32 on the CPU",
                        choices=("auto", "float16", "bfloat16", "float32"))
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    guidance: float = option(1.0, "guidance scale multiplying grad r2 / lambda", ge=0, le=1e4)
    grad_through: str = option("unet", "where the reward gradient flows", choices=GRAD_THROUGH)
    fid_backend: str = option("auto", "FID features", choices=("auto", "inception", "mnist-net"))
    inception_weights: str = option("", "InceptionV3 weights file (offline FID)")


@dataclass(frozen=True)
class RewardSdConfig(RewardOptions, RewardSdOwn):
    """reward-sd's options: its own, then the reward tasks' (:mod:`.options`), with this
    task's defaults in its profiles."""

    def rules(self):
        yield from RewardOptions.rules(self)
        yield self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device) is not None, (
            f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


#: reward-sd's settings where they differ from the shared defaults (:mod:`.options`): deterministic
#: DDIM (the paper), batches of 4 images of 512 x 512, 0.1 units per bilevel outer iteration
_SD = RewardSdConfig(eta=0.0, batch_size=4, oracle_cost=0.1)


class SdModel:
    """Stable Diffusion's UNet with classifier-free guidance, its VAE decoder and its DDIM
    scheduler, as the guided sampler uses them."""

    conditional = True

    def __init__(self, pipe, cfg: float, size: int, device, dtype) -> None:
        self.pipe, self.cfg = pipe, float(cfg)
        self.device, self.dtype = device, dtype
        self.scheduler_config = dict(pipe.scheduler.config)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if size % self.vae_scale:
            raise DiffhpoError(f"task 'reward-sd': size must be a multiple of {self.vae_scale}")
        self.noise_shape = (pipe.unet.config.in_channels, size // self.vae_scale, size // self.vae_scale)
        self.scaling = float(getattr(pipe.vae.config, "scaling_factor", 0.18215))
        self._emb: dict = {}

    def embed(self, prompt: str):
        import torch

        if prompt not in self._emb:
            tok = self.pipe.tokenizer(prompt, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt")
            with torch.no_grad():
                self._emb[prompt] = self.pipe.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)
        return self._emb[prompt]

    def eps(self, x, t, prompt: Any):
        import torch

        n = len(x)
        cond = self.embed(str(prompt)).expand(n, -1, -1)
        if self.cfg == 1.0:
            return self.pipe.unet(x, t, encoder_hidden_states=cond).sample
        uncond = self.embed("").expand(n, -1, -1)
        out = self.pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        e_u, e_c = out.chunk(2)
        return e_u + self.cfg * (e_c - e_u)

    def decode(self, z):
        return self.pipe.vae.decode(z / self.scaling).sample.float()

    def scheduler(self, steps: int):
        from .guidance import ddim_scheduler

        return ddim_scheduler(self.scheduler_config, steps)


def _in_hub_cache(repo_id: str, filename: str = "model_index.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:
        return False


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@contextlib.contextmanager
def _quiet_loading():
    """No loading progress bars (diffusers, transformers) and no deprecation chatter."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()


def load_pipeline(source: str, device, dtype):
    """``StableDiffusionPipeline`` components from a local folder or a hub id (from the cache
    without network when it is there), on ``device`` in ``dtype``, frozen."""
    from diffusers import StableDiffusionPipeline

    if source == TINY:
        from .tiny import tiny_sd_pipeline

        pipe = tiny_sd_pipeline(0).to(device=device, dtype=dtype)
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            part.requires_grad_(False).eval()
        return pipe
    looks_local = os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, without the warning
    if looks_local:
        source = str(Path(source).expanduser())
        if not Path(source).is_dir():
            raise DiffhpoError(f"task 'reward-sd': model {source}: no such folder")
    elif _in_hub_cache(source):
        kwargs["local_files_only"] = True
    try:
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise DiffhpoError(
            f"task 'reward-sd': Stable Diffusion model {source!r} could not be loaded "
            f"({lines[0] if lines else type(exc).__name__}); pass --option model=FOLDER (a saved "
            "StableDiffusionPipeline) or a hub id in the Hugging Face cache"
        ) from None
    pipe = pipe.to(device)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False).eval()
    return pipe


def local_inception_weights(option: str = "") -> str | None:
    """Path of local InceptionV3 weights (option, environment, torch hub's cache) or None; never downloads."""
    from torch.hub import get_dir
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from ...bench.toolkit.metrics.fidelity import INCEPTION_WEIGHTS_ENV

    for cand in (option, os.environ.get(INCEPTION_WEIGHTS_ENV, "")):
        if cand and Path(cand).expanduser().is_file():
            return str(Path(cand).expanduser())
    cached = Path(get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
    return str(cached) if cached.is_file() else None


class RewardSdTask(RewardTask):
    name = "reward-sd"
    description = ("KL strength of reward-guided Stable Diffusion sampling, upper score CLIP "
                   "(method.md Application 1, the paper's setting; needs the model's weights)")
    upper_metric = "clip_score"
    offline = False
    profiles = {
        # smoke (CI): tiny random models built from configs, no weights, no network (see .tiny)
        "smoke": replace(_SD, model=TINY, clip_model=TINY, steps=3, size=16, n_samples=2, n_final=3, bank_size=4,
                         oracle_cost=0.5, budget=3.0),
        "quick": replace(_SD, steps=25, size=512, n_samples=4, n_final=16, bank_size=32, budget=5.0),
        "paper": replace(_SD, steps=50, size=512, n_samples=8, n_final=64, bank_size=128, budget=20.0),
    }

    def __init__(self, profile: str = "quick", **options: Any) -> None:
        super().__init__(profile, **options)
        cfg = self.config
        prompts = [str(p).strip() for p in cfg.prompts if str(p).strip()]
        if cfg.prompts_file:
            try:
                prompts = [line.strip() for line in Path(cfg.prompts_file).read_text().splitlines() if line.strip()]
            except OSError as exc:
                raise DiffhpoError(f"task {self.name!r}: prompts_file {cfg.prompts_file}: {exc.strerror}") from None
        if not prompts or len(set(prompts)) != len(prompts):
            raise DiffhpoError(f"task {self.name!r}: need at least one prompt, all distinct")
        self._prompts = prompts
        self._references: dict = {}  # (seed, n) -> the un-guided reference images (_reference)

    @property
    def metrics(self) -> list[Metric]:
        return [
            Metric("clip_score", "maximize", "upper score: mean CLIP score of the guided images and their prompts"),
            Metric("lower", "maximize", "mean lower-level reward r2"),
            Metric("fid", "minimize", "FID against the un-guided model's images for the same prompts and seeds"),
            Metric("kid", "minimize", "KID against the same reference, mean over subsets"),
            Metric("is", "maximize", "Inception Score"),
            *PREMISE_METRICS,
        ]

    # -- environment ------------------------------------------------------------------------------
    def check_ready(self) -> None:
        """The model and CLIP weights must be on disk (a folder, or a hub id in the Hugging
        Face cache) and the device must exist: otherwise every trial would fail while
        trying to download them."""
        for option_name, source in (("model", self.config.model), ("clip_model", self.config.clip_model)):
            if source == TINY:
                continue
            path = Path(source).expanduser()
            if path.is_dir() or (option_name == "clip_model" and _in_hub_cache(source, "config.json")) or \
                    (option_name == "model" and _in_hub_cache(source)):
                continue
            raise DiffhpoError(
                f"task {self.name!r}: {option_name} {source!r} is neither a folder nor in the Hugging Face cache "
                f"({_hub_cache()}); download it there (huggingface-cli download {source}) or pass "
                f"--option {option_name}=FOLDER"
            )
        import torch

        if self.config.device.startswith("cuda") and not torch.cuda.is_available():
            raise DiffhpoError(f"task {self.name!r}: device {self.config.device!r} asked for, but torch sees no CUDA "
                               "device; use --option device=cpu or auto")

    @functools.cached_property
    def device(self):
        import torch

        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    @functools.cached_property
    def dtype(self):
        import torch

        name = self.config.dtype
        if name == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]
        except KeyError:
            raise DiffhpoError(f"task {self.name!r}: dtype must be auto, float16, bfloat16 or float32") from None

    @functools.cached_property
    def _model(self) -> SdModel:
        pipe = load_pipeline(self.config.model, self.device, self.dtype)
        return SdModel(pipe, self.config.cfg, self.config.size, self.device, self.dtype)

    @functools.cached_property
    def _scorer(self):
        from ...bench.toolkit.metrics.clip_score import ClipScorer

        if self.config.clip_model == TINY:
            from .tiny import tiny_clip

            return ClipScorer(*tiny_clip(0), device=self.device)
        with _quiet_loading():
            return ClipScorer.from_pretrained(self.config.clip_model, device=self.device)

    def _clip(self):
        return self._scorer.model, self._scorer.processor

    @functools.cached_property
    def _ctx(self):
        from .rewards import RewardContext

        return RewardContext(options={"aesthetic_weights": self.config.aesthetic_weights,
                                      "resnet_weights": self.config.resnet_weights,
                                      "resnet_head_seed": self.config.resnet_head_seed,
                                      "clip_model": self.config.clip_model},
                             device=self.device, clip=self._clip)

    @functools.cached_property
    def _r2(self):
        from .rewards import make_reward

        return make_reward(self.config.reward, self._ctx)

    @functools.cached_property
    def _r1_diff(self):
        from .rewards import make_reward

        return make_reward("clip-score", self._ctx)

    # -- hooks ---------------------------------------------------------------------------------
    def conditions(self) -> list:
        return list(self._prompts)

    def model(self) -> SdModel:
        return self._model

    def lower_reward(self):
        return self._r2

    def upper_reward_diff(self):
        return self._r1_diff

    def upper_reward_id(self) -> list:
        return ["clip_score", self.config.clip_model]

    def describe_model(self) -> dict:
        cfg = self.config
        return {"model": cfg.model, "cfg": cfg.cfg, "size": cfg.size, "dtype": str(self.dtype),
                "scheduler": self._model.scheduler_config}

    def score(self, images, cond: Any) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ...bench.toolkit.metrics.images import to_uint8

        u8 = to_uint8(images)
        r1 = (100.0 * self._scorer.cosines(u8, str(cond)).clamp(min=0)).numpy()
        x = (u8.float() / 127.5 - 1.0).to(self.device)
        with torch.no_grad():
            r2 = torch.cat([self._r2(x[i : i + 16], cond).float().cpu() for i in range(0, len(x), 16)])
        return r1.astype(np.float64), r2.double().numpy()

    def _reference(self, seed: int, n: int):
        """The un-guided model's images for the same prompts and seeds (uint8), cached."""
        import torch

        from ...bench.toolkit.metrics.images import to_uint8

        key = (seed, n)
        if key not in self._references:
            samples = self.generate({}, seed, n)
            self._references[key] = to_uint8(torch.cat(list(samples.values())))
        return self._references[key]

    def _backend(self) -> tuple[str, str | None]:
        cfg = self.config
        local = local_inception_weights(cfg.inception_weights)
        if cfg.fid_backend == "inception" or (cfg.fid_backend == "auto" and local):
            return "inception", local or cfg.inception_weights or None
        return "mnist-net", None

    def quality_metrics(self, samples: dict, seed: int, final: bool) -> dict[str, float]:
        import torch

        from ...bench.toolkit.metrics.fidelity import compute_fidelity
        from ...bench.toolkit.metrics.images import to_uint8

        generated = to_uint8(torch.cat(list(samples.values())))
        n = len(next(iter(samples.values())))
        ref = self._reference(seed, n)
        backend, weights = self._backend()
        res = compute_fidelity(generated, ref, backend=backend, inception_weights=weights, seed=seed,
                               cuda=self.device.type == "cuda")
        return {"fid": res.fid, "kid": res.kid_mean, "is": res.is_mean}

    def describe_config(self) -> dict[str, Any]:
        out = super().describe_config()
        out["prompts"] = list(self._prompts)
        return out
