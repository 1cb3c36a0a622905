"""Seconds for FID + KID + IS of 1,000 generated vs 1,000 reference images, cold and warm cache.

"Generated" images are 1,000 mnist5k training images (the metrics do not care where
images come from); the reference is a data set split, whose features and FID statistics
torch-fidelity caches on the first call ("cold") and reads back afterwards ("warm").
Each configuration starts from an empty metrics cache in a temporary folder; the parsed
data set is loaded before timing. The figures are printed, not asserted.

    python benchmarks/metrics_speed.py [--repeats 3] [--backend mnist-net] [--inception-weights PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm calls per configuration")
    parser.add_argument("--backend", default="mnist-net", choices=["mnist-net", "inception"])
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--n", type=int, default=1000, help="generated images")
    args = parser.parse_args()

    import torch

    from diffhpo.bench.toolkit.data import load_mnist
    from diffhpo.bench.toolkit.metrics import compute_fidelity

    generated = load_mnist("mnist5k", "train")[0][: args.n]  # fills the data cache outside the timing
    load_mnist("mnist5k", "heldout")
    data_dir = Path(os.environ.get("DIFFHPO_CACHE", Path.home() / ".cache" / "diffhpo")) / "data"

    rows = []
    for reference in ("mnist5k:heldout", "mnist5k:train"):
        with tempfile.TemporaryDirectory() as tmp:
            os.symlink(data_dir, Path(tmp) / "data")  # share the parsed data, not the metrics cache
            os.environ["DIFFHPO_CACHE"] = tmp
            kwargs = dict(backend=args.backend, inception_weights=args.inception_weights)
            start = time.perf_counter()
            cold = compute_fidelity(generated, reference, **kwargs)
            cold_s = time.perf_counter() - start
            warm_s = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                warm = compute_fidelity(generated, reference, **kwargs)
                warm_s.append(time.perf_counter() - start)
            assert cold.reference_cache == "miss" and warm.reference_cache == "hit"
            rows.append({
                "reference": reference,
                "n_generated": cold.n_generated,
                "n_reference": cold.n_reference,
                "cold_s": round(cold_s, 3),
                "warm_s_median": round(statistics.median(warm_s), 3),
                "warm_s_all": [round(s, 3) for s in warm_s],
                "scores": {k: round(v, 4) for k, v in warm.scores().items()},
            })

    print(f"backend {args.backend}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    print(f"{'reference':<18}{'n_gen':>7}{'n_ref':>7}{'cold s':>9}{'warm s':>9}")
    for r in rows:
        print(f"{r['reference']:<18}{r['n_generated']:>7}{r['n_reference']:>7}{r['cold_s']:>9.3f}"
              f"{r['warm_s_median']:>9.3f}")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
