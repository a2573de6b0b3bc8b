"""`rgbt-al demo`: Label Studio + this backend + a generated RGB-T project, served locally.

Steps: install Label Studio into its own virtualenv (once), generate synthetic RGB-T pairs, start Label
Studio, the backend (and an RQ worker when Redis answers, else jobs run inside the server), create the
project from ``label_config/synthetic_<task>.xml`` with the pairs imported through a local-files storage.
Detection starts from the starter model shipped in ``model/pretrained/`` (trained on a generated *source*
set: another seed, a day-heavy mix; see :mod:`model.starter`): it becomes the project's first version and
pre-annotates the pool at once. Then the demo annotates a random initial set with the generator's ground
truth (the paper's random initial labelled set), fine-tunes on it (the new version becomes current only when
it is not worse on the held-out tasks), scores the pool and pushes the priorities, then prints the URL and
login. "Label All Tasks" then serves the pair whose RGB and thermal branches disagree most.

Everything lives in one data folder (default ``./demo-data``): running the demo again reuses the project,
the model versions and Label Studio's database; ``--fresh`` starts over.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ls_backend.admin import (
    AdminError,
    annotate_random_initial_set,
    read_label_config,
    set_up_project,
    tasks_from_folder,
    wait_for,
    write_synthetic_pairs,
)
from ls_backend.processes import BackendServer, Worker, child_env
from ls_backend.registry import ModelRegistry, VersionInfo
from ls_backend.studio import StudioClient
from ls_backend.studio_server import LabelStudioServer, ensure_database_template, ensure_label_studio
from model.starter import STARTER_DETECTION

log = logging.getLogger(__name__)

DEMO_TITLE = "RGB-T demo ({task})"


@dataclass
class DemoOptions:
    """Knobs of the demo; the defaults finish the first round in a few minutes on a 2-core CPU."""

    data_dir: Path = Path("demo-data")
    task: str = "detection"
    label_studio_port: int = 8080
    backend_port: int = 9090
    pairs: int = 160
    initial: int = 24
    image_size: tuple[int, int] = (128, 160)
    width: float = 0.125  # the starter model's width
    epochs: int = 12
    #: Fine-tuning the starter model: a fifth of the default TRAIN_LR (1e-3 undid what the starter knew).
    lr: float = 2e-4
    redis_url: str | None = "redis://127.0.0.1:6379/0"  # used only when it answers
    fresh: bool = False
    exit_when_ready: bool = False
    timeout: float = 1200.0
    #: Called once the queue is ready, before anything stops (benchmarks read the pushed predictions):
    #: ``on_ready(studio, project_id, registry)``.
    on_ready: Callable[[StudioClient, int, ModelRegistry], None] | None = None


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _redis_answers(url: str | None) -> bool:
    if not url:
        return False
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:  # any failure means "no Redis": the embedded default takes over
        return False


def _credentials(data_dir: Path) -> dict[str, str]:
    """The demo account and the backend's basic-auth credentials, kept in the data folder so a second run
    logs into the same database and Label Studio's ML backend connection keeps working."""
    path = data_dir / "credentials.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    credentials = {
        "username": "demo@rgbt-al.local",
        "password": secrets.token_urlsafe(9),
        "token": secrets.token_hex(20),
        "backend_user": "rgbt-al",
        "backend_password": secrets.token_urlsafe(18),
        **stored,
    }
    if credentials != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(credentials))
    return credentials


