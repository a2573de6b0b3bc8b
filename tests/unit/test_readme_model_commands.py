"""The README's "model on its own" commands (`synth`, `train`, `evaluate`, `score`) run as written, on a tiny
set: the block is read from README.md, its sizes shrunk and its paths moved to a temporary folder."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from model.checkpoint import load_model
from model.data.readers import open_dataset

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## The model on its own"
#: README value -> the tiny run's (sizes only: every command and option stays as the README has it).
SHRINK = {
    **{"--train": "6", "--val": "3", "--test": "4"},
    **{"--width": "0.125", "--image-size": "64x80", "--epochs": "1"},
}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split(SECTION, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def rgbt_al() -> str:
    beside = Path(sys.executable).with_name("rgbt-al")
    assert beside.exists(), "the `rgbt-al` console script is not installed (pip install -e .)"
    return str(beside)


def localise(argv: list[str], tmp_path: Path) -> list[str]:
    assert argv[0] == ".venv/bin/rgbt-al", argv
    out = [rgbt_al()]
    for previous, word in itertools.pairwise(argv):
        if previous in SHRINK:
            word = SHRINK[previous]
        elif re.match(r"^(data|runs)/", word):
            word = str(tmp_path / word)
        out.append(word)
    return out


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    tmp_path = tmp_path_factory.mktemp("readme-model")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for argv in readme_commands():
        command = localise(argv, tmp_path)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
        )
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        results[argv[1]] = done
    results["root"] = tmp_path  # type: ignore[assignment]
    return results


def test_the_readme_lists_the_four_commands():
    assert [argv[1] for argv in readme_commands()] == ["synth", "train", "evaluate", "score"]


def test_synth_then_train_writes_a_checkpoint(ran):
    root: Path = ran["root"]  # type: ignore[assignment]
    for split, count in (("train", 6), ("val", 3), ("test", 4)):
        assert len(open_dataset(root / "data" / "synth", "flir-aligned", split)) == count, split
    model, payload = load_model(root / "runs" / "det.pt")
    assert model.config.image_size == (64, 80) and model.config.width == 0.125
    assert payload["extra"]["epoch"] == 1


def test_evaluate_prints_metrics_by_condition(ran):
    metrics = json.loads(ran["evaluate"].stdout)
    assert 0.0 <= metrics["AP50"] <= 1.0
    assert metrics["by_condition"] and set(metrics["by_condition"]) <= {
        "clear_day", "dusk", "night", "crossover", "cold_objects", "glare"
    }  # fmt: skip


def test_score_ranks_every_pair_most_inconsistent_first(ran):
    root: Path = ran["root"]  # type: ignore[assignment]
    with (root / "runs" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and len({row["pair_id"] for row in rows}) == 6
    scores = [float(row["inconsistency"]) for row in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert [int(row["rank"]) for row in rows] == list(range(1, 7))
    assert all(row["condition"] for row in rows)
