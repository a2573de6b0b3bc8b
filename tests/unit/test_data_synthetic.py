
import cv2
import numpy as np
import pytest

from model.data.sample import IGNORE_INDEX
from model.data.synthetic import (
    BICYCLE,
    CAR,
    CONDITIONS,
    GENERATOR_VERSION,
    PERSON,
    SyntheticConfig,
    SyntheticRGBT,
    generate_pair,
    object_contrast,
)


def contrast(image: np.ndarray, mask: np.ndarray, background: np.ndarray) -> float:
    """Mean absolute difference between object pixels and a ring of background just around them."""
    image = image.astype(np.float32) if image.ndim == 2 else image.astype(np.float32).mean(axis=2)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & background
    return float(abs(image[mask].mean() - image[ring].mean()))


def test_deterministic_by_seed_and_index():
    a = SyntheticRGBT(5, seed=7, image_size=(64, 80))
    b = SyntheticRGBT(5, seed=7, image_size=(64, 80))
    c = SyntheticRGBT(5, seed=8, image_size=(64, 80))
    for i in range(5):
        np.testing.assert_array_equal(a[i].rgb, b[i].rgb)
        np.testing.assert_array_equal(a[i].thermal, b[i].thermal)
        np.testing.assert_array_equal(a[i].boxes, b[i].boxes)
    assert any(not np.array_equal(a[i].rgb, c[i].rgb) for i in range(5))
    # Random access does not depend on what was generated before.
    np.testing.assert_array_equal(SyntheticRGBT(5, seed=7, image_size=(64, 80))[3].rgb, a[3].rgb)


def test_records_are_well_formed():
    reader = SyntheticRGBT(30, seed=1, image_size=(96, 120))
    for record in (reader[i] for i in range(30)):
        assert record.rgb.shape == (96, 120, 3) and record.thermal.shape == (96, 120)
        assert record.mask.shape == (96, 120)
        assert len(record.boxes) == len(record.labels) == len(record.ignore) >= 1
        assert set(np.unique(record.labels)) <= {1, 2, 3}
        assert (record.boxes[:, 2] > record.boxes[:, 0]).all() and (
            record.boxes[:, 3] > record.boxes[:, 1]
        ).all()
        assert record.condition in CONDITIONS
        assert set(np.unique(record.mask)) <= {0, 1, 2, 3}


def test_test_split_is_balanced_and_train_follows_shares():
    test = SyntheticRGBT(60, seed=0, split="test", image_size=(64, 80))
    counts = {c: test.conditions.count(c) for c in CONDITIONS}
    assert set(counts.values()) == {10}
    train = SyntheticRGBT(2000, seed=0, split="train", image_size=(64, 80))
    share = train.conditions.count("clear_day") / 2000
    assert 0.6 < share < 0.7
    assert 0.07 < train.conditions.count("night") / 2000 < 0.13


def _mean_contrast(condition: str, modality: str, label: int | None = None, n: int = 12) -> float:
    values = []
    for seed in range(n):
        record = generate_pair(
            np.random.default_rng(seed), condition, (96, 120), SyntheticConfig(max_misalignment=0)
        )
        mask = record.mask > 0 if label is None else record.mask == label
        if mask.sum() < 10:
            continue
        image = record.rgb if modality == "rgb" else record.thermal
        values.append(contrast(image, mask, record.mask == 0))
    return float(np.mean(values))


def test_conditions_change_what_each_sensor_sees():
    # Night: objects fade in RGB, stay clear in thermal.
    assert _mean_contrast("night", "rgb") < 0.2 * _mean_contrast("clear_day", "rgb")
    assert _mean_contrast("night", "thermal") > 0.7 * _mean_contrast("clear_day", "thermal")
    # Crossover: warm bodies barely above the ground in thermal; RGB unaffected.
    assert _mean_contrast("crossover", "thermal", PERSON) < 0.25 * _mean_contrast(
        "clear_day", "thermal", PERSON
    )
    assert _mean_contrast("crossover", "rgb") > 0.6 * _mean_contrast("clear_day", "rgb")
    # Cold objects: cars at ambient temperature.
    assert _mean_contrast("cold_objects", "thermal", 2) < 0.2 * _mean_contrast("clear_day", "thermal", 2)


def test_unknown_condition_and_bad_config_rejected():
    with pytest.raises(ValueError, match="unknown condition"):
        generate_pair(np.random.default_rng(0), "fog")
    with pytest.raises(ValueError, match="unknown conditions"):
        SyntheticConfig(condition_shares={"fog": 1.0})


