from pathlib import Path

import pytest
import torch
import torchvision

from model.backbone import VGG16Extractor
from model.config import NetConfig
from model.network import BRANCHES, ThreeBranchNet

SMALL = {"width": 0.125, "image_size": (64, 80)}


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_forward_shapes_small(task):
    config = NetConfig(task=task, class_names=("person", "car", "bicycle"), **SMALL)
    net = ThreeBranchNet(config)
    out = net(torch.rand(2, 3, 64, 80), torch.rand(2, 1, 64, 80))
    for name in BRANCHES:
        branch = out.branch(name)
        if task == "detection":
            assert len(branch.cls_logits) == 6
            assert out.anchors is not None
            for logits, regression, anchors in zip(
                branch.cls_logits, branch.bbox_regression, out.anchors, strict=True
            ):
                assert logits.shape == (2, anchors.shape[0], 4)
                assert regression.shape == (2, anchors.shape[0], 4)
        else:
            assert [t.shape for t in branch.cls_logits] == [(2, 4, 64, 80)]
    assert out.embedding.shape[0] == 2
    assert len(out.attention) == (6 if task == "detection" else 3)
    assert out.attention[0].inter.shape[1] == 2


def test_full_size_paper_network_shapes():
    """width 1.0 at 512x640: the paper's network (two VGG16 trunks, six SSD levels)."""
    net = ThreeBranchNet(NetConfig(class_names=("person",), width=1.0, image_size=(512, 640))).eval()
    assert net.rgb_trunk.out_channels == [512, 1024, 512, 256, 256, 256]
    with torch.no_grad():
        out = net(torch.rand(1, 3, 512, 640), torch.rand(1, 1, 512, 640))
    sizes = [(int(a.shape[0])) for a in out.anchors]
    # levels 64x80, 32x40, 16x20, 8x10, 4x5, 2x3 with 4, 6, 6, 6, 4, 4 boxes per cell
    assert sizes == [64 * 80 * 4, 32 * 40 * 6, 16 * 20 * 6, 8 * 10 * 6, 4 * 5 * 4, 2 * 3 * 4]
    assert out.fused.cls_logits[0].shape == (1, 64 * 80 * 4, 2)
    centres = (out.anchors[0][:, :2] + out.anchors[0][:, 2:]) / 2
    assert centres[:, 0].min() > 0 and centres[:, 0].max() < 640
    assert centres[:, 1].min() > 0 and centres[:, 1].max() < 512


def test_trunks_run_once_per_forward():
    net = ThreeBranchNet(NetConfig(**SMALL))
    calls = {"rgb": 0, "thermal": 0}
    net.rgb_trunk.register_forward_hook(lambda *_: calls.__setitem__("rgb", calls["rgb"] + 1))
    net.thermal_trunk.register_forward_hook(lambda *_: calls.__setitem__("thermal", calls["thermal"] + 1))
    net(torch.rand(1, 3, 64, 80), torch.rand(1, 1, 64, 80))
    assert calls == {"rgb": 1, "thermal": 1}


def test_branches_have_their_own_weights():
    torch.manual_seed(0)
    net = ThreeBranchNet(NetConfig(**SMALL)).eval()
    rgb, thermal = torch.rand(1, 3, 64, 80), torch.rand(1, 1, 64, 80)
    with torch.no_grad():
        before = net(rgb, thermal)
        for p in net.heads["visible"].parameters():
            p.add_(1.0)
        after = net(rgb, thermal)
    assert not torch.allclose(before.visible.cls_logits[0], after.visible.cls_logits[0])
    torch.testing.assert_close(before.fused.cls_logits[0], after.fused.cls_logits[0])
    torch.testing.assert_close(before.thermal.cls_logits[0], after.thermal.cls_logits[0])


def test_visible_branch_ignores_thermal_input():
    net = ThreeBranchNet(NetConfig(**SMALL)).eval()
    rgb = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        a = net(rgb, torch.zeros(1, 1, 64, 80))
        b = net(rgb, torch.ones(1, 1, 64, 80))
    torch.testing.assert_close(a.visible.cls_logits[0], b.visible.cls_logits[0])
    assert not torch.allclose(a.thermal.cls_logits[0], b.thermal.cls_logits[0])
    assert not torch.allclose(a.fused.cls_logits[0], b.fused.cls_logits[0])


def test_misaligned_inputs_rejected():
    net = ThreeBranchNet(NetConfig(**SMALL))
    with pytest.raises(ValueError, match="aligned"):
        net(torch.rand(1, 3, 64, 80), torch.rand(1, 1, 32, 80))


def test_loads_local_imagenet_weights(tmp_path: Path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None)
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    rgb = VGG16Extractor(3, width=1.0)
    rgb.load_imagenet(path)
    torch.testing.assert_close(rgb.features[28].weight, state["features.28.weight"])
    thermal = VGG16Extractor(1, width=1.0)
    thermal.load_imagenet(path)
    torch.testing.assert_close(thermal.features[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    with pytest.raises(ValueError, match=r"width=1\.0"):
        VGG16Extractor(3, width=0.5).load_imagenet(path)
    bogus = tmp_path / "bogus.pth"
    torch.save({"x": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        VGG16Extractor(3).load_imagenet(bogus)


def test_config_validation_and_round_trip():
    config = NetConfig(task="segmentation", class_names=("a", "b"), width=0.25, image_size=(64, 96))
    assert NetConfig.from_dict(config.to_dict()) == config
    assert config.num_outputs == 3
    with pytest.raises(ValueError, match="task"):
        NetConfig(task="classification")
    with pytest.raises(ValueError, match="unique"):
        NetConfig(class_names=("a", "a"))
    with pytest.raises(ValueError, match="unknown"):
        NetConfig.from_dict({"colour": "red"})
