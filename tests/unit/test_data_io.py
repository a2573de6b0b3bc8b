"""The one image loader: dtypes, channel handling, 16-bit thermal, and refusals before decoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.data import io as image_io
from model.data.io import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    encode_jpeg,
    encode_png,
    image_size,
    load_rgb,
    load_thermal,
    save_jpeg,
    save_png,
    stretch_thermal,
)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces ``width`` x ``height`` 8-bit gray pixels but carries no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


def jpeg_header_only(width: int, height: int) -> bytes:
    """A baseline JPEG header (SOI, SOF0, SOS) for a ``width`` x ``height`` gray image, no scan data."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 8 + b"\xff\xd9"


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel decoder runs."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(image_io.cv2, "imdecode", refuse)


def test_rgb_order_and_shapes() -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red only
    decoded = decode_image(encode_png(rgb))
    assert decoded.shape == (6, 8, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, rgb)  # RGB order, not OpenCV's BGR
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    np.testing.assert_array_equal(decode_image(encode_png(gray)), gray)


def test_load_rgb_expands_gray_drops_alpha_scales_16bit(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = load_rgb(encode_png(gray))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 7
    np.testing.assert_array_equal(load_rgb(encode_png(rgba)), np.broadcast_to([10, 20, 30], (6, 8, 3)))

    wide = np.full((6, 8, 3), 257 * 100, np.uint16)
    wide[0, 0] = (65535, 0, 257 * 3)
    out = load_rgb(encode_png(wide))
    assert out.dtype == np.uint8
    assert out[1, 1].tolist() == [100, 100, 100] and out[0, 0].tolist() == [255, 0, 3]

    # Paths (str or Path) and bytes give the same array.
    path = save_png(tmp_path / "a.png", rgba[..., :3])
    np.testing.assert_array_equal(load_rgb(path), load_rgb(str(path)))
    np.testing.assert_array_equal(load_rgb(path), load_rgb(path.read_bytes()))


def test_thermal_three_channel_jpeg_reduced_to_one() -> None:
    # KAIST lwir frames and FLIR previews are stored as 3 equal channels.
    ramp = np.tile(np.linspace(20, 230, 40).astype(np.uint8), (32, 1))
    three = np.repeat(ramp[:, :, None], 3, axis=2)
    out = load_thermal(encode_jpeg(three, quality=98))
    assert out.shape == (32, 40) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ramp).max() <= 3
    np.testing.assert_array_equal(load_thermal(encode_png(ramp)), ramp)


def test_thermal_16bit_radiometric_percentile_stretch() -> None:
    # Raw counts in a narrow band of the 16-bit range, with two outlier pixels (a hot and a dead one).
    raw = (np.arange(64 * 80, dtype=np.float64).reshape(64, 80) % 400 + 21_000).astype(np.uint16)
    raw[0, 0], raw[0, 1] = 65_000, 0
    out = load_thermal(encode_png(raw))
    assert out.shape == (64, 80) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, stretch_thermal(raw))
    # The band fills the 8-bit range: outliers neither decide the contrast nor squash it (a /257 or a
    # min-max scaling would leave the scene within a few grey levels).
    body = out[1:]
    assert body.min() <= 2 and body.max() >= 253
    assert np.unique(body).size > 200
    # Monotonic: warmer counts never map darker.
    order = np.argsort(raw[1:].ravel(), kind="stable")
    assert (np.diff(body.ravel()[order].astype(int)) >= 0).all()
    # A flat frame does not divide by zero.
    np.testing.assert_array_equal(load_thermal(encode_png(np.full((4, 4), 30_000, np.uint16))), 0)


def test_thermal_16bit_tiff(tmp_path: Path) -> None:
    raw = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 13 + 7_000).astype(np.uint16)
    ok, tiff = cv2.imencode(".tiff", raw)
    assert ok
    np.testing.assert_array_equal(load_thermal(tiff.tobytes()), stretch_thermal(raw))


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 5, b"<html></html>"]
)
def test_non_image_bytes(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)
    with pytest.raises(ValueError):  # ImageDecodeError is a ValueError
        load_thermal(data)


def test_truncated_image_is_a_decode_error() -> None:
    data = encode_png(np.full((20, 20, 3), 9, np.uint8))
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("header", [png_header_only, jpeg_header_only])
def test_pixel_bomb_refused_from_the_header(header, no_decoding: None) -> None:
    # 63 MP: over the default 50 MP limit and under PIL's own guard, so the project's check decides.
    data = header(9_000, 7_000)
    assert len(data) < 200
    assert image_size(data) == (9_000, 7_000)
    with pytest.raises(ImageTooLargeError, match="9000x7000"):
        decode_image(data)
    with pytest.raises(ImageTooLargeError):
        load_rgb(data)
    # Absurd headers (PIL's own guard) are ImageTooLargeError too, and ImageTooLargeError is an
    # ImageDecodeError, so callers catching the latter also refuse bombs.
    with pytest.raises(ImageDecodeError):
        decode_image(header(60_000, 60_000))


def test_max_pixels_is_a_parameter() -> None:
    data = encode_png(np.zeros((10, 10), np.uint8))
    assert decode_image(data, max_pixels=100).shape == (10, 10)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=99)
    with pytest.raises(ImageTooLargeError):
        load_thermal(data, max_pixels=99)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.png"):
        load_rgb(tmp_path / "nothing.png")


def test_writers_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgbt = rng.integers(0, 256, (16, 20, 4), dtype=np.uint8)
    path = save_png(tmp_path / "deep" / "pair.png", rgbt)  # folders are created
    np.testing.assert_array_equal(decode_image(path.read_bytes()), rgbt)  # lossless, RGBA order kept
    ids = rng.integers(0, 9, (16, 20), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(save_png(tmp_path / "ids.png", ids).read_bytes()), ids)

    smooth = np.tile(np.linspace(0, 255, 20).astype(np.uint8), (16, 1))
    rgb = np.stack([smooth, smooth[:, ::-1], np.full_like(smooth, 90)], axis=2)
    jpeg = save_jpeg(tmp_path / "rgb.jpeg", rgb, quality=97)
    assert jpeg.suffix == ".jpeg"
    error = np.abs(load_rgb(jpeg).astype(int) - rgb)
    assert error.mean() < 2 and error.max() <= 12  # lossy, chroma subsampled at the saturated ends
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(tmp_path / "x.jpg", ids)
    with pytest.raises(ValueError, match=r"\.jpg"):
        save_jpeg(tmp_path / "x.png", rgb)


def test_bytes_without_a_readable_header_are_never_decoded(no_decoding: None) -> None:
    # OpenCV decodes Radiance HDR, but no header parser here bounds its size: refused, not decoded.
    ok, hdr = cv2.imencode(".hdr", np.ones((4, 5, 3), np.float32))
    assert ok
    with pytest.raises(ImageDecodeError, match="unrecognised format"):
        decode_image(hdr.tobytes())
