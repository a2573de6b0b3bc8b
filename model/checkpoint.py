"""Checkpoints: atomic writes, safe loads (``weights_only=True``), the network rebuilt from its config."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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


@dataclass
class ClassMatch:
    """How a checkpoint's classes met a project's (by name): kept, fresh and left-out classes."""

    shared: list[str]
    new: list[str]
    missing: list[str]

    def to_json(self) -> dict[str, list[str]]:
        return {"shared": self.shared, "new": self.new, "missing": self.missing}


def _class_rows(num_outputs: int, ids: Sequence[int], rows: int) -> Tensor:
    """Output rows of the classes ``ids`` in a layer whose ``rows`` outputs are (anchor, class) blocks of
    ``num_outputs`` (SSD's classification convs; one block for the segmentation conv)."""
    anchors = rows // num_outputs
    index = torch.tensor(list(ids), dtype=torch.long)
    return (torch.arange(anchors).view(-1, 1) * num_outputs + index.view(1, -1)).reshape(-1)


def load_for_classes(
    path: str | Path, class_names: Sequence[str], task: str, *, image_size: tuple[int, int] | None = None
) -> tuple[ThreeBranchNet, ClassMatch, dict[str, Any]]:
    """A checkpoint's network rebuilt for another class list, classes matched BY NAME.

    Trunks, fusion and box regression are copied. In every classification layer (SSD's per-level convs,
    or the segmentation conv), background and each class the checkpoint shares with ``class_names`` keep
    their weights, wherever the class sits in either list; a class the checkpoint lacks keeps the layer's
    fresh initialisation (reported in ``new``); checkpoint classes the project lacks are dropped (reported
    in ``missing``). ``image_size`` replaces the checkpoint's input size (the weights do not depend on it).

    Returns (model in eval mode on the CPU, the class match, the checkpoint dict).

    Raises:
        CheckpointError: unreadable file, another task, or no class in common.
    """
    payload = read_checkpoint(path)
    source = NetConfig.from_dict(payload["config"])
    if source.task != task:
        raise CheckpointError(f"{path} is a {source.task} model, the project needs {task}")
    match = ClassMatch(
        shared=[name for name in class_names if name in source.class_names],
        new=[name for name in class_names if name not in source.class_names],
        missing=[name for name in source.class_names if name not in class_names],
    )
    if not match.shared:
        raise CheckpointError(
            f"{path} predicts {list(source.class_names)}, none of the project's classes {list(class_names)}"
        )
    changes: dict[str, Any] = {"class_names": tuple(class_names)}
    if image_size is not None:
        changes["image_size"] = tuple(image_size)
    config = replace(source, **changes)
    model = ThreeBranchNet(config)
    state = model.state_dict()
    loaded = payload["state_dict"]
    # Output row of each target class in the source (0 = background maps to 0); fresh rows stay as they are.
    pairs = [(0, 0)] + [
        (config.class_names.index(name) + 1, source.class_names.index(name) + 1) for name in match.shared
    ]
    targets, sources = [t for t, _ in pairs], [s for _, s in pairs]
    for key, value in state.items():
        if key not in loaded:
            raise CheckpointError(f"{path} has no {key!r}: not a compatible three-branch checkpoint")
        old = loaded[key]
        if _is_class_layer(key):
            rows_to = _class_rows(config.num_outputs, targets, value.shape[0])
            rows_from = _class_rows(source.num_outputs, sources, old.shape[0])
            value[rows_to] = old[rows_from].to(value.dtype)
        elif old.shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} is {tuple(old.shape)}, the network needs {tuple(value.shape)}"
            )
        else:
            state[key] = old
    model.load_state_dict(state)
    return model.eval(), match, payload


def _is_class_layer(key: str) -> bool:
    """State-dict keys whose output rows are per class: SSD classification convs, the segmentation conv."""
    return ".classification_head." in key or (key.startswith("heads.") and ".classifier." in key)
