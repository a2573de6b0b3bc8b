"""The aligned FLIR ADAS subset (Zhang et al., ICIP 2020) in its released on-disk layout.

Layout::

    root/
      JPEGImages/FLIR_XXXXX_RGB.jpg                RGB, registered to the thermal frame
      JPEGImages/FLIR_XXXXX_PreviewData.jpeg       thermal preview (8-bit)
      Annotations/FLIR_XXXXX_PreviewData.xml       Pascal VOC
      align_train.txt, align_validation.txt[, align_test.txt]   ids ``FLIR_XXXXX``
      conditions.json                              optional {pair_id: condition}
"""

from __future__ import annotations

import os
from pathlib import Path

from model.data.layouts import ListedReader, read_list, require, resolve_split, voc_pair_record
from model.data.sample import PairRecord

LAYOUT = """  root/JPEGImages/FLIR_XXXXX_RGB.jpg
  root/JPEGImages/FLIR_XXXXX_PreviewData.jpeg
  root/Annotations/FLIR_XXXXX_PreviewData.xml  (Pascal VOC)
  root/align_train.txt, root/align_validation.txt[, root/align_test.txt]  (ids like FLIR_00002)"""

#: Foreground classes by VOC name (label = index + 1); other names are skipped.
CLASS_NAMES = ("person", "car", "bicycle")

#: The released subset has no test list: "test" falls back to the validation list, as in the paper.
SPLIT_ALIASES = {
    "train": ("align_train.txt",),
    "val": ("align_validation.txt",),
    "validation": ("align_validation.txt",),
    "test": ("align_test.txt", "align_validation.txt"),
}

#: File-name suffixes some list files keep on their ids; stripped so ids are always ``FLIR_XXXXX``.
_ID_SUFFIXES = ("_PreviewData", "_RGB")


def _normalise_id(entry: str) -> str:
    entry = Path(entry).stem if entry.lower().endswith((".jpg", ".jpeg", ".xml")) else entry
    for suffix in _ID_SUFFIXES:
        entry = entry.removesuffix(suffix)
    return entry


class FLIRAlignedReader(ListedReader):
    """Aligned FLIR pairs of one split; classes ``person`` (1), ``car`` (2), ``bicycle`` (3).

    Args:
        root: dataset root (see the module docstring for the layout).
        split: ``"train"``, ``"val"`` / ``"validation"`` (``align_validation.txt``), ``"test"``
            (``align_test.txt`` if present, else ``align_validation.txt``), another name
            (``align_<name>.txt``), or the path to a list file.

    Records: ``rgb`` (H, W, 3) and ``thermal`` (H, W) uint8 (640 x 512 in the release); ``boxes`` (K, 4)
    xyxy pixels from the VOC ``bndbox`` taken as written and clipped to the image; objects of other names
    (``dog``, ...) are skipped; ``difficult=1`` -> ``ignore``. Condition: ``None`` (FLIR records no day/night)
    unless ``conditions.json`` gives one.
    """

    def __init__(self, root: str | Path, split: str | os.PathLike[str] = "train") -> None:
        self.class_names = list(CLASS_NAMES)
        self.root = require(Path(root), LAYOUT, directory=True)
        require(self.root / "JPEGImages", LAYOUT, directory=True)
        require(self.root / "Annotations", LAYOUT, directory=True)
        aliases = dict(SPLIT_ALIASES)
        if isinstance(split, str) and split not in aliases:
            aliases[split] = (f"align_{split}.txt", f"{split}.txt")
        self.list_file = resolve_split(split, self.root, self.root, aliases, LAYOUT)
        ids = [_normalise_id(entry) for entry in read_list(self.list_file)]
        self._set_ids(ids, [None] * len(ids))

    def paths(self, pair_id: str) -> dict[str, Path]:
        """Files of one pair: ``rgb``, ``thermal`` and ``annotation``."""
        return {
            "rgb": self.root / "JPEGImages" / f"{pair_id}_RGB.jpg",
            "thermal": self.root / "JPEGImages" / f"{pair_id}_PreviewData.jpeg",
            "annotation": self.root / "Annotations" / f"{pair_id}_PreviewData.xml",
        }

    def __getitem__(self, index: int) -> PairRecord:
        index = self._index(index)
        pair_id = self._ids[index]
        return voc_pair_record(
            pair_id, self.paths(pair_id), LAYOUT, self.class_names, self._conditions[index], "flir-aligned"
        )
