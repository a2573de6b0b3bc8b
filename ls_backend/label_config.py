"""A project's Label Studio label config, reduced to what the backend needs: a :class:`ProjectSchema`.

A supported config has exactly two ``<Image>`` tags (the RGB and the thermal image of a pair, each taking its
URL from the task data, ``value="$key"``) and one labelling control bound to one of them:

* ``<RectangleLabels>``: a detection project (pre-annotations are rectangles);
* ``<BrushLabels>``: a segmentation project (pre-annotations are brush masks);
* ``<PolygonLabels>``: also a segmentation project; polygons are rasterised for training, and pre-annotations
  are polygons when the config has no ``<BrushLabels>``.

Example::

    <View>
      <Image name="rgb" value="$rgb"/>
      <Image name="thermal" value="$thermal"/>
      <RectangleLabels name="label" toName="rgb">
        <Label value="person"/>
      </RectangleLabels>
    </View>

The config is first parsed with :mod:`defusedxml` (it comes from the network with every request: DTDs,
entity declarations and external references are refused, so no XML bomb or XXE reaches a parser), then with
label-studio-sdk's :class:`~label_studio_sdk.label_interface.LabelInterface`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from label_studio_sdk.label_interface import LabelInterface

__all__ = [
    "CONTROL_TASKS",
    "ControlSpec",
    "ImageSlot",
    "LabelConfigError",
    "ProjectSchema",
    "Task",
    "schema_from_config",
]

Task = Literal["detection", "segmentation"]

#: Supported control tags and the task each implies.
CONTROL_TASKS: dict[str, Task] = {
    "RectangleLabels": "detection",
    "BrushLabels": "segmentation",
    "PolygonLabels": "segmentation",
}

# Which control of a task the backend writes its pre-annotations with, most preferred first.
_OUTPUT_PREFERENCE: dict[Task, tuple[str, ...]] = {
    "detection": ("RectangleLabels",),
    "segmentation": ("BrushLabels", "PolygonLabels"),
}

# Words that identify an <Image> as one modality (matched on the tag's name and its $value key).
_RGB_WORDS = ("rgb", "visible", "color", "colour")
_THERMAL_WORDS = ("thermal", "lwir", "infrared")
# Short words only count as whole tokens ("ir" must not match "first", "vis" not "visual_id").
_RGB_TOKENS = frozenset({"vis", "rgb", "color", "colour", "visible"})
_THERMAL_TOKENS = frozenset({"ir", "tir", "lwir", "thermal", "infrared", "therm"})


class LabelConfigError(ValueError):
    """The label config cannot drive this backend; the message names the problem."""

    status = 400


@dataclass(frozen=True)
class ImageSlot:
    """One ``<Image>`` tag: its ``name`` (the ``toName`` of results) and the task-data key of its URL."""

    name: str
    value_key: str


@dataclass(frozen=True)
class ControlSpec:
    """One labelling control tag.

    ``labels`` are in config order, as Label Studio writes them into results (a ``<Label>``'s ``alias``
    when it has one, else its ``value``).
    """

    name: str
    tag: str
    to_name: str
    labels: tuple[str, ...]

    @property
    def result_type(self) -> str:
        """The ``type`` of this control's results, e.g. ``"rectanglelabels"``."""
        return self.tag.lower()


@dataclass(frozen=True)
class ProjectSchema:
    """What a project's label config means to the backend.

    Attributes:
        task: "detection" or "segmentation".
        rgb, thermal: the two ``<Image>`` tags.
        control: the control pre-annotations are written with (and whose labels are the model's classes).
        inputs: every supported control of the same task bound to one of the two images, ``control``
            first; annotations made with any of them are training input.
    """

    task: Task
    rgb: ImageSlot
    thermal: ImageSlot
    control: ControlSpec
    inputs: tuple[ControlSpec, ...]

    @property
    def control_name(self) -> str:
        return self.control.name

    @property
    def control_type(self) -> str:
        return self.control.tag

    @property
    def to_name(self) -> str:
        return self.control.to_name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.control.labels

    @property
    def result_types(self) -> frozenset[str]:
        """Result ``type`` values accepted as training input."""
        return frozenset(c.result_type for c in self.inputs)


def _tokens(text: str) -> set[str]:
    # "thermalImage" / "image_lwir" / "IR-1" -> {"thermal", "image"}, {"image", "lwir"}, {"ir", "1"}
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return {t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t}


def _modality(slot: ImageSlot) -> str | None:
    """Return "rgb", "thermal", or None when the name and value key say nothing (or say both)."""
    text = f"{slot.name} {slot.value_key}"
    lowered, tokens = text.lower(), _tokens(text)
    thermal = any(w in lowered for w in _THERMAL_WORDS) or bool(tokens & _THERMAL_TOKENS)
    rgb = any(w in lowered for w in _RGB_WORDS) or bool(tokens & _RGB_TOKENS)
    if thermal == rgb:
        return None
    return "thermal" if thermal else "rgb"


