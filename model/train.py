"""Training, fine-tuning and evaluation loops.

Checkpoints are written atomically after every epoch (weights, optimizer, epoch, history), so an interrupted
run resumes where it stopped and a killed process never leaves a truncated file.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from model import metrics as metric_fns
from model.checkpoint import read_checkpoint, save_checkpoint
from model.data.dataset import collate_pairs
from model.data.sample import IGNORE_INDEX
from model.device import amp_dtype, autocast, select_device, to_device_for_inference
from model.losses import ThreeBranchLoss
from model.network import ThreeBranchNet
from model.postprocess import decode_detections, decode_segmentation

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings. ``lr`` decays by a cosine schedule to ``lr * final_lr_fraction``.

    ``steps``: when set, train for exactly that many optimizer steps instead of ``epochs`` passes, drawing
    each batch with replacement from the training set (one "epoch" of ``steps`` batches). Tiny labelled sets
    (the first active-learning cycles) get too few updates from a few epochs; a step budget does not.
    """

    epochs: int = 10
    steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    final_lr_fraction: float = 0.1
    grad_clip: float = 10.0
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (or None for epochs), got {self.steps}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the weights are no longer usable."""


@dataclass
class EpochLog:
    epoch: int
    losses: dict[str, float]
    seconds: float
    pairs_per_second: float
    metrics: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _lr_at(config: TrainConfig, progress: float) -> float:
    """Cosine decay from lr to lr * final_lr_fraction over the run (progress in [0, 1])."""
    low = config.lr * config.final_lr_fraction
    return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def fit(
    model: ThreeBranchNet,
    train_set: Dataset,
    config: TrainConfig,
    *,
    val_set: Dataset | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> list[EpochLog]:
    """Train (or fine-tune: pass a model loaded from a checkpoint) on a dataset of ``to_tensors`` triples.

    With ``checkpoint_path``, every epoch is saved atomically there; with ``resume`` and an existing file, the
    weights, optimizer state and history are restored and training continues after the last saved epoch.
    """
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise ValueError("the training set is empty")
    seed_everything(config.seed)
    device = select_device(config.device)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    criterion = ThreeBranchLoss(model.config)
    history: list[EpochLog] = []
    start_epoch = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        payload = read_checkpoint(checkpoint_path)
        model.load_state_dict(payload["state_dict"])
        if "optimizer" in payload:
            optimizer.load_state_dict(payload["optimizer"])
        start_epoch = int(payload["extra"].get("epoch", 0))
        history = [EpochLog(**h) for h in payload["extra"].get("history", [])]
        log.info("resumed from %s at epoch %d", checkpoint_path, start_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    if config.steps is not None:  # a step budget: batches drawn with replacement, one "epoch"
        epochs = 1
        sampler = RandomSampler(
            train_set,  # type: ignore[arg-type]
            replacement=True,
            num_samples=config.steps * config.batch_size,
            generator=generator,
        )
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.num_workers,
            collate_fn=collate_pairs,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if config.num_workers else None,
        )
    else:
        epochs = config.epochs
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(train_set) > config.batch_size,  # type: ignore[arg-type]
            num_workers=config.num_workers,
            collate_fn=collate_pairs,
            pin_memory=device.type == "cuda",
            generator=generator,
        )
    # fp16 needs loss scaling; bf16 (and fp32) do not.
    scaler = torch.amp.GradScaler(enabled=config.amp and amp_dtype(device) == torch.float16)
    steps_total = max(1, epochs * len(loader))
    for epoch in range(start_epoch, epochs):
        model.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        seen = 0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for step, (rgb, thermal, targets) in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, (epoch * len(loader) + step) / steps_total)
            rgb, thermal = rgb.to(device, non_blocking=True), thermal.to(device, non_blocking=True)
            # Targets stay on the CPU: the loss batches them and moves each kind once.
            with autocast(device, config.amp):
                output = model(rgb, thermal)
            losses = criterion(output, targets)
            total = float(losses["total"].detach())
            if not math.isfinite(total):
                # Stop before the step: a NaN gradient would poison every weight, and nothing after it
                # (checkpoint, published version) may see them.
                raise NonFiniteLossError(
                    f"training loss is {total} at epoch {epoch + 1}, step {step + 1} "
                    f"(components: {({k: float(v.detach()) for k, v in losses.items()})})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            seen += rgb.shape[0]
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * rgb.shape[0]
            batches.set_postfix(loss=f"{sums['total'] / seen:.3f}")
        seconds = time.perf_counter() - started
        entry = EpochLog(
            epoch=epoch + 1,
            losses={k: v / max(seen, 1) for k, v in sums.items()},
            seconds=seconds,
            pairs_per_second=seen / seconds if seconds > 0 else 0.0,
        )
        if val_set is not None:
            entry.metrics = evaluate(model, val_set, batch_size=config.batch_size, device=device)
        history.append(entry)
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                model,
                optimizer=optimizer,
                extra={"epoch": epoch + 1, "history": [asdict(h) for h in history]},
            )
        if on_epoch is not None:
            on_epoch(entry)
        log.info(
            "epoch %d: loss %.4f (%.1f pairs/s)", epoch + 1, entry.losses["total"], entry.pairs_per_second
        )
    return history


PRIMARY_METRIC = {"detection": "AP50", "segmentation": "mIoU"}


@torch.inference_mode()
def collect_predictions(
    model: ThreeBranchNet,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    score_threshold: float = 0.01,
    branch: str = "fused",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run one branch over a dataset; returns (predictions, targets) in network-input pixels.

    Detection predictions are ``{"boxes", "scores", "labels"}``; segmentation predictions ``{"mask"}``.
    """
    device = device if isinstance(device, torch.device) else select_device(device)
    to_device_for_inference(model, device)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_pairs)
    predictions: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for rgb, thermal, batch_targets in loader:
        with autocast(device):
            output = model(rgb.to(device), thermal.to(device))
        if model.config.task == "detection":
            assert output.anchors is not None
            decoded = decode_detections(
                output.branch(branch), output.anchors, output.image_size, score_threshold=score_threshold
            )
            predictions.extend({k: v.cpu() for k, v in d.items()} for d in decoded)
        else:
            masks = decode_segmentation(output.branch(branch)).cpu()
            predictions.extend({"mask": m} for m in masks)
        targets.extend(batch_targets)
    return predictions, targets


