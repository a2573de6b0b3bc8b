"""Setting a Label Studio project up for this backend (`rgbt-al project`, the demo, the e2e tests).

A project needs: a label config with the RGB and thermal ``<Image>`` tags (``label_config/``), tasks whose
data holds one URL per image, this backend connected as its ML backend, and the sampling set to "Uncertainty
sampling" so the queue follows the scores the backend pushes. Image pairs come from

* a folder with one sub-folder per modality (``rgb/`` + ``thermal/``, or ``visible/`` + ``lwir/`` /
  ``infrared/``), files paired by name; imported through a Label Studio local-files storage (the folder must
  lie under Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``), or
* a JSON list of tasks, each ``{"rgb": URL, "thermal": URL, ...}``, keys as the config's ``$values`` name.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import ParseError, canonicalize

import numpy as np

from ls_backend.convert import class_names_from_schema, detections_to_results, mask_to_results
from ls_backend.label_config import LabelConfigError, ProjectSchema, schema_from_config
from ls_backend.studio import StudioClient

log = logging.getLogger(__name__)

#: Folder names recognised as the RGB and the thermal half of a pair folder.
RGB_FOLDERS = ("rgb", "visible", "vis", "color")
THERMAL_FOLDERS = ("thermal", "lwir", "infrared", "ir")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
LABEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "label_config"
UNCERTAINTY_SAMPLING = "Uncertainty sampling"


class AdminError(RuntimeError):
    """A set-up problem the admin can fix; the message names it."""


# ------------------------------------------------------------------------------------------ inputs
def read_label_config(name_or_path: str | Path) -> tuple[str, ProjectSchema]:
    """A label config from a path or a name in ``label_config/`` (``flir_detection`` or its file name)."""
    path = Path(name_or_path)
    if not path.exists():
        stem = path.name.removesuffix(".xml")
        path = LABEL_CONFIG_DIR / f"{stem}.xml"
    if not path.is_file():
        known = sorted(p.stem for p in LABEL_CONFIG_DIR.glob("*.xml"))
        raise AdminError(f"label config {name_or_path!r} not found (a path, or one of {known})")
    text = path.read_text()
    try:
        return text, schema_from_config(text)
    except LabelConfigError as error:
        raise AdminError(f"{path}: {error}") from error


@dataclass(frozen=True)
class PairFiles:
    """One pair found on disk."""

    name: str
    rgb: Path
    thermal: Path


def _modality_folder(folder: Path, names: Sequence[str]) -> Path | None:
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def find_pairs(folder: str | Path) -> list[PairFiles]:
    """Pairs in ``folder``: files of its RGB and thermal sub-folders matched by name (without suffix)."""
    root = Path(folder)
    if not root.is_dir():
        raise AdminError(f"{root} is not a folder")
    rgb_dir = _modality_folder(root, RGB_FOLDERS)
    thermal_dir = _modality_folder(root, THERMAL_FOLDERS)
    if rgb_dir is None or thermal_dir is None:
        raise AdminError(
            f"{root} needs an RGB sub-folder (one of {RGB_FOLDERS}) and a thermal one (one of "
            f"{THERMAL_FOLDERS})"
        )

    def images(directory: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    rgb, thermal = images(rgb_dir), images(thermal_dir)
    names = sorted(rgb.keys() & thermal.keys())
    unpaired = sorted(rgb.keys() ^ thermal.keys())
    if unpaired:
        log.warning("%d images without a partner are skipped, e.g. %s", len(unpaired), unpaired[:5])
    if not names:
        raise AdminError(f"no image pairs in {rgb_dir} and {thermal_dir} (files are paired by name)")
    return [PairFiles(name, rgb[name], thermal[name]) for name in names]


def local_files_url(path: Path, document_root: Path) -> str:
    """The URL Label Studio serves a local file under: ``/data/local-files/?d=<path under the root>``."""
    try:
        relative = path.resolve().relative_to(document_root.resolve())
    except ValueError as error:
        raise AdminError(
            f"{path} is not under Label Studio's LOCAL_FILES_DOCUMENT_ROOT {document_root}"
        ) from error
    return "/data/local-files/?d=" + quote(relative.as_posix())


def tasks_from_folder(folder: str | Path, schema: ProjectSchema, document_root: Path) -> list[dict[str, Any]]:
    """One task per pair, image URLs served by Label Studio's local-files storage."""
    return [
        {
            schema.rgb.value_key: local_files_url(pair.rgb, document_root),
            schema.thermal.value_key: local_files_url(pair.thermal, document_root),
            "pair": pair.name,
        }
        for pair in find_pairs(folder)
    ]


