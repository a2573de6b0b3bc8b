"""Shared helpers of the on-disk RGB-T readers (:mod:`model.data.kaist`, :mod:`model.data.flir`,
:mod:`model.data.llvip`, :mod:`model.data.mfnet`): layout checks with messages that name the expected layout,
split lists, VOC annotations, box clipping, aligned-pair decoding, the ``conditions.json`` sidecar
(:func:`load_conditions`) and :class:`ListedReader`, the base of every reader.

The format registry, :func:`model.data.readers.open_dataset`, imports the readers; the readers import only
this module, so there is no import cycle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.etree.ElementTree import ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from model.data.io import load_rgb, load_thermal
from model.data.sample import PairRecord

#: Name of the optional per-dataset sidecar mapping pair ids to conditions (``{"pair_id": "night"}``).
CONDITIONS_FILE = "conditions.json"

def load_conditions(root: str | Path) -> dict[str, str]:
    """The ``conditions.json`` sidecar of a dataset root as ``{pair_id: condition}``; ``{}`` when absent.

    The sidecar lets a dataset state conditions its format does not carry (FLIR has no day/night field) or
    correct the format's own (KAIST's set-based day/night); every reader applies it over its own value.
    """
    path = Path(root) / CONDITIONS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in data.items()
    ):
        raise ValueError(f'{path}: expected a JSON object {{"pair_id": "condition", ...}} of strings')
    return data


def require(path: Path, layout: str, *, directory: bool = False) -> Path:
    """``path`` if it exists (as a folder when ``directory``), else an error naming it and the layout."""
    if not (path.is_dir() if directory else path.is_file()):
        kind = "folder" if directory else "file"
        raise FileNotFoundError(f"{kind} not found: {path}\nexpected layout:\n{layout}")
    return path


def read_bytes(path: Path, layout: str) -> bytes:
    """The bytes of one file of a pair, with the expected layout in the error when it is missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"file not found: {path}\nexpected layout:\n{layout}") from error


