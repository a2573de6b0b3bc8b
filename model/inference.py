"""The one inference path: pairs in, fused-branch predictions and inconsistency scores out.

The Label Studio backend (``/predict`` and pool scoring), ``rgbt-al score`` and the active-learning simulator
all go through :class:`Predictor`, so there is one place that resizes, batches, runs the network under
``inference_mode`` (+ autocast on CUDA) and maps predictions back to the original pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model.acquisition import pair_signals
from model.checkpoint import load_model
from model.data.dataset import collate_pairs, to_tensors
from model.data.sample import PairRecord
from model.data.transforms import eval_transform
from model.device import autocast, select_device
from model.engines import Engine, make_engine
from model.inconsistency import Aggregation, inconsistency_maps, pair_scores
from model.network import NetOutput, ThreeBranchNet
from model.postprocess import decode_detections, upsample_class_ids


@dataclass
class PairPrediction:
    """The fused branch's prediction for one pair, in the pair's original pixels.

    ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,) in 1..C (detection); ``mask`` (H, W) class ids
    (segmentation); ``inconsistency`` the pair's score I in [0, 1]; ``embedding`` (C,) fused features;
    ``inconsistency_map`` (H, W) per-pixel (segmentation) or None, only when asked for;
    ``branch_scores`` (M, 2) the visible and thermal branches' confidence in each detection's class at the
    default box it was decoded from (detection), so a region shows which sensor saw it;
    ``class_branch_scores`` (C + 1, 3) for each class id, the visible, thermal and fused branches' mean
    probability of that class over the pixels the fused branch gives it, at the network's resolution
    (segmentation; NaN for a class it gives no pixel), the same explanation for a mask's regions.
    """

    inconsistency: float
    embedding: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    inconsistency_map: np.ndarray | None = None
    branch_scores: np.ndarray | None = None
    class_branch_scores: np.ndarray | None = None
    #: Every acquisition signal of the pair (:func:`model.acquisition.pair_signals`), only when asked for.
    signals: dict[str, float] | None = None


@dataclass
class PreparedBatch:
    """Pairs resized to the model's size and stacked: ``rgb`` (N, 3, h, w), ``thermal`` (N, 1, h, w) float in
    [0, 1], and each pair's original (H, W) (predictions are mapped back to it)."""

    rgb: Tensor
    thermal: Tensor
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.sizes)


