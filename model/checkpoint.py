"""Checkpoints: atomic writes, safe loads (``weights_only=True``), the network rebuilt from its config."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import NetConfig
from model.network import ThreeBranchNet

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not one of ours."""


def atomic_write_bytes(path: str | Path, writer) -> None:
    """Write via ``writer(file)`` to a temporary file beside ``path``, fsync it, rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(
    path: str | Path,
    model: ThreeBranchNet,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save weights, config and optional optimizer state and plain-typed ``extra`` (epoch, metrics...)."""
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    atomic_write_bytes(path, lambda handle: torch.save(payload, handle))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not an rgbt-active-learning checkpoint")
    return payload


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[ThreeBranchNet, dict[str, Any]]:
    """Rebuild the network from a checkpoint; returns (model in eval mode, the checkpoint dict)."""
    payload = read_checkpoint(path)
    model = ThreeBranchNet(NetConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
