from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, atomic_write_bytes, load_model, save_checkpoint
from model.config import NetConfig
from model.network import ThreeBranchNet


def test_checkpoint_round_trip(tmp_path: Path):
    net = ThreeBranchNet(NetConfig(class_names=("person", "car"), width=0.125, image_size=(64, 80)))
    optimizer = torch.optim.AdamW(net.parameters())
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, optimizer=optimizer, extra={"epoch": 3})
    loaded, payload = load_model(path)
    assert loaded.config == net.config
    assert payload["extra"]["epoch"] == 3
    for (name, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_failed_write_keeps_previous_file(tmp_path: Path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous")

    def broken_writer(handle):
        handle.write(b"half a checkpo")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(path, broken_writer)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an rgbt"):
        load_model(foreign)
