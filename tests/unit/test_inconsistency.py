import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import NetConfig
from model.inconsistency import (
    binary_entropy,
    flat_mean,
    inconsistency_heatmap,
    inconsistency_maps,
    masked_scale_balanced_mean,
    object_masks,
    pair_scores,
    prediction_inconsistency,
    scale_balanced_mean,
)
from model.network import BranchOutput, NetOutput, ThreeBranchNet


def entropy_bits(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_binary_entropy_hand_values():
    values = binary_entropy(torch.tensor([0.5, 0.9, 0.25]))
    expected = torch.tensor([1.0, entropy_bits(0.9), entropy_bits(0.25)])
    torch.testing.assert_close(values, expected)
    assert binary_entropy(torch.tensor([0.0, 1.0])).max() < 1e-4  # clamped, finite


@pytest.mark.parametrize(
    ("p_v", "p_t", "expected"),
    [
        (0.5, 0.5, 0.0),
        (0.0, 1.0, 1.0),
        (0.9, 0.1, 1.0 - entropy_bits(0.9)),  # mean is 0.5 -> H = 1; both branches have H(0.9)
        (0.8, 0.8, 0.0),
        # mean 0.6: H(0.6) - (H(0.2) + H(1.0)) / 2, with H(1.0) = 0
        (0.2, 1.0, entropy_bits(0.6) - entropy_bits(0.2) / 2),
    ],
)
def test_prediction_inconsistency_hand_values(p_v, p_t, expected):
    value = prediction_inconsistency(torch.tensor([p_v]), torch.tensor([p_t]))
    assert value.item() == pytest.approx(expected, abs=1e-4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=20),
    st.lists(st.floats(0, 1), min_size=1, max_size=20),
)
def test_inconsistency_range_and_symmetry(a, b):
    n = min(len(a), len(b))
    p_v, p_t = torch.tensor(a[:n]), torch.tensor(b[:n])
    forward = prediction_inconsistency(p_v, p_t)
    backward = prediction_inconsistency(p_t, p_v)
    assert torch.all(forward >= 0) and torch.all(forward <= 1)
    torch.testing.assert_close(forward, backward)
    torch.testing.assert_close(prediction_inconsistency(p_v, p_v), torch.zeros(n), atol=1e-5, rtol=0)


def test_class_reduction_max_mean_and_background_excluded():
    # Class dim last: [background, class1, class2]. Only the background's and class 1's one-vs-rest differ.
    p_v = torch.tensor([[0.5, 0.5, 0.0]])
    p_t = torch.tensor([[0.9, 0.1, 0.0]])
    i_class1 = prediction_inconsistency(torch.tensor(0.5), torch.tensor(0.1)).item()
    assert prediction_inconsistency(p_v, p_t, class_dim=-1).item() == pytest.approx(i_class1, abs=1e-6)
    mean = prediction_inconsistency(p_v, p_t, class_dim=-1, reduction="mean").item()
    assert mean == pytest.approx(i_class1 / 2, abs=1e-6)
    # A disagreement on the background alone does not count once background is excluded...
    bg_only_v = torch.tensor([[1.0, 0.0, 0.0]])
    bg_only_t = torch.tensor([[0.0, 0.0, 0.0]])
    assert prediction_inconsistency(bg_only_v, bg_only_t, class_dim=-1).item() < 1e-4
    # ...but does when every class is kept.
    kept = prediction_inconsistency(bg_only_v, bg_only_t, class_dim=-1, background_index=None)
    assert kept.item() > 0.99


def test_class_dim_one_for_segmentation_layout():
    p_v = torch.zeros(2, 3, 4, 5)
    p_v[:, 1] = 1.0
    p_t = torch.zeros(2, 3, 4, 5)
    p_t[:, 2] = 1.0
    out = prediction_inconsistency(p_v, p_t, class_dim=1)
    assert out.shape == (2, 4, 5)
    assert torch.all(out > 0.99)


def test_scale_balanced_differs_from_flat_mean():
    # Level 0: 100 agreeing predictions; level 1: one total disagreement.
    fine = torch.zeros(1, 100)
    coarse = torch.ones(1, 1)
    assert scale_balanced_mean([fine, coarse]).item() == pytest.approx(0.5)
    assert flat_mean([fine, coarse]).item() == pytest.approx(1 / 101)


