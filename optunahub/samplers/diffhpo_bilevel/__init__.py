"""OptunaHub package ``samplers/diffhpo_bilevel``: diffhpo's first-order bilevel sampler."""

from diffhpo.methods.bilevel import BilevelSampler

__all__ = ["BilevelSampler"]