class Predictor:
    """Batched inference with a :class:`ThreeBranchNet`.

    Args:
        model: the network (moved to ``device`` and put in eval mode here).
        device: "auto", "cpu", "cuda", "cuda:1"...
        amp: autocast (bf16/fp16) on CUDA; ignored on CPU.
        score_threshold: detections below it are dropped from user-facing predictions.
        aggregation: "scale_balanced" (the paper) or "flat" (ablation).
        channels_last: run in the NHWC memory layout, which suits cuDNN's tensor-core kernels and oneDNN's
            CPU convolutions alike (1.2x to 1.5x against NCHW on a 2-core CPU: benchmarks/bench_scoring.py
            records it as ``default_layout_gain``).
    """

    def __init__(
        self,
        model: ThreeBranchNet,
        device: str | torch.device | None = "auto",
        *,
        amp: bool = True,
        score_threshold: float = 0.3,
        aggregation: Aggregation = "scale_balanced",
        channels_last: bool = True,
        engine: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.amp = amp
        self.score_threshold = score_threshold
        self.aggregation: Aggregation = aggregation
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = "auto",
        *,
        engine: str = "torch",
        **kwargs,
    ) -> Predictor:
        """Load a checkpoint; ``engine="onnxruntime"`` runs its export (``<checkpoint>.onnx`` beside it) and
        falls back to torch, with a warning, when there is none."""
        model, _ = load_model(path)
        return cls(model, device, engine=make_engine(engine, model, export_path(path)), **kwargs)

    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine is not None else "torch"

    @property
    def config(self):
        return self.model.config

    def prepare(self, rgb: np.ndarray, thermal: np.ndarray) -> tuple[Tensor, Tensor]:
        """One pair (HxWx3 uint8, HxW uint8) -> network tensors (3, h, w), (1, h, w) at the model's size."""
        record = PairRecord(pair_id="", rgb=rgb, thermal=thermal)
        record = eval_transform(self.config.image_size)(record)
        rgb_t, thermal_t, _ = to_tensors(record)
        return rgb_t, thermal_t

    @torch.inference_mode()
    def forward(self, rgb: Tensor, thermal: Tensor) -> NetOutput:
        if self.engine is not None:
            return self.engine(rgb, thermal)
        rgb = rgb.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        thermal = thermal.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.amp):
            return self.model(rgb, thermal)

    @torch.inference_mode()
    def score_batch(self, rgb: Tensor, thermal: Tensor) -> tuple[Tensor, Tensor]:
        """Scores only (the pool-scoring hot path): (N,) inconsistency, (N, C) embeddings, on the device."""
        output = self.forward(rgb, thermal)
        scores = pair_scores(output, reduction=self.config.class_reduction, aggregation=self.aggregation)
        return scores, output.embedding.float()

    @torch.inference_mode()
    def signals_batch(self, rgb: Tensor, thermal: Tensor) -> dict[str, Tensor]:
        """Every acquisition signal (:func:`model.acquisition.pair_signals`) of a batch, one forward pass:
        (N,) tensors and the (N, C) ``embedding``, on the device. The simulator scores its pool here."""
        return pair_signals(
            self.forward(rgb, thermal), reduction=self.config.class_reduction, aggregation=self.aggregation
        )

    def prepare_batch(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> PreparedBatch:
        """Resize and stack pairs of any sizes into one batch of network tensors, pinned when the device is a
        GPU. Thread-safe and model-free: pool scoring calls it in its loader threads so resizing and the
        host-to-device copy overlap the network's work on the previous batch.

        ``sizes``: each pair's original (H, W) when the arrays were decoded reduced
        (:func:`model.data.io.decode_image` ``reduce_to``); predictions are mapped to those. Default: the
        arrays' own sizes."""
        tensors = [self.prepare(rgb, thermal) for rgb, thermal in pairs]
        rgb = torch.stack([t[0] for t in tensors])
        thermal = torch.stack([t[1] for t in tensors])
        if self.device.type == "cuda":
            rgb, thermal = rgb.pin_memory(), thermal.pin_memory()
        if sizes is None:
            sizes = [(int(p[0].shape[0]), int(p[0].shape[1])) for p in pairs]
        if len(sizes) != len(pairs):
            raise ValueError(f"{len(pairs)} pairs but {len(sizes)} sizes")
        return PreparedBatch(rgb, thermal, [(int(h), int(w)) for h, w in sizes])

    @torch.inference_mode()
    def predict_batch(
        self, batch: PreparedBatch, *, with_maps: bool = False, with_signals: bool = False
    ) -> list[PairPrediction]:
        """Predictions for a batch made by :meth:`prepare_batch` (one forward pass), in its order; with
        ``with_signals`` each carries every acquisition signal too (pool scoring for ``ACQUISITION``)."""
        output = self.forward(batch.rgb, batch.thermal)
        predictions = self._predict_tensors(batch.rgb, batch.thermal, batch.sizes, with_maps, output=output)
        if with_signals:
            reduction = self.config.class_reduction
            signals = pair_signals(output, reduction=reduction, aggregation=self.aggregation)
            values = {k: v.float().cpu().numpy() for k, v in signals.items() if k != "embedding"}
            for i, prediction in enumerate(predictions):
                prediction.signals = {k: float(v[i]) for k, v in values.items()}
        return predictions

    @torch.inference_mode()
    def predict(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        batch_size: int = 8,
        with_maps: bool = False,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[PairPrediction]:
        """Predictions for (rgb, thermal) pairs of any sizes, in the input order (``sizes``: the pairs'
        original (H, W), see :meth:`prepare_batch`)."""
        results: list[PairPrediction] = []
        for start in range(0, len(pairs), batch_size):
            chunk = sizes[start : start + batch_size] if sizes is not None else None
            batch = self.prepare_batch(pairs[start : start + batch_size], chunk)
            results.extend(self.predict_batch(batch, with_maps=with_maps))
        return results

    def _predict_tensors(
        self,
        rgb: Tensor,
        thermal: Tensor,
        original_sizes: list[tuple[int, int]],
        with_maps: bool,
        output: NetOutput | None = None,
    ) -> list[PairPrediction]:
        output = self.forward(rgb, thermal) if output is None else output
        reduction = self.config.class_reduction
        scores = pair_scores(output, reduction=reduction, aggregation=self.aggregation).cpu().numpy()
        embeddings = output.embedding.float().cpu().numpy()
        height, width = output.image_size
        results = []
        if self.config.task == "detection":
            assert output.anchors is not None
            detections = decode_detections(
                output.fused, output.anchors, output.image_size, score_threshold=self.score_threshold
            )
            # The single-modality branches' probabilities at each kept detection's default box and class.
            single = [
                torch.cat(output.branch(name).cls_logits, dim=1).float().softmax(dim=-1)
                for name in ("visible", "thermal")
            ]
            for i, (det, (orig_h, orig_w)) in enumerate(zip(detections, original_sizes, strict=True)):
                scale = torch.tensor([orig_w / width, orig_h / height] * 2, device=det["boxes"].device)
                at = (det["anchor_index"], det["labels"])
                branch_scores = torch.stack([probs[i][at] for probs in single], dim=1)
                results.append(
                    PairPrediction(
                        inconsistency=float(scores[i]),
                        embedding=embeddings[i],
                        boxes=(det["boxes"] * scale).cpu().numpy(),
                        scores=det["scores"].cpu().numpy(),
                        labels=det["labels"].cpu().numpy(),
                        branch_scores=branch_scores.cpu().numpy(),
                    )
                )
            return results
        logits = output.fused.cls_logits[0].float()
        maps = inconsistency_maps(output, reduction=reduction)[0] if with_maps else None
        branch_logits = [output.branch(name).cls_logits[0] for name in ("visible", "thermal", "fused")]
        class_branch_scores = mean_class_probabilities(branch_logits, logits.argmax(dim=1)).cpu().numpy()
        for i, (orig_h, orig_w) in enumerate(original_sizes):
            # Class ids at the original size without C full-size logit maps (4 GB for 64 classes at 4000^2).
            mask = upsample_class_ids(logits[i], (orig_h, orig_w))
            inconsistency_map = None
            if maps is not None:
                inconsistency_map = (
                    torch.nn.functional.interpolate(
                        maps[i : i + 1, None], size=(orig_h, orig_w), mode="bilinear", align_corners=False
                    )[0, 0]
                    .cpu()
                    .numpy()
                )
            results.append(
                PairPrediction(
                    inconsistency=float(scores[i]),
                    embedding=embeddings[i],
                    boxes=np.zeros((0, 4), np.float32),
                    scores=np.zeros((0,), np.float32),
                    labels=np.zeros((0,), np.int64),
                    mask=mask.cpu().numpy(),
                    inconsistency_map=inconsistency_map,
                    class_branch_scores=class_branch_scores[i],
                )
            )
        return results


def mean_class_probabilities(branch_logits: list[Tensor], class_ids: Tensor) -> Tensor:
    """Each branch's mean softmax probability of each class over the pixels ``class_ids`` gives that class.

    Args:
        branch_logits: per branch, (N, K, h, w) logits over K class ids (0 = background).
        class_ids: (N, h, w) the class id of every pixel (the fused branch's argmax).

    Returns:
        (N, K, len(branch_logits)); NaN for a class no pixel of that pair has.
    """
    classes = branch_logits[0].shape[1]
    members = torch.nn.functional.one_hot(class_ids, classes).permute(0, 3, 1, 2).float()  # (N, K, h, w)
    pixels = members.sum(dim=(2, 3))  # (N, K)
    sums = torch.stack(
        [(logits.float().softmax(dim=1) * members).sum(dim=(2, 3)) for logits in branch_logits], dim=-1
    )
    return sums / pixels.unsqueeze(-1)  # 0 / 0 = NaN where the class is absent


def export_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's exported graph lives: beside it, same name, ``.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def score_dataset(
    predictor: Predictor,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Inconsistency of every pair of a dataset that yields ``to_tensors`` triples at the model's size.

    A DataLoader with workers and pinned memory decodes the next batch while the device computes this one;
    each batch is reduced to one float per pair on the device before it leaves it.

    Returns (scores (N,), embeddings (N, C), pair ids).
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=predictor.device.type == "cuda",
        collate_fn=collate_pairs,
        persistent_workers=False,
    )
    batches: Iterable = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="scoring", unit="batch")
    scores, embeddings, ids = [], [], []
    for rgb, thermal, targets in batches:
        batch_scores, batch_embeddings = predictor.score_batch(rgb, thermal)
        scores.append(batch_scores.cpu())
        embeddings.append(batch_embeddings.cpu())
        ids.extend(t["pair_id"] for t in targets)
    if not scores:
        return np.zeros((0,), np.float32), np.zeros((0, 0), np.float32), []
    return torch.cat(scores).numpy(), torch.cat(embeddings).numpy(), ids
