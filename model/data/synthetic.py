"""Synthetic aligned RGB + thermal street scenes, deterministic by seed.

Why it is shaped this way (docs/architecture.md, section 4): active learning pays off where the pool is
mostly easy, redundant pairs with a minority of informative ones. Most pairs are clear days where both
sensors see every object; a minority are conditions where one sensor fails:

- ``night``: RGB dark, low-contrast and noisy (objects fade; running cars show only their headlights),
  thermal clear - and parked cars and bicycles, radiating to the cold sky, look *colder* than the ground;
- ``dusk``: in between;
- ``crossover``: a hot day - the asphalt is slightly warmer than bodies, so objects nearly vanish (faintly
  inverted) in thermal;
- ``cold_objects``: parked cars and bicycles at ambient temperature, invisible in thermal;
- ``glare``: false bright blobs in RGB (sun reflections), false warm blobs in thermal (hot patches), and
  person-shaped decoys in one modality only: posters and shop-window reflections of people in RGB (at the
  wall's temperature) and thermal reflections of people on glass or wet asphalt (no RGB counterpart).

The rare conditions are not just harder versions of a clear day: each shows something a clear-day model has
never seen (cold silhouettes at night, inverted bodies at crossover, one-modality decoys it must ignore), so
labelling them teaches what clear-day labels cannot - and they are exactly where the visible and thermal
branches disagree.

Each pair records its condition; the test split is balanced across conditions so a model that never saw the
rare ones is visibly worse. Objects (person, car, bicycle) span 6 px to half the image height so they land
on different pyramid levels, overlap in depth order (masks respect occlusion), and the thermal image is
shifted by up to a few pixels (real pairs are never perfectly aligned).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from model.data.io import save_image, save_jpeg
from model.data.sample import IGNORE_INDEX, PairRecord

SYNTH_CLASSES: tuple[str, ...] = ("person", "car", "bicycle")
PERSON, CAR, BICYCLE = 1, 2, 3
CONDITIONS: tuple[str, ...] = ("clear_day", "dusk", "night", "crossover", "cold_objects", "glare")
GENERATOR_VERSION = 3
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

#: MFNet's label ids for the synthetic classes (car 1, person 2, bike 3).
MFNET_IDS = {PERSON: 2, CAR: 1, BICYCLE: 3}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator, with their defaults."""

    #: Share of each condition in train/val splits (normalised); test splits are balanced.
    condition_shares: dict[str, float] = field(
        default_factory=lambda: {
            "clear_day": 0.65,
            "dusk": 0.10,
            "night": 0.10,
            "crossover": 0.05,
            "cold_objects": 0.05,
            "glare": 0.05,
        }
    )
    #: Probability of each class for a new object (person, car, bicycle).
    class_shares: tuple[float, float, float] = (0.5, 0.3, 0.2)
    min_objects: int = 1
    max_objects: int = 5
    #: Object height range as a fraction of the image height (log-uniform).
    min_height: float = 0.12
    max_height: float = 0.5
    #: Largest shift of the thermal image relative to RGB, pixels.
    max_misalignment: int = 2
    #: Sensor noise (standard deviation, intensity in [0, 1]).
    rgb_noise: float = 0.015
    thermal_noise: float = 0.02
    #: Share of cars with a running (warm) engine outside the cold-objects condition.
    running_car_share: float = 0.7

    def __post_init__(self) -> None:
        unknown = set(self.condition_shares) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; known: {CONDITIONS}")
        if sum(self.condition_shares.values()) <= 0:
            raise ValueError("condition shares must sum to a positive number")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")


@dataclass(frozen=True)
class _Look:
    """How a condition renders: RGB illumination/noise/tint and thermal temperatures (0..1 intensities)."""

    light: float
    rgb_noise: float
    tint: tuple[float, float, float]
    sky_temp: float
    ground_temp: float
    person_temp: float
    car_temp: float
    cold_car_share: float
    #: Parked (not running) vehicles and bicycles relative to the ground: 0 is ambient, < 0 colder (at
    #: night metal and glass radiate to the cold sky).
    parked_offset: float = 0.0
    #: Running cars show their headlights in RGB (their body is lost in the dark).
    headlights: bool = False


