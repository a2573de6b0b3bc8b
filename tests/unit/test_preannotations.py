"""Starting points and pre-annotation rules: ImageNet weights, checkpoints adapted to a project's classes,
per-class thresholds, the region policy, non-finite losses and inconsistencies."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from ls_backend.convert import RegionPolicy, prediction_payload
from ls_backend.jobs import region_policy
from ls_backend.label_config import schema_from_config
from ls_backend.registry import VersionInfo
from ls_backend.settings import Settings
from model import backbone
from model.backbone import VGG16Extractor, resolve_imagenet_weights
from model.checkpoint import CheckpointError, load_for_classes, save_checkpoint
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.memory import InMemoryReader
from model.data.sample import PairRecord
from model.data.transforms import train_transform
from model.inference import PairPrediction, Predictor, mean_class_probabilities
from model.metrics import calibrate_thresholds, thresholded_counts
from model.network import ThreeBranchNet
from model.train import NonFiniteLossError, TrainConfig, fit

SMALL = {"width": 0.125, "image_size": (64, 80)}
CONFIG = """<View>
  <Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>
  <RectangleLabels name="label" toName="rgb"><Label value="person"/><Label value="car"/></RectangleLabels>
</View>"""


# ------------------------------------------------------------------------------------------ thresholds
def _det(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": np.asarray(labels, np.int64),
    }


def _gt(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def test_threshold_maximises_f1_per_class_on_constructed_detections():
    """Class 1: true positives at 0.9, 0.8, 0.6; false positives at 0.7, 0.5, 0.4; one object missed.
    Cuts: 0.9 -> F1 2/5, 0.8 -> 4/6, 0.7 -> 4/7, 0.6 -> 6/8 (best), 0.5 -> 6/9, 0.4 -> 6/10.
    Class 2: a lone true positive at 0.3 beneath two false positives at 0.95: keep all three (F1 0.5) beats
    keeping none. Class 3 has no ground truth: no threshold, the caller falls back."""
    box = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]
    far = [100, 100, 110, 110]
    predictions = [
        _det([box[0], box[1], far, box[2], far, far], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1] * 6),
        _det([box[0], far, far], [0.3, 0.95, 0.95], [2, 2, 2]),
        _det([far], [0.99], [3]),
    ]
    targets = [_gt(box, [1, 1, 1, 1]), _gt([box[0]], [2]), _gt(np.zeros((0, 4)), [])]
    thresholds = calibrate_thresholds(predictions, targets, ["person", "car", "bicycle"])
    assert thresholds == pytest.approx({"person": 0.6, "car": 0.3})
    counts = thresholded_counts(predictions, targets, ["person", "car", "bicycle"], thresholds)
    # person: 3 TP, 1 FP (0.7) of 4 GT; car: 1 TP, 2 FP of 1 GT; bicycle: never sent.
    assert counts == {"tp": 4, "fp": 3, "gt": 5}


def test_threshold_ties_and_overlaps():
    """Equal scores are kept or dropped together; a second box on an already matched object is a false
    positive; a box at IoU just under 0.5 does not match."""
    obj = [0, 0, 10, 10]
    shifted = [0, 0, 10, 20.5]  # IoU 100 / 205 < 0.5
    predictions = [_det([obj, obj, shifted], [0.8, 0.8, 0.9], [1, 1, 1])]
    targets = [_gt([obj], [1])]
    # Cut 0.9: the miss only (F1 0); cut 0.8: 1 TP + 2 FP of 1 GT (F1 0.5).
    assert calibrate_thresholds(predictions, targets, ["person"]) == pytest.approx({"person": 0.8})


# ------------------------------------------------------------------------------------------ region policy
def _prediction(scores, labels, inconsistency=0.25) -> PairPrediction:
    n = len(scores)
    boxes = np.array([[i, i, i + 10, i + 10] for i in range(n)], np.float32).reshape(-1, 4)
    return PairPrediction(
        inconsistency=inconsistency,
        embedding=np.zeros(4, np.float32),
        boxes=boxes,
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
        branch_scores=np.column_stack([np.full(n, 0.12), np.full(n, 0.91)]).astype(np.float32),
    )


def test_region_policy_applies_class_thresholds_cap_and_meta_text():
    schema = schema_from_config(CONFIG)
    prediction = _prediction([0.9, 0.85, 0.6, 0.5, 0.4], [2, 1, 1, 2, 1])
    policy = RegionPolicy(thresholds={"person": 0.55}, fallback=0.45, max_regions=3)
    payload, _ = prediction_payload(
        prediction, schema, ("person", "car"), "v", image_size=(64, 80), policy=policy
    )
    # person >= 0.55: 0.85, 0.6; car >= 0.45 (fallback): 0.9, 0.5; capped at the 3 most confident.
    assert [r["score"] for r in payload["result"]] == pytest.approx([0.9, 0.85, 0.6])
    assert payload["result"][0]["meta"] == {"text": ["RGB 0.12 · thermal 0.91 · fused 0.90"]}
    assert payload["score"] == pytest.approx(0.75)


BRUSH_CONFIG = """<View>
  <Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>
  <BrushLabels name="brush" toName="rgb"><Label value="road"/><Label value="car"/></BrushLabels>
