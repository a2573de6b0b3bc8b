"""MFNet RGB-thermal semantic segmentation (Ha et al., IROS 2017) in its released on-disk layout.

Layout::

    root/
      images/NAME.png       4 channels: R, G, B, thermal (one file per pair)
      labels/NAME.png       1 channel, class ids 0..8
      train.txt, val.txt, test.txt[, test_day.txt, test_night.txt]   NAME per line
      conditions.json       optional {pair_id: condition}

Names end in ``D`` (day) or ``N`` (night), e.g. ``00001D``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from model.data.io import decode_image, to_rgb, to_thermal
from model.data.layouts import ListedReader, read_bytes, read_list, require, resolve_split
from model.data.sample import IGNORE_INDEX, PairRecord

LAYOUT = """  root/images/NAME.png  (RGB + thermal as a 4th channel)
  root/labels/NAME.png  (class ids 0..8)
  root/train.txt, root/val.txt, root/test.txt  (NAME per line)"""

#: Foreground classes: mask id i is CLASS_NAMES[i - 1]; id 0 is "unlabelled".
CLASS_NAMES = ("car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")

SPLIT_ALIASES = {"validation": ("val.txt",)}

#: Class ids whose connected components become detection boxes (car, person, bike).
BOX_CLASSES = (1, 2, 3)

#: Components smaller than this many pixels are label noise, not objects.
MIN_COMPONENT_AREA = 4


def name_condition(name: str) -> str | None:
    """``"day"`` / ``"night"`` from the last letter of an MFNet name; ``None`` for other names."""
    return {"D": "day", "N": "night"}.get(name[-1:].upper())


def mask_boxes(
    mask: np.ndarray, classes: tuple[int, ...] = BOX_CLASSES, min_area: int = MIN_COMPONENT_AREA
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected components of each class in a (H, W) id mask.

    Returns boxes (K, 4) float32 xyxy (pixel-exact: ``x2 = last column + 1``) and labels (K,) int64, ordered
    by class, then by the components' raster order. Components under ``min_area`` pixels are skipped.
    """
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for class_id in classes:
        binary = (mask == class_id).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for x, y, w, h, area in stats[1:count]:  # component 0 is the background
            if area >= min_area:
                boxes.append(np.array([x, y, x + w, y + h], np.float32))
                labels.append(class_id)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


class MFNetReader(ListedReader):
    """MFNet pairs of one split with segmentation masks and boxes derived from them.

    ``class_names`` are the 8 foreground classes; mask id ``i`` is ``class_names[i - 1]`` and id 0 is
    "unlabelled" (background). Ids outside 0..8 become ``IGNORE_INDEX``.

    Args:
        root: dataset root (see the module docstring for the layout).
        split: ``"train"``, ``"val"`` / ``"validation"``, ``"test"``, another name (``<name>.txt``, e.g.
            ``test_day``) or the path to a list file.

    Records: ``rgb`` (H, W, 3) and ``thermal`` (H, W) uint8 (480 x 640 in the release), split from one decode
    of the 4-channel image; ``mask`` (H, W) int64. MFNet has no boxes: ``boxes`` / ``labels`` are derived from
    the 8-connected components of the car (1), person (2) and bike (3) ids of the mask (components under 4
    pixels skipped), labels in this reader's ids; none are ignored. ``meta["derived_boxes"]`` is ``True``.
    Condition: ``"day"`` / ``"night"`` from the name's last letter (``D`` / ``N``) unless ``conditions.json``
    says otherwise.
    """

    def __init__(self, root: str | Path, split: str | os.PathLike[str] = "train") -> None:
        self.class_names = list(CLASS_NAMES)
        self.root = require(Path(root), LAYOUT, directory=True)
        require(self.root / "images", LAYOUT, directory=True)
        require(self.root / "labels", LAYOUT, directory=True)
        self.list_file = resolve_split(split, self.root, self.root, SPLIT_ALIASES, LAYOUT)
        ids = [Path(entry).stem if entry.endswith(".png") else entry for entry in read_list(self.list_file)]
        self._set_ids(ids, [name_condition(name) for name in ids])

    def paths(self, pair_id: str) -> dict[str, Path]:
        """Files of one pair: ``image`` (4-channel) and ``label``."""
        return {
            "image": self.root / "images" / f"{pair_id}.png",
            "label": self.root / "labels" / f"{pair_id}.png",
        }

    def __getitem__(self, index: int) -> PairRecord:
        index = self._index(index)
        pair_id = self._ids[index]
        paths = self.paths(pair_id)
        image = decode_image(read_bytes(paths["image"], LAYOUT))
        if image.ndim != 3 or image.shape[2] != 4:
            raise ValueError(
                f"{paths['image']}: expected 4 channels (RGB + thermal), got shape {image.shape}"
            )
        rgb, thermal = to_rgb(image[:, :, :3]), to_thermal(image[:, :, 3])
        label = decode_image(read_bytes(paths["label"], LAYOUT))
        if label.ndim == 3:  # some copies store the ids in every channel of an RGB PNG
            label = label[:, :, 0]
        if label.shape != thermal.shape:
            raise ValueError(f"{pair_id}: label {label.shape} and image {thermal.shape} sizes differ")
        mask = label.astype(np.int64)
        mask[mask > len(self.class_names)] = IGNORE_INDEX
        boxes, labels = mask_boxes(mask)
        return PairRecord(
            pair_id=pair_id,
            rgb=rgb,
            thermal=thermal,
            boxes=boxes,
            labels=labels,
            ignore=np.zeros(len(boxes), bool),
            mask=mask,
            condition=self._conditions[index],
            meta={"source": "mfnet", "derived_boxes": True},
        )
