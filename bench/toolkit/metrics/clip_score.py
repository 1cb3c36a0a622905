"""CLIP score of images against their prompts (Hessel et al. 2021, as in torchmetrics).

For each image/text pair the cosine between CLIP's projected image and text embeddings
is taken; the CLIP score of a batch is the mean of ``100 * max(cosine, 0)``. The raw mean
cosine is reported too (it keeps the sign, which the clamp hides).

The model is any ``CLIPModel`` with its ``CLIPProcessor``, loaded with transformers'
``from_pretrained`` from a local folder or a hub id (``openai/clip-vit-base-patch32`` by
default; needs the hub cache or the network). Grey images are repeated to three
channels; the processor resizes and normalises them as the model expects.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...contracts.errors import DiffhpoError
from .images import as_image_batch

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MODEL_OPTION = "--clip-model"


@dataclass(frozen=True)
class ClipScoreResult:
    clip_score: float  # mean of 100 * max(cosine, 0)
    cosine: float  # mean raw cosine
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


class ClipScorer:
    """A loaded CLIP model and processor that scores batches of (image, text) pairs."""

    def __init__(self, model, processor, *, device: str | torch.device | None = None, batch_size: int = 64):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.batch_size = batch_size
        text_config = getattr(model.config, "text_config", None)
        self.max_length = getattr(text_config, "max_position_embeddings", 77)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = DEFAULT_CLIP_MODEL,
        *,
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ) -> "ClipScorer":
        """Load ``CLIPModel`` and ``CLIPProcessor`` from a folder or a hub id, or raise a clear error.

        A hub id already in the Hugging Face cache (``cache_dir``, default: the hub's) is
        loaded from there without any network request; otherwise it is downloaded.
        """
        from transformers import CLIPModel, CLIPProcessor

        source = str(name_or_path)
        looks_local = os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)
        if looks_local:
            source = str(Path(source).expanduser())
            if not Path(source).is_dir():
                raise DiffhpoError(f"{CLIP_MODEL_OPTION} {source}: no such folder")
        elif not local_files_only:
            local_files_only = _in_hub_cache(source, cache_dir)
        kwargs = {"local_files_only": local_files_only, "cache_dir": str(cache_dir) if cache_dir else None}
        try:
            model = CLIPModel.from_pretrained(source, **kwargs)
            processor = CLIPProcessor.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:  # no network and not cached, no such repo, not a CLIP folder
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise DiffhpoError(
                f"CLIP model {source!r} could not be loaded ({lines[0] if lines else type(exc).__name__}); "
                f"pass {CLIP_MODEL_OPTION} a local folder holding a saved CLIPModel and CLIPProcessor, "
                f"or a hub id that is in the Hugging Face cache"
            ) from None
        return cls(model, processor, device=device, batch_size=batch_size)

    @torch.no_grad()
    def cosines(self, images: torch.Tensor, texts: str | Sequence[str]) -> torch.Tensor:
        """Cosine between each image's and its text's CLIP embedding (float64, length N).

        ``images``: uint8 ``N x C x H x W``; ``texts``: one string per image, or one for all.
        """
        images = as_image_batch(images, "images", min_count=1)
        texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
        if len(texts) != len(images):
            raise DiffhpoError(f"CLIP score needs one text per image: {len(images)} images, {len(texts)} texts")
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            if batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            inputs = self.processor(
                text=texts[start : start + self.batch_size],
                images=list(batch),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            image_emb = _embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            text_emb = _embedding(self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")))
            out.append(torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1).cpu())
        return torch.cat(out)

    def __call__(self, images: torch.Tensor, texts: str | Sequence[str]) -> ClipScoreResult:
        cos = self.cosines(images, texts)
        return ClipScoreResult(
            clip_score=float((100.0 * cos.clamp(min=0)).mean()),
            cosine=float(cos.mean()),
            n=len(cos),
        )


def compute_clip_score(
    images: torch.Tensor,
    texts: str | Sequence[str],
    model: str | os.PathLike = DEFAULT_CLIP_MODEL,
    **kwargs,
) -> ClipScoreResult:
    """One-shot CLIP score (loads the model each call; keep a :class:`ClipScorer` for repeated use)."""
    return ClipScorer.from_pretrained(model, **kwargs)(images, texts)


def _in_hub_cache(repo_id: str, cache_dir) -> bool:
    """Whether the hub cache holds ``repo_id``'s config (then loading needs no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir), str)
    except ValueError:  # not a valid repo id: let from_pretrained report it
        return False


def _embedding(output) -> torch.Tensor:
    """The projected embedding: transformers 5 returns an output object (``.pooler_output``), 4 a tensor."""
    return output if torch.is_tensor(output) else output.pooler_output