</View>"""


def test_mean_class_probabilities_average_each_branch_inside_each_class():
    """Two pixels of class 1, one of class 2, none of class 0: each branch's probability of the pixel's own
    class, averaged per class; the absent class is NaN."""
    ids = torch.tensor([[[1, 1, 2]]])  # (N=1, h=1, w=3)
    probabilities = torch.tensor(
        [  # (K=3, h, w): per pixel, the class probabilities
            [[[0.1, 0.3, 0.2]], [[0.8, 0.4, 0.1]], [[0.1, 0.3, 0.7]]],
            [[[0.5, 0.2, 0.5]], [[0.2, 0.6, 0.4]], [[0.3, 0.2, 0.1]]],
        ]
    )
    logits = [probabilities[0][None].log(), probabilities[1][None].log()]
    means = mean_class_probabilities(logits, ids)
    assert means.shape == (1, 3, 2)
    assert torch.isnan(means[0, 0]).all()
    np.testing.assert_allclose(means[0, 1].numpy(), [0.6, 0.4], atol=1e-6)
    np.testing.assert_allclose(means[0, 2].numpy(), [0.7, 0.1], atol=1e-6)


def test_mask_regions_explain_themselves_from_each_branch():
    """A segmentation prediction's brush regions carry the fused mean probability as their score and the
    visible / thermal / fused means as meta text; a class without finite figures gets neither."""
    torch.manual_seed(0)
    config = NetConfig(task="segmentation", class_names=("road", "car"), **SMALL)
    predictor = Predictor(ThreeBranchNet(config).eval(), "cpu")
    rng = np.random.default_rng(0)
    pair = (rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), rng.integers(0, 256, (64, 80), dtype=np.uint8))
    prediction = predictor.predict([pair])[0]
    assert prediction.class_branch_scores is not None and prediction.class_branch_scores.shape == (3, 3)
    present = sorted(int(c) for c in np.unique(prediction.mask) if c != 0)
    assert present, "the random network gives some pixels a foreground class"
    batch = predictor.prepare_batch([pair])
    output = predictor.forward(batch.rgb, batch.thermal)
    for column, branch in enumerate(("visible", "thermal", "fused")):
        probabilities = output.branch(branch).cls_logits[0].float().softmax(dim=1)[0].numpy()  # (K, 64, 80)
        for class_id in present:  # the image is the network's size: the mask is the fused argmax itself
            inside = prediction.mask == class_id
            expected = probabilities[class_id][inside].mean()
            assert prediction.class_branch_scores[class_id, column] == pytest.approx(expected, abs=1e-5)
    payload, _ = prediction_payload(
        prediction, schema_from_config(BRUSH_CONFIG), ("road", "car"), "v", image_size=(64, 80)
    )
    labels = {"road": 1, "car": 2}
    for region in payload["result"]:
        visible, thermal, fused = prediction.class_branch_scores[labels[region["value"]["brushlabels"][0]]]
        assert region["score"] == pytest.approx(fused)
        assert region["meta"] == {"text": [f"RGB {visible:.2f} · thermal {thermal:.2f} · fused {fused:.2f}"]}
    assert len(payload["result"]) == len(present)

    prediction.class_branch_scores[:, :] = np.nan
    payload, _ = prediction_payload(
        prediction, schema_from_config(BRUSH_CONFIG), ("road", "car"), "v", image_size=(64, 80)
    )
    assert payload["result"] and all("meta" not in r and "score" not in r for r in payload["result"])


def test_gate_keeps_the_score_and_withholds_regions():
    settings = Settings.from_env({}, preannotation_min_metric=0.4)
    info = VersionInfo(project="1", version="rgbt-v1-20260101T000000", created_at="", metrics={"AP50": 0.2})
    policy = region_policy(settings, info)
    assert not policy.send and "0.200 < PREANNOTATION_MIN_METRIC 0.4" in policy.reason
    payload, _ = prediction_payload(
        _prediction([0.9], [1]),
        schema_from_config(CONFIG),
        ("person", "car"),
        "v",
        image_size=(64, 80),
        policy=policy,
    )
    assert payload["result"] == [] and payload["score"] == pytest.approx(0.75)
    info.metrics["AP50"] = 0.45
    assert region_policy(settings, info).send
    assert not region_policy(settings, None).send  # untrained: never regions


def test_non_finite_inconsistency_ranks_the_task_last_with_an_error(caplog):
    with caplog.at_level(logging.ERROR, logger="ls_backend.convert"):
        payload, _ = prediction_payload(
            _prediction([0.9], [1], inconsistency=math.nan),
            schema_from_config(CONFIG),
            ("person", "car"),
            "v",
            image_size=(64, 80),
            task_id=42,
        )
    assert payload["score"] == 1.0
    assert "task 42: non-finite inconsistency" in caplog.text


# ------------------------------------------------------------------------------------------ training
def test_non_finite_loss_stops_training():
    model = ThreeBranchNet(NetConfig(class_names=("person",), **SMALL))
    rgb = np.full((64, 80, 3), 100, np.uint8)
    thermal = np.full((64, 80), 100, np.uint8)
    record = PairRecord(
        "a",
        rgb,
        thermal,
        boxes=np.array([[8, 8, 40, 40]], np.float32),
        labels=np.array([1]),
        ignore=np.array([False]),
    )
    with torch.no_grad():
        model.heads["fused"].ssd.classification_head.module_list[0].bias.fill_(math.nan)
    dataset = PairDataset(InMemoryReader([record], ["person"]), transform=train_transform((64, 80)))
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        fit(model, dataset, TrainConfig(epochs=1, batch_size=1, device="cpu"), progress=False)


# ------------------------------------------------------------------------------------------ checkpoints
def _source_checkpoint(tmp_path: Path, class_names: tuple[str, ...]) -> tuple[Path, ThreeBranchNet]:
    torch.manual_seed(3)
    source = ThreeBranchNet(NetConfig(class_names=class_names, **SMALL))
    path = tmp_path / "source.pt"
    save_checkpoint(path, source, extra={"thresholds": {"person": 0.4, "car": 0.6}})
    return path, source


def _class_rows(weight: torch.Tensor, num_outputs: int, class_id: int) -> torch.Tensor:
    return weight.view(-1, num_outputs, *weight.shape[1:])[:, class_id]


def test_init_checkpoint_matches_classes_by_name(tmp_path: Path):
    """The checkpoint predicts (person, car, truck); the project has (car, bicycle, person): car and person
    keep their weights at their new positions, bicycle is new (fresh weights), truck is missing."""
    path, source = _source_checkpoint(tmp_path, ("person", "car", "truck"))
    model, match, payload = load_for_classes(path, ("car", "bicycle", "person"), "detection")
    assert match.to_json() == {"shared": ["car", "person"], "new": ["bicycle"], "missing": ["truck"]}
    assert model.config.class_names == ("car", "bicycle", "person")
    assert payload["extra"]["thresholds"]["car"] == 0.6
    old = dict(source.state_dict())
    new = dict(model.state_dict())
    key = "heads.fused.ssd.classification_head.module_list.2.weight"
    for name, old_id, new_id in (("background", 0, 0), ("car", 2, 1), ("person", 1, 3)):
        torch.testing.assert_close(
            _class_rows(new[key], 4, new_id), _class_rows(old[key], 4, old_id), msg=name
        )
    assert not torch.equal(_class_rows(new[key], 4, 2), _class_rows(old[key], 4, 3))  # bicycle != truck
    for shared in (
        "rgb_trunk.features.0.weight",
        "fusion.levels.0.fuse.weight",
        "heads.visible.ssd.regression_head.module_list.0.weight",
    ):
        if shared in old:
            torch.testing.assert_close(new[shared], old[shared], msg=shared)
    # The adapted network predicts the shared classes exactly as the checkpoint did.
    rgb, thermal = torch.rand(1, 3, 64, 80), torch.rand(1, 1, 64, 80)
    with torch.no_grad():
        a, b = source.eval()(rgb, thermal), model(rgb, thermal)
    logits_a, logits_b = a.fused.cls_logits[0], b.fused.cls_logits[0]
    torch.testing.assert_close(logits_b[..., [0, 1, 3]], logits_a[..., [0, 2, 1]])


def test_init_checkpoint_renamed_classes_only_is_refused(tmp_path: Path):
    path, _ = _source_checkpoint(tmp_path, ("person", "car"))
    with pytest.raises(CheckpointError, match="none of the project's classes"):
        load_for_classes(path, ("pedestrian", "vehicle"), "detection")
    with pytest.raises(CheckpointError, match="segmentation"):
        load_for_classes(path, ("person",), "segmentation")


# ------------------------------------------------------------------------------------------ ImageNet
@pytest.fixture
def fresh_resolution(monkeypatch):
    monkeypatch.setattr(backbone, "_resolved", {})


def test_imagenet_weights_from_a_local_state_dict(tmp_path: Path, fresh_resolution):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None)
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    weights = resolve_imagenet_weights(str(path))
    assert weights is not None and weights.source_stats is None
    net = ThreeBranchNet(NetConfig(class_names=("person",), width=1.0, image_size=(64, 80)), weights)
    torch.testing.assert_close(net.rgb_trunk.features[28].weight, state["features.28.weight"])
    torch.testing.assert_close(
        net.thermal_trunk.features[0].weight, state["features.0.weight"].sum(1, keepdim=True)
    )
    with pytest.raises(ValueError, match="no such file"):
        resolve_imagenet_weights(str(tmp_path / "missing.pth"))
    assert resolve_imagenet_weights("none") is None


def test_features_only_weights_are_restandardised(fresh_resolution):
    """torchvision's IMAGENET1K_FEATURES expect 0..255 inputs minus a mean: conv1_1 rewritten for this
    network's normalisation computes the same first layer on the same image."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    mean, std = (0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255)
    trunk = VGG16Extractor(3, width=1.0)
    state = {f"features.{k}": v for k, v in trunk.features.state_dict().items()}
    state["features.0.weight"] = conv.weight.detach().repeat(8, 1, 1, 1)
    state["features.0.bias"] = conv.bias.detach().repeat(8)
    trunk.load_imagenet(state, source_stats=(mean, std))
    image = torch.rand(1, 3, 16, 16)
    ours = (image - torch.tensor(backbone.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        backbone.IMAGENET_STD
    ).view(1, 3, 1, 1)
    theirs = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    expected = torch.nn.functional.conv2d(
        theirs, state["features.0.weight"], state["features.0.bias"], padding=1
    )
    got = trunk.features[0](ours)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-2)


