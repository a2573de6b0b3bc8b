"""The onnxruntime engine gives the torch path's answers, and falls back to torch when it cannot run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ls_backend.cli import main
from ls_backend.jobs import JobContext
from ls_backend.settings import Settings, SettingsError
from model.checkpoint import save_checkpoint
from model.config import NetConfig
from model.engines import EngineError, OnnxRuntimeEngine, export_onnx, make_engine
from model.inference import Predictor, export_path
from model.network import ThreeBranchNet

SIZE = (64, 80)


def _pairs(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [(64, 80), (100, 120), (48, 64), (64, 80), (90, 70)][:count]
    return [
        (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w), dtype=np.uint8))
        for h, w in sizes
    ]


@pytest.fixture(scope="module", params=["detection", "segmentation"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A seeded small network of each task, saved as a checkpoint with its export beside it."""
    torch.manual_seed(3)
    config = NetConfig(task=request.param, class_names=("person", "car"), width=0.125, image_size=SIZE)
    model = ThreeBranchNet(config).eval()
    checkpoint = tmp_path_factory.mktemp(request.param) / "model.pt"
    save_checkpoint(checkpoint, model)
    export_onnx(model, export_path(checkpoint))
    return model, checkpoint


def test_export_matches_torch_scores_boxes_and_masks(exported) -> None:
    model, checkpoint = exported
    torch_path = Predictor(model, "cpu", score_threshold=0.05)
    engine = make_engine("onnxruntime", model, export_path(checkpoint))
    assert isinstance(engine, OnnxRuntimeEngine)
    onnx_path = Predictor(model, "cpu", score_threshold=0.05, engine=engine)
    assert onnx_path.engine_name == "onnxruntime"
    pairs = _pairs(5)
    expected = torch_path.predict(pairs, batch_size=3)  # batches of 3 and 2: the export's batch is dynamic
    got = onnx_path.predict(pairs, batch_size=3, with_maps=True)
    boxes = 0
    for a, b in zip(expected, got, strict=True):
        assert abs(a.inconsistency - b.inconsistency) < 1e-4
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-4)
        # The same boxes after NMS: same count, labels, coordinates and scores.
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        boxes += len(a.boxes)
        if model.config.task == "segmentation":
            assert a.mask is not None and b.mask is not None
            assert (a.mask == b.mask).mean() > 0.999
            assert b.inconsistency_map is not None
    if model.config.task == "detection":
        assert boxes > 0, "the comparison needs boxes to compare"


def test_the_engine_runs_the_export_not_the_torch_model(exported) -> None:
    """The exported graph answers even when the torch weights change afterwards: the engine is what ran."""
    model, checkpoint = exported
    pairs = _pairs(2)
    reference = Predictor(model, "cpu").predict(pairs)
    clone = ThreeBranchNet(model.config).eval()
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        for parameter in clone.parameters():
            parameter.mul_(0.5)
    changed = Predictor(clone, "cpu").predict(pairs)
    assert any(abs(a.inconsistency - b.inconsistency) > 1e-3 for a, b in zip(reference, changed, strict=True))
    engine = make_engine("onnxruntime", clone, export_path(checkpoint))
    via_engine = Predictor(clone, "cpu", engine=engine).predict(pairs)
    for a, b in zip(reference, via_engine, strict=True):
        assert abs(a.inconsistency - b.inconsistency) < 1e-4


def test_from_checkpoint_uses_the_export_beside_it(exported) -> None:
    _, checkpoint = exported
    assert Predictor.from_checkpoint(checkpoint, "cpu", engine="onnxruntime").engine_name == "onnxruntime"
    assert Predictor.from_checkpoint(checkpoint, "cpu").engine_name == "torch"


def test_missing_corrupt_or_stale_exports_fall_back_to_torch_with_a_warning(
    exported, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, checkpoint = exported
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx graph")
    other = NetConfig(task=model.config.task, class_names=("person",), width=0.125, image_size=SIZE)
    for path, reason in (
        (tmp_path / "missing.onnx", "no exported graph"),
        (corrupt, "cannot load"),
        (export_path(checkpoint), "another network configuration"),
    ):
        target = ThreeBranchNet(other) if reason.startswith("another") else model
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="model.engines"):
            assert make_engine("onnxruntime", target, path) is None
        assert reason in caplog.text
        with pytest.raises(EngineError, match=reason):
            OnnxRuntimeEngine(path, target.config)
    assert make_engine("torch", model, export_path(checkpoint)) is None
    with pytest.raises(ValueError, match="inference engine"):
        make_engine("tensorrt", model)


def test_the_export_refuses_inputs_of_another_size(exported) -> None:
    model, checkpoint = exported
    engine = OnnxRuntimeEngine(export_path(checkpoint), model.config)
    with pytest.raises(ValueError, match="64x80"):
        engine(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))


def test_cli_exports_and_scores_with_the_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "synth"
    assert main(["synth", "--out", str(data), "--train", "6", "--val", "0", "--test", "0",
                 "--size", "64x80", "--format", "mfnet"]) == 0  # fmt: skip
    torch.manual_seed(0)
    config = NetConfig(task="segmentation", class_names=("person", "car"), width=0.125, image_size=SIZE)
    checkpoint = tmp_path / "seg.pt"
    save_checkpoint(checkpoint, ThreeBranchNet(config))
    assert main(["export", "--checkpoint", str(checkpoint)]) == 0
    assert export_path(checkpoint).is_file()
    rows = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / f"{engine}.json"
        assert main(["score", "--data", str(data), "--format", "mfnet", "--checkpoint", str(checkpoint),
                     "--out", str(out), "--engine", engine, "--workers", "0"]) == 0  # fmt: skip
        rows[engine] = {row["pair_id"]: row["inconsistency"] for row in json.loads(out.read_text())}
    assert "scoring with torch" not in capsys.readouterr().err
    assert rows["torch"].keys() == rows["onnxruntime"].keys() and rows["torch"]
    for pair_id, score in rows["torch"].items():
        assert abs(score - rows["onnxruntime"][pair_id]) < 1e-4


def test_published_versions_carry_their_export_and_the_backend_serves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    config = NetConfig(task="segmentation", class_names=("person",), width=0.125, image_size=SIZE)
    settings = Settings.from_env({}, model_dir=tmp_path, inference_engine="onnxruntime", device="cpu")
    context = JobContext(settings)
    exported = context.registry.publish("7", ThreeBranchNet(config), export=True)
    assert export_path(context.registry.checkpoint_path("7", exported.version)).is_file()
    assert context.predictor("7", exported.version).engine_name == "onnxruntime"

    # An export that fails still publishes the version; it is served by torch, with a warning.
    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr("ls_backend.registry.export_onnx", broken)
    with caplog.at_level(logging.WARNING):
        plain = context.registry.publish("7", ThreeBranchNet(config), export=True)
    assert "ONNX export failed" in caplog.text
    assert context.registry.current_version("7") == plain.version
    assert not export_path(context.registry.checkpoint_path("7", plain.version)).exists()
    assert context.predictor("7", plain.version).engine_name == "torch"
    torch_only = JobContext(Settings.from_env({}, model_dir=tmp_path, device="cpu"))
    assert torch_only.predictor("7", exported.version).engine_name == "torch"


def test_inference_engine_setting_is_validated() -> None:
    assert Settings.from_env({"INFERENCE_ENGINE": "onnxruntime"}).inference_engine == "onnxruntime"
    with pytest.raises(SettingsError, match="INFERENCE_ENGINE"):
        Settings.from_env({"INFERENCE_ENGINE": "tensorrt"})
