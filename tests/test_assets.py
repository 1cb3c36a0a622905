"""Shipped networks: checksums, training records, accuracy, and the seeded builder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffhpo.bench.toolkit import assets
from diffhpo.bench.toolkit.data import load_mnist
from diffhpo.bench.contracts.errors import DiffhpoError
from diffhpo.bench.toolkit.metrics import feature_net, feature_net_asset

pytestmark = pytest.mark.usefixtures("session_cache")

WEIGHTS = assets.ASSETS_DIR / feature_net.WEIGHTS_FILE


def test_shipped_feature_net_matches_its_checksum_and_record():
    record = json.loads(assets.record_path(WEIGHTS).read_text())
    assert assets.sha256_file(WEIGHTS) == record["sha256"]
    assert assets.verified_asset(feature_net.WEIGHTS_FILE) == WEIGHTS
    assert WEIGHTS.stat().st_size == record["size_bytes"] < 500_000  # a small file
    for key in ("seed", "epochs", "torch_version", "wall_time_s", "heldout_accuracy", "dataset", "history"):
        assert key in record
    assert record["dataset"] == "mnist5k" and record["heldout_size"] == 1000


def test_shipped_feature_net_accuracy_on_mnist5k_heldout():
    images, labels = load_mnist("mnist5k", "heldout")
    acc = feature_net.accuracy(feature_net.load_feature_net(), images, labels)
    assert acc >= 0.97
    recorded = json.loads(assets.record_path(WEIGHTS).read_text())["heldout_accuracy"]
    assert acc == pytest.approx(recorded, abs=0.002)  # at most 2 images flip on another CPU


def test_tampered_weights_are_rejected(tmp_path):
    shutil.copy(WEIGHTS, tmp_path / WEIGHTS.name)
    shutil.copy(assets.record_path(WEIGHTS), tmp_path / assets.record_path(WEIGHTS).name)
    assert assets.verified_asset(WEIGHTS.name, tmp_path)
    blob = bytearray((tmp_path / WEIGHTS.name).read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / WEIGHTS.name).write_bytes(bytes(blob))
    with pytest.raises(DiffhpoError, match="does not match its record"):
        assets.verified_asset(WEIGHTS.name, tmp_path)
    (tmp_path / WEIGHTS.name).unlink()
    with pytest.raises(DiffhpoError, match="missing"):
        assets.verified_asset(WEIGHTS.name, tmp_path)


def test_builder_writes_verifiable_weights_and_record(tmp_path):
    record = feature_net_asset.build_feature_net(tmp_path, seed=3, epochs=2, train_images=200)
    assert record["seed"] == 3 and record["epochs"] == 2 and record["train_size"] == 200
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]  # it learns
    path = assets.verified_asset(feature_net.WEIGHTS_FILE, tmp_path)
    assert json.loads(assets.record_path(path).read_text()) == record
    net = feature_net.load_feature_net(path)
    assert sum(p.numel() for p in net.parameters()) == record["parameters"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the build


def test_registry_names_the_feature_net():
    assert assets.ASSETS["feature-net"].filename == feature_net.WEIGHTS_FILE
    with pytest.raises(DiffhpoError, match="unknown asset"):
        assets.build_asset("no-such-asset")


def test_cli_assets_verify(capsys):
    from diffhpo.cli import main

    main(["assets", "verify", "feature-net"])
    out = capsys.readouterr().out
    assert out.startswith("ok") and "feature-net" in out and len(out.splitlines()) == 1


def test_cli_assets_build_refuses_ddpm_options_for_other_assets(capsys, tmp_path):
    from diffhpo.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["assets", "build", "feature-net", "--steps", "3", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "mnist-ddpm only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was trained
