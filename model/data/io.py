"""The project's one image loader: bytes or paths in, RGB uint8 / thermal uint8 arrays out.

Readers of on-disk datasets and the Label Studio backend (which fetches bytes over HTTP) both decode here, so
16-bit thermal, 3-channel thermal JPEGs and decompression bombs are handled the same way everywhere.

Memory of one decode. Before any pixel is decoded, :func:`probe` reads the header's width, height, channels
and bit depth; :func:`decode_image` refuses images whose decoded array (width x height x channels x bytes per
sample, :attr:`ImageInfo.decoded_bytes`) is over ``max_bytes``, not only over ``max_pixels``: a 311 KB
16-bit RGBA PNG of 6324x6324 is 40 Mpx but 320 MB decoded. The conversions after decoding never make float64
copies of the image: 16-bit to 8-bit goes through 65,536-entry lookup tables, channel averages through integer
sums, colour reordering happens in place, so one decode peaks at OpenCV's two copies of the decoded array
plus its uint8 result (:func:`decode_peak_bytes`). ``reduce_to`` decodes straight to about the network's
input size: JPEGs through libjpeg's DCT scaling (1/2, 1/4, 1/8: the full image never exists), other formats
by an integer box reduction right after decoding, before any conversion. :class:`DecodeBudget` bounds the
decoded bytes in flight across the threads of a process.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
from PIL import Image

Source = str | Path | bytes

#: Default pixel limit (width x height) for decoding; larger headers are refused before decoding.
DEFAULT_MAX_PIXELS = 50_000_000

#: Default limit of one decoded array in bytes: every 8-bit RGB image under :data:`DEFAULT_MAX_PIXELS`.
DEFAULT_MAX_DECODE_BYTES = 3 * DEFAULT_MAX_PIXELS

#: Percentiles of the robust stretch that maps 16-bit radiometric thermal to 8 bits.
THERMAL_STRETCH_PERCENTILES = (0.5, 99.5)


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can decode."""


class ImageTooLargeError(ImageDecodeError):
    """The image's header announces more pixels or decoded bytes than allowed (decompression-bomb guard)."""


