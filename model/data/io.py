"""The project's one image loader: bytes or paths in, RGB uint8 / thermal uint8 arrays out.

Readers of on-disk datasets and the Label Studio backend (which fetches bytes over HTTP) both decode here, so
16-bit thermal, 3-channel thermal JPEGs and decompression bombs are handled the same way everywhere.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

Source = str | Path | bytes

#: Default pixel limit (width x height) for decoding; larger headers are refused before decoding.
DEFAULT_MAX_PIXELS = 50_000_000

#: Percentiles of the robust stretch that maps 16-bit radiometric thermal to 8 bits.
THERMAL_STRETCH_PERCENTILES = (0.5, 99.5)


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can decode."""


class ImageTooLargeError(ImageDecodeError):
    """The image's header announces more pixels than allowed (decompression-bomb guard)."""


def _read(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"image not found: {path}") from error


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding pixels.

    Raises:
        ImageTooLargeError: the header announces an absurd size (PIL's own bomb guard).
        ImageDecodeError: no header this project can read; such bytes are never handed to a decoder, since
            their pixel count could not be bounded first.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        # PNG: the size sits at a fixed offset of the first chunk; reading it needs no library.
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    try:
        with warnings.catch_warnings():  # the caller compares the size with its own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                return image.size
    except Image.DecompressionBombError as error:  # PIL's own guard fires on absurd headers
        raise ImageTooLargeError(str(error)) from error
    except Image.UnidentifiedImageError as error:
        raise ImageDecodeError("not a decodable image (unrecognised format)") from error
    except Exception as error:  # a truncated or corrupt header
        raise ImageDecodeError(f"not a decodable image ({type(error).__name__}: {error})") from error


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an array: (H, W) or (H, W, C) in RGB(A) order, uint8 or uint16.

    The pixel count is checked from the header before any pixel is decoded (decompression bombs: a few kB
    of PNG can announce gigapixels). 16-bit data stays 16-bit; callers reduce it (:func:`to_rgb`,
    :func:`to_thermal`).

    Raises:
        ImageDecodeError: empty or non-image bytes, or an unreadable header.
        ImageTooLargeError: width x height over ``max_pixels``.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    width, height = image_size(data)
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageDecodeError("not a decodable image")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ImageTooLargeError(f"image of {array.shape[1]}x{array.shape[0]} pixels exceeds the limit")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array / 257.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    raise ImageDecodeError(f"unsupported pixel type {array.dtype}")


def to_rgb(array: np.ndarray) -> np.ndarray:
    """Any decoded image -> (H, W, 3) uint8: grayscale expanded, alpha dropped, 16-bit scaled."""
    array = _to_uint8(array)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def stretch_thermal(array: np.ndarray) -> np.ndarray:
    """16-bit (radiometric) thermal -> uint8 by a robust percentile stretch.

    Raw counts of thermal cameras (FLIR's 14-bit TIFFs) use a narrow band of the 16-bit range that moves with
    the scene; a fixed /257 would leave an almost black image, and a min-max stretch lets one hot pixel decide
    the contrast. The 0.5th-99.5th percentile range is mapped to 0-255.
    """
    low, high = np.percentile(array, THERMAL_STRETCH_PERCENTILES)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (array.astype(np.float32) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)


def to_thermal(array: np.ndarray) -> np.ndarray:
    """Any decoded image -> (H, W) uint8 thermal: 16-bit stretched, colour copies of one channel reduced."""
    if array.ndim == 3:
        channels = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        # Thermal saved as colour (KAIST lwir, FLIR previews) has equal channels; averaging also tames
        # palette-coloured previews into a usable intensity.
        array = (
            channels.mean(axis=2).round().astype(array.dtype) if channels.shape[2] > 1 else channels[:, :, 0]
        )
    if array.dtype == np.uint16:
        return stretch_thermal(array)
    return _to_uint8(array)


def load_rgb(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An RGB image (path or bytes) -> (H, W, 3) uint8."""
    return to_rgb(decode_image(_read(source), max_pixels=max_pixels))


def load_thermal(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A thermal image (path or bytes; 8/16-bit, 1 or 3 channels) -> (H, W) uint8."""
    return to_thermal(decode_image(_read(source), max_pixels=max_pixels))


def encode_png(array: np.ndarray) -> bytes:
    """(H, W), (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or uint16 -> PNG bytes (lossless)."""
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ImageDecodeError("PNG encoding failed")
    return encoded.tobytes()


def encode_jpeg(array: np.ndarray, quality: int = 95, *, full_chroma: bool = False) -> bytes:
    """(H, W) or (H, W, 3) RGB uint8 -> JPEG bytes.

    ``full_chroma`` keeps colour at full resolution (4:4:4) instead of the usual 4:2:0, which halves the
    round-trip error of noisy, saturated synthetic images.
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        if full_chroma:
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, encoded = cv2.imencode(".jpg", array, params)
    if not ok:
        raise ImageDecodeError("JPEG encoding failed")
    return encoded.tobytes()


def save_image(path: str | Path, array: np.ndarray, *, quality: int = 95) -> Path:
    """Write PNG or JPEG by the file's suffix, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    data = encode_jpeg(array, quality) if suffix in (".jpg", ".jpeg") else encode_png(array)
    path.write_bytes(data)
    return path


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a lossless PNG: (H, W) ids or thermal, (H, W, 3) RGB or (H, W, 4) RGB + thermal, 8 or 16 bits."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: a PNG needs a .png suffix")
    return save_image(path, array)


def save_jpeg(path: str | Path, array: np.ndarray, *, quality: int = 95, full_chroma: bool = False) -> Path:
    """Write a JPEG ((H, W) or (H, W, 3) RGB uint8) under ``path`` as given (``.jpg`` / ``.jpeg`` kept),
    creating folders; see :func:`encode_jpeg` for ``full_chroma``."""
    path = Path(path)
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        raise ValueError(f"{path}: a JPEG needs a .jpg or .jpeg suffix")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(array, quality, full_chroma=full_chroma))
    return path
