"""KAIST Multispectral Pedestrian (Hwang et al., CVPR 2015) in its released on-disk layout.

Layout::

    root/
      images/setXX/VYYY/visible/IZZZZZ.jpg      RGB
      images/setXX/VYYY/lwir/IZZZZZ.jpg         thermal (3 equal channels)
      annotations/setXX/VYYY/IZZZZZ.txt         bbGt text, one file per frame
      annotations_paired/setXX/VYYY/visible/IZZZZZ.txt   optional (Zhang et al., "KAIST-paired";
      annotations_paired/setXX/VYYY/lwir/IZZZZZ.txt         ``annotations-paired/`` is accepted too)
      imageSets/<split>.txt                     lines ``set00/V000/I01216``
      conditions.json                           optional {pair_id: condition}

bbGt v3 files start with ``% bbGt version=3``; every other line is
``label x y w h occ xv yv wv hv ign ang`` with the box ``x y w h`` in pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from model.data.layouts import ListedReader, clip_boxes, read_aligned_pair, read_list, require, resolve_split
from model.data.sample import PairRecord

LAYOUT = """  root/images/setXX/VYYY/{visible,lwir}/IZZZZZ.jpg
  root/annotations/setXX/VYYY/IZZZZZ.txt  (bbGt v3 text)
  root/annotations_paired/setXX/VYYY/{visible,lwir}/IZZZZZ.txt  (optional)
  root/imageSets/<split>.txt  (lines like set00/V000/I01216)"""

#: Split names of the usual protocol -> list files (the first that exists is used).
SPLIT_ALIASES = {
    "train": ("train-all-02.txt", "train.txt"),
    "test": ("test-all-20.txt", "test.txt"),
}

#: Sets recorded at night; the others (set00-02, set06-08) are day.
NIGHT_SETS = frozenset({3, 4, 5, 9, 10, 11})

#: Counted class. "people" (crowds), "person?" (uncertain) and "cyclist" are ignore regions, as in the
#: KAIST/Caltech evaluation; any other label is treated the same way rather than silently dropped.
COUNTED_LABELS = frozenset({"person"})

#: Folder names of the KAIST-paired annotations (the release unpacks as ``annotations_paired``), in order.
PAIRED_FOLDERS = ("annotations_paired", "annotations-paired")

#: The "reasonable" subset of the KAIST/Caltech protocol: persons at least this tall (pixels) ...
REASONABLE_MIN_HEIGHT = 55.0
#: ... and at most this occluded (0 none, 1 partial, 2 heavy).
REASONABLE_MAX_OCCLUSION = 1


def set_condition(pair_id: str) -> str | None:
    """``"day"`` / ``"night"`` from the set of an id ``setXX/VYYY/IZZZZZ``; ``None`` when it has no set."""
    head = pair_id.split("/", 1)[0]
    if not (head.startswith("set") and head[3:].isdigit()):
        return None
    return "night" if int(head[3:]) in NIGHT_SETS else "day"


def parse_bbgt(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bbGt v3 text file -> boxes (K, 4) float32 xyxy, labels (K,) int64 (all 1), ignore (K,) bool,
    occlusion (K,) int64.

    A box is ignored when its label is not ``person`` or its ``ign`` column is set. Occlusion is the ``occ``
    column clipped to 0 (none), 1 (partial), 2 (heavy). Comment lines (``%``) are skipped.
    """
    boxes: list[list[float]] = []
    ignore: list[bool] = []
    occlusion: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        fields = line.split()
        if len(fields) < 5:
            raise ValueError(f"{path}:{number}: expected 'label x y w h occ ...', got {line!r}")
        try:
            x, y, w, h = (float(value) for value in fields[1:5])
            occ = int(float(fields[5])) if len(fields) > 5 else 0
            ign = int(float(fields[10])) if len(fields) > 10 else 0
        except ValueError as error:
            raise ValueError(f"{path}:{number}: non-numeric field in {line!r}") from error
        boxes.append([x, y, x + w, y + h])
        ignore.append(fields[0] not in COUNTED_LABELS or ign != 0)
        occlusion.append(min(max(occ, 0), 2))
    count = len(boxes)
    return (
        np.asarray(boxes, np.float32).reshape(count, 4),
        np.ones(count, np.int64),
        np.asarray(ignore, bool),
        np.asarray(occlusion, np.int64),
    )