def tasks_from_json(path: str | Path, schema: ProjectSchema) -> list[dict[str, Any]]:
    """Tasks from a JSON list: each a dict with the config's two image keys (or Label Studio's
    ``{"data": {...}}`` form)."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise AdminError(f"cannot read tasks from {path}: {error}") from error
    if not isinstance(items, list) or not items:
        raise AdminError(f"{path} must hold a non-empty JSON list of tasks")
    keys = (schema.rgb.value_key, schema.thermal.value_key)
    tasks = []
    for index, item in enumerate(items):
        data = item.get("data", item) if isinstance(item, dict) else None
        if not isinstance(data, dict) or any(not isinstance(data.get(k), str) for k in keys):
            raise AdminError(f"{path}: task {index} needs string URLs under {list(keys)}")
        tasks.append(data)
    return tasks


# ------------------------------------------------------------------------------------------ set-up
@dataclass
class ProjectSetup:
    """What `set_up_project` did."""

    project_id: int
    created: bool
    imported_tasks: int = 0
    ml_backend_id: int | None = None
    training_requested: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "created": self.created,
            "imported_tasks": self.imported_tasks,
            "ml_backend_id": self.ml_backend_id,
            "training_requested": self.training_requested,
            "notes": self.notes,
        }


def set_up_project(
    studio: StudioClient,
    *,
    label_config: str,
    title: str | None = None,
    project_id: int | None = None,
    tasks: Sequence[dict[str, Any]] = (),
    storage_folder: Path | None = None,
    backend_url: str | None = None,
    backend_title: str = "rgbt-al",
    basic_auth: tuple[str, str] | None = None,
    train: bool = False,
    init_checkpoint: Path | None = None,
) -> ProjectSetup:
    """Create (``project_id`` None) or update a project, import tasks, connect the backend, set sampling.

    Idempotent for the connection: a backend already connected at ``backend_url`` is not added twice.
    ``init_checkpoint``: a three-branch checkpoint (a path on the backend's machine) the project starts from;
    its classes are matched to the config's by name here first (the match goes to ``notes``), then the
    connection passes it to the backend's ``/setup``, which makes it the first version.
    """
    schema = schema_from_config(label_config)
    extra_params = None
    match_note = ""
    if init_checkpoint is not None:
        if not backend_url:
            raise AdminError("--init-checkpoint needs the backend connected (--backend-url)")
        match_note = check_init_checkpoint(init_checkpoint, schema)
        extra_params = {"init_checkpoint": str(Path(init_checkpoint).resolve())}
    if project_id is None:
        if not title:
            raise AdminError("a new project needs a title")
        project = studio.create_project(title=title, label_config=label_config)
        setup = ProjectSetup(int(project["id"]), created=True)
    else:
        project = studio.get_project(project_id)
        setup = ProjectSetup(int(project["id"]), created=False)
        changes: dict[str, Any] = {}
        if not same_label_config(project.get("label_config") or "", label_config):
            changes["label_config"] = label_config
        if title and project.get("title") != title:
            changes["title"] = title
        if changes:
            studio.update_project(setup.project_id, **changes)
            setup.notes.append(f"updated {sorted(changes)}")
    if storage_folder is not None:
        studio.add_local_files_storage(setup.project_id, str(storage_folder.resolve()), title="rgbt-al pairs")
    if tasks:
        setup.imported_tasks = len(studio.import_tasks(setup.project_id, list(tasks)))
    if match_note:
        setup.notes.append(match_note)
    if backend_url:
        setup.ml_backend_id = connect_backend(
            studio,
            setup.project_id,
            backend_url,
            backend_title,
            basic_auth=basic_auth,
            extra_params=extra_params,
        )
    studio.set_uncertainty_sampling(setup.project_id)
    if train:
        if setup.ml_backend_id is None:
            raise AdminError("--train needs the backend connected (--backend-url)")
        studio.train(setup.ml_backend_id)
        setup.training_requested = True
    return setup


def same_label_config(first: str, second: str) -> bool:
    """Equal up to comments and formatting (Label Studio stores configs without their comments)."""
    try:
        # Both were parsed by defusedxml (schema_from_config) or come from Label Studio; canonical form.
        return canonicalize(first, strip_text=True) == canonicalize(second, strip_text=True)
    except ParseError:
        return first == second


def connect_backend(
    studio: StudioClient,
    project_id: int,
    url: str,
    title: str = "rgbt-al",
    *,
    basic_auth: tuple[str, str] | None = None,
    extra_params: dict[str, Any] | None = None,
) -> int:
    """Connect ``url`` as the project's ML backend (reusing an existing connection, given ``basic_auth`` when
    set, since the backend's credentials may have changed, and the new ``extra_params`` if any); returns its
    id.

    Label Studio sends the connection's basic auth with /setup, /predict and "Start training", but the
    webhook it subscribes for the backend (``<url>/webhook``, annotation events) is a plain webhook without
    it: with ``basic_auth``, that webhook gets an ``Authorization`` header too."""
    wanted = url.rstrip("/")
    ml_backend_id = None
    for backend in studio.list_ml_backends(project_id):
        if str(backend.get("url", "")).rstrip("/") == wanted:
            ml_backend_id = int(backend["id"])
            changes: dict[str, Any] = {}
            if basic_auth is not None and (
                backend.get("auth_method") != "BASIC_AUTH" or backend.get("basic_auth_user") != basic_auth[0]
            ):
                changes.update(
                    auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1]
                )
            if extra_params is not None and backend.get("extra_params") != extra_params:
                changes["extra_params"] = extra_params
            if changes:
                studio.update_ml_backend(ml_backend_id, **changes)
            break
    if ml_backend_id is None:
        user, password = basic_auth or (None, None)
        backend = studio.connect_ml_backend(
            project_id, wanted, title, auth_user=user, auth_pass=password, extra_params=extra_params
        )
        ml_backend_id = int(backend["id"])
    if basic_auth is not None:
        raw = f"{basic_auth[0]}:{basic_auth[1]}".encode()
        authorization = "Basic " + base64.b64encode(raw).decode()
        for webhook in studio.list_webhooks(project_id):
            headers = dict(webhook.get("headers") or {})
            if str(webhook.get("url", "")).rstrip("/") == wanted + "/webhook" and (
                headers.get("Authorization") != authorization
            ):
                studio.set_webhook_headers(int(webhook["id"]), {**headers, "Authorization": authorization})
    return ml_backend_id


def check_init_checkpoint(path: str | Path, schema: ProjectSchema) -> str:
    """Match a checkpoint's classes to the config's by name; a one-line report, or AdminError when the
    checkpoint cannot serve the project (unreadable, another task, no class in common)."""
    from model.checkpoint import CheckpointError, load_for_classes

    try:
        _, match, _ = load_for_classes(path, class_names_from_schema(schema), schema.task)
    except CheckpointError as error:
        raise AdminError(f"--init-checkpoint: {error}") from error
    return (
        f"init checkpoint {Path(path).name}: classes kept {match.shared}, new (learnt from labels) "
        f"{match.new}, in the checkpoint but not the project {match.missing}"
    )


# ------------------------------------------------------------------------------------------ synthetic pairs
@dataclass(frozen=True)
class WrittenPair:
    """A generated pair written as PNGs, with its ground truth (for the demo's initial annotations)."""

    name: str
    condition: str
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None
    size: tuple[int, int]


def write_synthetic_pairs(
    folder: str | Path, count: int, *, seed: int = 0, image_size: tuple[int, int] = (128, 160)
) -> list[WrittenPair]:
    """``count`` synthetic pairs as ``folder/rgb/<name>.png`` + ``folder/thermal/<name>.png``."""
    from model.data.io import save_png
    from model.data.synthetic import SyntheticRGBT

    root = Path(folder)
    reader = SyntheticRGBT(count, seed, split="train", image_size=image_size)
    written = []
    for index in range(len(reader)):
        record = reader[index]
        name = f"pair_{index:05d}"
        save_png(root / "rgb" / f"{name}.png", record.rgb)
        save_png(root / "thermal" / f"{name}.png", record.thermal)
        written.append(
            WrittenPair(name, record.condition or "", record.boxes, record.labels, record.mask, record.size)
        )
    return written


def ground_truth_result(pair: WrittenPair, schema: ProjectSchema) -> list[dict[str, Any]]:
    """A generated pair's ground truth as an annotation ``result`` for the project's config."""
    from model.data.synthetic import SYNTH_CLASSES

    class_names = class_names_from_schema(schema)
    if schema.task == "detection":
        # The config's labels may be ordered differently from the generator's classes: map by name.
        ids = np.array([class_names.index(SYNTH_CLASSES[i - 1]) + 1 for i in pair.labels], dtype=np.int64)
        results, _ = detections_to_results(pair.boxes, np.ones(len(ids)), ids, pair.size, schema, class_names)
    else:
        if pair.mask is None:
            raise AdminError("segmentation needs masks; the generator wrote none")
        remap = np.zeros(len(SYNTH_CLASSES) + 1, np.int64)
        for i, name in enumerate(SYNTH_CLASSES, start=1):
            remap[i] = class_names.index(name) + 1
        mask = np.where(pair.mask > 0, remap[np.clip(pair.mask, 0, len(SYNTH_CLASSES))], pair.mask)
        results, _ = mask_to_results(mask, schema, class_names)
    for result in results:
        result.pop("score", None)
    return results


def annotate_random_initial_set(
    studio: StudioClient,
    project_id: int,
    pairs: Sequence[WrittenPair],
    schema: ProjectSchema,
    count: int,
    *,
    seed: int = 0,
) -> list[int]:
    """Annotate ``count`` random tasks with their ground truth (the random initial labelled set of the
    paper's protocol); returns the annotated task ids."""
    by_name = {pair.name: pair for pair in pairs}
    tasks = [t for t in studio.iter_tasks(project_id, labeled=False) if t["data"].get("pair") in by_name]
    chosen = random.Random(seed).sample(tasks, min(count, len(tasks)))
    for task in chosen:
        studio.create_annotation(task["id"], ground_truth_result(by_name[task["data"]["pair"]], schema))
    return [int(t["id"]) for t in chosen]


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 1.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns a truthy value; AdminError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AdminError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
