"""The deployment files and the README agree with the code.

* README.md's configuration table is exactly ``settings_table_markdown()``.
* docker/docker-compose.yml parses; every variable it gives the backend and worker containers, and every
  variable of docker/.env.example, is a setting of ``ls_backend.settings`` or a Label Studio / Compose
  variable listed below.
* docker/Dockerfile builds on either torch build (``TORCH_BUILD`` gpu or cpu), runs as a non-root user, checks
  ``/health``, and its entry point and commands exist (run here, outside Docker).

Docker is not needed: the files are parsed, and what they would run is run with this virtualenv.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from ls_backend.cli import build_parser
from ls_backend.settings import SETTINGS, Settings, settings_table_markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

TABLE_START = "<!-- settings:start -->\n"
TABLE_END = "<!-- settings:end -->"

#: Variables of the Label Studio container (read by Label Studio, not by this backend).
LABEL_STUDIO_VARIABLES = frozenset(
    {
        "USE_DEFAULT_BANNED_SUBNETS",
        "LABEL_STUDIO_USERNAME",
        "LABEL_STUDIO_PASSWORD",
        "LABEL_STUDIO_USER_TOKEN",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
        "LABEL_STUDIO_HOST",
        "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short",
    }
)
#: Variables only Docker Compose reads (interpolation and profiles), never the backend.
COMPOSE_VARIABLES = frozenset(
    {"RGBT_TARGET", "COMPOSE_PROFILES", "LABEL_STUDIO_PORT", "BACKEND_PORT", "RQ_DASHBOARD_PORT"}
)
#: Variables of the optional rq-dashboard container.
DASHBOARD_VARIABLES = frozenset({"RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"})
#: The torch builds the Dockerfile's TORCH_BUILD picks from.
TORCH_BUILDS = ("gpu", "cpu")
#: Image environment that is not a backend setting: Python's, pip's and the virtualenv's.
IMAGE_VARIABLES = frozenset(
    {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "VIRTUAL_ENV", "PATH"}
)


# ------------------------------------------------------------------------------------------ README
def readme_table(text: str) -> str:
    assert TABLE_START in text and TABLE_END in text, f"README.md lacks the {TABLE_START.strip()} markers"
    return text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]


def test_readme_configuration_table_is_generated_from_settings():
    table = readme_table(README.read_text())
    assert table == settings_table_markdown(), (
        "README.md's configuration reference is out of date: put the output of `rgbt-al config --markdown` "
        f"between `{TABLE_START.strip()}` and `{TABLE_END}`"
    )


# ------------------------------------------------------------------------------------------ compose
def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    return compose


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def backend_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this project's Dockerfile: the backend and its workers."""
    return {
        name: s
        for name, s in compose["services"].items()
        if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "docker/Dockerfile"
    }


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"{path.name}:{number}: expected KEY=value, got {line!r}"
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def undocumented_variables(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Every variable that is neither a backend setting nor an explicitly listed Label Studio/Compose one."""
    problems = []
    for name, service in backend_services(compose).items():
        problems += [f"{name}: {var}" for var in environment_of(service) if var not in SETTINGS]
    for name, service in compose["services"].items():
        if name not in backend_services(compose):
            problems += [
                f"{name}: {var}"
                for var in environment_of(service)
                if var not in LABEL_STUDIO_VARIABLES | DASHBOARD_VARIABLES and var not in SETTINGS
            ]
    known = set(SETTINGS) | LABEL_STUDIO_VARIABLES | COMPOSE_VARIABLES | DASHBOARD_VARIABLES
    problems += [f"{ENV_EXAMPLE.name}: {var}" for var in env_example if var not in known]
    return problems


def test_compose_and_env_example_use_only_documented_variables():
    assert undocumented_variables(load_compose(), read_env_file(ENV_EXAMPLE)) == [], (
        "add the variable to ls_backend/settings.py (and regenerate the README table), or list it in "
        "tests/unit/test_docs.py as a Label Studio/Compose variable"
    )


def test_undocumented_variables_are_caught():
    compose = load_compose()
    compose["services"]["backend"]["environment"] = {"MODEL_DIR": "/x", "NOT_A_SETTING": "1"}
    compose["services"]["label-studio"]["environment"] = ["USE_DEFAULT_BANNED_SUBNETS=false", "LS_TYPO=1"]
    problems = undocumented_variables(compose, {"TRAIN_EPOCHS": "3", "TRAIN_EPOCHES": "3"})
    assert problems == ["backend: NOT_A_SETTING", "label-studio: LS_TYPO", ".env.example: TRAIN_EPOCHES"]


def test_every_interpolated_variable_is_in_env_example():
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    missing = referenced - set(read_env_file(ENV_EXAMPLE))
    assert not missing, f"docker-compose.yml reads {sorted(missing)}: document them in docker/.env.example"


def test_env_example_values_are_valid_settings():
    values = read_env_file(ENV_EXAMPLE)
    Settings.from_env({k: v for k, v in values.items() if k in SETTINGS})
    assert values["RGBT_TARGET"] in TORCH_BUILDS
    assert values["RGBT_TARGET"] in values["COMPOSE_PROFILES"].split(",")


def test_compose_services():
    compose = load_compose()
    services = compose["services"]
    assert {"label-studio", "redis", "backend", "worker"} <= set(services)

    studio = services["label-studio"]
    assert studio["image"] == "heartexlabs/label-studio:1.23.2"
    studio_env = environment_of(studio)
    assert studio_env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert studio_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"

    redis = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-alpine)?", redis["image"]), "pin Redis to a full version"
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]

    named_volumes = set(compose.get("volumes") or {})
    assert any(v.split(":")[:2] == ["label-studio-data", "/label-studio/data"] for v in studio["volumes"])
    assert "label-studio-data" in named_volumes

    built = backend_services(compose)
    assert {"backend", "worker"} <= set(built)
    for name, service in built.items():
        env_file = service.get("env_file")
        assert env_file == ".env" or ".env" in (env_file or []), f"{name}: env_file .env"
        model_dir = environment_of(service)["MODEL_DIR"]
        mounts = [v.split(":") for v in service["volumes"]]
        on_volumes = [m[1] for m in mounts if m[0] in named_volumes]
        assert on_volumes == [model_dir], f"{name}: MODEL_DIR must be on a named volume"
        assert environment_of(service)["REDIS_URL"].startswith("redis://redis:")
        assert service["build"]["args"]["TORCH_BUILD"] in (*TORCH_BUILDS, "${RGBT_TARGET:-gpu}")
        # The command is a valid `rgbt-al` command line (the image's entry point is `rgbt-al`).
        args = build_parser().parse_args(service["command"])
        assert args.command == ("serve" if name == "backend" else "worker"), name

    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)

    # The optional queue dashboard: only with its profile, on this Redis, published on the loopback only.
    dashboard = services["rq-dashboard"]
    assert dashboard["profiles"] == ["dashboard"]
    assert "redis://redis:6379/0" in dashboard["command"]
    assert all(port.startswith("127.0.0.1:") for port in dashboard["ports"])


# ------------------------------------------------------------------------------------------ Dockerfile
@dataclass
class Stage:
    name: str
    parent: str | None  # a previous stage's name, or None for an image
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments and blank lines dropped."""
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""
    assert not logical, "Dockerfile ends inside a continued line"


def parse_dockerfile(text: str, build_args: dict[str, str] | None = None) -> dict[str, Stage]:
    """The stages, with ``${ARG}`` in FROM lines resolved from the global ARGs (defaults, then
    ``build_args``) as ``docker build --build-arg`` would."""
    stages: dict[str, Stage] = {}
    global_args: dict[str, str] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = (build_args or {}).get(name, default)
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, image if image in stages else None)
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages


