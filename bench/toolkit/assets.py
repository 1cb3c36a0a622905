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
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from . import atomic
from ..contracts.errors import DiffhpoError

if TYPE_CHECKING:
    import torch

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


@dataclass(frozen=True)
class AssetSpec:
    """A shipped network: its file in ``assets/`` and the builder that makes it."""

    name: str
    filename: str
    description: str
    build: Callable[..., dict]


ASSETS: dict[str, AssetSpec] = {}


def all_assets() -> dict[str, AssetSpec]:
    """Every registered asset: those registered so far (the feature network's by
    :mod:`diffhpo.bench.toolkit.metrics.feature_net_asset`, which the ``diffhpo assets`` command
    imports), and those the tasks register when the task registry loads them (a task's networks
    are built by code in its own package)."""
    from ..contracts.registry import TASKS

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


def build_asset(name: str, out_dir: str | Path | None = None, seed: int = 0, log=None, **options) -> dict:
    """Run the builder of ``name`` (default output: the shipped ``assets/``); ``options`` go to
    the builder as keyword arguments."""
    if name not in all_assets():
        raise DiffhpoError(f"unknown asset {name!r}; valid: {', '.join(ASSETS)}")
    return ASSETS[name].build(Path(out_dir) if out_dir is not None else ASSETS_DIR, seed=seed, log=log, **options)
