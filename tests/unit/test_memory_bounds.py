"""Memory bounds of decoding and segmentation (issue 15, items 3 and 4).

* One decode: the header's decoded bytes (width x height x channels x bytes per sample) are checked before
  decoding; the conversions to RGB / thermal uint8 stay within :func:`decode_peak_bytes` (numpy reports its
  allocations to ``tracemalloc``, so the bound is checked on the real arrays, not estimated).
* Decodes in flight: every fetcher decode reserves its peak in the process-wide :class:`DecodeBudget`; a full
  budget answers 429 JSON after ``DECODE_WAIT_SECONDS``.
* ``reduce_to``: images are decoded straight to about the network's size, predictions still come in the
  original pixels.
* Segmentation: class ids are upsampled in bands, never C full-size logit maps; the ids equal the argmax of
  the full-size bilinear upsampling.

Peak RSS figures of the same paths are in ``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from ls_backend.images import DecodeBusy, ImageFetcher, ImageTooLarge
from model.data import io as image_io
from model.data.io import (
    DecodeBudget,
    ImageTooLargeError,
    decode_image,
    decode_peak_bytes,
    encode_jpeg,
    encode_png,
    load_rgb,
    load_thermal,
    probe,
)
from model.inference import Predictor
from model.postprocess import upsample_class_ids
from tests.unit.app_support import (
    SEGMENTATION_CONFIG,
    assert_json_error,
    make_app,
    make_settings,
    predict_body,
    publish_tiny,
    torch_threads,
    write_pair,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(15)


def _images() -> dict[str, np.ndarray]:
    shape = (600, 700)  # large enough that bytes per pixel, not fixed tables, decide the peak
    return {
        "rgba16": RNG.integers(0, 65536, (*shape, 4), dtype=np.uint16),
        "rgb16": RNG.integers(0, 65536, (*shape, 3), dtype=np.uint16),
        "gray16": RNG.integers(0, 65536, shape, dtype=np.uint16),
        "rgb8": RNG.integers(0, 256, (*shape, 3), dtype=np.uint8),
        "rgba8": RNG.integers(0, 256, (*shape, 4), dtype=np.uint8),
        "gray8": RNG.integers(0, 256, shape, dtype=np.uint8),
    }


IMAGES = _images()


# ------------------------------------------------------------------------------------------ one decode
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_probe_counts_decoded_bytes(name: str) -> None:
    array = IMAGES[name]
    info = probe(encode_png(array))
    assert (info.height, info.width) == array.shape[:2]
    assert info.decoded_bytes == decode_image(encode_png(array)).nbytes


def test_probe_counts_the_alpha_channel_transparency_adds() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(IMAGES["rgb8"], "RGB").save(buffer, "PNG", transparency=(5, 5, 5))
    data = buffer.getvalue()
    assert probe(data).decoded_bytes == decode_image(data).nbytes == 600 * 700 * 4


def test_bytes_limit_refuses_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16-bit RGBA image under the pixel limit but over the byte limit is refused from its header."""
    data = encode_png(IMAGES["rgba16"])
    pixels = 600 * 700

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(image_io.cv2, "imdecode", refuse)
    with pytest.raises(ImageTooLargeError, match="x 4 channels x 16 bits"):
        decode_image(data, max_pixels=pixels, max_bytes=pixels * 8 - 1)
    monkeypatch.undo()
    assert decode_image(data, max_pixels=pixels, max_bytes=pixels * 8).dtype == np.uint16


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("loader", [load_rgb, load_thermal], ids=["rgb", "thermal"])
def test_one_decode_stays_within_its_reserved_peak(name: str, loader) -> None:
    """What the budget reserves (decode_peak_bytes) bounds what a decode and its conversions allocate; the
    float64 conversions this replaced took 4 to 8 times the decoded size on top of it."""
    data = encode_png(IMAGES[name])
    info = probe(data)
    tracemalloc.start()
    try:
        loader(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= decode_peak_bytes(info), (peak / info.pixels, info)


def test_conversions_equal_the_float_formulas() -> None:
    """The lookup tables and integer means give the arrays the float64 arithmetic gave."""
    rgba16 = IMAGES["rgba16"]
    np.testing.assert_array_equal(
        load_rgb(encode_png(rgba16)), (rgba16[:, :, :3] / 257.0).round().astype(np.uint8)
    )
    rgb16 = IMAGES["rgb16"]
    mean = rgb16.mean(axis=2).round().astype(np.uint16)
    low, high = np.percentile(mean, (0.5, 99.5))
    expected = (np.clip((mean.astype(np.float32) - low) / (high - low), 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(load_thermal(encode_png(rgb16)), expected)
    rgb8 = IMAGES["rgb8"]
    np.testing.assert_array_equal(load_thermal(encode_png(rgb8)), rgb8.mean(axis=2).round().astype(np.uint8))
    np.testing.assert_array_equal(load_rgb(encode_png(rgb8)), rgb8)  # 8-bit: unchanged


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_reduce_to_decodes_near_the_network_size(fmt: str) -> None:
    ramp = (np.arange(800) % 200).astype(np.uint8)
    rgb = np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (600, 800, 3)))
    data = encode_png(rgb) if fmt == "png" else encode_jpeg(rgb)
    reduced = load_rgb(data, reduce_to=(64, 80))
    # The largest factor that keeps both sides at least the target, sides rounded up: 9 for the PNG (box
    # reduction), 8 for the JPEG (libjpeg's 1/2, 1/4, 1/8 scales).
    expected = (67, 89) if fmt == "png" else (75, 100)
    assert reduced.shape == (*expected, 3), reduced.shape
    assert reduced.shape[0] >= 64 and reduced.shape[1] >= 80
    full = load_rgb(data)
    assert full.shape == (600, 800, 3)


# ------------------------------------------------------------------------------------------ in flight
def test_a_full_budget_makes_decodes_wait_then_refuse(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encode_png(IMAGES["rgb8"]))
    budget = DecodeBudget.shared(10 * 1024 * 1024 + 1)  # one of this test's own
    fetcher = ImageFetcher(
        None, local_root=tmp_path, decode_budget=budget.capacity, decode_wait=0.05, max_decode_bytes=10**9
    )
    assert fetcher.decode_budget is budget
    with budget.reserve(budget.capacity, timeout=0):
        with pytest.raises(DecodeBusy, match="memory budget") as raised:
            fetcher.load_image("a.png", None, thermal=False)
        assert raised.value.status == 429
    assert budget.in_use == 0
    assert fetcher.load_image("a.png", None, thermal=False).shape == (600, 700, 3)
    assert budget.peak == budget.capacity


def test_concurrent_decodes_never_exceed_the_budget(tmp_path: Path) -> None:
    """Eight threads decode at once; the reserved bytes in flight never pass the capacity, which here fits
    two decodes: the other six waited."""
    data = encode_png(IMAGES["rgba16"])
    (tmp_path / "a.png").write_bytes(data)
    one = decode_peak_bytes(probe(data))
    budget = DecodeBudget.shared(2 * one + 7)
    fetcher = ImageFetcher(None, local_root=tmp_path, decode_budget=budget.capacity, decode_wait=60)
    start = threading.Barrier(8)

    def decode() -> None:
        start.wait()
        fetcher.load_image("a.png", None, thermal=True)

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert budget.in_use == 0
    assert one <= budget.peak <= budget.capacity


def test_predict_answers_429_json_when_the_budget_stays_full(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, decode_budget_bytes=64 * 1024**2 + 3, decode_wait_seconds=0.05)
    app = make_app(settings)
    data = write_pair(app.images, "a")
    budget = DecodeBudget.shared(settings.decode_budget_bytes)
    with budget.reserve(budget.capacity, timeout=0):
        response = app.client.post("/predict", json=predict_body([{"id": 1, "data": data}]))
    assert "memory budget" in assert_json_error(response, 429)
    with torch_threads(1):
        assert app.client.post("/predict", json=predict_body([{"id": 1, "data": data}])).status_code == 200


def test_predict_refuses_an_image_over_max_decode_bytes(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path, max_decode_bytes=64 * 80 * 3 - 1))
    data = write_pair(app.images, "a")  # 64x80 RGB: 15,360 bytes decoded
    response = app.client.post("/predict", json=predict_body([{"id": 1, "data": data}]))
    assert "MAX_DECODE_BYTES" in assert_json_error(response, ImageTooLarge.status)


