"""`rgbt-al project create|setup` against a real Label Studio: the admin's path to a working project."""

from __future__ import annotations

import json
import uuid

import pytest

from ls_backend.admin import write_synthetic_pairs
from ls_backend.cli import main
from ls_backend.studio import StudioClient


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["project", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("config", ["mfnet_segmentation", "flir_detection"])
def test_create_imports_pairs_sets_uncertainty_sampling_and_setup_updates(
    label_studio, studio: StudioClient, capsys: pytest.CaptureFixture[str], config: str
) -> None:
    folder = label_studio.files_root / f"cli-{uuid.uuid4().hex[:6]}"
    write_synthetic_pairs(folder, 5, image_size=(32, 40))
    access = ["--label-studio-url", label_studio.url, "--api-key", label_studio.token]
    created = _run(
        capsys,
        "create",
        "--title",
        f"cli {config}",
        "--config",
        config,
        "--images",
        str(folder),
        "--document-root",
        str(label_studio.files_root),
        *access,
    )
    project_id = created["project_id"]
    assert created["created"] and created["imported_tasks"] == 5
    project = studio.get_project(project_id)
    assert project["sampling"] == "Uncertainty sampling"
    tasks = list(studio.iter_tasks(project_id))
    assert sorted(t["data"]["pair"] for t in tasks) == [f"pair_{i:05d}" for i in range(5)]
    # The images are served by Label Studio to a client with the token (what the backend fetches).
    import requests

    response = requests.get(
        studio.resolve_url(tasks[0]["data"]["thermal"]), headers=studio.auth_headers(), timeout=10
    )
    assert response.ok and response.content[:4] == b"\x89PNG"

    updated = _run(
        capsys, "setup", "--project", str(project_id), "--title", "renamed", "--config", config, *access
    )
    assert not updated["created"] and updated["notes"] == ["updated ['title']"]
    assert studio.get_project(project_id)["title"] == "renamed"


def test_a_folder_outside_the_document_root_is_refused_before_anything_is_created(
    label_studio, studio: StudioClient, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    write_synthetic_pairs(tmp_path / "outside", 2, image_size=(32, 40))
    before = studio.find_project("refused project")
    code = main(
        [
            "project",
            "create",
            "--title",
            "refused project",
            "--config",
            "flir_detection",
            "--images",
            str(tmp_path / "outside"),
            "--document-root",
            str(label_studio.files_root),
            "--label-studio-url",
            label_studio.url,
            "--api-key",
            label_studio.token,
        ]
    )
    assert code == 2 and "LOCAL_FILES_DOCUMENT_ROOT" in capsys.readouterr().err
    assert before is None and studio.find_project("refused project") is None
