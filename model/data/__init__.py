"""Paired RGB + thermal data: one record type, one image loader, paired transforms, readers, a generator.

- :mod:`model.data.sample`: :class:`PairRecord` (numpy arrays) and the :class:`PairReader` protocol.
- :mod:`model.data.io`: ``decode_image`` / ``load_rgb`` / ``load_thermal`` (bomb-checked), PNG/JPEG writers.
- :mod:`model.data.transforms`: expand, IoU crop, flip, resize, RGB jitter; ``train_transform``,
  ``eval_transform``.
- :mod:`model.data.dataset`: ``to_tensors``, ``PairDataset``, ``collate_pairs``.
- :mod:`model.data.readers`: the format registry, ``open_dataset(root, format, split)`` over the KAIST,
  FLIR-aligned, LLVIP and MFNet readers (:mod:`~model.data.kaist`, :mod:`~model.data.flir`,
  :mod:`~model.data.llvip`, :mod:`~model.data.mfnet`) and synthetic folders.
- :mod:`model.data.layouts`: what the readers share (layout checks, split lists, VOC files, the
  ``conditions.json`` sidecar, ``ListedReader``); the readers import it, never the registry.
- :mod:`model.data.synthetic`: ``SyntheticRGBT`` and ``write_dataset``.

Nothing is imported here, so ``import model.data.io`` does not pull in torch.
"""
