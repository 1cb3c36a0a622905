"""Sample quality of reward-mnist's pre-trained DDPM under several samplers.

For each ``STEPS:ETA`` setting: ``--n`` samples from fixed noise (seed 2024, the quality-bar
test's), then the fraction the feature network classifies with probability >= 0.9 (the
bar of ``test_shipped_ddpm_quality_bar``: 80%), the digit counts, and FID / KID / IS
(``mnist-net``) against the 1,000 held-out mnist5k images. The figures are printed, not
asserted.

    python benchmarks/mnist_ddpm_quality.py [--weights assets/mnist_ddpm.pt] [--n 1000] [25:1 25:0 ...]

``--weights`` takes a DDPM file written by ``diffhpo assets build mnist-ddpm --out DIR``
(its JSON record beside it) or a build checkpoint (``*.ckpt``: its EMA weights are used).
"""

from __future__ import annotations

import argparse
import time


def load(weights: str | None):
    import torch

    from diffhpo.tasks.reward import mnist_models as mm

    if not weights:
        return mm.load_mnist_ddpm()
    if not weights.endswith(".ckpt"):
        return mm.load_built_ddpm(weights)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    unet = mm.build_unet()
    unet.load_state_dict(state["ema"])
    unet.requires_grad_(False).eval()
    return mm.PretrainedDdpm(unet=unet, scheduler_config=dict(mm.SCHEDULER_CONFIG),
                             source=f"{weights} (EMA at step {state['step']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=["25:1", "25:0"], help="STEPS:ETA pairs (default 25:1 25:0)")
    parser.add_argument("--weights", default=None, help="a built DDPM file or a build checkpoint; default: shipped")
    parser.add_argument("--n", type=int, default=1000, help="samples per setting")
    args = parser.parse_args()

    import torch

    from diffhpo.bench.toolkit.data import load_mnist
    from diffhpo.bench.toolkit.metrics import compute_fidelity
    from diffhpo.bench.toolkit.metrics.images import to_uint8
    from diffhpo.tasks.reward import mnist_models as mm
    from diffhpo.tasks.reward.guidance import sample_images

    model = load(args.weights)
    reference = load_mnist("mnist5k", "heldout")[0]
    noise = torch.randn((args.n,) + model.image_shape, generator=torch.Generator().manual_seed(2024))
    print(f"model: {model.source}; {args.n} samples per setting; torch threads {torch.get_num_threads()}")
    print("steps  eta  confident>=0.9  mean conf   FID   KIDx1e3   IS    s   digit counts")
    for setting in args.settings:
        steps, eta = setting.split(":")
        started = time.perf_counter()
        run = sample_images(model.eps, lambda: model.scheduler(int(steps)), noise, batch_size=250, eta=float(eta),
                            seed=2024)
        images = to_uint8(run.samples)
        seconds = time.perf_counter() - started
        conf, pred = mm.confidence(images)
        res = compute_fidelity(images, reference, backend="mnist-net", seed=0, reference_cache_name="mnist5k-heldout")
        print(f"{int(steps):5d} {float(eta):4.1f} {float((conf >= 0.9).double().mean()):14.3f} "
              f"{float(conf.mean()):10.3f} {res.fid:6.1f} {res.kid_mean * 1e3:8.2f} {res.is_mean:5.2f} "
              f"{seconds:4.0f}   {torch.bincount(pred, minlength=10).tolist()}", flush=True)


if __name__ == "__main__":
    main()