def inherited(stages: dict[str, Stage], target: str, keyword: str) -> list[str]:
    """Every ``keyword`` instruction that builds the image of ``target``, parent stages first."""
    chain = []
    stage: Stage | None = stages[target]
    while stage is not None:
        chain.append(stage)
        stage = stages[stage.parent] if stage.parent else None
    return [rest for stage in reversed(chain) for kw, rest in stage.instructions if kw == keyword]


def effective(stages: dict[str, Stage], target: str, keyword: str) -> str | None:
    """The value of ``keyword`` (USER, CMD...) in the image of ``target``: the last one inherited."""
    values = inherited(stages, target, keyword)
    return values[-1] if values else None


def rgbt_al_executable() -> str:
    beside = Path(sys.executable).with_name("rgbt-al")
    found = str(beside) if beside.exists() else shutil.which("rgbt-al")
    assert found, "the `rgbt-al` console script is not installed (pip install -e .)"
    return found


def healthcheck_code(stages: dict[str, Stage], target: str) -> str:
    healthcheck = effective(stages, target, "HEALTHCHECK")
    assert healthcheck and " CMD " in f" {healthcheck}", f"{target}: no HEALTHCHECK"
    argv = json.loads(healthcheck.split("CMD", 1)[1])
    assert argv[:2] == ["python", "-c"], "the health check is a python one-liner (no curl in the image)"
    return argv[2]


