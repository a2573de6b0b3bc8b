"""The scoring hot path's pieces give the same numbers as the plain path: prepared batches (resized and
stacked in loader threads), the channels_last layout, inconsistency on the foreground classes only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import NetConfig
from model.inconsistency import binary_entropy, prediction_inconsistency
from model.inference import Predictor
from model.network import ThreeBranchNet


def _pairs(sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w), dtype=np.uint8))
        for h, w in sizes
    ]


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_prepared_batches_predict_like_predict(task: str) -> None:
    torch.manual_seed(0)
    config = NetConfig(task=task, class_names=("person", "car"), width=0.125, image_size=(64, 80))
    predictor = Predictor(ThreeBranchNet(config), "cpu", score_threshold=0.0)
    pairs = _pairs([(64, 80), (100, 120), (48, 64)])
    expected = predictor.predict(pairs, batch_size=2)
    batch = predictor.prepare_batch(pairs)
    assert len(batch) == 3 and batch.sizes == [(64, 80), (100, 120), (48, 64)]
    assert batch.rgb.shape == (3, 3, 64, 80) and batch.thermal.shape == (3, 1, 64, 80)
    got = predictor.predict_batch(batch)
    for a, b in zip(expected, got, strict=True):
        assert a.inconsistency == pytest.approx(b.inconsistency, abs=1e-5)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        if task == "segmentation":
            assert a.mask is not None and b.mask is not None and a.mask.shape == b.mask.shape


def test_channels_last_scores_match_nchw() -> None:
    torch.manual_seed(0)
    config = NetConfig(class_names=("person", "car", "bicycle"), width=0.125, image_size=(64, 80))
    model = ThreeBranchNet(config)
    rgb, thermal = torch.rand(4, 3, 64, 80), torch.rand(4, 1, 64, 80)
    nhwc = Predictor(model, "cpu")
    assert nhwc.memory_format == torch.channels_last
    scores_nhwc = nhwc.score_batch(rgb, thermal)[0].clone()
    nchw = Predictor(model, "cpu", channels_last=False)
    torch.testing.assert_close(scores_nhwc, nchw.score_batch(rgb, thermal)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("background", [0, 1, 3, -1])
def test_background_dropped_wherever_it_is(background: int) -> None:
    generator = torch.Generator().manual_seed(background + 5)
    p_v = torch.rand(6, 7, 4, generator=generator).softmax(-1)
    p_t = torch.rand(6, 7, 4, generator=generator).softmax(-1)
    per_class = binary_entropy((p_v + p_t) / 2) - (binary_entropy(p_v) + binary_entropy(p_t)) / 2
    keep = [c for c in range(4) if c != background % 4]
    expected = per_class.clamp(0, 1)[..., keep]
    got_max = prediction_inconsistency(p_v, p_t, class_dim=-1, background_index=background)
    got_mean = prediction_inconsistency(p_v, p_t, class_dim=-1, background_index=background, reduction="mean")
    torch.testing.assert_close(got_max, expected.amax(-1))
    torch.testing.assert_close(got_mean, expected.mean(-1))
    # Class dimension in the middle (segmentation layout: N, K, H, W).
    moved = prediction_inconsistency(
        p_v.permute(0, 2, 1), p_t.permute(0, 2, 1), class_dim=1, background_index=background
    )
    torch.testing.assert_close(moved, expected.amax(-1))


def test_a_single_class_has_no_foreground() -> None:
    p = torch.rand(3, 1)
    with pytest.raises(ValueError, match="no foreground class"):
        prediction_inconsistency(p, p, class_dim=-1)
