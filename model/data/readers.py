"""The format registry of on-disk RGB-T datasets: ``open_dataset(root, "kaist", "train")`` picks a reader by
format name (:data:`ALL_FORMATS`).

Every reader (:class:`~model.data.kaist.KAISTReader`, :class:`~model.data.flir.FLIRAlignedReader`,
:class:`~model.data.llvip.LLVIPReader`, :class:`~model.data.mfnet.MFNetReader`) lists its pair ids when it
is built and decodes images only in ``__getitem__`` (through :mod:`model.data.io`), so building one over a
large dataset is cheap. Each exposes ``conditions`` aligned with ``pair_ids``: the format's own day/night
where it has one, overridden by an optional ``conditions.json`` sidecar in the dataset root
(:func:`model.data.layouts.load_conditions`). Their shared helpers live in :mod:`model.data.layouts`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from model.data.flir import FLIRAlignedReader
from model.data.kaist import KAISTReader
from model.data.llvip import LLVIPReader
from model.data.mfnet import MFNetReader
from model.data.sample import PairReader

#: On-disk formats of real datasets and their readers.
READERS: dict[str, Callable[..., PairReader]] = {
    "kaist": KAISTReader,
    "flir-aligned": FLIRAlignedReader,
    "llvip": LLVIPReader,
    "mfnet": MFNetReader,
}
FORMATS = tuple(READERS)

#: A folder written by :func:`model.data.synthetic.write_dataset`: its ``synthetic.json`` names the format
#: it was written in (``flir-aligned`` or ``mfnet``), whose reader then opens it.
SYNTHETIC_FORMAT = "synthetic"

#: Every format name :func:`open_dataset` accepts.
ALL_FORMATS = (*FORMATS, SYNTHETIC_FORMAT)


def open_dataset(
    root: str | Path, format: str, split: str | os.PathLike[str] = "train", **options: object
) -> PairReader:
    """The reader of ``format`` (one of :data:`ALL_FORMATS`) over ``root`` and ``split``.

    ``options`` go to the reader (e.g. ``reasonable=True`` for KAIST). Missing folders and list files raise
    ``FileNotFoundError`` naming the path and the expected layout; an unknown format raises ``ValueError``.
    """
    if format == SYNTHETIC_FORMAT:
        return _open_synthetic(Path(root), split, options)
    if options and format != "kaist":  # only KAIST has options (its "reasonable" subset)
        raise TypeError(f"format {format!r} takes no options, got {sorted(options)}")
    if format not in READERS:
        raise ValueError(f"unknown dataset format {format!r}; valid formats: {', '.join(ALL_FORMATS)}")
    return READERS[format](root, split, **options)


def _open_synthetic(root: Path, split: str | os.PathLike[str], options: Mapping[str, object]) -> PairReader:
    manifest = root / "synthetic.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"file not found: {manifest}\nexpected a folder written by model.data.synthetic.write_dataset "
            "(rgbt-al synth), whose synthetic.json names its on-disk format"
        )
    try:
        written = json.loads(manifest.read_text(encoding="utf-8"))["format"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{manifest}: not a synthetic dataset manifest ({error!r})") from error
    if written not in FORMATS:
        raise ValueError(f"{manifest}: unknown format {written!r}")
    return open_dataset(root, written, split, **options)