@pytest.mark.parametrize("fmt", ["flir-aligned", "mfnet"])
def test_written_dataset_reads_back_with_the_real_reader(tmp_path, fmt):
    from model.data.readers import open_dataset
    from model.data.synthetic import MFNET_IDS, write_dataset

    root = write_dataset(
        tmp_path / fmt, n_train=6, n_val=2, n_test=6, seed=3, image_size=(64, 80), format=fmt
    )
    source = {
        split: SyntheticRGBT(n, seed=3, split=split, image_size=(64, 80))
        for split, n in (("train", 6), ("val", 2), ("test", 6))
    }
    for split in ("train", "val", "test"):
        reader = open_dataset(root, fmt, split)
        assert len(reader) == len(source[split])
        assert reader.conditions == source[split].conditions
        for i in range(len(reader)):
            got, want = reader[i], source[split][i]
            assert got.condition == want.condition
            if fmt == "flir-aligned":
                assert reader.class_names == ["person", "car", "bicycle"]
                np.testing.assert_allclose(got.boxes, want.boxes)
                np.testing.assert_array_equal(got.labels, want.labels)
                np.testing.assert_array_equal(got.ignore, want.ignore)
                error = ((got.rgb.astype(float) - want.rgb) ** 2).mean()
                assert 10 * np.log10(255**2 / error) > 25  # JPEG of noisy pixels; another pair is < 15 dB
            else:
                expected = np.zeros_like(want.mask)
                for synth_id, mfnet_id in MFNET_IDS.items():
                    expected[want.mask == synth_id] = mfnet_id
                np.testing.assert_array_equal(got.mask, expected)
                np.testing.assert_array_equal(got.rgb, want.rgb)  # PNG is lossless
                np.testing.assert_array_equal(got.thermal, want.thermal)


def test_records_carry_seed_version_and_split():
    record = SyntheticRGBT(3, seed=21, split="val", image_size=(64, 80))[2]
    assert record.meta["seed"] == 21 and record.meta["split"] == "val" and record.meta["index"] == 2
    assert record.meta["generator_version"] == GENERATOR_VERSION
    assert record.pair_id == "synth-val-00002"
    # Splits are independent streams: item 2 of val is not item 2 of train.
    train = SyntheticRGBT(3, seed=21, split="train", image_size=(64, 80))[2]
    assert not np.array_equal(train.rgb, record.rgb)


def test_object_sizes_span_pyramid_levels():
    reader = SyntheticRGBT(120, seed=0, image_size=(128, 160))
    records = [reader[i] for i in range(120)]
    heights = np.concatenate([r.boxes[:, 3] - r.boxes[:, 1] for r in records])
    counts = np.array([len(r.boxes) for r in records])
    # From ~8 px to ~half the image: small objects land on the finest SSD maps, large ones on coarse maps.
    assert heights.min() <= 12 and heights.max() >= 0.4 * 128
    assert np.mean(heights < 16) > 0.1 and np.mean(heights > 40) > 0.05
    assert counts.min() >= 1 and counts.max() >= 4 and len(set(counts.tolist())) >= 3
    labels = np.concatenate([r.labels for r in records])
    assert set(labels.tolist()) == {1, 2, 3}


def test_thermal_is_slightly_misaligned():
    shifts = set()
    for seed in range(8):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        aligned = generate_pair(rng_a, "clear_day", (64, 80), SyntheticConfig(max_misalignment=0))
        shifted = generate_pair(rng_b, "clear_day", (64, 80), SyntheticConfig(max_misalignment=2))
        np.testing.assert_array_equal(aligned.rgb, shifted.rgb)  # only the thermal image moves
        np.testing.assert_array_equal(aligned.mask, shifted.mask)  # targets follow RGB
        match = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(np.roll(aligned.thermal, (dy, dx), axis=(0, 1)), shifted.thermal)
        ]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 1 and shifts != {(0, 0)}