# ------------------------------------------------------------------------------------------ segmentation
def test_upsampled_class_ids_equal_the_full_upsampling() -> None:
    torch.manual_seed(0)
    # Random logits (boundaries everywhere, as an untrained model's) and smooth ones (few boundaries: the
    # pixels between source pixels of one class take it without interpolation).
    ramp = torch.linspace(-1, 1, 40)[None, None, :]
    smooth = ramp * torch.arange(1, 7)[:, None, None] * torch.ones(6, 32, 1)
    smooth[2, 10:20, 5:25] += 8
    cases = [
        (torch.randn(5, 32, 40), (250, 333)),
        (torch.randn(64, 16, 20), (301, 299)),
        (torch.randn(4, 20, 30), (15, 17)),
        (smooth, (250, 333)),
    ]
    for logits, target in cases:
        channels = logits.shape[0]
        full = torch.nn.functional.interpolate(
            logits[None], size=target, mode="bilinear", align_corners=False
        )
        ids = upsample_class_ids(logits, target, max_elements=channels * target[1] * 7)
        assert ids.shape == target
        mismatch = ids != full[0].argmax(dim=0)
        # Equal up to float rounding: a differing pixel can only be a near-tie of its two best classes.
        top2 = full[0].topk(2, dim=0).values
        assert torch.all((top2[0] - top2[1])[mismatch] < 1e-5)
        assert mismatch.float().mean() < 1e-3


