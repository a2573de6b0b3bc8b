"""LLVIP: A Visible-infrared Paired Dataset for Low-light Vision (Jia et al., 2021), released layout.

Layout::

    root/
      visible/{train,test}/NNNNNN.jpg       RGB
      infrared/{train,test}/NNNNNN.jpg      thermal (3 equal channels)
      Annotations/NNNNNN.xml                Pascal VOC, shared by both modalities
      conditions.json                       optional {pair_id: condition}
"""

from __future__ import annotations

import os
from pathlib import Path

from model.data.layouts import ListedReader, read_list, require, resolve_split, voc_pair_record
from model.data.sample import PairRecord

LAYOUT = """  root/visible/{train,test}/NNNNNN.jpg
  root/infrared/{train,test}/NNNNNN.jpg
  root/Annotations/NNNNNN.xml  (Pascal VOC)"""

#: LLVIP has no list files: the split is the folder.
SPLITS = ("train", "test")


class LLVIPReader(ListedReader):
    """LLVIP pairs of one split; class ``person`` (1).

    Args:
        root: dataset root (see the module docstring for the layout).
        split: ``"train"`` or ``"test"`` (the images of ``visible/<split>/``, sorted by name), or the path
            to a list file of ids ``NNNNNN`` (each looked up in ``train/`` then ``test/``).

    Records: ``rgb`` (H, W, 3) and ``thermal`` (H, W) uint8 (1024 x 1280 in the release); ``boxes`` (K, 4)
    xyxy pixels from the VOC ``bndbox``, clipped to the image; ``difficult=1`` -> ``ignore``. Condition:
    ``"night"`` (every LLVIP scene is low-light) unless ``conditions.json`` says otherwise.
    """

    def __init__(self, root: str | Path, split: str | os.PathLike[str] = "train") -> None:
        self.class_names = ["person"]
        self.root = require(Path(root), LAYOUT, directory=True)
        require(self.root / "Annotations", LAYOUT, directory=True)
        self.split: str | None
        if isinstance(split, str) and split in SPLITS:
            self.split = split
            folder = require(self.root / "visible" / split, LAYOUT, directory=True)
            require(self.root / "infrared" / split, LAYOUT, directory=True)
            ids = sorted(path.stem for path in folder.glob("*.jpg"))
        elif (
            isinstance(split, str) and "/" not in split and os.sep not in split and not split.endswith(".txt")
        ):
            raise ValueError(f"unknown LLVIP split {split!r}; use one of {SPLITS} or a list file path")
        else:
            self.split = None
            ids = read_list(resolve_split(split, self.root, self.root, {}, LAYOUT))
        self._set_ids(ids, ["night"] * len(ids))

    def paths(self, pair_id: str) -> dict[str, Path]:
        """Files of one pair: ``rgb``, ``thermal`` and ``annotation``."""
        splits = (self.split,) if self.split else SPLITS
        # Ids from a list file may come from either folder; the first holding the visible image wins.
        split = next(
            (s for s in splits if (self.root / "visible" / s / f"{pair_id}.jpg").is_file()), splits[0]
        )
        return {
            "rgb": self.root / "visible" / split / f"{pair_id}.jpg",
            "thermal": self.root / "infrared" / split / f"{pair_id}.jpg",
            "annotation": self.root / "Annotations" / f"{pair_id}.xml",
        }

    def __getitem__(self, index: int) -> PairRecord:
        index = self._index(index)
        pair_id = self._ids[index]
        return voc_pair_record(
            pair_id, self.paths(pair_id), LAYOUT, self.class_names, self._conditions[index], "llvip"
        )
