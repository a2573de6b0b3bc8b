"""`make mutation`: mutation testing (mutmut) of the core modules, each against the unit tests written for it.

For every module a scratch copy of the repository is made under ``build/mutation/<module>/`` with a
``[tool.mutmut]`` section naming that module and its tests only (mutmut reads its configuration from the
working directory), mutmut runs there (niced; results are cached, so a second run only re-tests what changed),
and the killed / survived counts are collected into ``build/mutation/summary.json`` and printed. Surviving
mutants are listed with ``--survivors``; the README's "Mutation testing" section explains each one.

    .venv/bin/python tests/mutation.py                       # every module
    .venv/bin/python tests/mutation.py model/postprocess.py  # one
    .venv/bin/python tests/mutation.py --survivors           # also print each survivor's diff

Not part of CI: it takes a long time on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"

#: Module -> the unit tests that exercise it directly (keep each list short: every mutant runs them).
MODULES: dict[str, list[str]] = {
    # upsample_class_ids' equality with the full upsampling is checked with the memory bounds it exists for.
    "model/postprocess.py": ["tests/unit/test_postprocess.py", "tests/unit/test_memory_bounds.py"],
    "model/inconsistency.py": ["tests/unit/test_inconsistency.py"],
    "ls_backend/registry.py": ["tests/unit/test_registry.py"],
    "ls_backend/convert.py": ["tests/unit/test_convert.py"],
    # Not test_active.py: its simulation (training included) would run for every mutant of a strategy.
    "model/acquisition.py": ["tests/unit/test_acquisition.py"],
}
COPIED = ("model", "ls_backend", "tests", "label_config", "README.md")


def mutmut_section(module: str, tests: list[str]) -> str:
    lines = [
        "[tool.mutmut]",
        'source_paths = ["model", "ls_backend"]',
        f"only_mutate = [{json.dumps(module)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]',
        # torch is not fork-safe once it has run: workers fork from a server that only imported the tests.
        'process_isolation = "forkserver"',
        "use_git_change_detection = false",
    ]
    return "\n".join(lines) + "\n"


def prepare(module: str, tests: list[str]) -> Path:
    """A scratch copy of the repository whose pyproject.toml configures mutmut for ``module``."""
    folder = WORK / module.replace("/", ".").removesuffix(".py")
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, target = ROOT / name, folder / name
        if source.is_dir():
            shutil.copytree(
                source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, target)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", pyproject).rstrip() + "\n\n"
    (folder / "pyproject.toml").write_text(pyproject + mutmut_section(module, tests))
    return folder


def forget_unkilled(folder: Path) -> int:
    """Mark every mutant the last run did not kill (survived, untested, timed out) as not checked, so the
    next run tries it against the tests as they are now (mutmut keeps results while a function is unchanged,
    even when tests were added since). Returns how many."""
    forgotten = 0
    for meta in (folder / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        for name, code in codes.items():
            if code is not None and code not in (1, 3):  # mutmut's "killed" exit codes
                codes[name] = None
                forgotten += 1
        meta.write_text(json.dumps(data))
    return forgotten


def run(module: str, tests: list[str], children: int, recheck: bool = False) -> dict[str, object]:
    folder = prepare(module, [t for t in tests if (ROOT / t).exists()])
    if recheck:
        print(f"{module}: {forget_unkilled(folder)} mutants not killed last time are tried again", flush=True)
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be imported
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run(
        ["nice", "-n", "10", mutmut, "run", "--max-children", str(children)],
        cwd=folder,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run([mutmut, "export-cicd-stats"], cwd=folder, env=env, check=True, capture_output=True)
    stats = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text())
    listed = subprocess.run(
        [mutmut, "results"], cwd=folder, env=env, check=True, capture_output=True, text=True
    )
    survivors = sorted(
        line.split(":")[0].strip()
        for line in listed.stdout.splitlines()
        if line.strip().endswith(("survived", "no tests", "suspicious"))
    )
    # A mutant that runs past mutmut's CPU-time limit (a loop, a blow-up) is caught too.
    killed = int(stats["killed"]) + int(stats.get("timeout", 0))
    total = int(stats["total"])
    tested = total - int(stats.get("skipped", 0)) - int(stats.get("not_checked", 0))
    return {
        "module": module,
        "tests": tests,
        "stats": stats,
        "killed": killed,
        "killed_share": round(killed / tested, 4) if tested else None,
        "survivors": survivors,
        "folder": str(folder.relative_to(ROOT)),
    }


def _killed(result: dict) -> int:
    """Killed or timed out (results written before timeouts counted have no "killed" key)."""
    stats = result["stats"]
    return int(result.get("killed", int(stats["killed"]) + int(stats.get("timeout", 0))))


def markdown_table(summary: dict[str, dict]) -> str:
    rows = [
        "| Module | Mutants | Killed | Survived or untested | Killed share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for module in MODULES:
        if module not in summary:
            rows.append(f"| `{module}` | not run | | | |")
            continue
        result = summary[module]
        stats = result["stats"]
        tested = int(stats["total"]) - int(stats.get("skipped", 0)) - int(stats.get("not_checked", 0))
        share = _killed(result) / tested if tested else None
        rows.append(
            f"| `{module}` | {stats['total']} | {_killed(result)} | {len(result['survivors'])} | "
            f"{'n/a' if share is None else f'{100 * share:.1f}%'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: {' '.join(MODULES)}")
    parser.add_argument("--children", type=int, default=2, help="parallel mutants (default 2)")
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    parser.add_argument("--markdown", action="store_true", help="print the README table of the last runs")
    parser.add_argument("--recheck", action="store_true", help="try again the mutants not killed last time")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads((WORK / "summary.json").read_text())))
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"not a core module: {', '.join(unknown)} (one of {', '.join(MODULES)})")
    summary_path = WORK / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for module in args.modules or list(MODULES):
        result = run(module, MODULES[module], args.children, recheck=args.recheck)
        summary[module] = result
        WORK.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        share = result["killed_share"]
        print(f"{module}: {result['killed']} killed of {result['stats']['total']} "
              f"({'n/a' if share is None else f'{100 * share:.1f}%'}), {len(result['survivors'])} survived")
        if args.survivors:
            mutmut = str(Path(sys.executable).with_name("mutmut"))
            for name in result["survivors"]:
                shown = subprocess.run(
                    [mutmut, "show", name], cwd=ROOT / result["folder"], capture_output=True, text=True
                )
                print(shown.stdout)
    killed = sum(_killed(r) for r in summary.values())
    survived = sum(len(r["survivors"]) for r in summary.values())
    if killed + survived:
        share = 100 * killed / (killed + survived)
        print(f"all modules: {killed} killed, {survived} survived = {share:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