def run_demo(options: DemoOptions) -> int:
    """Run the demo; blocks until Ctrl-C (or returns once ready with ``exit_when_ready``)."""
    data_dir = options.data_dir.resolve()
    if options.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    files_root = data_dir / "files"
    pairs_dir = files_root / f"synthetic-{options.task}"
    label_config, schema = read_label_config(f"synthetic_{options.task}")
    credentials = _credentials(data_dir)

    executable = ensure_label_studio()
    # Deterministic by seed: writing again on a second run gives the same files (and their ground truth).
    _say(f"writing {options.pairs} synthetic RGB-T pairs to {pairs_dir}")
    pairs = write_synthetic_pairs(pairs_dir, options.pairs, seed=0, image_size=options.image_size)

    studio_server = LabelStudioServer(
        executable,
        data_dir / "label-studio",
        port=options.label_studio_port,
        files_root=files_root,
        username=credentials["username"],
        password=credentials["password"],
        token=credentials["token"],
        # A migrated empty database, made once per install: the first start takes seconds, not minutes.
        database_template=ensure_database_template(executable),
    )
    use_redis = _redis_answers(options.redis_url)
    settings = {
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{options.label_studio_port}",
        "LABEL_STUDIO_API_KEY": credentials["token"],
        # The backend requires basic auth; the demo connects it to Label Studio with these.
        "BASIC_AUTH_USER": credentials["backend_user"],
        "BASIC_AUTH_PASS": credentials["backend_password"],
        "MODEL_DIR": str(data_dir / "models"),
        "MODEL_WIDTH": str(options.width),
        "MODEL_IMAGE_SIZE": f"{options.image_size[0]}x{options.image_size[1]}",
        "TRAIN_EPOCHS": str(options.epochs),
        "TRAIN_LR": str(options.lr),
        "TRAIN_EVERY_N_ANNOTATIONS": "10",
        "DEVICE": "auto",
        "REDIS_URL": options.redis_url if use_redis else "",
        # One queue per demo folder, so a demo never takes another installation's jobs.
        "RQ_QUEUE": f"rgbt-al-demo-{abs(hash(str(data_dir))) % 10**8}",
    }
    if options.task == "detection" and STARTER_DETECTION.exists():
        settings["INITIAL_CHECKPOINT"] = str(STARTER_DETECTION)
    env = child_env(settings)
    backend = BackendServer(options.backend_port, env=env, log_path=data_dir / "logs" / "backend.log")
    worker = Worker(env=env, log_path=data_dir / "logs" / "worker.log") if use_redis else None
    try:
        _say(f"starting Label Studio on {studio_server.url} (first start takes a minute)")
        studio_server.start()
        studio_server.wait_ready()
        mode = "RQ worker on Redis" if use_redis else "embedded jobs"
        _say(f"starting the backend on {backend.url} ({mode})")
        backend.start()
        if worker is not None:
            worker.start()
        backend.wait_ready()
        studio = StudioClient(studio_server.url, credentials["token"])
        title = DEMO_TITLE.format(task=options.task)
        project = studio.find_project(title)
        if project is None:
            _say(f"creating the project '{title}' with {len(pairs)} pairs")
            setup = set_up_project(
                studio,
                title=title,
                label_config=label_config,
                tasks=tasks_from_folder(pairs_dir, schema, files_root),
                storage_folder=pairs_dir,
                backend_url=backend.url,
                basic_auth=backend.auth,
            )
            project_id = setup.project_id
            _say(f"annotating a random initial set of {options.initial} pairs (generator ground truth)")
            annotate_random_initial_set(studio, project_id, pairs, schema, options.initial, seed=0)
            studio.train(setup.ml_backend_id)  # START_TRAINING: train now, whatever the count
        else:
            project_id = int(project["id"])
            set_up_project(
                studio,
                project_id=project_id,
                label_config=label_config,
                backend_url=backend.url,
                basic_auth=backend.auth,
            )
            _say(f"reusing project {project_id}")
        _say("training on the labelled pairs, then scoring the pool (a few minutes on a CPU)")

        registry = ModelRegistry(data_dir / "models")

        def trained_and_served() -> tuple[str, VersionInfo] | None:
            """Once a version trained on the annotations was decided (made current, or rejected) and the
            current version's priorities are in Label Studio."""
            backend.check_alive()
            if worker is not None:
                worker.check_alive()
            known = registry.history(str(project_id)) or registry.versions(str(project_id))
            trained = [v for v in known if v.num_train_tasks > 0]
            current = registry.current_version(str(project_id))
            served = studio.get_project(project_id).get("model_version") or ""
            return (current, trained[0]) if trained and current and served == current else None

        version, first_trained = wait_for(
            trained_and_served, timeout=options.timeout, interval=2.0, what="the first trained model"
        )
        metric = first_trained.metrics.get("AP50", first_trained.metrics.get("mIoU"))
        _say(
            f"first trained version {first_trained.version} ({first_trained.status}): held-out "
            f"{'AP50' if options.task == 'detection' else 'mIoU'} {metric}; {first_trained.note}"
        )
        first = studio.next_task(project_id) or {}
        _say(f"priorities of {version} pushed; the queue starts with task {first.get('id', '(none left)')}")
        print(
            "\n"
            f"  Label Studio: {studio_server.url}/projects/{project_id}/data\n"
            f"  login:        {credentials['username']}\n"
            f"  password:     {credentials['password']}\n"
            f"  backend:      {backend.url} (logs in {data_dir / 'logs'}; basic auth "
            f"{credentials['backend_user']} / {credentials['backend_password']})\n\n"
            "  Click 'Label All Tasks': the first pair is the one whose RGB and thermal branches disagree\n"
            "  most. Every 10 new annotations retrain the model and re-order the queue. Ctrl-C stops.\n",
            flush=True,
        )
        if options.on_ready is not None:
            options.on_ready(studio, project_id, registry)
        if options.exit_when_ready:
            return 0
        while True:
            time.sleep(2)
            studio_server_alive = studio_server.running()
            if not studio_server_alive:
                raise AdminError(f"Label Studio stopped:\n{studio_server.log_tail()}")
            backend.check_alive()
            if worker is not None:
                worker.check_alive()
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        backend.stop()
        studio_server.stop()
