"""`rgbt-al`: the command line of the project.

rgbt-al serve | worker | jobs | config          the Label Studio backend and its job workers
rgbt-al project create|setup                    set a Label Studio project up (admins)
rgbt-al demo                                    Label Studio + backend + a generated RGB-T project
rgbt-al synth | train | evaluate | score        the model on its own, on disk datasets
rgbt-al simulate                                the active-learning simulator
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ls_backend.settings import Settings, SettingsError, settings_table_markdown
from model.data.readers import ALL_FORMATS

log = logging.getLogger("rgbt-al")


class CommandError(RuntimeError):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 512x640, got {text!r}") from error
    return height, width


# ------------------------------------------------------------------------------------------ backend
def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    host = args.host or settings.host
    port = args.port or settings.port
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        "1",  # one process holds the models; threads serve requests concurrently
        "--threads",
        str(args.threads or settings.server_threads),
        "--timeout",
        "120",  # Label Studio waits up to 100 s for /predict
        "--graceful-timeout",
        "30",
        "--access-logfile",
        "-",
        "ls_backend.app:create_app()",
    ]
    log.info("serving on http://%s:%s (%s)", host, port, "RQ" if settings.redis_url else "embedded jobs")
    os.execv(sys.executable, command)
    return 0  # pragma: no cover - execv does not return


def cmd_worker(args: argparse.Namespace) -> int:
    overrides = {"device": args.device} if args.device else {}
    settings = Settings.from_env(**overrides)
    if not settings.redis_url:
        raise CommandError("REDIS_URL is not set: without Redis, jobs run inside `rgbt-al serve`")
    from ls_backend.jobs import JobContext, set_context
    from ls_backend.queues import RQRunner, set_runner
    from ls_backend.worker import LeasedWorker

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = RQRunner(settings)
    if not runner.ping():
        raise CommandError(f"cannot reach Redis at {settings.redis_url}")
    set_runner(runner)
    set_context(JobContext(settings))
    # Jobs run in this process (loaded models stay in memory between jobs, CUDA is never used across a
    # fork), each on a lease renewed while it runs: a killed worker's job is retried or reported failed.
    worker = LeasedWorker(
        [runner.queue], connection=runner.connection, lease_seconds=settings.worker_lease_seconds
    )
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.redis_url:
        from ls_backend.queues import RQRunner

        states = [s.to_json() for s in RQRunner(settings).jobs(limit=args.limit)]
    else:
        import requests

        url = args.server.rstrip("/") + "/jobs"
        try:
            response = requests.get(url, params={"limit": args.limit}, timeout=10)
            response.raise_for_status()
        except requests.RequestException as error:
            raise CommandError(f"cannot list jobs from {url}: {error} (set REDIS_URL or --server)") from error
        states = response.json()["jobs"]
    if args.json:
        print(json.dumps(states, indent=2))
        return 0
    if not states:
        print("no jobs")
    for state in states:
        progress = "" if state.get("progress") is None else f"{100 * state['progress']:5.1f}%"
        line = f"{state['id']:<40} {state['status']:<9} {progress:>6}  {state.get('description', '')}"
        if state.get("message"):
            line += f" - {state['message']}"
        if state.get("error"):
            line += f"  ERROR: {state['error']}"
        print(line)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table_markdown(), end="")
        return 0
    settings = Settings.from_env()
    for name, value in settings.public().items():
        print(f"{name}={value}")
    return 0


# ------------------------------------------------------------------------------------------ admin
def _studio_from(args: argparse.Namespace):
    from ls_backend.studio import StudioClient

    url = args.label_studio_url or os.environ.get("LABEL_STUDIO_URL", "")
    token = args.api_key or os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not url or not token:
        raise CommandError(
            "give --label-studio-url and --api-key (or set LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)"
        )
    return StudioClient(url, token)


def cmd_project(args: argparse.Namespace) -> int:
    from ls_backend.admin import (
        AdminError,
        read_label_config,
        set_up_project,
        tasks_from_folder,
        tasks_from_json,
    )
    from ls_backend.studio import StudioError

    try:
        label_config, schema = read_label_config(args.config)
        tasks: list = []
        storage = None
        if args.images:
            if not args.document_root:
                raise CommandError(
                    "--images needs --document-root: Label Studio's LOCAL_FILES_DOCUMENT_ROOT, under "
                    "which the folder must lie (Label Studio serves the files through a local-files storage)"
                )
            storage = Path(args.images)
            tasks = tasks_from_folder(storage, schema, Path(args.document_root))
        elif args.tasks:
            tasks = tasks_from_json(args.tasks, schema)
        basic_auth = None
        if args.backend_user or args.backend_password:
            basic_auth = (args.backend_user or "", args.backend_password or "")
        setup = set_up_project(
            _studio_from(args),
            label_config=label_config,
            title=args.title,
            project_id=None if args.action == "create" else args.project,
            tasks=tasks,
            storage_folder=storage,
            backend_url=args.backend_url,
            basic_auth=basic_auth,
            train=args.train,
            init_checkpoint=Path(args.init_checkpoint) if args.init_checkpoint else None,
        )
    except (AdminError, StudioError) as error:
        raise CommandError(str(error)) from error
    print(json.dumps(setup.to_json(), indent=2))
    return 0


def _registry_and_project(args: argparse.Namespace):
    from ls_backend.registry import ModelRegistry, RegistryError
    from ls_backend.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
        registry = ModelRegistry(args.model_dir or settings.model_dir)
        project = str(args.project)
        registry.project_dir(project)
    except (SettingsError, RegistryError) as error:
        raise CommandError(str(error)) from error
    if not registry.versions(project) and not registry.history(project):
        raise CommandError(f"project {project} has no model versions under {registry.root}")
    return settings, registry, project


def cmd_versions(args: argparse.Namespace) -> int:
    from ls_backend.jobs import JobContext, JobError, set_context, use_version
    from ls_backend.queues import RQRunner, get_runner
    from ls_backend.registry import RegistryError
    from ls_backend.studio import StudioError

    settings, registry, project = _registry_and_project(args)
    if args.action == "list":
        from ls_backend.jobs import region_policy

        current = registry.current_version(project)
        rows = []
        for info in registry.versions(project):
            policy = region_policy(settings, info)
            rows.append(
                {
                    "version": info.version,
                    "current": info.version == current,
                    "status": info.status,
                    "train_tasks": info.num_train_tasks,
                    "metrics": {k: v for k, v in info.metrics.items() if isinstance(v, (int, float))},
                    "baseline": info.baseline,
                    "thresholds": info.thresholds,
                    "regions": "sent" if policy.send else "withheld",
                    "reason": policy.reason,
                    "note": info.note,
                }
            )
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for row in rows:
            metric = row["metrics"].get("AP50", row["metrics"].get("mIoU"))
            shown = "-" if metric is None else f"{metric:.3f}"
            print(
                f"{'*' if row['current'] else ' '} {row['version']}  {row['status']:<8}  "
                f"train {row['train_tasks']:>4}  held-out {shown:>5}  "
                f"regions {row['regions']}: {row['reason']}"
            )
        return 0
    # use: make VERSION current and re-push its priorities.
    try:
        registry.info(project, args.version)
    except RegistryError as error:
        raise CommandError(str(error)) from error
    set_context(JobContext(settings))
    runner = get_runner(settings)
    if isinstance(runner, RQRunner):
        registry.set_current(project, args.version)
        job = runner.enqueue(
            "ls_backend.jobs.score_pool", project, args.version, description=f"re-push {args.version}"
        )
        print(f"{args.version} is current for project {project}; re-pushing its priorities (job {job})")
        return 0
    try:
        result = use_version(project, args.version)
    except (JobError, StudioError) as error:
        raise CommandError(str(error)) from error
    print(json.dumps({"current": args.version, **result}, indent=2, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ls_backend.project_report import write_report

    _, registry, project = _registry_and_project(args)
    png, js = write_report(registry, project, Path(args.out))
    print(f"wrote {png} and {js}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ls_backend.admin import AdminError
    from ls_backend.demo import DemoOptions, run_demo
    from ls_backend.processes import ProcessError
    from ls_backend.studio import StudioError
    from ls_backend.studio_server import StudioServerError

    options = DemoOptions(
        data_dir=Path(args.data_dir),
        task=args.task,
        label_studio_port=args.port,
        backend_port=args.backend_port,
        pairs=args.pairs,
        initial=args.initial,
        fresh=args.fresh,
        exit_when_ready=args.exit_when_ready,
        redis_url=None if args.no_redis else args.redis_url,
    )
    try:
        return run_demo(options)
    except (AdminError, ProcessError, StudioError, StudioServerError) as error:
        raise CommandError(str(error)) from error


# ------------------------------------------------------------------------------------------ model
DATA_FORMATS = ALL_FORMATS


def _task_for(format_name: str, task: str | None) -> str:
    return task or ("segmentation" if format_name == "mfnet" else "detection")


def _open(root: str, format_name: str, split: str):
    from model.data.readers import open_dataset

    try:
        return open_dataset(root, format_name, split)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from error


def cmd_synth(args: argparse.Namespace) -> int:
    from model.data.synthetic import write_dataset

    out = write_dataset(
        args.out,
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        seed=args.seed,
        image_size=args.size,
        format=args.format,
    )
    print(f"wrote {args.train}/{args.val}/{args.test} train/val/test pairs in {args.format} format to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from model.checkpoint import load_model
    from model.config import NetConfig
    from model.data.dataset import PairDataset
    from model.data.transforms import eval_transform, train_transform
    from model.network import ThreeBranchNet
    from model.train import TrainConfig, fit

    train_reader = _open(args.data, args.format, args.split)
    if args.init:
        model, _ = load_model(args.init)
        if list(model.config.class_names) != list(train_reader.class_names):
            raise CommandError(
                f"{args.init} predicts {list(model.config.class_names)}, "
                f"the data has {train_reader.class_names}"
            )
    else:
        config = NetConfig(
            task=_task_for(args.format, args.task),  # type: ignore[arg-type]
            class_names=tuple(train_reader.class_names),
            width=args.width,
            image_size=args.image_size,
        )
        model = ThreeBranchNet(config, imagenet_weights=args.imagenet)
    size = model.config.image_size
    val_set = None
    if args.val_split:
        val_set = PairDataset(_open(args.data, args.format, args.val_split), transform=eval_transform(size))
    history = fit(
        model,
        PairDataset(train_reader, transform=train_transform(size)),
        TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            num_workers=args.workers,
            seed=args.seed,
        ),
        val_set=val_set,
        checkpoint_path=args.out,
        resume=args.resume,
        on_epoch=lambda e: print(
            f"epoch {e.epoch}: loss {e.losses['total']:.4f}, {e.pairs_per_second:.1f} pairs/s"
            + (
                f", {json.dumps({k: round(v, 4) for k, v in e.metrics.items() if isinstance(v, float)})}"
                if e.metrics
                else ""
            )
        ),
    )
    print(f"saved {args.out} after {len(history)} epochs")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_model
    from model.data.dataset import PairDataset
    from model.data.transforms import eval_transform
    from model.train import evaluate

    try:
        model, _ = load_model(args.checkpoint)
    except CheckpointError as error:
        raise CommandError(str(error)) from error
    reader = _open(args.data, args.format, args.split)
    dataset = PairDataset(reader, transform=eval_transform(model.config.image_size))
    metrics = evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        device=args.device,
        by_condition=args.by_condition,
        branch=args.branch,
    )
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import csv

    from model.checkpoint import CheckpointError
    from model.data.dataset import PairDataset
    from model.data.transforms import eval_transform
    from model.inference import Predictor, score_dataset

    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device)
    except CheckpointError as error:
        raise CommandError(str(error)) from error
    reader = _open(args.data, args.format, args.split)
    dataset = PairDataset(reader, transform=eval_transform(predictor.config.image_size))
    scores, _, ids = score_dataset(
        predictor, dataset, batch_size=args.batch_size, num_workers=args.workers, progress=True
    )
    conditions = [reader[i].condition for i in range(len(reader))] if args.with_conditions else None
    rows = [
        {"pair_id": pair_id, "inconsistency": float(score), "rank": rank}
        for rank, (pair_id, score) in enumerate(
            sorted(zip(ids, scores, strict=True), key=lambda item: -item[1]), start=1
        )
    ]
    if conditions is not None:
        by_id = dict(zip(reader.pair_ids, conditions, strict=True))
        for row in rows:
            row["condition"] = by_id[row["pair_id"]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1))
    else:
        with out.open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=list(rows[0]) if rows else ["pair_id", "inconsistency"]
            )
            writer.writeheader()
            writer.writerows(rows)
    print(f"scored {len(rows)} pairs -> {out} (most inconsistent first)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from model.active import SimulationConfig, simulate
    from model.report import summarise

    synthetic_options = {}
    if args.min_object_height is not None:
        synthetic_options["min_height"] = args.min_object_height
    if args.max_object_height is not None:
        synthetic_options["max_height"] = args.max_object_height
    config = SimulationConfig(
        task=args.task,
        dataset=args.dataset,
        data_root=args.data_root,
        pool_size=args.pool_size,
        test_size=args.test_size,
        initial=args.b,
        budget=args.B,
        seeds=[int(s) for s in args.seeds.split(",")],
        strategies=[s.strip() for s in args.strategies.split(",")],
        epochs_initial=args.epochs_initial,
        epochs_per_cycle=args.epochs_per_cycle,
        full_data_epochs=args.full_data_epochs,
        steps_initial=args.steps_initial,
        steps_per_cycle=args.steps_per_cycle,
        full_data_steps=args.full_data_steps,
        full_data=not args.no_full_data,
        synthetic_options=synthetic_options,
        width=args.width,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
    )
    results = simulate(config, args.out, progress=not args.quiet, checkpoint_dir=args.checkpoint_dir)
    print((Path(args.out) / "summary.md").read_text())
    summary = summarise(results)
    return 0 if summary["strategies"] else 1


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgbt-al", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ML backend HTTP server (gunicorn)")
    serve.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 9090)")
    serve.add_argument("--threads", type=int, help="request threads (default: SERVER_THREADS)")
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run an RQ worker for training and scoring jobs")
    worker.add_argument("--device", help="device for this worker, e.g. cuda:1 (one worker per GPU)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)

    jobs = commands.add_parser("jobs", help="list recent jobs and their progress")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--server", default="http://127.0.0.1:9090", help="backend URL (embedded mode)")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    config = commands.add_parser("config", help="show the effective configuration")
    config.add_argument("--markdown", action="store_true", help="print the README's configuration table")
    config.set_defaults(func=cmd_config)

    project = commands.add_parser("project", help="create or update a Label Studio project for this backend")
    project.add_argument("action", choices=("create", "setup"), help="create a project, or set one up")
    project.add_argument("--project", type=int, help="project id (setup)")
    project.add_argument("--title", help="project title (create; renames with setup)")
    project.add_argument(
        "--config",
        required=True,
        help="a path, or a name in label_config/ (e.g. flir_detection)",
    )
    source = project.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder with rgb/ and thermal/ sub-folders (paired by file name)")
    source.add_argument("--tasks", help="JSON list of tasks with the config's two image URL keys")
    project.add_argument("--document-root", help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (with --images)")
    project.add_argument("--backend-url", help="this backend's URL as Label Studio reaches it")
    project.add_argument("--backend-user", help="basic-auth user of the backend, if it has one")
    project.add_argument("--backend-password", help="basic-auth password of the backend")
    project.add_argument("--train", action="store_true", help="start a training round now")
    project.add_argument(
        "--init-checkpoint",
        help="a three-branch checkpoint (rgbt-al train) the project starts from, as a path on the backend's "
        "machine: classes matched by name, it pre-annotates before any label",
    )
    project.add_argument("--label-studio-url", help="default: LABEL_STUDIO_URL")
    project.add_argument("--api-key", help="access token (default: LABEL_STUDIO_API_KEY)")
    project.set_defaults(func=cmd_project)

    versions = commands.add_parser("versions", help="list a project's model versions, or roll back to one")
    versions.add_argument("action", choices=("list", "use"))
    versions.add_argument("version", nargs="?", help="the version to make current (use)")
    versions.add_argument("--project", required=True, help="Label Studio project id")
    versions.add_argument("--model-dir", help="default: MODEL_DIR")
    versions.add_argument("--json", action="store_true", help="list as JSON")
    versions.set_defaults(func=cmd_versions)

    report = commands.add_parser("report", help="held-out metric per version vs labelled tasks (PNG + JSON)")
    report.add_argument("--project", required=True, help="Label Studio project id")
    report.add_argument("--out", default=".", help="output folder (default: here)")
    report.add_argument("--model-dir", help="default: MODEL_DIR")
    report.set_defaults(func=cmd_report)

    demo = commands.add_parser("demo", help="Label Studio + backend + a generated RGB-T project")
    demo.add_argument("--data-dir", default="demo-data", help="what the demo keeps")
    demo.add_argument("--task", choices=("detection", "segmentation"), default="detection")
    demo.add_argument("--port", type=int, default=8080, help="Label Studio port")
    demo.add_argument("--backend-port", type=int, default=9090)
    demo.add_argument("--pairs", type=int, default=160, help="generated pairs")
    demo.add_argument("--initial", type=int, default=24, help="random initial labelled set")
    demo.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="used when it answers")
    demo.add_argument("--no-redis", action="store_true", help="run jobs inside the server")
    demo.add_argument("--fresh", action="store_true", help="delete the data folder first")
    demo.add_argument("--exit-when-ready", action="store_true", help="stop once the queue is ready")
    demo.set_defaults(func=cmd_demo)

    synth = commands.add_parser("synth", help="write a synthetic RGB-T dataset in a real on-disk format")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--format", choices=("flir-aligned", "mfnet"), default="flir-aligned")
    synth.add_argument("--train", type=int, default=400)
    synth.add_argument("--val", type=int, default=50)
    synth.add_argument("--test", type=int, default=120)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=_size, default=(128, 160), help="HEIGHTxWIDTH (default 128x160)")
    synth.set_defaults(func=cmd_synth)

    def data_arguments(p: argparse.ArgumentParser, split: str) -> None:
        p.add_argument("--data", required=True, help="dataset root folder")
        p.add_argument("--format", required=True, choices=DATA_FORMATS)
        p.add_argument("--split", default=split)
        p.add_argument("--device", default="auto")
        p.add_argument("--batch-size", type=int, default=8)

    train = commands.add_parser("train", help="train or fine-tune the three-branch network")
    data_arguments(train, "train")
    train.add_argument("--out", required=True, help="checkpoint path (written atomically every epoch)")
    train.add_argument("--task", choices=("detection", "segmentation"), help="default: from the format")
    train.add_argument("--init", help="fine-tune from this checkpoint")
    train.add_argument("--imagenet", help="local torchvision VGG16 weights for a new network")
    train.add_argument("--width", type=float, default=1.0, help="VGG width multiplier (1.0 = paper)")
    train.add_argument("--image-size", type=_size, default=(512, 640), help="network input HEIGHTxWIDTH")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--val-split", help="evaluate on this split after every epoch")
    train.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    data_arguments(evaluate, "test")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--branch", choices=("fused", "visible", "thermal"), default="fused")
    evaluate.add_argument("--by-condition", action="store_true", help="break metrics down by condition")
    evaluate.set_defaults(func=cmd_evaluate)

    score = commands.add_parser("score", help="per-pair inconsistency of a dataset split to CSV/JSON")
    data_arguments(score, "train")
    score.add_argument("--checkpoint", required=True)
    score.add_argument("--out", required=True, help="scores.csv or scores.json")
    score.add_argument("--workers", type=int, default=2, help="decoding workers")
    score.add_argument("--with-conditions", action="store_true", help="add each pair's condition")
    score.set_defaults(func=cmd_score)

    sim = commands.add_parser("simulate", help="active-learning simulation: strategies vs random")
    sim.add_argument("--out", required=True, help="output folder (resumable)")
    sim.add_argument("--task", choices=("detection", "segmentation"), default="detection")
    sim.add_argument("--dataset", default="synthetic", help="synthetic, or a format with --data-root")
    sim.add_argument("--data-root")
    sim.add_argument("--pool-size", type=int, default=600)
    sim.add_argument("--test-size", type=int, default=180)
    sim.add_argument("--b", type=int, default=50, help="initial set and pairs per cycle")
    sim.add_argument("--B", type=int, default=300, help="labelling budget")
    sim.add_argument("--seeds", default="0,1,2")
    sim.add_argument("--strategies", default="random,inconsistency")
    sim.add_argument("--epochs-initial", type=int, default=20)
    sim.add_argument("--epochs-per-cycle", type=int, default=10)
    sim.add_argument("--full-data-epochs", type=int, default=20)
    sim.add_argument("--steps-initial", type=int, help="steps for the initial model (overrides epochs)")
    sim.add_argument("--steps-per-cycle", type=int, help="optimizer steps per fine-tuning cycle")
    sim.add_argument("--full-data-steps", type=int, help="optimizer steps for the full-data reference")
    sim.add_argument("--min-object-height", type=float, help="synthetic: smallest object / image height")
    sim.add_argument("--max-object-height", type=float, help="synthetic: largest object / image height")
    sim.add_argument("--checkpoint-dir", help="model checkpoints (default OUT/checkpoints)")
    sim.add_argument("--no-full-data", action="store_true")
    sim.add_argument("--width", type=float, default=0.125)
    sim.add_argument("--image-size", type=_size, default=(64, 80))
    sim.add_argument("--batch-size", type=int, default=16)
    sim.add_argument("--lr", type=float, default=2e-3)
    sim.add_argument("--device", default="auto")
    sim.add_argument("--quiet", action="store_true")
    sim.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # One line per HTTP request to Label Studio drowns what matters; errors still surface as exceptions.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (CommandError, SettingsError) as error:
        print(f"rgbt-al {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