def test_segmentation_predict_never_holds_full_size_maps_of_every_class(monkeypatch) -> None:
    """64 classes on a 1000x1200 pair: the biggest upsampled tensor stays a band (the old path upsampled all
    64 maps to the full size: 77 M floats), and the mask is the argmax of the full upsampling."""
    from model.config import NetConfig
    from model.network import ThreeBranchNet

    classes = tuple(f"c{i}" for i in range(64))
    config = NetConfig(task="segmentation", class_names=classes, width=0.0625, image_size=(64, 80))
    net = ThreeBranchNet(config)
    predictor = Predictor(net, "cpu", channels_last=False)
    rgb = RNG.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    thermal = RNG.integers(0, 256, (100, 120), dtype=np.uint8)
    sizes: list[int] = []
    interpolate = torch.nn.functional.interpolate

    def spy(*args, **kwargs):
        out = interpolate(*args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    with torch_threads(1):
        (prediction,) = predictor.predict([(rgb, thermal)], sizes=[(1000, 1200)])
    monkeypatch.undo()
    assert prediction.mask is not None and prediction.mask.shape == (1000, 1200)
    assert max(sizes) <= (1 << 23) + 64 * 1200, max(sizes)
    with torch_threads(1):
        rgb_t, thermal_t = predictor.prepare(rgb, thermal)
        logits = predictor.forward(rgb_t[None], thermal_t[None]).fused.cls_logits[0].float()
    full = interpolate(logits, size=(1000, 1200), mode="bilinear", align_corners=False)[0]
    mismatch = torch.from_numpy(prediction.mask) != full.argmax(dim=0)
    assert mismatch.float().mean() < 1e-3


def test_load_pair_reduced_keeps_the_original_size(tmp_path: Path) -> None:
    fetcher = ImageFetcher(None, local_root=tmp_path)
    data = write_pair(tmp_path, "big", size=(640, 800), thermal_size=(320, 400), thermal_mode="I;16")
    rgb, thermal, original = fetcher.load_pair_reduced(data, _schema(), 1, (64, 80))
    assert rgb.shape == (64, 80, 3) and thermal.shape == (64, 80)  # factor 10, thermal brought to the RGB
    assert original == (640, 800)
    full_rgb, full_thermal = fetcher.load_pair(data, _schema(), 1)
    assert full_rgb.shape == (640, 800, 3) and full_thermal.shape == (640, 800)


def _schema():
    from ls_backend.label_config import schema_from_config

    return schema_from_config(SEGMENTATION_CONFIG)


def test_segmentation_predict_maps_reduced_images_to_original_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/predict decodes a 640x800 pair reduced to the 64x80 model size; the brush mask Label Studio gets
    still has the original size."""
    from label_studio_sdk.converter.brush import decode_rle

    from ls_backend import images

    decoded: list[tuple[int, ...]] = []

    def spy_rgb(*args, **kwargs):  # the real loader, its output shapes recorded
        array = load_rgb(*args, **kwargs)
        decoded.append(array.shape)
        return array

    monkeypatch.setattr(images, "load_rgb", spy_rgb)
    app = make_app(make_settings(tmp_path))
    publish_tiny(app.backend, task="segmentation")  # a trained version sends regions (the initial one not)
    data = write_pair(app.images, "big", size=(640, 800))
    with torch_threads(1):
        response = app.client.post(
            "/predict", json=predict_body([{"id": 1, "data": data}], config=SEGMENTATION_CONFIG)
        )
    assert response.status_code == 200, response.get_json()
    assert decoded == [(64, 80, 3)]
    results = response.get_json()["results"][0]["result"]
    assert results
    for result in results:
        assert (result["original_height"], result["original_width"]) == (640, 800)
        assert decode_rle(result["value"]["rle"]).size == 640 * 800 * 4