class DecodeBusyError(ImageDecodeError):
    """The process's :class:`DecodeBudget` stayed full for the whole wait: try again later."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about the array a decode would produce (OpenCV's ``IMREAD_UNCHANGED``).

    ``channels`` and ``bytes_per_sample`` err on the large side where the header leaves a choice (a palette
    PNG with transparency decodes to 4 channels).
    """

    width: int
    height: int
    channels: int
    bytes_per_sample: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded array: width x height x channels x bytes per sample."""
        return self.pixels * self.channels * self.bytes_per_sample


def _read(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"image not found: {path}") from error


# PNG colour type -> channels OpenCV decodes it to (without / with a tRNS chunk).
_PNG_CHANNELS = {0: (1, 1), 2: (3, 4), 3: (3, 4), 4: (4, 4), 6: (4, 4)}

# PIL mode -> (channels, bytes per sample) of OpenCV's decode (palettes expand to colour, 1-bit to 8-bit).
_PIL_MODES = {
    "1": (1, 1),
    "L": (1, 1),
    "LA": (4, 1),
    "P": (4, 1),
    "PA": (4, 1),
    "RGB": (3, 1),
    "YCbCr": (3, 1),
    "RGBA": (4, 1),
    "RGBX": (4, 1),
    "CMYK": (4, 1),
    "I": (1, 4),
    "F": (1, 4),
}


def _png_info(data: bytes) -> ImageInfo:
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    if color_type not in _PNG_CHANNELS:
        raise ImageDecodeError(f"not a decodable image (PNG colour type {color_type})")
    # tRNS (transparency) adds an alpha channel to the decode; it sits before the first IDAT chunk.
    has_trns, offset = False, 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        has_trns |= kind == b"tRNS"
        offset += 12 + length
    channels = _PNG_CHANNELS[color_type][int(has_trns)]
    return ImageInfo(int(width), int(height), channels, 2 if depth == 16 else 1, "PNG")


def probe(data: bytes) -> ImageInfo:
    """Size, channels and bit depth from the header alone, without decoding pixels.

    Raises:
        ImageTooLargeError: the header announces an absurd size (PIL's own bomb guard).
        ImageDecodeError: no header this project can read; such bytes are never handed to a decoder, since
            their size could not be bounded first.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26 and data[12:16] == b"IHDR":
        # PNG: the header sits at a fixed offset of the first chunk; reading it needs no library.
        return _png_info(data)
    try:
        with warnings.catch_warnings():  # the caller compares the size with its own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                width, height = image.size
                mode = image.mode
                channels, sample = _PIL_MODES.get(mode, (4, 2))  # unknown modes: counted generously
                if mode.startswith("I;16"):
                    channels, sample = 1, 2
                if image.format == "TIFF":  # 16-bit colour TIFFs open as 8-bit modes in PIL
                    bits = image.tag_v2.get(258, 8)
                    bits = max(bits) if isinstance(bits, tuple) else int(bits)
                    channels = max(channels, int(image.tag_v2.get(277, 1)))
                    sample = max(sample, (bits + 7) // 8)
                return ImageInfo(int(width), int(height), channels, sample, image.format or "")
    except Image.DecompressionBombError as error:  # PIL's own guard fires on absurd headers
        raise ImageTooLargeError(str(error)) from error
    except Image.UnidentifiedImageError as error:
        raise ImageDecodeError("not a decodable image (unrecognised format)") from error
    except Exception as error:  # a truncated or corrupt header
        raise ImageDecodeError(f"not a decodable image ({type(error).__name__}: {error})") from error


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone (:func:`probe`), without decoding pixels."""
    info = probe(data)
    return info.width, info.height


def reduction_factor(info: ImageInfo, target: tuple[int, int]) -> int:
    """The largest integer factor that keeps the image at least ``target`` (height, width) after dividing its
    sides (rounded up); JPEGs are limited to libjpeg's DCT scales 1, 2, 4, 8."""
    target_h, target_w = max(1, int(target[0])), max(1, int(target[1]))
    factor = max(1, min(info.width // target_w, info.height // target_h))
    if info.format == "JPEG":
        factor = next(f for f in (8, 4, 2, 1) if f <= factor)
    return factor


def reduced_size(info: ImageInfo, factor: int) -> tuple[int, int]:
    """(height, width) of the image after :func:`reduction_factor`'s ``factor`` (sides rounded up, as
    libjpeg's scaled decode)."""
    return -(-info.height // factor), -(-info.width // factor)


def decode_peak_bytes(info: ImageInfo) -> int:
    """Upper bound of the memory one decode and its conversion to RGB / thermal uint8 hold at once: twice the
    decoded array (OpenCV's ``imdecode`` holds two copies at its peak: benchmarks/bench_memory.py), at most
    6 bytes per pixel of conversions (a 16-bit channel mean, the percentile copy, the uint8 result) and 4 MiB
    of lookup tables and row blocks (tests/unit/test_memory_bounds.py measures the conversions)."""
    return 2 * info.decoded_bytes + 6 * info.pixels + 4 * 1024 * 1024


class DecodeBudget:
    """Bytes of decoding that may be in memory at once across the threads of a process.

    A decode reserves :func:`decode_peak_bytes` before it starts and releases them when done; when the
    budget is spent it waits, at most ``timeout`` seconds, then raises :class:`DecodeBusyError`. One
    reservation is capped at the capacity, so a single image under the byte limit always gets its turn.
    """

    _instances: ClassVar[dict[int, DecodeBudget]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"a decode budget needs a positive capacity, got {capacity}")
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0  # the most bytes ever reserved at once (observability and tests)
        self._condition = threading.Condition()

    @classmethod
    def shared(cls, capacity: int) -> DecodeBudget:
        """The process-wide budget of that capacity (every fetcher of a process draws on the same one)."""
        with cls._instances_lock:
            if capacity not in cls._instances:
                cls._instances[capacity] = cls(capacity)
            return cls._instances[capacity]

    @contextlib.contextmanager
    def reserve(self, nbytes: int, timeout: float) -> Iterator[None]:
        nbytes = max(0, min(int(nbytes), self.capacity))
        with self._condition:
            if not self._condition.wait_for(lambda: self.in_use + nbytes <= self.capacity, timeout):
                raise DecodeBusyError(
                    f"image decoding is at its memory budget ({self.capacity} bytes in flight) and did not "
                    f"free {nbytes} bytes within {timeout:g} s; try again"
                )
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= nbytes
                self._condition.notify_all()


# libjpeg's scaled decodes by factor, colour and gray.
_JPEG_REDUCED_COLOR = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_JPEG_REDUCED_GRAY = {
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def check_limits(info: ImageInfo, *, max_pixels: int, max_bytes: int) -> None:
    """Raise :class:`ImageTooLargeError` when the header announces more pixels or bytes than allowed."""
    if info.pixels > max_pixels:
        raise ImageTooLargeError(
            f"image of {info.width}x{info.height} pixels exceeds the limit of {max_pixels} pixels"
        )
    if info.decoded_bytes > max_bytes:
        raise ImageTooLargeError(
            f"image of {info.width}x{info.height} pixels x {info.channels} channels x "
            f"{8 * info.bytes_per_sample} bits decodes to {info.decoded_bytes} bytes, over the limit of "
            f"{max_bytes} bytes"
        )


def _after_fork_in_child() -> None:
    """A forked child (an RQ work horse) gets fresh budgets: another thread may have held one's lock at the
    fork, and the parent's reservations are not the child's memory."""
    DecodeBudget._instances = {}
    DecodeBudget._instances_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    reduce_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode image bytes to an array: (H, W) or (H, W, C) in RGB(A) order, uint8 or uint16.

    The pixel count and the decoded bytes are checked from the header before any pixel is decoded
    (decompression bombs: a few kB of PNG can announce gigapixels, or 320 MB of 16-bit RGBA). 16-bit data
    stays 16-bit; callers reduce it (:func:`to_rgb`, :func:`to_thermal`).

    ``reduce_to`` (height, width): decode to the smallest integer reduction that still covers that size
    (:func:`reduction_factor`, :func:`reduced_size`): JPEGs are decoded scaled (8-bit colour, or gray for gray
    JPEGs), other formats are box-reduced right after decoding. None decodes at full size.

    Raises:
        ImageDecodeError: empty or non-image bytes, or an unreadable header.
        ImageTooLargeError: width x height over ``max_pixels`` or decoded bytes over ``max_bytes``.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    info = probe(data)
    check_limits(info, max_pixels=max_pixels, max_bytes=max_bytes)
    factor = reduction_factor(info, reduce_to) if reduce_to is not None else 1
    buffer = np.frombuffer(data, dtype=np.uint8)
    if factor > 1 and info.format == "JPEG":
        # libjpeg decodes at 1/factor scale: the full-size image never exists. The EXIF orientation is
        # ignored, as IMREAD_UNCHANGED does for full decodes.
        flags = _JPEG_REDUCED_GRAY if info.channels == 1 else _JPEG_REDUCED_COLOR
        array = cv2.imdecode(buffer, flags[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
        scale = factor  # the decoded image is already reduced
    else:
        array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        scale = 1
    if array is None:
        raise ImageDecodeError("not a decodable image")
    # The decoder's own answer, checked too: a header that understated the size is caught here.
    if array.shape[0] * array.shape[1] * scale * scale > max_pixels or array.nbytes > max_bytes:
        raise ImageTooLargeError(f"image of {array.shape[1]}x{array.shape[0]} pixels exceeds the limit")
    if factor > 1 and array.shape[:2] != reduced_size(info, factor):
        # A box filter over factor x factor blocks, before any conversion so those work on the small image.
        height, width = reduced_size(info, factor)
        array = cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA)
    if array.ndim == 3 and array.shape[2] == 3:
        cv2.cvtColor(array, cv2.COLOR_BGR2RGB, dst=array)  # in place: no second copy of a large image
    elif array.ndim == 3 and array.shape[2] == 4:
        cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA, dst=array)
    return array


#: uint16 -> uint8 as round(v / 257): a table lookup makes the uint8 result directly, where the arithmetic
#: made two float64 copies of the image (8 bytes per sample each).
_UINT16_TO_UINT8 = np.round(np.arange(65536) / 257.0).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return _UINT16_TO_UINT8[array]
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    raise ImageDecodeError(f"unsupported pixel type {array.dtype}")


def to_rgb(array: np.ndarray) -> np.ndarray:
    """Any decoded image -> (H, W, 3) uint8: grayscale expanded, alpha dropped, 16-bit scaled."""
    if array.ndim == 3 and array.shape[2] > 3:
        array = array[:, :, :3]  # alpha dropped before scaling: the lookup then writes 3 channels, not 4
    array = _to_uint8(array)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def stretch_thermal(array: np.ndarray) -> np.ndarray:
    """16-bit (radiometric) thermal -> uint8 by a robust percentile stretch.

    Raw counts of thermal cameras (FLIR's 14-bit TIFFs) use a narrow band of the 16-bit range that moves with
    the scene; a fixed /257 would leave an almost black image, and a min-max stretch lets one hot pixel decide
    the contrast. The 0.5th-99.5th percentile range is mapped to 0-255.
    """
    low, high = np.percentile(array, THERMAL_STRETCH_PERCENTILES)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    # The stretch of every possible value, looked up: the same arithmetic as on the image, without its float
    # copies (identical results: the formula is elementwise).
    values = np.arange(65536, dtype=np.float32) if array.dtype == np.uint16 else array.astype(np.float32)
    scaled = (values - low) / (high - low)
    table = (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)
    return table[array] if array.dtype == np.uint16 else table


def to_thermal(array: np.ndarray) -> np.ndarray:
    """Any decoded image -> (H, W) uint8 thermal: 16-bit stretched, colour copies of one channel reduced."""
    if array.ndim == 3:
        # Thermal saved as colour (KAIST lwir, FLIR previews) has equal channels; averaging also tames
        # palette-coloured previews into a usable intensity.
        array = _channel_mean(array[:, :, :3]) if array.shape[2] >= 3 else array[:, :, 0]
    if array.dtype == np.uint16:
        return stretch_thermal(array)
    return _to_uint8(array)


def _channel_mean(channels: np.ndarray, rows: int = 64) -> np.ndarray:
    """(H, W, 3) uint8/uint16 -> (H, W) of the same dtype: round(mean of the channels), in blocks of rows.

    The sum of three integers over 3 is never exactly .5 off an integer, so round(s / 3) == (s + 1) // 3,
    what numpy's float64 ``mean().round()`` gave, with a uint32 temporary of ``rows`` rows only.
    """
    out = np.empty(channels.shape[:2], dtype=channels.dtype)
    for start in range(0, channels.shape[0], rows):
        block = channels[start : start + rows].sum(axis=2, dtype=np.uint32)
        out[start : start + rows] = (block + 1) // 3
    return out


def load_rgb(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    reduce_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """An RGB image (path or bytes) -> (H, W, 3) uint8 (``reduce_to``: see :func:`decode_image`)."""
    data = _read(source)
    return to_rgb(decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes, reduce_to=reduce_to))


def load_thermal(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    reduce_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """A thermal image (path or bytes; 8/16-bit, 1 or 3 channels) -> (H, W) uint8."""
    return to_thermal(
        decode_image(_read(source), max_pixels=max_pixels, max_bytes=max_bytes, reduce_to=reduce_to)
    )


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
