"""Model versions on disk, one folder per Label Studio project, with an atomic "current" pointer.

Layout under ``MODEL_DIR``::

    <project>/project.json              label config and how to reach Label Studio (mode 0600)
    <project>/current.json              {"version": "..."} - replaced atomically
    <project>/versions/<version>/model.pt, meta.json, model.onnx (with INFERENCE_ENGINE=onnxruntime)
    <project>/history.jsonl             every published version's meta, pruned ones too (for reports)

A version folder is fully written under a temporary name and renamed into place before ``current.json``
points at it, so a worker killed at any moment leaves the previous version current and no partial folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.checkpoint import atomic_write_bytes, load_model, save_checkpoint
from model.engines import export_onnx
from model.inference import export_path
from model.network import ThreeBranchNet

log = logging.getLogger(__name__)

_PROJECT_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION_NAME = re.compile(r"^rgbt-v(\d+)-\d{8}T\d{6}$")


def version_number(version: str) -> int:
    """N of a version named ``rgbt-vN-<timestamp>`` (0 for another name: a version given from outside)."""
    match = _VERSION_NAME.match(version)
    return int(match.group(1)) if match else 0


class RegistryError(ValueError):
    """Unknown project or version, or an invalid key."""


@dataclass
class VersionInfo:
    """One trained model version of a project."""

    project: str
    version: str
    created_at: str
    parent: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    num_train_tasks: int = 0
    class_names: list[str] = field(default_factory=list)
    task: str = "detection"
    #: "accepted" (was made current), "rejected" (worse than the current version on the same held-out
    #: tasks: kept, never served unless chosen with `rgbt-al versions use`), or "initial" (from a checkpoint).
    status: str = "accepted"
    #: Per-class score thresholds calibrated on the held-out tasks (max F1 at IoU 0.5).
    thresholds: dict[str, float] = field(default_factory=dict)
    #: The current version's metrics on the same held-out tasks, when there was one to compare with.
    baseline: dict[str, Any] = field(default_factory=dict)
    #: Why the version was accepted or rejected, or where it came from.
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProjectInfo:
    """What jobs need to know about a project without a web request at hand."""

    project: str
    label_config: str
    hostname: str = ""
    access_token: str = ""


def _write_json(path: Path, data: dict[str, Any], mode: int | None = None) -> None:
    encoded = json.dumps(data, indent=2, sort_keys=True).encode()

    def write(handle) -> None:
        if mode is not None:
            os.fchmod(handle.fileno(), mode)
        handle.write(encoded)

    atomic_write_bytes(path, write)


def _export_or_warn(model: ThreeBranchNet, checkpoint: Path, version: str) -> None:
    try:
        export_onnx(model, export_path(checkpoint))
    except Exception as error:  # the exporter raises many types; the checkpoint alone still serves
        log.warning("version %s: ONNX export failed, it will be served by torch: %s", version, error)


class ModelRegistry:
    """Versions of every project's model under one root directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- paths
    def project_dir(self, project: str | int) -> Path:
        key = str(project)
        if not _PROJECT_KEY.match(key):
            raise RegistryError(f"invalid project id {key!r}")
        return self.root / key

    def _version_dir(self, project: str | int, version: str) -> Path:
        if not _VERSION_NAME.match(version):
            raise RegistryError(f"invalid model version {version!r}")
        return self.project_dir(project) / "versions" / version

    def checkpoint_path(self, project: str | int, version: str) -> Path:
        return self._version_dir(project, version) / "model.pt"

    @contextmanager
    def _locked(self, project: str | int) -> Iterator[None]:
        """Serialise version creation across threads and processes (several workers may publish)."""
        directory = self.project_dir(project)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- project info
    def save_project(self, info: ProjectInfo) -> None:
        _write_json(self.project_dir(info.project) / "project.json", asdict(info), mode=0o600)

    def project(self, project: str | int) -> ProjectInfo | None:
        path = self.project_dir(project) / "project.json"
        if not path.exists():
            return None
        return ProjectInfo(**json.loads(path.read_text()))

    # --- versions
    def current_version(self, project: str | int) -> str | None:
        """The current version's name (one small file read: cheap enough to call on every request)."""
        try:
            data = json.loads((self.project_dir(project) / "current.json").read_text())
        except FileNotFoundError:
            return None
        return data.get("version")

    def info(self, project: str | int, version: str) -> VersionInfo:
        path = self._version_dir(project, version) / "meta.json"
        if not path.exists():
            raise RegistryError(f"project {project} has no model version {version!r}")
        data = json.loads(path.read_text())
        known = set(VersionInfo.__dataclass_fields__)
        return VersionInfo(**{k: v for k, v in data.items() if k in known})

    def current(self, project: str | int) -> VersionInfo | None:
        version = self.current_version(project)
        return None if version is None else self.info(project, version)

    def versions(self, project: str | int) -> list[VersionInfo]:
        directory = self.project_dir(project) / "versions"
        if not directory.exists():
            return []
        names = [p.name for p in directory.iterdir() if _VERSION_NAME.match(p.name)]
        names.sort(key=version_number)
        return [self.info(project, name) for name in names]

    def projects(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _PROJECT_KEY.match(p.name))

    def publish(
        self,
        project: str | int,
        model: ThreeBranchNet,
        *,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        num_train_tasks: int = 0,
        make_current: bool = True,
        export: bool = False,
        status: str | None = None,
        thresholds: dict[str, float] | None = None,
        baseline: dict[str, Any] | None = None,
        note: str = "",
    ) -> VersionInfo:
        """Save a new version atomically and (by default) make it current.

        ``export``: also store the network exported to ONNX beside the checkpoint, for
        ``INFERENCE_ENGINE=onnxruntime``. An export that fails is logged and left out: the version is still
        published, and serving falls back to torch for it.
        """
        project = str(project)
        with self._locked(project):
            numbers = [
                int(m.group(1)) for v in self.versions(project) if (m := _VERSION_NAME.match(v.version))
            ]
            number = max(numbers, default=0) + 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            info = VersionInfo(
                project=project,
                version=f"rgbt-v{number}-{stamp}",
                # Microseconds: lost webhooks are reconciled against annotation times (backend._reconcile).
                created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
                parent=parent,
                metrics=metrics or {},
                num_train_tasks=num_train_tasks,
                class_names=list(model.config.class_names),
                task=model.config.task,
                status=status or ("accepted" if make_current else "rejected"),
                thresholds=thresholds or {},
                baseline=baseline or {},
                note=note,
            )
            versions_dir = self.project_dir(project) / "versions"
            versions_dir.mkdir(parents=True, exist_ok=True)
            staging = versions_dir / f".staging-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                save_checkpoint(staging / "model.pt", model, extra={"version": info.version})
                if export:
                    _export_or_warn(model, staging / "model.pt", info.version)
                _write_json(staging / "meta.json", info.to_json())
                os.rename(staging, versions_dir / info.version)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            # Versions get pruned; their record stays for `rgbt-al report` (one line per version, appended
            # under the lock).
            with open(self.project_dir(project) / "history.jsonl", "a") as handle:
                handle.write(json.dumps(info.to_json(), sort_keys=True) + "\n")
            if make_current:
                self.set_current(project, info.version)
        return info

    def claim_init(self, project: str | int, checkpoint: str) -> bool:
        """Record that the project starts from ``checkpoint``; False when that was already recorded (so
        repeated /setup calls enqueue the start once)."""
        path = self.project_dir(project) / "init.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x") as handle:
                json.dump({"checkpoint": checkpoint}, handle)
        except FileExistsError:
            return False
        return True

    def history(self, project: str | int) -> list[VersionInfo]:
        """Every version ever published for the project, pruned ones included, oldest first."""
        path = self.project_dir(project) / "history.jsonl"
        if not path.exists():
            return []
        known = set(VersionInfo.__dataclass_fields__)
        records = []
        for line in path.read_text().splitlines():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
            records.append(VersionInfo(**{k: v for k, v in data.items() if k in known}))
        return records

    def set_current(self, project: str | int, version: str) -> None:
        if not self.checkpoint_path(project, version).exists():
            raise RegistryError(f"project {project} has no model version {version!r}")
        _write_json(self.project_dir(project) / "current.json", {"version": version})

    def load(self, project: str | int, version: str | None = None) -> tuple[ThreeBranchNet, VersionInfo]:
        """Load a version (the current one by default) on the CPU."""
        version = version or self.current_version(project)
        if version is None:
            raise RegistryError(f"project {project} has no trained model yet")
        model, _ = load_model(self.checkpoint_path(project, version))
        return model, self.info(project, version)

    def prune(self, project: str | int, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the current one); returns the deleted names."""
        current = self.current_version(project)
        with self._locked(project):
            versions = self.versions(project)
            doomed = [v.version for v in versions[: max(0, len(versions) - keep)] if v.version != current]
            for name in doomed:
                shutil.rmtree(self._version_dir(project, name), ignore_errors=True)
            staging = self.project_dir(project) / "versions"
            for leftover in staging.glob(".staging-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return doomed