#: The image's final stage; its parent chain depends on TORCH_BUILD.
TARGET = "runtime"


@pytest.fixture(scope="module")
def builds() -> dict[str, dict[str, Stage]]:
    """The Dockerfile's stages as each torch build resolves them."""
    text = DOCKERFILE.read_text()
    return {build: parse_dockerfile(text, {"TORCH_BUILD": build}) for build in TORCH_BUILDS}


def test_dockerfile_builds_and_non_root_user(builds):
    torch_installs = []
    for build, stages in builds.items():
        user = effective(stages, TARGET, "USER")
        assert user and user.split(":")[0] not in ("root", "0"), f"{build} runs as root"
        runs = inherited(stages, TARGET, "RUN")
        assert any("useradd" in rest and user.split(":")[0] in rest for rest in runs), f"{build}: no {user}"
        torch_installs.append([rest for rest in inherited(stages, TARGET, "RUN") if "torch==" in rest])
    # Each build installs torch once, its own way.
    assert all(len(runs) == 1 for runs in torch_installs) and torch_installs[0] != torch_installs[1]
    assert "download.pytorch.org/whl/cpu" in torch_installs[TORCH_BUILDS.index("cpu")][0]


def test_dockerfile_torch_pair_matches_pyproject():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    text = DOCKERFILE.read_text()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        version = re.search(rf"^ARG {arg}=(\S+)$", text, re.M)
        assert version, arg
        assert f"{package}=={version.group(1)}" in dependencies, f"{arg} differs from pyproject.toml"


def test_dockerfile_environment_and_volume(builds):
    for build, stages in builds.items():
        env = " ".join(inherited(stages, TARGET, "ENV"))
        names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", env)
        unknown = [n for n in names if n not in SETTINGS and n not in IMAGE_VARIABLES]
        assert not unknown, f"{build}: ENV {unknown} are not settings"
        model_dir = re.search(r"MODEL_DIR=(\S+)", env)
        assert model_dir, "the image sets MODEL_DIR"
        assert json.loads(effective(stages, TARGET, "VOLUME") or "[]") == [model_dir.group(1)]


def test_dockerfile_entrypoint_and_commands_run(builds):
    for stages in builds.values():
        assert json.loads(effective(stages, TARGET, "ENTRYPOINT") or "null") == ["rgbt-al"]
        assert json.loads(effective(stages, TARGET, "CMD") or "null") == ["serve"]
    for command in (["serve"], ["worker"]):
        result = subprocess.run(
            [rgbt_al_executable(), *command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert f"rgbt-al {command[0]}" in result.stdout


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "UP"}')

    def log_message(self, *args):
        pass


def _run_healthcheck(code: str, port: int) -> int:
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("status", [200, 503])
def test_healthcheck_one_liner_hits_health(builds, status):
    code = healthcheck_code(builds["gpu"], TARGET)
    assert code == healthcheck_code(builds["cpu"], TARGET)
    compile(code, "<HEALTHCHECK>", "exec")
    assert "/health" in code
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        returncode = _run_healthcheck(code, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert (returncode == 0) == (status == 200)


def test_healthcheck_fails_without_a_server(builds):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert _run_healthcheck(healthcheck_code(builds["gpu"], TARGET), port) != 0


# ------------------------------------------------------------------------------------------ .dockerignore
def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        globs = [glob, glob[3:]] if glob.startswith("**/") else [glob]  # `**/` also matches no folder
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_but_complete():
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    left_out = (
        ".venv/bin/python",
        "runs/a/model.pt",
        "benchmarks/results/curve.png",
        ".git/HEAD",
        ".pytest_cache/v",
        "model/__pycache__/network.cpython-311.pyc",
        "demo-data/x.png",
    )
    for path in left_out:
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"
    copied = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from" not in rest:
            copied += [w for w in rest.split()[:-1] if not w.startswith("--")]
    assert copied, "the Dockerfile copies the source"
    for source in copied:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        for file in files or [ROOT / source]:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignored(relative, patterns), f"COPY {source}: {relative} is in .dockerignore"