def test_imagenet_auto_offline_falls_back_to_random_init_with_one_warning(
    tmp_path: Path, monkeypatch, caplog, fresh_resolution
):
    """No network (here: a refused connection standing in for the internet): one warning, None, quickly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    calls = []
    real_probe = backbone._probe

    def probe(url: str, timeout: float):
        calls.append(url)
        return real_probe("http://127.0.0.1:9/vgg16_features.pth", timeout)  # port 9: discard, closed

    monkeypatch.setattr(backbone, "_probe", probe)
    with caplog.at_level(logging.WARNING, logger="model.backbone"):
        assert resolve_imagenet_weights("auto", timeout=5.0) is None
        assert resolve_imagenet_weights("auto", timeout=5.0) is None  # resolved once per process
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "random init" in warnings[0].getMessage()
    assert len(calls) == 1


def test_imagenet_auto_uses_the_hub_cache_without_network(tmp_path: Path, monkeypatch, fresh_resolution):
    """A file already in the torch hub cache (what a previous download left) loads with no probe."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(backbone, "_probe", lambda url, timeout: pytest.fail("probed the network"))
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    state = {f"features.{k}": v for k, v in VGG16Extractor(3, width=1.0).features.state_dict().items()}
    torch.save(state, cached)
    monkeypatch.setattr(
        weights.__class__, "get_state_dict", lambda self, **kw: torch.load(cached, weights_only=True)
    )
    resolved = resolve_imagenet_weights("auto")
    assert resolved is not None and resolved.source_stats is not None  # 0..255 inputs: restandardised
    assert set(resolved.state_dict) == set(state)