def compute_metrics(
    task: str, predictions: list[dict[str, Any]], targets: list[dict[str, Any]], class_names: list[str]
) -> dict[str, Any]:
    """Task metrics over a list of predictions/targets (COCO mAP/AP50/AP75, or mIoU)."""
    if task == "detection":
        return metric_fns.coco_detection_metrics(predictions, targets, class_names)
    return metric_fns.segmentation_metrics(
        [p["mask"] for p in predictions],
        [t["mask"] for t in targets],
        num_classes=len(class_names) + 1,
        ignore_index=IGNORE_INDEX,
        class_names=["unlabelled", *class_names],
    )


def evaluate(
    model: ThreeBranchNet,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    by_condition: bool = False,
    branch: str = "fused",
) -> dict[str, Any]:
    """Metrics of one branch (the fused one by default) on a dataset; optionally broken down by condition."""
    predictions, targets = collect_predictions(
        model, dataset, batch_size=batch_size, device=device, branch=branch
    )
    class_names = list(model.config.class_names)
    results = compute_metrics(model.config.task, predictions, targets, class_names)
    if by_condition:
        groups: dict[str, list[int]] = {}
        for index, target in enumerate(targets):
            groups.setdefault(target.get("condition") or "unknown", []).append(index)
        results["by_condition"] = {
            condition: compute_metrics(
                model.config.task,
                [predictions[i] for i in indices],
                [targets[i] for i in indices],
                class_names,
            )
            for condition, indices in sorted(groups.items())
        }
    return results