def _assign_modalities(first: ImageSlot, second: ImageSlot) -> tuple[ImageSlot, ImageSlot]:
    """(rgb, thermal): by name when the names tell, else document order (the first image is RGB)."""
    kinds = (_modality(first), _modality(second))
    if "thermal" in kinds and kinds[0] != kinds[1]:
        return (second, first) if kinds[0] == "thermal" else (first, second)
    if "rgb" in kinds and kinds[0] != kinds[1]:
        return (first, second) if kinds[0] == "rgb" else (second, first)
    return first, second


def _check_xml(xml: str) -> None:
    """Refuse what is not XML, and DTDs / entities / external references (XML bombs, XXE)."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    try:
        SafeET.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as error:
        raise LabelConfigError(
            f"label config refused: it declares a DTD, entities or external references ({error!r}); "
            "Label Studio configs never need them"
        ) from error
    except ParseError as error:
        raise LabelConfigError(f"label config is not well-formed XML: {error}") from error


def schema_from_config(xml: str) -> ProjectSchema:
    """Parse a label config into a :class:`ProjectSchema` (cached per XML string: configs come with every
    request). Raises :class:`LabelConfigError` naming the problem."""
    if not isinstance(xml, str):  # checked before the cache, which cannot hash lists or dicts
        raise LabelConfigError(f"label config must be an XML string, got {type(xml).__name__}")
    return _parse_schema(xml)


@lru_cache(maxsize=128)
def _parse_schema(xml: str) -> ProjectSchema:
    _check_xml(xml)
    try:
        interface = LabelInterface(xml)
    except Exception as error:  # the SDK raises its own syntax/validation errors
        raise LabelConfigError(f"label config could not be parsed: {error}") from error

    images: list[ImageSlot] = []
    for tag in interface.objects:
        if tag.tag != "Image":
            continue
        value = (tag.value or "").strip()
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(
                f'<Image name="{tag.name}"> must take its URL from the task data (value="$key"), '
                f"got value={value!r}"
            )
        images.append(ImageSlot(name=tag.name, value_key=value[1:]))
    if len(images) != 2:
        found = ", ".join(repr(i.name) for i in images) or "none"
        raise LabelConfigError(
            f"label config needs exactly two <Image> tags (RGB and thermal), found {len(images)} ({found})"
        )
    if images[0].value_key == images[1].value_key:
        raise LabelConfigError(
            f"the two <Image> tags read the same task key ${images[0].value_key}: a pair needs two URLs"
        )
    rgb, thermal = _assign_modalities(*images)
    image_names = (rgb.name, thermal.name)

    supported = [c for c in interface.controls if c.tag in CONTROL_TASKS]
    if not supported:
        tags = sorted({c.tag for c in interface.controls}) or ["none"]
        raise LabelConfigError(
            "label config has no supported control tag: need <RectangleLabels> (detection) or "
            f"<BrushLabels>/<PolygonLabels> (segmentation); found {', '.join(tags)}"
        )
    tasks = {CONTROL_TASKS[c.tag] for c in supported}
    if len(tasks) > 1:
        names = ", ".join(f"<{c.tag} name={c.name!r}>" for c in supported)
        raise LabelConfigError(
            f"label config mixes detection and segmentation controls ({names}); one project trains one "
            "kind of model"
        )
    task: Task = tasks.pop()

    controls: list[ControlSpec] = []
    for control in supported:
        bound = [name for name in control.to_name or [] if name in image_names]
        if not bound:
            raise LabelConfigError(
                f"<{control.tag} name={control.name!r}> is bound to {control.to_name!r}, not to one of the "
                f"<Image> tags {list(image_names)}"
            )
        # Bound to both images: regions are written on the RGB one (the pair is aligned).
        to_name = rgb.name if rgb.name in bound else bound[0]
        labels = tuple(dict.fromkeys(str(label) for label in control.labels))
        if not labels:
            raise LabelConfigError(f"<{control.tag} name={control.name!r}> has no <Label> values")
        controls.append(ControlSpec(name=control.name, tag=control.tag, to_name=to_name, labels=labels))

    # The output control: the preferred tag for the task, the first one bound to the RGB image among equals.
    def rank(spec: ControlSpec) -> tuple[int, int]:
        return _OUTPUT_PREFERENCE[task].index(spec.tag), 0 if spec.to_name == rgb.name else 1

    control = min(controls, key=rank)
    inputs = (control, *(c for c in controls if c is not control))
    return ProjectSchema(task=task, rgb=rgb, thermal=thermal, control=control, inputs=inputs)