def resolve_split(
    split: str | os.PathLike[str],
    root: Path,
    list_dir: Path,
    aliases: Mapping[str, Sequence[str]],
    layout: str,
) -> Path:
    """The list file of a split: a path to a file, or a split name looked up in ``list_dir`` (under ``root``).

    A name (no path separator, no ``.txt`` suffix) maps through ``aliases`` (first existing candidate wins,
    e.g. ``"train" -> ("train-all-02.txt", "train.txt")``), else to ``<list_dir>/<name>.txt``.
    """
    text = os.fspath(split)
    if isinstance(split, os.PathLike) or "/" in text or os.sep in text or text.endswith(".txt"):
        path = Path(text)
        # A relative path is tried from the working directory, then from the dataset root.
        for candidate in (path, root / path):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"split list not found: {path} (also tried {root / path})")
    candidates = [list_dir / name for name in aliases.get(text, (f"{text}.txt",))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(f"split list for {text!r} not found (tried {tried})\nexpected layout:\n{layout}")


def read_list(path: Path) -> list[str]:
    """Pair ids of a list file: one per line, blank lines and ``#`` comments skipped, order kept.

    Duplicates are refused: pair ids key labels, predictions and the active-learning pool.
    """
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip().replace("\\", "/")
        if not entry or entry.startswith("#"):
            continue
        if entry in seen:
            raise ValueError(f"{path}:{number}: duplicate id {entry!r}")
        seen.add(entry)
        ids.append(entry)
    return ids


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip (K, 4) xyxy boxes to the image -> (clipped boxes, (K,) bool of boxes with positive area left).

    Annotations of real datasets stick out of the frame by a few pixels; those outside entirely are dropped.
    """
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, keep


def parse_voc(path: Path, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Pascal VOC XML file -> boxes (K, 4) float32 xyxy, labels (K,) int64 1..C, ignore (K,) bool.

    Objects whose ``name`` is not in ``class_names`` are skipped; ``difficult=1`` marks an ignore box.
    Coordinates are taken as written (``xmin ymin xmax ymax``), without the legacy 1-based shift.
    The XML is parsed with :mod:`defusedxml`: DTDs with entities and external references are refused
    (ValueError), so an annotation file cannot make the reader fetch or expand anything.
    """
    index = {name: i + 1 for i, name in enumerate(class_names)}
    try:
        tree = SafeElementTree.parse(path, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except FileNotFoundError:
        raise
    except (DefusedXmlException, ParseError) as error:
        raise ValueError(f"{path}: refused or malformed annotation XML ({error!r})") from error
    boxes: list[list[float]] = []
    labels: list[int] = []
    ignore: list[bool] = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            continue
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {name!r} has no <bndbox>")
        try:
            coords = [float(box.findtext(tag) or "nan") for tag in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as error:
            raise ValueError(f"{path}: object {name!r} has a non-numeric <bndbox> ({error})") from error
        if not np.all(np.isfinite(coords)):
            raise ValueError(f"{path}: object {name!r} has an incomplete <bndbox>")
        boxes.append(coords)
        labels.append(index[name])
        ignore.append((obj.findtext("difficult") or "0").strip() == "1")
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(ignore, bool),
    )


class ListedReader:
    """Base of the on-disk readers: ids and conditions listed once, ``__getitem__`` decodes one pair.

    Subclasses set ``class_names``, ``root``, ``_ids`` and ``_conditions`` and implement ``_load(index)``.
    """

    class_names: list[str]
    root: Path
    _ids: list[str]
    _conditions: list[str | None]

    def _set_ids(self, ids: list[str], own: Sequence[str | None]) -> None:
        """Store ids and their conditions: the format's own, overridden by the sidecar."""
        sidecar = load_conditions(self.root)
        self._ids = list(ids)
        self._conditions = [
            sidecar.get(pair_id, condition) for pair_id, condition in zip(ids, own, strict=True)
        ]

    @property
    def pair_ids(self) -> list[str]:
        """Pair ids in list-file order."""
        return list(self._ids)

    @property
    def conditions(self) -> list[str | None]:
        """Condition of each pair (``"day"``, ``"night"``, a sidecar value or ``None``), aligned with ids."""
        return list(self._conditions)

    def __len__(self) -> int:
        return len(self._ids)

    def _index(self, index: int) -> int:
        size = len(self._ids)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {size} pairs")
        return index % size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, pairs={len(self)})"


def read_aligned_pair(
    rgb_path: Path, thermal_path: Path, layout: str, pair_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """An aligned pair's images: RGB (H, W, 3) and thermal (H, W) uint8; sizes must agree."""
    rgb = load_rgb(require(rgb_path, layout))
    thermal = load_thermal(require(thermal_path, layout))
    if rgb.shape[:2] != thermal.shape:
        raise ValueError(f"{pair_id}: RGB {rgb.shape[:2]} and thermal {thermal.shape} sizes differ")
    return rgb, thermal


def voc_pair_record(
    pair_id: str,
    paths: Mapping[str, Path],
    layout: str,
    class_names: Sequence[str],
    condition: str | None,
    source: str,
) -> PairRecord:
    """A pair whose boxes are in one Pascal-VOC XML file (FLIR-aligned, LLVIP): ``paths`` has ``rgb``,
    ``thermal`` and ``annotation``."""
    rgb, thermal = read_aligned_pair(paths["rgb"], paths["thermal"], layout, pair_id)
    boxes, labels, ignore = parse_voc(require(paths["annotation"], layout), class_names)
    boxes, keep = clip_boxes(boxes, *thermal.shape)
    return PairRecord(
        pair_id=pair_id,
        rgb=rgb,
        thermal=thermal,
        boxes=boxes[keep],
        labels=labels[keep],
        ignore=ignore[keep],
        condition=condition,
        meta={"source": source},
    )
