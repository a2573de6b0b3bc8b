"""The shipped Label Studio configs in label_config/: each parses, and its labels are its dataset's classes.

Label order matters: the backend's model classes are the config's labels in config order
(:func:`ls_backend.convert.class_names_from_schema`), so a model trained on a dataset with ``rgbt-al train``
fine-tunes in a project only when the config lists the dataset's class names in the dataset's order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ls_backend.convert import class_names_from_schema
from ls_backend.label_config import schema_from_config
from model.data import flir, kaist, mfnet, synthetic

CONFIG_DIR = Path(__file__).resolve().parents[2] / "label_config"

#: file -> (task, the dataset's class names in model order)
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "kaist_persons.xml": ("detection", tuple(sorted(kaist.COUNTED_LABELS))),
    "flir_detection.xml": ("detection", tuple(flir.CLASS_NAMES)),
    "synthetic_detection.xml": ("detection", tuple(synthetic.SYNTH_CLASSES)),
    "mfnet_segmentation.xml": ("segmentation", tuple(mfnet.CLASS_NAMES)),
    "synthetic_segmentation.xml": ("segmentation", tuple(synthetic.SYNTH_CLASSES)),
}


def test_every_shipped_config_is_known() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.xml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_the_dataset_classes(name: str) -> None:
    task, classes = EXPECTED[name]
    schema = schema_from_config((CONFIG_DIR / name).read_text())
    assert schema.task == task
    assert class_names_from_schema(schema) == classes
    # Image names and task keys are fixed: importers write {"rgb": URL, "thermal": URL}.
    assert (schema.rgb.name, schema.rgb.value_key) == ("rgb", "rgb")
    assert (schema.thermal.name, schema.thermal.value_key) == ("thermal", "thermal")
    # Regions are drawn on the RGB image, with the control the backend writes pre-annotations with.
    assert schema.control.name == "label"
    assert schema.to_name == "rgb"
    assert schema.control_type == ("RectangleLabels" if task == "detection" else "BrushLabels")
    assert len(schema.inputs) == 1