def _false_blob_fraction(condition: str, n: int = 12) -> tuple[float, float]:
    """Share of background pixels, away from every object, that look like glare: white in RGB, person-warm
    in thermal."""
    rgb_share, thermal_share = [], []
    for seed in range(n):
        record = generate_pair(
            np.random.default_rng(seed), condition, (96, 120), SyntheticConfig(max_misalignment=0)
        )
        near = cv2.dilate((record.mask > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        far = ~near
        rgb_share.append(float((record.rgb[far] >= 235).all(axis=1).mean()))
        thermal_share.append(float((record.thermal[far] >= 0.75 * 255).mean()))
    return float(np.mean(rgb_share)), float(np.mean(thermal_share))


def test_glare_adds_false_blobs_in_each_modality():
    day_rgb, day_thermal = _false_blob_fraction("clear_day")
    glare_rgb, glare_thermal = _false_blob_fraction("glare")
    assert day_rgb < 0.001 and day_thermal < 0.001
    assert glare_rgb > 0.01 and glare_thermal > 0.005
    # Not labelled: glare never enters the boxes or the mask.
    record = generate_pair(np.random.default_rng(0), "glare", (96, 120))
    assert set(np.unique(record.mask)) <= {0, 1, 2, 3}


def test_dusk_is_between_day_and_night_in_rgb():
    day, dusk, night = (_mean_contrast(c, "rgb") for c in ("clear_day", "dusk", "night"))
    assert night < dusk < day


def _signed_contrast(condition: str, label: int, n: int = 16) -> float:
    """Mean thermal intensity of ``label``'s pixels minus the condition's ground temperature (0..1): < 0 for
    objects colder than the road (the ring around an object can hold sky, so it is no reference here)."""
    from model.data.synthetic import _LOOKS

    values = []
    for seed in range(n):
        record = generate_pair(
            np.random.default_rng(seed), condition, (96, 120), SyntheticConfig(max_misalignment=0)
        )
        mask = record.mask == label
        if mask.sum() >= 10:
            values.append(float(record.thermal[mask].mean() / 255 - _LOOKS[condition].ground_temp))
    return float(np.mean(values))


def test_night_shows_parked_vehicles_as_cold_silhouettes_and_running_cars_by_their_lamps():
    from model.data.synthetic import _LOOKS, _place_objects

    rng = np.random.default_rng(0)
    ground = _LOOKS["night"].ground_temp
    parked = running = 0
    for _ in range(60):
        for obj in _place_objects(rng, SyntheticConfig(), "night", (96, 120), 40):
            if obj.label == PERSON:
                continue
            if obj.running:
                running += 1
                assert obj.temperature > ground + 0.2
            else:
                parked += 1
                assert obj.temperature < ground - 0.05  # radiating to the cold sky
    assert parked > 10 and running > 10
    # A clear-day model never sees that polarity: by day bicycles are a little warmer than the road.
    assert _signed_contrast("night", BICYCLE) < 0 < _signed_contrast("clear_day", BICYCLE)
    # Lamps: bright pixels inside car boxes, where the dark night hides everything else.
    lit = 0
    for seed in range(30):
        record = generate_pair(np.random.default_rng(seed), "night", (96, 120))
        for box, label in zip(record.boxes.astype(int), record.labels, strict=True):
            if label == CAR:
                x1, y1, x2, y2 = box
                lit += int((record.rgb[y1:y2, x1:x2].max(axis=2) > 200).any())
    assert lit >= 5


def test_crossover_inverts_bodies_faintly_in_thermal():
    assert -0.25 * _signed_contrast("clear_day", PERSON) < _signed_contrast("crossover", PERSON) < 0


def test_glare_adds_person_shaped_decoys_seen_by_one_sensor_and_never_labelled():
    agree, total = 0, {"rgb": 0, "thermal": 0}
    for seed in range(12):
        config = SyntheticConfig(max_misalignment=0)
        record = generate_pair(np.random.default_rng(seed), "glare", (96, 120), config)
        assert generate_pair(np.random.default_rng(seed), "clear_day", (96, 120)).meta["decoys"] == []
        for decoy in record.meta["decoys"]:
            x1, y1, x2, y2 = decoy["box"]
            cx, cy = (x1 + x2) // 2, min(y2 - 1, (y1 + y2) // 2 + 2)  # inside the body
            if record.mask[cy, cx] != 0:
                continue  # occluded by a real object: decoys are never labelled, so the mask is real
            total[decoy["modality"]] += 1
            warm = record.thermal[cy, cx] > 0.7 * 255
            agree += warm == (decoy["modality"] == "thermal")  # other glare may overlap a few
    assert total["rgb"] >= 5 and total["thermal"] >= 5
    assert agree >= 0.8 * sum(total.values())


def test_object_contrast_measures_the_object_against_its_ring():
    rgb = np.full((20, 20, 3), 0.5, np.float32)
    thermal = np.full((20, 20), 0.3, np.float32)
    instances = np.zeros((20, 20), np.int32)
    mask = np.zeros((20, 20), np.int64)
    instances[8:12, 8:12], mask[8:12, 8:12] = 1, PERSON
    rgb[8:12, 8:12, 1] += 0.04  # one channel differs
    thermal[8:12, 8:12] -= 0.1
    rgb_contrast, thermal_contrast = object_contrast(rgb, thermal, instances, mask, 1)
    assert rgb_contrast == pytest.approx(0.04, abs=1e-6) and thermal_contrast == pytest.approx(0.1, abs=1e-6)
    assert object_contrast(rgb, thermal, instances, mask, 2) is None  # not drawn (or fully occluded)


def test_objects_no_sensor_shows_are_ignore_regions_never_misses():
    """Objects below the noise level in both RGB and thermal are ignored (boxes) and unlabelled (mask
    pixels); they occur at night (dark RGB, parked vehicles near the ground's temperature), never by day."""
    config = SyntheticConfig(min_height=0.25, max_height=0.6)
    reader = SyntheticRGBT(240, seed=1234, config=config, split="test", image_size=(64, 80))
    invisible_by_condition = dict.fromkeys(CONDITIONS, 0)
    for index in range(len(reader)):
        record = reader[index]
        flags = record.meta["invisible"]
        assert len(flags) == len(record.labels)
        for ignored, invisible in zip(record.ignore, flags, strict=True):
            if invisible:
                invisible_by_condition[record.condition] += 1
                assert ignored
        assert set(np.unique(record.mask)) <= {0, PERSON, CAR, BICYCLE, IGNORE_INDEX}
        if any(flags):
            assert (record.mask == IGNORE_INDEX).any()
    assert invisible_by_condition["night"] >= 3
    assert invisible_by_condition["clear_day"] == invisible_by_condition["crossover"] == 0
    assert invisible_by_condition["glare"] == 0
