"""Figures that need a model: the pairs an acquisition picks, with what each branch sees (like the paper's
Fig. 5).

One row per pair: RGB and thermal with the ground truth, the visible branch's and the thermal branch's
predictions, and the per-pixel cross-modality inconsistency map (:func:`model.inconsistency.
inconsistency_heatmap`). Rows where one branch sees objects the other misses are the ones I ranks first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model.data.dataset import collate_pairs
from model.device import select_device, to_device_for_inference
from model.inconsistency import inconsistency_heatmap
from model.network import ThreeBranchNet
from model.postprocess import decode_detections, decode_segmentation

#: Colours of classes 1..C (RGBA-free tuples in [0, 1]); class 0 (background) is transparent.
CLASS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.95, 0.25, 0.2),
    (0.2, 0.8, 0.95),
    (0.98, 0.85, 0.15),
    (0.5, 0.9, 0.3),
    (0.85, 0.4, 0.95),
    (1.0, 0.6, 0.2),
    (0.3, 0.4, 1.0),
    (0.9, 0.9, 0.9),
    (0.6, 0.3, 0.1),
)


def _colour(label: int) -> tuple[float, float, float]:
    return CLASS_COLOURS[(int(label) - 1) % len(CLASS_COLOURS)]


def _mask_overlay(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 4) RGBA, background transparent."""
    overlay = np.zeros((*mask.shape, 4), np.float32)
    for label in np.unique(mask):
        if label <= 0 or label >= 255:
            continue
        overlay[mask == label] = (*_colour(int(label)), 0.6)
    return overlay


def _draw_boxes(ax, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None) -> None:
    from matplotlib.patches import Rectangle

    for index, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        colour = _colour(int(label))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.0))
        if scores is not None:
            ax.text(x1, y1, f"{float(scores[index]):.2f}", color=colour, fontsize=5, va="bottom")


@torch.inference_mode()
def plot_selected_pairs(
    model: ThreeBranchNet,
    dataset: Dataset,
    indices: Sequence[int],
    path: str | Path,
    *,
    scores: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    score_threshold: float = 0.3,
    title: str | None = None,
) -> None:
    """Write a figure of ``dataset[indices]`` (``to_tensors`` triples at the model's input size).

    Args:
        scores: the pairs' inconsistency scores, shown in the row labels.
        score_threshold: detections below it are not drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not indices:
        raise ValueError("no pairs to plot")
    device = device if isinstance(device, torch.device) else select_device(device)
    to_device_for_inference(model, device)
    rgb, thermal, targets = collate_pairs([dataset[i] for i in indices])
    output = model(rgb.to(device), thermal.to(device))
    heat = inconsistency_heatmap(output, reduction=model.config.class_reduction).float().cpu().numpy()
    detection = model.config.task == "detection"
    if detection:
        assert output.anchors is not None
        visible = decode_detections(
            output.visible, output.anchors, output.image_size, score_threshold=score_threshold
        )
        thermal_predictions = decode_detections(
            output.thermal, output.anchors, output.image_size, score_threshold=score_threshold
        )
    else:
        visible_masks = decode_segmentation(output.visible).cpu().numpy()
        thermal_masks = decode_segmentation(output.thermal).cpu().numpy()
    columns = ["RGB + ground truth", "thermal + ground truth", "visible branch", "thermal branch", "I map"]
    rows = len(indices)
    height = 1.9 * rows + 0.5
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), height), dpi=100)
    fig.subplots_adjust(top=1 - 0.5 / height, bottom=0.02, left=0.06, right=0.9, wspace=0.08, hspace=0.15)
    axes = np.atleast_2d(axes)
    vmax = max(float(heat.max()), 1e-6)
    image = None
    for row in range(rows):
        rgb_image = rgb[row].permute(1, 2, 0).numpy()
        thermal_image = thermal[row, 0].numpy()
        target = targets[row]
        panels = [rgb_image, thermal_image, rgb_image, thermal_image]
        for column, picture in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(picture, cmap=None if picture.ndim == 3 else "gray", vmin=0, vmax=1)
            if column < 2:  # ground truth
                if detection:
                    keep = ~target["ignore"].numpy().astype(bool)
                    _draw_boxes(ax, target["boxes"].numpy()[keep], target["labels"].numpy()[keep])
                elif "mask" in target:
                    ax.imshow(_mask_overlay(target["mask"].numpy()))
            elif detection:
                found = visible[row] if column == 2 else thermal_predictions[row]
                _draw_boxes(ax, found["boxes"].cpu().numpy(), found["labels"].cpu().numpy(), found["scores"])
            else:
                ax.imshow(_mask_overlay(visible_masks[row] if column == 2 else thermal_masks[row]))
        image = axes[row, 4].imshow(heat[row], cmap="inferno", vmin=0, vmax=vmax)
        label = f"{target.get('pair_id', '')}\n{target.get('condition') or ''}"
        if scores is not None:
            label += f"\nI = {scores[row]:.4f}"
        axes[row, 0].set_ylabel(label, fontsize=6)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for column, name in enumerate(columns):
        axes[0, column].set_title(name, fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes[:, 4].tolist(), fraction=0.05, pad=0.02).ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.1 / height)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
