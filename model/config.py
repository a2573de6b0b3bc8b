"""The network's configuration: everything needed to rebuild a ThreeBranchNet from a checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Task = Literal["detection", "segmentation"]
ClassReduction = Literal["max", "mean"]

TASKS: tuple[str, ...] = ("detection", "segmentation")
#: What runs the forward pass at inference (:mod:`model.engines`); kept here so the CLI and settings can
#: name them without importing torch.
ENGINES: tuple[str, ...] = ("torch", "onnxruntime")


@dataclass(frozen=True)
class NetConfig:
    """Hyper-parameters of :class:`model.network.ThreeBranchNet`.

    ``class_names`` are the foreground classes; output index 0 is always background (detection) or
    "unlabelled" (segmentation), so the network predicts ``len(class_names) + 1`` scores per prediction.
    ``image_size`` is the (height, width) pairs are resized to before the network sees them.
    """

    task: Task = "detection"
    class_names: tuple[str, ...] = ("person",)
    width: float = 1.0
    image_size: tuple[int, int] = (512, 640)
    #: Weight of the GAFF attention-guidance losses; 0 disables them.
    aux_loss_weight: float = 0.1
    #: How per-class inconsistencies reduce to one per prediction (the paper's multi-class rule is max).
    class_reduction: ClassReduction = "max"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.class_names:
            raise ValueError("class_names must name at least one foreground class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique, got {self.class_names}")
        if not 0.0 < self.width <= 4.0:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        height, width = self.image_size
        if height < 32 or width < 32:
            raise ValueError(f"image_size must be at least 32x32, got {self.image_size}")
        if self.aux_loss_weight < 0:
            raise ValueError("aux_loss_weight must be >= 0")
        if self.class_reduction not in ("max", "mean"):
            raise ValueError(f"class_reduction must be 'max' or 'mean', got {self.class_reduction!r}")
        # Normalise sequences so configs read back from JSON or checkpoints compare equal.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "image_size", (int(height), int(width)))

    @property
    def num_outputs(self) -> int:
        """Scores per prediction: the foreground classes plus background."""
        return len(self.class_names) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so checkpoints load with ``torch.load(weights_only=True)``."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NetConfig fields: {sorted(unknown)}")
        values = dict(data)
        if "class_names" in values:
            values["class_names"] = tuple(values["class_names"])
        if "image_size" in values:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)