# ------------------------------------------------------------------------------------------ report
def test_report_has_one_point_per_version_pruned_ones_included(tmp_path: Path):
    from ls_backend.cli import main
    from ls_backend.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    model = ThreeBranchNet(NetConfig(class_names=("person",), **SMALL))
    registry.publish("5", model, metrics={"classes": {}}, status="initial")
    registry.publish("5", model, metrics={"AP50": 0.41, "holdout_tasks": 3}, num_train_tasks=9)
    registry.publish(
        "5", model, metrics={"AP50": 0.3, "holdout_tasks": 5}, num_train_tasks=20, make_current=False
    )
    registry.publish("5", model, metrics={"AP50": 0.55, "holdout_tasks": 6}, num_train_tasks=30)
    registry.prune("5", keep=2)
    assert len(registry.versions("5")) == 2
    assert (
        main(
            [
                "report",
                "--project",
                "5",
                "--out",
                str(tmp_path / "out"),
                "--model-dir",
                str(tmp_path / "models"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "out" / "report-5.json").read_text())
    points = [(p["status"], p["labelled_tasks"], p["AP50"]) for p in data["versions"]]
    assert points == [
        ("initial", 0, None),
        ("accepted", 12, 0.41),
        ("rejected", 25, 0.3),
        ("accepted", 36, 0.55),
    ]
    assert data["current"] == data["versions"][-1]["version"]
    assert (tmp_path / "out" / "report-5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ /setup
def test_setup_with_init_checkpoint_makes_it_the_first_version_once(tmp_path: Path):
    """`rgbt-al project --init-checkpoint` reaches the backend as the connection's extra_params: /setup
    enqueues the start once; the checkpoint's classes (renamed order, an extra one, one missing) are matched
    by name; a path that is not a file is a 400 naming it."""
    from ls_backend.admin import AdminError, check_init_checkpoint
    from tests.unit.app_support import DETECTION_CONFIG, PROJECT, PROJECT_ID, make_app, make_settings

    app = make_app(make_settings(tmp_path))
    path, _ = _source_checkpoint(tmp_path, ("car", "truck", "person"))
    body = {"project": PROJECT, "schema": DETECTION_CONFIG, "extra_params": {"init_checkpoint": str(path)}}
    assert app.client.post("/setup", json=body).status_code == 200
    # Recorded at once, so a second /setup arriving before the job ran does not enqueue it again.
    assert not app.backend.registry.claim_init(PROJECT_ID, str(path))
    assert app.runner.wait_idle(120)
    assert app.client.post("/setup", json=body).status_code == 200  # again: not enqueued twice
    assert app.runner.wait_idle(120)
    versions = app.backend.registry.versions(PROJECT_ID)
    assert len(versions) == 1 and versions[0].status == "initial"
    assert versions[0].metrics["classes"] == {
        "shared": ["person", "car"],
        "new": ["bicycle"],
        "missing": ["truck"],
    }
    assert versions[0].thresholds == {"person": 0.4, "car": 0.6}
    starts = [j for j in app.runner.jobs() if j.func.endswith("init_project")]
    assert len(starts) == 1
    missing = {**body, "project": "8", "extra_params": {"init_checkpoint": str(tmp_path / "nope.pt")}}
    answer = app.client.post("/setup", json=missing)
    assert answer.status_code == 400 and "nope.pt" in answer.get_json()["error"]
    # The admin command checks the match before connecting anything.
    schema = schema_from_config(DETECTION_CONFIG)
    assert "new (learnt from labels) ['bicycle']" in check_init_checkpoint(path, schema)
    renamed, _ = _source_checkpoint(tmp_path / "renamed", ("pedestrian", "vehicle"))
    with pytest.raises(AdminError, match="none of the project's classes"):
        check_init_checkpoint(renamed, schema)


def test_version_gate_compares_on_the_same_held_out_tasks_within_the_tolerance():
    from ls_backend.jobs import _compare

    assert _compare("detection", {"AP50": 0.49}, {"AP50": 0.5}, 0.02)[0]
    accepted, note = _compare("detection", {"AP50": 0.47}, {"AP50": 0.5}, 0.02)
    assert not accepted and "0.4700 < current 0.5000" in note
    assert _compare("detection", {"AP50": 0.1}, {}, 0.02)[0]  # nothing to compare with
    assert not _compare("detection", {"AP50": None}, {"AP50": 0.5}, 0.02)[0]
    assert not _compare("segmentation", {"mIoU": 0.2, "AP50": 0.9}, {"mIoU": 0.3}, 0.02)[0]
