"""``benchmarks/al_synthetic.py``: the parallel mode (one process per seed and full-data model, then a merge)
on the smoke preset, its deadline, and the README section it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "al_synthetic.py"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--preset", "smoke", "--tasks", "segmentation", "--device", "cpu"]
    command += ["--threads", "1", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One parallel smoke run (segmentation, CPU): its output folder and the finished process."""
    out = tmp_path_factory.mktemp("al-smoke")
    return out, _run("--parallel", "--out", str(out))


def test_parallel_parts_are_merged_into_one_report(smoke_run):
    tmp_path, done = smoke_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert "segmentation seed0: exit 0" in done.stdout and "segmentation full: exit 0" in done.stdout
    folder = tmp_path / "warm-start" / "segmentation"  # the default protocol
    results = json.loads((folder / "results.json").read_text())
    assert results["protocol"] == "warm-start" and results["pretrained"]["source"]["pairs"] == 16
    # One source model, trained before the parts, which all start from it.
    assert (tmp_path / "runs" / "warm-start" / "segmentation" / "pretrained.pt").exists()
    assert not list((tmp_path / "runs" / "warm-start" / "segmentation" / "parts").glob("*/pretrained.pt"))
    assert results["config"]["seeds"] == [0, 1]
    assert set(results["initial"]) == {"0", "1"} and set(results["full_data"]) == {"0"}
    assert {run["seed"] for run in results["runs"].values()} == {0, 1}
    assert all(run["done"] for run in results["runs"].values())
    assert results["parallel"]["processes"] == 3
    for name in ("learning_curves.png", "condition_shares.png", "selected_pairs.png", "summary.md"):
        assert (folder / name).stat().st_size > 0, name
    assert "3 parallel processes" in (folder / "summary.md").read_text()
    # A second run finds every part finished: nothing is trained again, the merge is the same.
    again = _run("--parallel", "--out", str(tmp_path))
    assert again.returncode == 0
    assert json.loads((folder / "results.json").read_text())["runs"] == results["runs"]


def test_deadline_stops_the_parts_and_keeps_what_they_finished(tmp_path):
    done = _run("--parallel", "--deadline", "0", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("stopped at the deadline") == 3


def test_smoke_preset_needs_an_output_folder():
    done = _run("--seeds", "0", timeout=120)
    assert done.returncode != 0 and "--out" in done.stderr


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_readme_section_lists_each_preset_that_has_results(preset, smoke_run, monkeypatch, tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import al_synthetic
    finally:
        sys.path.remove(str(SCRIPT.parent))
    monkeypatch.setattr(al_synthetic, "RESULTS", tmp_path / "cpu")
    monkeypatch.setattr(al_synthetic, "PAPER_RESULTS", tmp_path / "paper")
    monkeypatch.setattr(al_synthetic, "ROOT", tmp_path)
    source = smoke_run[0] / "warm-start" / "segmentation"  # results this session made, not committed ones
    # The smoke run is warm-start: its results go where each preset keeps that protocol.
    base = tmp_path / "cpu" if preset == "cpu" else tmp_path / "paper" / "some-gpu"
    target = base / "warm-start" / "segmentation"
    target.mkdir(parents=True)
    (target / "results.json").write_text((source / "results.json").read_text())
    section = al_synthetic.readme_section(["detection", "segmentation"])
    assert "| inconsistency |" in section
    assert ("paper's sizes, on some-gpu" in section) == (preset == "paper")
    assert ("### Warm start, CPU sizes" in section) == (preset == "cpu")
    assert "#### Active learning: segmentation on synthetic, warm-start" in section
    assert "### Cold start" not in section  # no cold-start results in this folder
    text = al_synthetic.rewrite_readme("intro\n", section)
    assert text.startswith("intro") and al_synthetic.START in text and al_synthetic.END in text
    assert al_synthetic.rewrite_readme(text, "new\n").count(al_synthetic.START) == 1
