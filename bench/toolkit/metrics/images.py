"""Image tensors as the metrics take them: uint8, ``N x C x H x W``, C = 1 (grey) or 3 (RGB).

Metric functions accept only uint8 images so that there is no doubt about the value
range; :func:`to_uint8` converts a model's float output (``[-1, 1]`` by default, the
usual diffusion-model range) once, explicitly.
"""

from __future__ import annotations

import torch

from ...contracts.errors import DiffhpoError


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map float images in ``value_range`` to uint8 0..255 (clamped, rounded)."""
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = (images.detach().float().cpu() - low) / (high - low)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def as_image_batch(images: torch.Tensor, what: str = "images", min_count: int = 2) -> torch.Tensor:
    """Check and normalise to uint8 ``N x C x H x W`` on the CPU (``N x H x W`` gains C = 1)."""
    if not torch.is_tensor(images):
        raise DiffhpoError(f"{what} must be a torch tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise DiffhpoError(
            f"{what} must be uint8 (0..255), got {images.dtype}; convert with diffhpo.bench.toolkit.metrics.to_uint8"
        )
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DiffhpoError(f"{what} must be N x 1 x H x W or N x 3 x H x W, got shape {tuple(images.shape)}")
    if images.shape[0] < min_count:
        raise DiffhpoError(f"{what}: need at least {min_count} images, got {images.shape[0]}")
    return images.detach().cpu().contiguous()
