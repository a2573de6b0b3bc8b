"""The model package stands alone: ``python -m model`` runs without importing the Label Studio side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_python_m_model_writes_a_dataset_without_the_backend(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    done = run("-m", "model", "synth", "--out", str(out), "--train", "3", "--val", "0", "--test", "1",
               "--size", "64x80")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 3/0/1" in done.stdout
    assert len((out / "align_train.txt").read_text().split()) == 3  # FLIR-aligned: one line per pair
    # Importing the model's command line brings in no web, queue or Label Studio module.
    probe = run("-c", "import json, sys, model.cli; print(json.dumps(sorted(sys.modules)))")
    modules = json.loads(probe.stdout)
    assert not [m for m in modules if m.split(".")[0] in ("ls_backend", "flask", "rq", "redis")]


def test_python_m_model_names_the_problem(tmp_path: Path) -> None:
    done = run("-m", "model", "evaluate", "--data", str(tmp_path), "--format", "flir-aligned",
               "--checkpoint", str(tmp_path / "missing.pt"))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("evaluate: ") and "missing.pt" in done.stderr
