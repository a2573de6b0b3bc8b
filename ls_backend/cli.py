"""`rgbt-al`: the command line of the project.

rgbt-al serve | worker | jobs | config          the Label Studio backend and its job workers
rgbt-al project create|setup                    set a Label Studio project up (admins)
rgbt-al demo                                    Label Studio + backend + a generated RGB-T project
rgbt-al synth | train | evaluate | score | export | simulate
                                                the model on its own (model/cli.py; also `python -m model`)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ls_backend.settings import Settings, SettingsError, settings_table_markdown
from model.cli import CommandError, add_model_commands

log = logging.getLogger("rgbt-al")


# ------------------------------------------------------------------------------------------ backend
def cmd_serve(args: argparse.Namespace) -> int:
    from ls_backend.auth import credentials_path, ensure_credentials

    settings = Settings.from_env()
    host = args.host or settings.host
    port = args.port or settings.port
    credentials, created = ensure_credentials(settings)
    if created and credentials is not None:
        # Printed once, as Label Studio prints its first admin's: the admin gives them to Label Studio's ML
        # backend connection (Basic auth) or `rgbt-al project --backend-user/--backend-password`.
        print(
            "\n  Generated basic-auth credentials for this backend (kept in "
            f"{credentials_path(settings)}, mode 0600):\n"
            f"    user:     {credentials.user}\n    password: {credentials.password}\n"
            "  Give them to Label Studio's ML backend connection (Authentication: Basic).\n",
            flush=True,
        )
    elif credentials is None:
        log.warning("ALLOW_UNAUTHENTICATED=true: every route answers without authentication")
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
        # gunicorn's largest request line (its default 4094 answers a long URL with an HTML 414); the app
        # refuses URLs over MAX_URL_BYTES itself, with a JSON error.
        "--limit-request-line",
        "8190",
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
    from ls_backend.jobs import JobContext, install_context
    from ls_backend.queues import RQRunner
    from ls_backend.worker import LeasedWorker

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = RQRunner(settings)
    if not runner.ping():
        raise CommandError(f"cannot reach Redis at {settings.redis_url}")
    install_context(JobContext(settings, runner=runner))
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


def _own_backend_credentials() -> tuple[str, str] | None:
    """The basic-auth credentials of the backend configured here (BASIC_AUTH_* or the ones `rgbt-al serve`
    generated under MODEL_DIR), so `rgbt-al project` run beside the backend (e.g. `docker compose exec
    backend ...`) connects it to Label Studio with them."""
    from ls_backend.auth import configured_credentials

    try:
        credentials = configured_credentials(Settings.from_env())
    except SettingsError:
        return None
    return (credentials.user, credentials.password) if credentials else None


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
        elif args.backend_url:
            basic_auth = _own_backend_credentials()
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
    from ls_backend.jobs import JobContext, JobError, install_context, use_version
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
    context = JobContext(settings)
    install_context(context)
    runner = context.runner
    if runner.can_shard:  # workers run the jobs: hand the re-push to them
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
    project.add_argument(
        "--backend-user",
        help="basic-auth user of the backend (default: BASIC_AUTH_USER, or the credentials `rgbt-al serve` "
        "generated under MODEL_DIR)",
    )
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

    add_model_commands(commands)
    return parser


def _stop_on_sigterm() -> Any:
    """SIGTERM (what `docker stop`, systemd and `kill` send) stops like Ctrl-C: KeyboardInterrupt, so the demo
    stops its worker and servers in its `finally`. Once: later SIGTERMs do not interrupt that clean-up.
    (`serve` execs gunicorn, which handles SIGTERM itself; RQ's worker installs its own warm shutdown.)
    Returns the handler it replaced, which :func:`main` puts back when the command is over."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, lambda *_: None)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_sigterm = _stop_on_sigterm()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # One line per HTTP request to Label Studio drowns what matters; errors still surface as exceptions.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # The interrupt clause encloses the error clause: a SIGTERM that lands while an error is being reported
    # is still an interrupt (as sibling clauses, it escaped main and Python died of SIGINT, exit -2).
    try:
        try:
            return int(args.func(args) or 0)
        except (CommandError, SettingsError) as error:
            print(f"rgbt-al {args.command}: {error}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # The command is over: the process gets back the SIGTERM handling it had (a caller's, or the default;
        # never "ignored", which forked children would inherit and then could not be stopped).
        signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
