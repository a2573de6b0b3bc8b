"""Label configs -> ProjectSchema, and every way a config is refused."""

from __future__ import annotations

import pytest

from ls_backend.label_config import LabelConfigError, ProjectSchema, schema_from_config

DETECTION = """
<View>
  <Image name="rgb" value="$rgb"/>
  <Image name="thermal" value="$thermal"/>
  <RectangleLabels name="label" toName="rgb">
    <Label value="person"/>
    <Label value="car"/>
    <Label value="bicycle"/>
  </RectangleLabels>
</View>
"""


def config(images: str, control: str) -> str:
    return f"<View>{images}{control}</View>"


TWO_IMAGES = '<Image name="rgb" value="$rgb"/><Image name="thermal" value="$thermal"/>'


def test_detection_config() -> None:
    schema = schema_from_config(DETECTION)
    assert isinstance(schema, ProjectSchema)
    assert schema.task == "detection"
    assert (schema.rgb.name, schema.rgb.value_key) == ("rgb", "rgb")
    assert (schema.thermal.name, schema.thermal.value_key) == ("thermal", "thermal")
    assert schema.control_name == "label"
    assert schema.control_type == "RectangleLabels"
    assert schema.to_name == "rgb"
    assert schema.labels == ("person", "car", "bicycle")
    assert schema.result_types == {"rectanglelabels"}


def test_segmentation_brush_preferred_over_polygon_for_output() -> None:
    xml = config(
        TWO_IMAGES,
        '<PolygonLabels name="poly" toName="rgb"><Label value="road"/><Label value="car"/></PolygonLabels>'
        '<BrushLabels name="brush" toName="rgb"><Label value="car"/><Label value="road"/></BrushLabels>',
    )
    schema = schema_from_config(xml)
    assert schema.task == "segmentation"
    assert schema.control_name == "brush"
    assert schema.labels == ("car", "road")  # the output control's order defines the classes
    assert [c.name for c in schema.inputs] == ["brush", "poly"]
    assert schema.result_types == {"brushlabels", "polygonlabels"}


def test_polygon_only_is_segmentation() -> None:
    schema = schema_from_config(
        config(TWO_IMAGES, '<PolygonLabels name="p" toName="thermal"><Label value="a"/></PolygonLabels>')
    )
    assert (schema.task, schema.control_type, schema.to_name) == ("segmentation", "PolygonLabels", "thermal")


@pytest.mark.parametrize(
    ("images", "rgb", "thermal"),
    [
        # names tell, whatever the order
        ('<Image name="lwir" value="$a"/><Image name="visible" value="$b"/>', "visible", "lwir"),
        ('<Image name="img_ir" value="$a"/><Image name="img_2" value="$b"/>', "img_2", "img_ir"),
        (
            '<Image name="first" value="$a"/><Image name="infraredImage" value="$b"/>',
            "first",
            "infraredImage",
        ),
        ('<Image name="x" value="$thermal_url"/><Image name="y" value="$color_url"/>', "y", "x"),
        ('<Image name="one" value="$a"/><Image name="colour" value="$b"/>', "colour", "one"),
        # "first" contains "ir" but not as a word; no hint anywhere: document order
        ('<Image name="first" value="$a"/><Image name="second" value="$b"/>', "first", "second"),
        # both look like RGB: document order
        ('<Image name="rgb1" value="$a"/><Image name="rgb2" value="$b"/>', "rgb1", "rgb2"),
    ],
)
def test_modality_assignment(images: str, rgb: str, thermal: str) -> None:
    first = images.split('name="')[1].split('"')[0]
    schema = schema_from_config(
        config(images, f'<RectangleLabels name="l" toName="{first}"><Label value="p"/></RectangleLabels>')
    )
    assert (schema.rgb.name, schema.thermal.name) == (rgb, thermal)


def test_control_bound_to_both_images_writes_on_rgb() -> None:
    xml = config(
        '<Image name="thermal" value="$t"/><Image name="rgb" value="$r"/>',
        '<RectangleLabels name="l" toName="thermal,rgb"><Label value="p"/></RectangleLabels>',
    )
    assert schema_from_config(xml).to_name == "rgb"


def test_alias_is_the_label_written_in_results() -> None:
    xml = config(
        TWO_IMAGES,
        '<RectangleLabels name="l" toName="rgb"><Label value="Person" alias="person"/></RectangleLabels>',
    )
    assert schema_from_config(xml).labels == ("person",)


def test_cache_returns_the_same_schema() -> None:
    assert schema_from_config(DETECTION) is schema_from_config(DETECTION)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("", "empty"),
        ("this is not xml", "not well-formed XML"),
        ("<View><Image name='a' value='$a'/>", "not well-formed XML"),
        (
            config(
                '<Image name="a" value="$a"/>',
                '<RectangleLabels name="l" toName="a"><Label value="p"/></RectangleLabels>',
            ),
            "exactly two <Image> tags",
        ),
        (
            config(
                TWO_IMAGES + '<Image name="third" value="$c"/>',
                '<RectangleLabels name="l" toName="rgb"><Label value="p"/></RectangleLabels>',
            ),
            "found 3",
        ),
        (
            config(TWO_IMAGES, '<Choices name="c" toName="rgb"><Choice value="x"/></Choices>'),
            "no supported control",
        ),
        (config(TWO_IMAGES, ""), "no supported control"),
        (
            config(
                TWO_IMAGES + '<Text name="txt" value="$text"/>',
                '<RectangleLabels name="l" toName="txt"><Label value="p"/></RectangleLabels>',
            ),
            "not to one of the <Image> tags",
        ),
        (
            config(
                TWO_IMAGES, '<RectangleLabels name="l" toName="nowhere"><Label value="p"/></RectangleLabels>'
            ),
            "not to one of the <Image> tags",
        ),
        (
            config(TWO_IMAGES, '<RectangleLabels name="l" toName="rgb"></RectangleLabels>'),
            "no <Label> values",
        ),
        (
            config(
                TWO_IMAGES,
                '<RectangleLabels name="l" toName="rgb"><Label value="p"/></RectangleLabels>'
                '<BrushLabels name="b" toName="rgb"><Label value="p"/></BrushLabels>',
            ),
            "mixes detection and segmentation",
        ),
        (
            config(
                '<Image name="rgb" value="https://example.com/a.png"/><Image name="thermal" value="$t"/>',
                '<RectangleLabels name="l" toName="rgb"><Label value="p"/></RectangleLabels>',
            ),
            "must take its URL from the task data",
        ),
        (
            config(
                '<Image name="rgb" value="$same"/><Image name="thermal" value="$same"/>',
                '<RectangleLabels name="l" toName="rgb"><Label value="p"/></RectangleLabels>',
            ),
            "same task key",
        ),
    ],
)
def test_refused_configs(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        schema_from_config(xml)


def test_label_config_error_is_a_value_error() -> None:
    assert issubclass(LabelConfigError, ValueError)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<View><Header value="&lol4;"/>""" + DETECTION.replace("<View>", "")

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE View [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<View><Header value="&secret;"/>""" + DETECTION.replace("<View>", "")

EXTERNAL_DTD = '<?xml version="1.0"?><!DOCTYPE View SYSTEM "http://127.0.0.1:1/evil.dtd">' + DETECTION


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["bomb", "xxe", "dtd"])
def test_dtds_and_entities_are_refused(xml: str) -> None:
    with pytest.raises(LabelConfigError, match="DTD, entities or external references"):
        schema_from_config(xml)