class KAISTReader(ListedReader):
    """KAIST pairs of one split; class ``person`` (label 1).

    Args:
        root: dataset root (see the module docstring for the layout).
        split: a split name (``"train"`` -> ``imageSets/train-all-02.txt``, ``"test"`` ->
            ``imageSets/test-all-20.txt`` when present, any other name -> ``imageSets/<name>.txt``) or the
            path to a list file.
        reasonable: also mark as ignore the persons outside the "reasonable" setting (shorter than
            ``min_height`` pixels or heavily occluded, ``occ == 2``). Off by default: the KAIST metric
            applies the setting itself from ``meta["occlusion"]`` and the box heights, and training on every
            person is the usual protocol.
        min_height: the height threshold of ``reasonable`` (55 px in the protocol).

    Records: ``rgb`` (512, 640, 3) and ``thermal`` (512, 640) uint8 for the released data; ``boxes`` (K, 4)
    xyxy pixels clipped to the image, ``labels`` all 1, ``ignore`` for ``people`` / ``person?`` /
    ``cyclist`` and ``ign`` boxes. Short and occluded persons are counted (unless ``reasonable``):
    ``meta["occlusion"]`` (K,) int64 (0 none, 1 partial, 2 heavy) lets the metric apply the setting.

    When ``annotations_paired/.../visible/IZZZZZ.txt`` (or ``annotations-paired/``) exists for a frame
    (Zhang et al.'s per-modality re-annotation), its boxes are used, since the records' boxes must align with
    the RGB image (the fused and visible branches are supervised in RGB coordinates); the thermal ones go to
    ``meta["lwir_boxes"]`` / ``meta["lwir_labels"]`` / ``meta["lwir_ignore"]`` / ``meta["lwir_occlusion"]``,
    not clipped. When both files list the same number of boxes, the boxes dropped from the visible list
    (entirely outside the image) are dropped from the lwir one too, so box ``k`` of each modality stays
    paired. Paired transforms do not move the lwir boxes: they are a record of the annotation, not a target.
    ``meta["annotation"]`` says which source was read (``"paired"`` or ``"original"``).

    Condition: ``"day"`` for set00-02 and set06-08, ``"night"`` for set03-05 and set09-11, unless
    ``conditions.json`` says otherwise.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | os.PathLike[str] = "train",
        *,
        reasonable: bool = False,
        min_height: float = REASONABLE_MIN_HEIGHT,
    ) -> None:
        self.class_names = ["person"]
        self.reasonable = reasonable
        self.min_height = float(min_height)
        self.root = require(Path(root), LAYOUT, directory=True)
        require(self.root / "images", LAYOUT, directory=True)
        self.list_file = resolve_split(split, self.root, self.root / "imageSets", SPLIT_ALIASES, LAYOUT)
        ids = read_list(self.list_file)
        for pair_id in ids:
            if len(pair_id.split("/")) != 3:
                raise ValueError(f"{self.list_file}: id {pair_id!r} is not of the form setXX/VYYY/IZZZZZ")
        self._set_ids(ids, [set_condition(pair_id) for pair_id in ids])

    def paths(self, pair_id: str) -> dict[str, Path]:
        """Files of one pair: ``rgb``, ``thermal``, ``annotation`` and the paired ``visible`` / ``lwir``."""
        set_name, video, frame = pair_id.split("/")
        images = self.root / "images" / set_name / video
        folders = [self.root / name / set_name / video for name in PAIRED_FOLDERS]
        paired = next((folder for folder in folders if folder.is_dir()), folders[0])
        return {
            "rgb": images / "visible" / f"{frame}.jpg",
            "thermal": images / "lwir" / f"{frame}.jpg",
            "annotation": self.root / "annotations" / set_name / video / f"{frame}.txt",
            "visible": paired / "visible" / f"{frame}.txt",
            "lwir": paired / "lwir" / f"{frame}.txt",
        }

    def __getitem__(self, index: int) -> PairRecord:
        index = self._index(index)
        pair_id = self._ids[index]
        paths = self.paths(pair_id)
        rgb, thermal = read_aligned_pair(paths["rgb"], paths["thermal"], LAYOUT, pair_id)
        meta: dict[str, object] = {"source": "kaist"}
        if paths["visible"].is_file():
            boxes, labels, ignore, occlusion = parse_bbgt(paths["visible"])
            lwir = parse_bbgt(require(paths["lwir"], LAYOUT))
            meta.update(annotation="paired", lwir_boxes=lwir[0], lwir_labels=lwir[1], lwir_ignore=lwir[2])
            meta["lwir_occlusion"] = lwir[3]
        else:
            boxes, labels, ignore, occlusion = parse_bbgt(require(paths["annotation"], LAYOUT))
            meta["annotation"] = "original"
        if self.reasonable:
            # Heights before clipping: a person cut by the frame border is as tall as annotated.
            outside = ((boxes[:, 3] - boxes[:, 1]) < self.min_height) | (occlusion > REASONABLE_MAX_OCCLUSION)
            ignore = ignore | outside
        boxes, keep = clip_boxes(boxes, *thermal.shape)
        meta["occlusion"] = occlusion[keep]
        if meta["annotation"] == "paired" and len(meta["lwir_boxes"]) == len(keep):  # type: ignore[arg-type]
            for key in ("lwir_boxes", "lwir_labels", "lwir_ignore", "lwir_occlusion"):
                meta[key] = meta[key][keep]  # type: ignore[index]
        return PairRecord(
            pair_id=pair_id,
            rgb=rgb,
            thermal=thermal,
            boxes=boxes[keep],
            labels=labels[keep],
            ignore=ignore[keep],
            condition=self._conditions[index],
            meta=meta,
        )
