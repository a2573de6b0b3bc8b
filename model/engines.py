"""Inference engines: what runs the network's forward pass for :class:`model.inference.Predictor`.

``torch`` (the default) runs the :class:`ThreeBranchNet` itself. ``onnxruntime`` runs the same network
exported once to an ONNX graph of its *raw* outputs (every branch's per-level logits and box regressions,
the GAFF attention logits and the embedding). The engine rebuilds a :class:`NetOutput` from them, so
inconsistency, box decoding, NMS and segmentation decoding stay in one place, shared with the torch path.

The export has a fixed spatial size (the network's ``config.image_size``, which ``Predictor`` always resizes
to) and a dynamic batch. onnxruntime is an optional extra: ``pip install '.[onnx]'``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from model.config import ENGINES, NetConfig
from model.fusion import AttentionLogits
from model.network import BRANCHES, BranchOutput, NetOutput, ThreeBranchNet

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "Engine", "EngineError", "OnnxRuntimeEngine", "export_onnx", "make_engine"]

#: File name of a version's exported graph, beside its ``model.pt``.
ONNX_FILE = "model.onnx"
#: ONNX metadata key holding the export's layout (config, feature sizes, output grouping).
_LAYOUT_KEY = "rgbt_layout"
#: Bumped when the exported outputs change; an export of another format version is not loaded.
EXPORT_FORMAT = 1
_INSTALL_HINT = "pip install 'rgbt-active-learning[onnx]'"


class EngineError(RuntimeError):
    """An engine cannot be built: its package is missing, or the export is missing, corrupt or stale."""


class Engine(Protocol):
    """Runs one forward pass: rgb (N, 3, H, W), thermal (N, 1, H, W) float in [0, 1] -> :class:`NetOutput`."""

    name: str

    def __call__(self, rgb: Tensor, thermal: Tensor) -> NetOutput: ...


class RawOutputs(nn.Module):
    """The network with its outputs flattened to a tuple of tensors, the form a graph export needs.

    Order: for each branch in :data:`BRANCHES`, its per-level ``cls_logits``, then (detection) its per-level
    ``bbox_regression``; then per level the attention logits (intra visible, intra thermal, inter); then the
    embedding (N, C).
    """

    def __init__(self, model: ThreeBranchNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: Tensor, thermal: Tensor) -> tuple[Tensor, ...]:
        output = self.model(rgb, thermal)
        flat: list[Tensor] = []
        for name in BRANCHES:
            branch = output.branch(name)
            flat += branch.cls_logits
            flat += branch.bbox_regression or []
        for level in output.attention:
            flat += [level.intra_visible, level.intra_thermal, level.inter]
        flat.append(output.embedding)
        return tuple(flat)


def export_onnx(model: ThreeBranchNet, path: str | Path) -> Path:
    """Export ``model``'s raw outputs at its configured input size, batch dynamic; written atomically.

    Raises :class:`EngineError` when the exporter (``onnx``, ``onnxscript``) is not installed.
    """
    try:
        import onnx
    except ImportError as error:
        raise EngineError(f"exporting needs the onnx extra: {_INSTALL_HINT}") from error
    path = Path(path)
    height, width = model.config.image_size
    was_training = model.training
    model = model.eval()
    device = next(model.parameters()).device
    example = (
        torch.zeros(2, 3, height, width, device=device),
        torch.zeros(2, 1, height, width, device=device),
    )
    with torch.no_grad():
        probe = model(*example)
    feature_sizes = [list(level.inter.shape[-2:]) for level in probe.attention]
    layout = {
        "format": EXPORT_FORMAT,
        "config": model.config.to_dict(),
        "feature_sizes": feature_sizes,
        "levels": len(feature_sizes),
        "branch_levels": len(probe.fused.cls_logits),
    }
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing chatter
            program = torch.onnx.export(
                RawOutputs(model),
                example,
                input_names=["rgb", "thermal"],
                dynamic_shapes=({0: batch}, {0: batch}),
                dynamo=True,
                verbose=False,
            )
        proto = program.model_proto
        onnx.helper.set_model_props(proto, {_LAYOUT_KEY: json.dumps(layout)})
        onnx.save(proto, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    return path


class OnnxRuntimeEngine:
    """Runs an export made by :func:`export_onnx` with onnxruntime (CPU, or CUDA where its provider exists).

    Args:
        path: the ``.onnx`` file.
        config: the network's config; the export must have been made from a network with this config.
        threads: intra-op threads (None: onnxruntime's default, one per core).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, config: NetConfig, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise EngineError(
                f"INFERENCE_ENGINE=onnxruntime needs the onnx extra: {_INSTALL_HINT}"
            ) from error
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"no exported graph at {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # No spin-waiting between ops: on cores shared with loader threads, a web server or other workers,
        # spinning threads steal the time the next op needs (the torch path runs with OMP_WAIT_POLICY=PASSIVE
        # in the benchmarks for the same reason).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own types for corrupt or foreign files
            raise EngineError(f"cannot load the exported graph {path}: {error}") from error
        raw_layout = self.session.get_modelmeta().custom_metadata_map.get(_LAYOUT_KEY)
        if raw_layout is None:
            raise EngineError(f"{path} is not an rgbt-active-learning export (no layout metadata)")
        layout = json.loads(raw_layout)
        if layout.get("format") != EXPORT_FORMAT:
            raise EngineError(f"{path} has export format {layout.get('format')}, expected {EXPORT_FORMAT}")
        if NetConfig.from_dict(layout["config"]) != config:
            raise EngineError(f"{path} was exported from another network configuration")
        self.config = config
        self.feature_sizes = [tuple(size) for size in layout["feature_sizes"]]
        self.branch_levels = int(layout["branch_levels"])
        self.default_boxes = None
        if config.task == "detection":
            from model.heads import DefaultBoxes

            self.default_boxes = DefaultBoxes(len(self.feature_sizes))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, rgb: Tensor, thermal: Tensor) -> NetOutput:
        expected = tuple(self.config.image_size)
        if tuple(rgb.shape[-2:]) != expected or tuple(thermal.shape[-2:]) != expected:
            raise ValueError(
                f"the exported graph takes {expected[0]}x{expected[1]} inputs, got {tuple(rgb.shape[-2:])}"
            )
        feeds = {
            name: np.ascontiguousarray(tensor.detach().float().cpu().numpy())
            for name, tensor in zip(self.input_names, (rgb, thermal), strict=True)
        }
        outputs = [torch.from_numpy(array) for array in self.session.run(None, feeds)]
        return self._rebuild(outputs, rgb.device)

    def _rebuild(self, outputs: list[Tensor], device: torch.device) -> NetOutput:
        outputs = [tensor.to(device) for tensor in outputs]
        levels = self.branch_levels
        detection = self.config.task == "detection"
        branches: dict[str, BranchOutput] = {}
        for name in BRANCHES:
            logits, outputs = outputs[:levels], outputs[levels:]
            regression = None
            if detection:
                regression, outputs = outputs[:levels], outputs[levels:]
            branches[name] = BranchOutput(logits, regression)
        attention = []
        for _ in self.feature_sizes:
            (intra_visible, intra_thermal, inter), outputs = outputs[:3], outputs[3:]
            attention.append(AttentionLogits(intra_visible, intra_thermal, inter))
        (embedding,) = outputs
        image_size = tuple(self.config.image_size)
        anchors = None
        if self.default_boxes is not None:
            anchors = self.default_boxes(image_size, self.feature_sizes, device)
        return NetOutput(image_size, **branches, attention=attention, embedding=embedding, anchors=anchors)


def make_engine(
    name: str, model: ThreeBranchNet, export_path: str | Path | None = None, *, threads: int | None = None
) -> Engine | None:
    """The engine ``name`` for ``model``, or None for the torch path.

    A missing, corrupt or stale export, or a missing onnxruntime, falls back to torch with a logged warning:
    serving never fails because an optional engine cannot run.
    """
    if name not in ENGINES:
        raise ValueError(f"inference engine must be one of {ENGINES}, got {name!r}")
    if name == "torch":
        return None
    if export_path is None:
        log.warning("inference engine %s: no exported graph for this model; using torch", name)
        return None
    try:
        return OnnxRuntimeEngine(export_path, model.config, threads=threads)
    except EngineError as error:
        log.warning("inference engine %s unavailable, using torch: %s", name, error)
        return None