_LOOKS = {
    "clear_day": _Look(1.0, 1.0, (1.0, 1.0, 1.0), 0.10, 0.35, 0.90, 0.72, 0.0),
    "dusk": _Look(0.40, 2.0, (1.05, 0.85, 0.80), 0.10, 0.33, 0.90, 0.72, 0.0, -0.05, True),
    "night": _Look(0.07, 3.0, (0.9, 0.9, 1.1), 0.05, 0.30, 0.88, 0.70, 0.0, -0.16, True),
    # Hot asphalt a little warmer than bodies: people and running cars are faint, inverted silhouettes.
    "crossover": _Look(1.05, 1.0, (1.05, 1.0, 0.92), 0.40, 0.86, 0.80, 0.82, 0.0),
    # An overcast cold day: the sky is about as warm as the ground, parked vehicles too.
    "cold_objects": _Look(0.95, 1.0, (0.95, 1.0, 1.05), 0.32, 0.35, 0.90, 0.35, 1.0),
    "glare": _Look(1.0, 1.0, (1.0, 1.0, 1.0), 0.10, 0.35, 0.90, 0.72, 0.0),
}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: random values on a coarse grid, resized up."""
    height, width = shape
    coarse = rng.uniform(-1, 1, size=(max(2, height // scale), max(2, width // scale))).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


@dataclass
class _Object:
    label: int
    box: tuple[int, int, int, int]
    colour: np.ndarray
    temperature: float
    running: bool = False


def _draw_object(
    obj: _Object,
    rgb: np.ndarray,
    thermal: np.ndarray,
    mask: np.ndarray,
    shade: float,
    instances: np.ndarray | None = None,
    instance_id: int = 0,
) -> None:
    """Paint one object into the three layers (later objects occlude earlier ones), and its ``instance_id``
    into ``instances`` when given."""
    x1, y1, x2, y2 = obj.box
    w, h = x2 - x1, y2 - y1
    layer = np.zeros(mask.shape, np.uint8)
    if obj.label == PERSON:
        head_r = max(1, int(round(w * 0.32)))
        cv2.circle(layer, (x1 + w // 2, y1 + head_r), head_r, 1, -1)
        body_top = y1 + 2 * head_r
        cv2.ellipse(
            layer,
            (x1 + w // 2, (body_top + y2) // 2),
            (max(1, w // 2), max(1, (y2 - body_top) // 2)),
            0,
            0,
            360,
            1,
            -1,
        )
    elif obj.label == CAR:
        cabin_h = max(1, h // 3)
        cv2.rectangle(layer, (x1, y1 + cabin_h), (x2 - 1, y2 - max(1, h // 6)), 1, -1)
        cv2.rectangle(layer, (x1 + w // 5, y1), (x2 - 1 - w // 5, y1 + cabin_h), 1, -1)
        wheel_r = max(1, h // 5)
        for cx in (x1 + w // 4, x2 - w // 4):
            cv2.circle(layer, (cx, y2 - wheel_r), wheel_r, 1, -1)
    else:  # bicycle: two wheels and a frame, thin
        wheel_r = max(1, min(w // 4, h // 2))
        thickness = max(1, int(round(h / 12)))
        centres = [(x1 + wheel_r, y2 - wheel_r - 1), (x2 - wheel_r - 1, y2 - wheel_r - 1)]
        for centre in centres:
            cv2.circle(layer, centre, wheel_r, 1, thickness)
        top = (x1 + w // 2, y1 + max(1, h // 6))
        cv2.line(layer, centres[0], top, 1, thickness)
        cv2.line(layer, top, centres[1], 1, thickness)
        cv2.line(layer, centres[0], centres[1], 1, thickness)
        cv2.line(layer, (top[0], y1), (top[0] + w // 6, y1), 1, thickness)
    pixels = layer.astype(bool)
    rgb[pixels] = obj.colour * shade
    if obj.label == CAR:  # dark windows on the cabin
        window = np.zeros_like(layer)
        cv2.rectangle(window, (x1 + w // 5 + 1, y1 + 1), (x2 - 2 - w // 5, y1 + max(1, h // 3) - 1), 1, -1)
        rgb[window.astype(bool) & pixels] = np.array([0.15, 0.18, 0.22]) * shade
    thermal[pixels] = obj.temperature
    mask[pixels] = obj.label
    if instances is not None:
        instances[pixels] = instance_id


def _place_objects(
    rng: np.random.Generator, config: SyntheticConfig, condition: str, size: tuple[int, int], horizon: int
) -> list[_Object]:
    height, width = size
    look = _LOOKS[condition]
    shares = np.array(config.class_shares, dtype=np.float64)
    if condition == "cold_objects":
        shares = np.array([0.2, 0.6, 0.2])  # mostly parked vehicles
    shares = shares / shares.sum()
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects = []
    for _ in range(count):
        running = False
        label = int(rng.choice([PERSON, CAR, BICYCLE], p=shares))
        obj_h = int(round(height * np.exp(rng.uniform(np.log(config.min_height), np.log(config.max_height)))))
        if label == CAR:
            obj_h = max(4, int(obj_h * 0.6))
            obj_w = int(obj_h * rng.uniform(1.6, 2.2))
        elif label == BICYCLE:
            obj_h = max(4, int(obj_h * 0.6))
            obj_w = int(obj_h * rng.uniform(1.4, 1.8))
        else:
            obj_h = max(6, obj_h)
            obj_w = max(3, int(obj_h * rng.uniform(0.3, 0.42)))
        obj_w = min(obj_w, width - 2)
        obj_h = min(obj_h, height - horizon // 2 - 1)
        # Perspective: the foot point sits lower for taller objects (closer to the camera).
        near = (obj_h / height - config.min_height) / max(config.max_height - config.min_height, 1e-6)
        foot = int(
            np.clip(
                horizon + 2 + near * (height - horizon - 2) + rng.normal(0, 0.05 * height),
                horizon + 2,
                height - 1,
            )
        )
        y2 = foot
        y1 = max(0, y2 - obj_h)
        x1 = int(rng.integers(0, max(1, width - obj_w)))
        box = (x1, y1, x1 + obj_w, y2)
        if label == PERSON:
            colour = rng.uniform(0.1, 0.9, size=3)
            temperature = look.person_temp + rng.normal(0, 0.02)
        elif label == CAR:
            colour = rng.uniform(0.15, 0.95, size=3)
            cold = rng.random() < look.cold_car_share
            running = (not cold) and rng.random() < config.running_car_share
            # Parked (and, in the cold-objects condition, every) car sits at the ground's temperature, or
            # below it at night.
            parked = look.ground_temp + look.parked_offset + rng.normal(0, 0.01)
            temperature = look.car_temp if running else parked
        else:
            colour = rng.uniform(0.05, 0.5, size=3)
            # Bicycles carry little heat (sun-warmed frame by day); at ambient temperature in the
            # cold-objects condition, colder than the ground at night.
            day = look.parked_offset == 0 and condition != "cold_objects"
            warm = 0.08 if day else 0.6 * look.parked_offset
            temperature = look.ground_temp + warm + rng.normal(0, 0.01)
        temperature = float(np.clip(temperature, 0, 1))
        objects.append(_Object(label, box, colour.astype(np.float32), temperature, running))
    objects.sort(key=lambda o: o.box[3])  # far (higher foot point) first: near objects occlude them
    return objects


def _draw_decoys(
    rng: np.random.Generator,
    config: SyntheticConfig,
    condition: str,
    size: tuple[int, int],
    horizon: int,
    rgb: np.ndarray,
    thermal: np.ndarray,
    look: _Look,
) -> list[dict]:
    """Person-shaped figures seen by one sensor only, never labelled: posters / shop-window reflections in
    RGB (at the ambient temperature, so absent in thermal) and thermal reflections of people on glass or
    wet asphalt (warm in thermal, absent in RGB). Returns ``{"box", "modality"}`` per decoy."""
    persons_only = SyntheticConfig(
        class_shares=(1.0, 0.0, 0.0),
        min_objects=2,
        max_objects=3,
        min_height=config.min_height,
        max_height=config.max_height,
    )
    decoys = _place_objects(rng, persons_only, condition, size, horizon)
    scratch_mask = np.zeros(thermal.shape, np.int64)
    drawn = []
    for index, decoy in enumerate(decoys):
        if index % 2 == 0:  # a poster: paints RGB, leaves thermal as it is
            _draw_object(decoy, rgb, thermal.copy(), scratch_mask, shade=1.0)
        else:  # a thermal reflection: a little cooler than a body
            decoy.temperature = look.person_temp - 0.08
            _draw_object(decoy, rgb.copy(), thermal, scratch_mask, shade=1.0)
        drawn.append({"box": list(decoy.box), "modality": "rgb" if index % 2 == 0 else "thermal"})
    return drawn


def generate_pair(
    rng: np.random.Generator,
    condition: str,
    size: tuple[int, int] = (128, 160),
    config: SyntheticConfig | None = None,
    pair_id: str = "",
) -> PairRecord:
    """One synthetic pair in ``condition``; all randomness from ``rng``."""
    config = config or SyntheticConfig()
    if condition not in _LOOKS:
        raise ValueError(f"unknown condition {condition!r}; known: {CONDITIONS}")
    look = _LOOKS[condition]
    height, width = size
    horizon = int(height * rng.uniform(0.3, 0.45))
    rows = np.arange(height, dtype=np.float32)[:, None]

    # --- background: sky gradient, buildings, textured road; thermal: cold sky, ambient ground
    sky_top = np.array([0.45, 0.62, 0.9], np.float32) * rng.uniform(0.85, 1.1)
    rgb = np.empty((height, width, 3), np.float32)
    rgb[:] = sky_top * (0.8 + 0.2 * rows / max(horizon, 1))[:, :, None]
    ground = np.array([0.42, 0.41, 0.40], np.float32) * rng.uniform(0.8, 1.15)
    texture = _smooth_noise(rng, (height, width), max(4, height // 8))
    rgb[horizon:] = ground + 0.06 * texture[horizon:, :, None]
    thermal = np.empty((height, width), np.float32)
    thermal[:horizon] = look.sky_temp
    thermal[horizon:] = look.ground_temp + 0.03 * texture[horizon:]
    for _ in range(int(rng.integers(1, 4))):  # buildings on the horizon
        bw = int(rng.integers(width // 8, width // 3))
        bh = int(rng.integers(height // 10, max(height // 10 + 1, horizon)))
        bx = int(rng.integers(0, width - bw))
        shade = rng.uniform(0.35, 0.7)
        rgb[horizon - bh : horizon, bx : bx + bw] = np.array([shade, shade * 0.95, shade * 0.9])
        thermal[horizon - bh : horizon, bx : bx + bw] = look.ground_temp - 0.03
    mask = np.zeros((height, width), np.int64)
    instances = np.zeros((height, width), np.int32)  # 1 + index in ``objects``, for the visibility rule

    decoys = []
    if condition == "glare":  # behind the real objects, which occlude them
        decoys = _draw_decoys(rng, config, condition, size, horizon, rgb, thermal, look)
    objects = _place_objects(rng, config, condition, size, horizon)
    for number, obj in enumerate(objects, start=1):
        x1, _, x2, y2 = obj.box
        if look.light > 0.5:  # a soft shadow under each object in daylight
            cv2.ellipse(
                rgb,
                ((x1 + x2) // 2, min(height - 1, y2)),
                (max(1, (x2 - x1) // 2), max(1, (x2 - x1) // 8)),
                0,
                0,
                360,
                tuple(float(v) * 0.55 for v in ground),
                -1,
            )
        _draw_object(obj, rgb, thermal, mask, shade=1.0, instances=instances, instance_id=number)

    if condition == "glare":
        for _ in range(int(rng.integers(1, 3))):  # sun reflections: bright blobs in RGB only
            cx, cy = int(rng.integers(0, width)), int(rng.integers(horizon, height))
            axes = (
                int(rng.integers(max(2, width // 20), max(3, width // 8))),
                int(rng.integers(max(2, height // 12), max(3, height // 5))),
            )
            cv2.ellipse(rgb, (cx, cy), axes, 0, 0, 360, (1.0, 1.0, 0.95), -1)
        for _ in range(int(rng.integers(1, 3))):  # hot patches: person-like warm blobs in thermal only
            cx, cy = int(rng.integers(0, width)), int(rng.integers(horizon, height))
            axes = (
                int(rng.integers(max(2, width // 40), max(3, width // 16))),
                int(rng.integers(max(3, height // 10), max(4, height // 4))),
            )
            cv2.ellipse(thermal, (cx, cy), axes, 0, 0, 360, float(look.person_temp), -1)

    # --- illumination, tint and sensor noise
    rgb = rgb * look.light * np.array(look.tint, np.float32)
    if look.headlights:  # after the dimming: lamps are as bright at night as by day
        for obj in objects:
            if obj.running:
                x1, y1, x2, y2 = obj.box
                radius = max(1, (y2 - y1) // 8)
                lamp_y = y2 - max(1, (y2 - y1) // 3)
                for lamp_x in (x1 + radius, x2 - 1 - radius):
                    cv2.circle(rgb, (lamp_x, lamp_y), radius, (1.0, 0.95, 0.8), -1)
    if condition == "night":  # a few street lights: bright spots that do not reveal the objects
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = int(rng.integers(0, width)), int(rng.integers(0, horizon + 1))
            cv2.circle(rgb, (cx, cy), max(1, width // 60), (0.9, 0.85, 0.6), -1)
    rgb_clean = rgb
    rgb = rgb + rng.normal(0, config.rgb_noise * look.rgb_noise, size=rgb.shape).astype(np.float32)
    thermal_blur = cv2.GaussianBlur(
        thermal, (0, 0), sigmaX=max(0.5, width / 320)
    )  # thermal optics are softer
    thermal = thermal_blur + rng.normal(0, config.thermal_noise, size=thermal.shape).astype(np.float32)
    thermal += 0.01 * rng.normal(0, 1, size=(1, width)).astype(np.float32)  # column fixed-pattern noise
    shift = config.max_misalignment
    if shift > 0:
        dx, dy = (int(v) for v in rng.integers(-shift, shift + 1, size=2))
        thermal = np.roll(thermal, (dy, dx), axis=(0, 1))

    boxes, labels, ignore, unseen = [], [], [], []
    noise = (config.rgb_noise * look.rgb_noise, config.thermal_noise)
    for number, obj in enumerate(objects, start=1):
        x1, y1, x2, y2 = obj.box
        area = max(1, (x2 - x1) * (y2 - y1))
        visible = int((mask[y1:y2, x1:x2] == obj.label).sum())
        boxes.append(obj.box)
        labels.append(obj.label)
        # Mostly hidden objects are neither misses nor false positives (like KAIST's heavy occlusion).
        occluded = visible < 0.15 * area * (0.35 if obj.label == BICYCLE else 1.0)
        # Nor are objects no annotator could see: below the noise level in both sensors.
        contrast = object_contrast(rgb_clean, thermal_blur, instances, mask, number)
        invisible = contrast is not None and contrast[0] < noise[0] and contrast[1] < noise[1]
        ignore.append(occluded or invisible)
        unseen.append(invisible)
        if invisible:  # their pixels are unlabelled for segmentation too, not background
            mask[instances == number] = IGNORE_INDEX
    return PairRecord(
        pair_id=pair_id,
        rgb=(np.clip(rgb, 0, 1) * 255).round().astype(np.uint8),
        thermal=(np.clip(thermal, 0, 1) * 255).round().astype(np.uint8),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
        ignore=np.array(ignore, bool),
        mask=mask,
        condition=condition,
        # Decoys as a list (not an array) so transforms never take them for per-box values.
        meta={"generator_version": GENERATOR_VERSION, "decoys": decoys, "invisible": unseen},
    )


def object_contrast(
    rgb: np.ndarray, thermal: np.ndarray, instances: np.ndarray, mask: np.ndarray, instance_id: int
) -> tuple[float, float] | None:
    """How much one object stands out from its surroundings before sensor noise: (RGB, thermal) absolute
    difference between the mean over its visible pixels and the mean over a 2-pixel ring around them that
    no other object covers (RGB: the largest over the channels). None when no pixel of it is visible.

    ``rgb`` (H, W, 3) and ``thermal`` (H, W) as rendered (thermal after the optics' blur), ``instances``
    (H, W) object numbers, ``mask`` (H, W) class ids (0 background)."""
    inside = instances == instance_id
    if not inside.any():
        return None
    grown = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ring = grown & (mask == 0)
    if not ring.any():  # surrounded by other objects: they are its surroundings
        ring = grown & ~inside
    if not ring.any():
        return None
    rgb_contrast = float(np.abs(rgb[inside].mean(0) - rgb[ring].mean(0)).max())
    thermal_contrast = float(abs(thermal[inside].mean() - thermal[ring].mean()))
    return rgb_contrast, thermal_contrast


def split_conditions(n: int, seed: int, split: str, config: SyntheticConfig) -> list[str]:
    """Conditions of a split's pairs: balanced (round-robin) for "test", drawn from the shares otherwise."""
    if split == "test":
        return [CONDITIONS[i % len(CONDITIONS)] for i in range(n)]
    rng = np.random.default_rng([seed, _SPLIT_CODES.get(split, 9), 1_000_003])
    names = list(config.condition_shares)
    shares = np.array([config.condition_shares[k] for k in names], dtype=np.float64)
    return [names[i] for i in rng.choice(len(names), size=n, p=shares / shares.sum())]


class SyntheticRGBT:
    """A lazy :class:`~model.data.sample.PairReader`: item i is a pure function of (seed, split, i)."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        config: SyntheticConfig | None = None,
        split: str = "train",
        image_size: tuple[int, int] = (128, 160),
    ) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be one of {tuple(_SPLIT_CODES)}, got {split!r}")
        self.n = n
        self.seed = seed
        self.config = config or SyntheticConfig()
        self.split = split
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.class_names = list(SYNTH_CLASSES)
        self.conditions = split_conditions(n, seed, split, self.config)

    def __len__(self) -> int:
        return self.n

    @property
    def pair_ids(self) -> list[str]:
        return [f"synth-{self.split}-{i:05d}" for i in range(self.n)]

    def __getitem__(self, index: int) -> PairRecord:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        record = generate_pair(
            rng,
            self.conditions[index],
            self.image_size,
            self.config,
            pair_id=f"synth-{self.split}-{index:05d}",
        )
        record.meta.update({"seed": self.seed, "split": self.split, "index": index})
        return record


# ------------------------------------------------------------------------------------------ writers
def _voc_xml(filename: str, record: PairRecord) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(record.size[1])
    ET.SubElement(size, "height").text = str(record.size[0])
    ET.SubElement(size, "depth").text = "3"
    for box, label, ignore in zip(record.boxes, record.labels, record.ignore, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = SYNTH_CLASSES[int(label) - 1]
        ET.SubElement(obj, "difficult").text = "1" if ignore else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, key).text = str(int(round(float(value))))
    return ET.tostring(root, encoding="utf-8")


def write_dataset(
    out_dir: str | Path,
    *,
    n_train: int,
    n_val: int = 0,
    n_test: int = 0,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 160),
    format: str = "flir-aligned",
    config: SyntheticConfig | None = None,
) -> Path:
    """Write synthetic pairs in a real dataset layout, plus a ``conditions.json`` sidecar.

    - ``flir-aligned``: ``JPEGImages/FLIR_NNNNN_RGB.jpg`` and ``..._PreviewData.jpeg``, VOC XML in
      ``Annotations/``, lists ``align_train.txt``, ``align_validation.txt``, ``align_test.txt``.
    - ``mfnet``: ``images/NAME.png`` (RGB + thermal as a 4th channel), ``labels/NAME.png`` (MFNet ids),
      ``train.txt``, ``val.txt``, ``test.txt``.
    """
    if format not in ("flir-aligned", "mfnet"):
        raise ValueError(f"format must be 'flir-aligned' or 'mfnet', got {format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config or SyntheticConfig()
    conditions: dict[str, str] = {}
    lists = {
        "flir-aligned": ("align_train.txt", "align_validation.txt", "align_test.txt"),
        "mfnet": ("train.txt", "val.txt", "test.txt"),
    }[format]
    offsets = {"train": 0, "val": 100_000, "test": 200_000}
    for (split, count), list_name in zip(
        (("train", n_train), ("val", n_val), ("test", n_test)), lists, strict=True
    ):
        reader = SyntheticRGBT(count, seed, config, split=split, image_size=image_size)
        names = []
        for index in range(count):
            record = reader[index]
            number = offsets[split] + index
            if format == "flir-aligned":
                name = f"FLIR_{number:06d}"
                # Full-resolution chroma: the per-pixel sensor noise would cost ~5 levels at 4:2:0.
                save_jpeg(out / "JPEGImages" / f"{name}_RGB.jpg", record.rgb, quality=97, full_chroma=True)
                save_jpeg(out / "JPEGImages" / f"{name}_PreviewData.jpeg", record.thermal, quality=97)
                xml = _voc_xml(f"{name}_PreviewData.jpeg", record)
                (out / "Annotations").mkdir(exist_ok=True)
                (out / "Annotations" / f"{name}_PreviewData.xml").write_bytes(xml)
            else:
                day = record.condition not in ("night", "dusk")
                name = f"synth{number:06d}{'D' if day else 'N'}"
                rgba = np.concatenate([record.rgb, record.thermal[:, :, None]], axis=2)
                save_image(out / "images" / f"{name}.png", rgba)
                labels = np.zeros(record.mask.shape, np.uint8)  # type: ignore[union-attr]
                for synth_id, mfnet_id in MFNET_IDS.items():
                    labels[record.mask == synth_id] = mfnet_id
                save_image(out / "labels" / f"{name}.png", labels)
            names.append(name)
            conditions[name] = record.condition or "unknown"
        (out / list_name).write_text("".join(f"{n}\n" for n in names))
    (out / "conditions.json").write_text(json.dumps(conditions, indent=0, sort_keys=True))
    (out / "synthetic.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "image_size": list(image_size),
                "format": format,
                "generator_version": GENERATOR_VERSION,
                "config": asdict(config),
            },
            indent=2,
        )
    )
    return out
