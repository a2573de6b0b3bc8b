"""Device selection and the mixed-precision context used by training and inference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def select_device(name: str | None = "auto") -> torch.device:
    """ "auto" (or None) picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on CUDA GPUs that support it, fp16 on older ones, None on CPU.

    CPU autocast is left off: on the CPUs this project targets it is slower than fp32.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model.to(device).eval()``, safe to call inside ``torch.inference_mode``.

    Moving parameters to another device under inference mode makes them inference tensors, and the next
    training step on that model fails ("Inference tensors cannot be saved for backward"). Scoring a pool
    between fine-tuning cycles does exactly that when the model comes from a CPU checkpoint and runs on CUDA.
    """
    with torch.inference_mode(False):
        return model.to(device).eval()


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