def test_scale_balanced_is_per_pair():
    levels = [torch.tensor([[0.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0], [0.0]])]
    torch.testing.assert_close(scale_balanced_mean(levels), torch.tensor([0.75, 0.5]))


def _detection_output(visible_logits, thermal_logits) -> NetOutput:
    return NetOutput(
        image_size=(8, 8),
        visible=BranchOutput(visible_logits, [torch.zeros(*v.shape[:2], 4) for v in visible_logits]),
        thermal=BranchOutput(thermal_logits, [torch.zeros(*v.shape[:2], 4) for v in thermal_logits]),
        fused=BranchOutput(visible_logits, [torch.zeros(*v.shape[:2], 4) for v in visible_logits]),
        attention=[],
        embedding=torch.zeros(visible_logits[0].shape[0], 1),
    )


def test_pair_scores_from_branch_logits():
    big = 30.0  # softmax of +-30 logits is 0/1 up to 1e-13
    # Pair 0 agrees everywhere. Pair 1: level 0 (4 anchors) has one total disagreement on class 1,
    # level 1 (1 anchor) disagrees totally -> scale-balanced (1/4 + 1) / 2 = 0.625, flat 2/5.
    v0 = torch.full((2, 4, 2), 0.0)
    v0[..., 0] = big
    t0 = v0.clone()
    t0[1, 0] = torch.tensor([0.0, big])
    v1 = torch.tensor([[[big, 0.0]], [[big, 0.0]]])
    t1 = torch.tensor([[[big, 0.0]], [[0.0, big]]])
    output = _detection_output([v0, v1], [t0, t1])
    torch.testing.assert_close(pair_scores(output), torch.tensor([0.0, 0.625]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        pair_scores(output, aggregation="flat"), torch.tensor([0.0, 0.4]), atol=1e-4, rtol=0
    )
    maps = inconsistency_maps(output)
    assert [m.shape for m in maps] == [(2, 4), (2, 1)]


def test_pair_scores_independent_of_batch_composition():
    torch.manual_seed(0)
    net = ThreeBranchNet(NetConfig(class_names=("person", "car"), width=0.125, image_size=(64, 80))).eval()
    rgb, thermal = torch.rand(3, 3, 64, 80), torch.rand(3, 1, 64, 80)
    with torch.no_grad():
        together = pair_scores(net(rgb, thermal))
        alone = torch.cat([pair_scores(net(rgb[i : i + 1], thermal[i : i + 1])) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert torch.all((together >= 0) & (together <= 1))


def test_masked_mean_scores_only_where_a_branch_sees_an_object():
    levels = [torch.tensor([[0.2, 0.2, 0.9, 0.2], [0.2, 0.2, 0.2, 0.2]]), torch.tensor([[0.5], [0.3]])]
    masks = [torch.tensor([[False, False, True, False], [False] * 4]), torch.tensor([[True], [False]])]
    # Pair 0: level means 0.9 and 0.5 -> 0.7; pair 1 has no object anywhere -> 0, whatever its floor.
    torch.testing.assert_close(masked_scale_balanced_mean(levels, masks), torch.tensor([0.7, 0.0]))
    # A level without objects does not dilute the others.
    masks[1] = torch.tensor([[False], [False]])
    torch.testing.assert_close(masked_scale_balanced_mean(levels, masks), torch.tensor([0.9, 0.0]))


def test_object_masks_follow_either_branchs_foreground():
    big = 30.0
    visible = torch.tensor([[[big, 0.0], [0.0, big], [big, 0.0]]])  # anchor 1: object in RGB only
    thermal = torch.tensor([[[big, 0.0], [big, 0.0], [0.0, big]]])  # anchor 2: object in thermal only
    masks = object_masks(_detection_output([visible], [thermal]))
    assert masks[0].tolist() == [[False, True, True]]
    # With a uniform background disagreement floor, the masked score is the objects' I alone.
    output = _detection_output([visible], [thermal])
    scores = masked_scale_balanced_mean(inconsistency_maps(output), masks)
    torch.testing.assert_close(scores, torch.tensor([1.0]), atol=1e-4, rtol=0)
    assert pair_scores(output) < scores  # the paper's mean includes the agreeing background anchor


def _agreeing_output(task: str) -> NetOutput:
    """A real forward pass whose thermal branch is made to say exactly what the visible one says (I = 0)."""
    torch.manual_seed(0)
    config = NetConfig(task=task, class_names=("person", "car"), width=0.125, image_size=(64, 80))
    with torch.no_grad():
        output = ThreeBranchNet(config).eval()(torch.rand(2, 3, 64, 80), torch.rand(2, 1, 64, 80))
    output.thermal = BranchOutput(
        cls_logits=[t.clone() for t in output.visible.cls_logits],
        bbox_regression=output.visible.bbox_regression,
    )
    return output


def test_heatmap_puts_a_disagreement_where_its_cell_is():
    output = _agreeing_output("detection")
    assert inconsistency_heatmap(output).abs().max() < 1e-5
    # One anchor of the finest level, in its top-left cell, of the second image: visible says "car" for
    # sure, thermal says background for sure.
    level = 0
    rows, cols = output.attention[level].inter.shape[-2:]
    per_cell = output.visible.cls_logits[level].shape[1] // (rows * cols)
    output.visible.cls_logits[level][1, 0] = torch.tensor([-20.0, -20.0, 20.0])
    output.thermal.cls_logits[level][1, 0] = torch.tensor([20.0, -20.0, -20.0])
    heat = inconsistency_heatmap(output)
    assert heat.shape == (2, 64, 80) and per_cell >= 1 and rows * cols >= 16
    assert heat[0].abs().max() < 1e-5  # the other image is untouched
    levels = len(output.anchors)
    # The cell's disagreement (I = 1), upsampled, averaged with the other levels' zeros: 1 / levels at the
    # top-left corner, fading to 0 away from that cell.
    assert heat[1, 0, 0].item() == pytest.approx(1 / levels, abs=1e-3)
    assert heat[1, -1, -1].item() == pytest.approx(0.0, abs=1e-5)
    assert heat[1].max().item() == pytest.approx(1 / levels, abs=1e-3)


def test_segmentation_heatmap_is_the_pixel_map():
    output = _agreeing_output("segmentation")
    output.visible.cls_logits[0][0, :, 5, 7] = torch.tensor([-20.0, 20.0, -20.0])
    output.thermal.cls_logits[0][0, :, 5, 7] = torch.tensor([20.0, -20.0, -20.0])
    heat = inconsistency_heatmap(output)
    torch.testing.assert_close(heat, inconsistency_maps(output)[0])
    assert heat.shape[0] == 2 and heat[0, 5, 7].item() == pytest.approx(1.0, abs=1e-4)
    assert (heat[0] > 0.5).sum() == 1 and heat[1].abs().max() < 1e-5
    assert inconsistency_heatmap(output, reduction="mean")[0, 5, 7].item() < heat[0, 5, 7].item()


@pytest.mark.parametrize("reduce", [scale_balanced_mean, flat_mean])
def test_no_level_is_refused(reduce):
    with pytest.raises(ValueError, match=r"^at least one level is needed$"):
        reduce([])


def test_masked_mean_refuses_no_level_and_masks_that_do_not_match():
    with pytest.raises(ValueError, match=r"^at least one level is needed$"):
        masked_scale_balanced_mean([], [])
    two_levels, one_mask = [torch.zeros(1, 2), torch.zeros(1, 1)], [torch.ones(1, 2, dtype=torch.bool)]
    with pytest.raises(ValueError):
        masked_scale_balanced_mean(two_levels, one_mask)


def test_masked_mean_averages_the_levels_each_pair_has():
    levels = [torch.tensor([[0.2, 0.4], [0.6, 0.8]]), torch.tensor([[1.0], [0.5]])]
    masks = [torch.tensor([[True, True], [True, False]]), torch.tensor([[True], [False]])]
    # Pair 0: levels 0.3 and 1.0 -> 0.65. Pair 1: only its first level has a masked prediction -> 0.6.
    torch.testing.assert_close(masked_scale_balanced_mean(levels, masks), torch.tensor([0.65, 0.6]))


def test_object_masks_threshold_is_inclusive_and_levels_must_match():
    output = _agreeing_output("detection")
    # Two anchors: background 0.5 (foreground exactly at the threshold) and 0.75 (below it).
    visible = torch.tensor([[[0.5, 0.25, 0.25], [0.75, 0.125, 0.125]]])
    thermal = torch.tensor([[[0.75, 0.125, 0.125], [0.75, 0.25, 0.0]]])
    (mask,) = object_masks(output, 0.5, probabilities=([visible], [thermal]))
    assert mask.tolist() == [[True, False]]
    with pytest.raises(ValueError):
        object_masks(output, 0.5, probabilities=([visible, visible], [thermal]))


def test_pair_scores_pass_the_class_reduction_on_and_refuse_unknown_aggregations():
    output = _agreeing_output("detection")
    # One anchor where the branches disagree on class 1 only: max over classes 1, mean over the 2 classes 1/2.
    output.visible.cls_logits[0][0, 0] = torch.tensor([-20.0, 20.0, -20.0])
    output.thermal.cls_logits[0][0, 0] = torch.tensor([20.0, -20.0, -20.0])
    by_max = pair_scores(output, reduction="max")
    by_mean = pair_scores(output, reduction="mean")
    assert by_max[0] > 0 and by_mean[0] < by_max[0]
    torch.testing.assert_close(pair_scores(output), by_max)  # max is the default
    with pytest.raises(ValueError, match=r"^aggregation must be 'scale_balanced' or 'flat', got 'median'$"):
        pair_scores(output, aggregation="median")  # type: ignore[arg-type]


@pytest.mark.parametrize("background", [0, 1, 2, 3, -1, None])
def test_the_background_class_left_out_is_the_one_named(background):
    """Four classes, one pair of predictions; the reduction must ignore exactly the class given."""
    p_v = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    p_t = torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    per_class = prediction_inconsistency(p_v, p_t)  # elementwise, every class
    kept = [c for c in range(4) if background is None or c != background % 4]
    expected = per_class[:, kept]
    for reduction, reduce in (("max", expected.amax), ("mean", expected.mean)):
        got = prediction_inconsistency(
            p_v, p_t, class_dim=1, reduction=reduction, background_index=background
        )
        torch.testing.assert_close(got, reduce(dim=1))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"^shapes differ: \(2,\) vs \(3,\)$"):
        prediction_inconsistency(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"^no foreground class left after dropping the background$"):
        prediction_inconsistency(torch.ones(2, 1), torch.ones(2, 1), class_dim=1)
    with pytest.raises(ValueError, match=r"^reduction must be 'max' or 'mean', got 'median'$"):
        uniform = torch.ones(2, 3) / 3
        prediction_inconsistency(uniform, uniform, class_dim=1, reduction="median")  # type: ignore[arg-type]


def test_eps_bounds_the_probabilities():
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    assert prediction_inconsistency(one, zero).item() == pytest.approx(1.0, abs=1e-3)
    # With eps = 0.1 the branches say 0.9 and 0.1: I = H(0.5) - H(0.1) = 1 - 0.469.
    bounded = prediction_inconsistency(one, zero, eps=0.1).item()
    assert bounded == pytest.approx(1 - entropy_bits(0.1), abs=1e-4)


def test_heatmap_reduces_the_anchors_of_a_cell_and_blends_between_cells():
    output = _agreeing_output("detection")
    rows, cols = output.attention[0].inter.shape[-2:]
    per_cell = output.visible.cls_logits[0].shape[1] // (rows * cols)
    row, col = 2, 3
    anchor = (row * cols + col) * per_cell + per_cell - 1  # the cell's last default box
    output.visible.cls_logits[0][0, anchor] = torch.tensor([-20.0, -20.0, 20.0])
    output.thermal.cls_logits[0][0, anchor] = torch.tensor([20.0, -20.0, -20.0])
    heat = inconsistency_heatmap(output)[0]
    peak = int(heat.argmax())
    y, x = divmod(peak, heat.shape[1])
    cell_h, cell_w = 64 / rows, 80 / cols
    assert row * cell_h <= y < (row + 1) * cell_h and col * cell_w <= x < (col + 1) * cell_w
    # Bilinear: values between the cell's and its neighbours' (none for a nearest-neighbour picture).
    levels = len(output.anchors)
    assert ((heat > 0.01 / levels) & (heat < 0.99 / levels)).any()
