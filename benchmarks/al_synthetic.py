"""Active-learning benchmark on the synthetic RGB-T generator: detection and segmentation simulations.

One command from a fresh checkout (``make al-benchmark`` creates the virtualenv first)::

    .venv/bin/python benchmarks/al_synthetic.py                       # CPU sizes
    python benchmarks/al_synthetic.py --preset paper --parallel       # the paper's b and B, on a GPU

``--preset cpu`` (default) fits a 2-core CPU; ``--preset paper`` uses the paper's labelling sizes (detection
b=200, B=1200; segmentation b=50, B=350) on larger synthetic sets and images, and writes to
``benchmarks/results/al_synthetic_paper/<device>/<task>/``. ``--parallel`` runs every seed, and the full-data
reference, as its own process (``--threads`` torch threads each) and merges their results.json files.

For each task it runs (or resumes: kill it and start it again, finished cycles are kept) the paper's protocol
under ``--protocol warm-start`` (default: every first model is fine-tuned from one model trained on a
generated source set, cached as ``pretrained.pt``) or ``cold-start``; the CPU preset's warm start compares
random with the product's default strategy over five seeds plus a full-data reference (``--strategies`` and
``--seeds`` add others later). It writes ``benchmarks/results/al_synthetic/[warm-start/]<task>/``:
``results.json`` (every cycle), the learning curves, the conditions of the selected pairs, the default
strategy's first picks (``selected_pairs.png``), ``summary.md`` / ``summary.json``. Model checkpoints go to
``runs/al_synthetic/[warm-start/]<task>/`` (git-ignored); once a task is complete only the source model and
each seed's initial model are kept there, so a strategy added later starts from the same model.
``--report-only`` rewrites the reports and the README section from the results.json files.
Finally the README section between ``<!-- al-results:start -->`` and ``<!-- al-results:end -->`` is rewritten
from the summaries.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from model.acquisition import DEFAULT_STRATEGY  # noqa: E402
from model.active import (  # noqa: E402
    PRETRAINED_FILE,
    RESULTS_FILE,
    SimulationConfig,
    Simulator,
    merge_results,
    simulate,
)
from model.report import markdown_summary, summarise, write_report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "al_synthetic"
PAPER_RESULTS = ROOT / "benchmarks" / "results" / "al_synthetic_paper"
CHECKPOINTS = ROOT / "runs" / "al_synthetic"
README = ROOT / "README.md"
START, END = "<!-- al-results:start -->", "<!-- al-results:end -->"

#: Objects of 16-38 px at 64x80: big enough for the stride-8 first pyramid level.
BIG_OBJECTS = {"min_height": 0.25, "max_height": 0.6}

#: The benchmark's settings. Training is counted in optimizer steps (batches drawn with replacement), not
#: epochs: with 25 labelled pairs an epoch is one or two steps. Calibration on this generator: the branches
#: must be trained to confidence before I ranks modality failures (detection: ~500+ steps on the first 25
#: pairs; before that I follows RGB clutter), and a full-data model needs ~1000+ steps to be a ceiling, so
#: one full-data model (seed 0) is the reference rather than one per seed.
_COMMON = dict(
    pool_size=400,
    test_size=150,  # balanced: 25 pairs of each of the 6 conditions
    initial=25,
    budget=150,
    seeds=[0, 1, 2],
    strategies=["random", "inconsistency", "inconsistency-diverse", "combined", "inconsistency-objects"],
    full_data_seeds=[0],
    width=0.125,
    image_size=(64, 80),
    batch_size=16,
    lr=2e-3,
    device="auto",
    synthetic_options=BIG_OBJECTS,
)
CONFIGS: dict[str, SimulationConfig] = {
    "detection": SimulationConfig(
        task="detection", steps_initial=500, steps_per_cycle=80, full_data_steps=1200, **_COMMON
    ),
    "segmentation": SimulationConfig(
        task="segmentation", steps_initial=400, steps_per_cycle=80, full_data_steps=1200, **_COMMON
    ),
}


#: The paper's labelling sizes (Zhang et al. 2021: detection b=200, B=1200 on KAIST; segmentation b=50,
#: B=350 on MFNet) on synthetic sets of about those datasets' scale, 128x160 images (objects 15-64 px, over
#: every pyramid level) and a quarter-width network: sized for one GPU in under 10 minutes, all parts at once.
_PAPER_COMMON = dict(
    seeds=[0, 1, 2],
    strategies=["random", "inconsistency"],
    full_data_seeds=[0],
    width=0.25,
    image_size=(128, 160),
    batch_size=32,
    lr=2e-3,
    device="auto",
    num_workers=2,
)
PAPER_CONFIGS: dict[str, SimulationConfig] = {
    "detection": SimulationConfig(
        task="detection",
        pool_size=3000,
        test_size=600,
        initial=200,
        budget=1200,
        steps_initial=1000,
        steps_per_cycle=200,
        full_data_steps=2000,
        **_PAPER_COMMON,
    ),
    "segmentation": SimulationConfig(
        task="segmentation",
        pool_size=800,
        test_size=300,
        initial=50,
        budget=350,
        steps_initial=600,
        steps_per_cycle=120,
        full_data_steps=1200,
        **_PAPER_COMMON,
    ),
}
#: Seconds, not evidence: the whole pipeline (parallel parts, merge, report) on tiny sets, for tests and for
#: checking a new machine before a long run.
_SMOKE_COMMON = dict(
    pool_size=24,
    test_size=12,
    initial=4,
    budget=8,
    seeds=[0, 1],
    strategies=["random", "inconsistency"],
    full_data_seeds=[0],
    width=0.0625,
    image_size=(64, 80),
    batch_size=4,
    steps_initial=3,
    steps_per_cycle=2,
    full_data_steps=3,
    synthetic_options=BIG_OBJECTS,
    num_workers=1,
)
SMOKE_CONFIGS = {
    "detection": SimulationConfig(task="detection", **_SMOKE_COMMON),
    "segmentation": SimulationConfig(task="segmentation", **_SMOKE_COMMON),
}
PRESETS = {"cpu": CONFIGS, "paper": PAPER_CONFIGS, "smoke": SMOKE_CONFIGS}

#: The warm-start protocol (``--protocol warm-start``, the default) per preset: the source set the shared
#: starting model is trained on, and the training from it (a quarter of the source's learning rate, which
#: keeps what the source taught: see ``SimulationConfig.finetune_lr``). CPU: sized so both tasks' random and
#: default strategy at 5 seeds finish in about an hour on a shared 2-core machine; the first model of a seed
#: is fine-tuned for fewer steps than a cold one needs, the full-data model too (it starts from the source
#: model).
WARM_START: dict[str, dict] = {
    "cpu": dict(
        pretrain_size=800,
        pretrain_steps=800,
        finetune_lr=5e-4,
        steps_initial=100,
        steps_per_cycle=50,
        full_data_steps=600,
        seeds=[0, 1, 2, 3, 4],
        strategies=["random", DEFAULT_STRATEGY],
    ),
    "paper": dict(
        pretrain_size=4000, pretrain_steps=2000, finetune_lr=5e-4, steps_initial=400, full_data_steps=1000
    ),
    "smoke": dict(pretrain_size=16, pretrain_steps=3),
}
PROTOCOLS = ("warm-start", "cold-start")


def preset_configs(preset: str, protocol: str) -> dict[str, SimulationConfig]:
    """The preset's configuration per task under ``protocol``."""
    configs = PRESETS[preset]
    if protocol == "cold-start":
        return dict(configs)
    return {task: replace(config, **WARM_START[preset]) for task, config in configs.items()}


def device_slug(device: str) -> str:
    """A folder name for the machine: the GPU's name (``nvidia-h200``) or ``cpu-<N>core``."""
    import torch

    from model.device import select_device

    chosen = select_device(device)
    if chosen.type == "cuda":
        name = torch.cuda.get_device_name(chosen)
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def output_dirs(
    preset: str, task: str, device: str, out: Path | None = None, protocol: str = "cold-start"
) -> tuple[Path, Path]:
    """(results folder, checkpoint folder) of a task under a preset (both under ``out`` when given). The
    warm-start protocol's go to a ``warm-start/`` folder; the cold-start ones stay where they always were."""
    warm = Path("warm-start") if protocol == "warm-start" else Path()
    if out is not None:
        return out / warm / task, out / "runs" / warm / task
    if preset == "smoke":
        raise ValueError("the smoke preset needs an explicit output folder (--out)")
    if preset == "cpu":
        return RESULTS / warm / task, CHECKPOINTS / warm / task
    slug = device_slug(device)
    return PAPER_RESULTS / slug / warm / task, CHECKPOINTS / f"paper-{slug}" / warm / task


def run_part(config: SimulationConfig, part: str, checkpoints: Path, progress: bool = False) -> Path:
    """One process's share of a parallel run: a seed's strategies, or (``full``) the full-data reference."""
    folder = checkpoints / "parts" / part
    shared = checkpoints / PRETRAINED_FILE  # every part starts from the task's one source model
    if part == "full":
        seed = (config.full_data_seeds or config.seeds)[0]
        config = replace(config, seeds=[seed])
        simulator = Simulator(config, folder, progress=False, checkpoint_dir=folder, pretrained_path=shared)
        simulator.full_data_reference(seed)
    else:
        seed = int(part.removeprefix("seed"))
        first = seed == config.seeds[0]
        simulator = Simulator(
            replace(config, seeds=[seed], full_data=False),
            folder,
            progress=progress,
            checkpoint_dir=folder,
            figure_pairs=6 if first else 0,
            pretrained_path=shared,
        )
        simulator.run()
    return folder


def _part_process(config: SimulationConfig, part: str, checkpoints: Path, threads: int | None) -> None:
    """Body of one ``--parallel`` process: :func:`run_part`, its output in ``parts/<part>/log.txt``."""
    log = (checkpoints / "parts" / part / "log.txt").open("a")
    for stream in (1, 2):  # C-level output (torch's warnings) too, not only Python's
        os.dup2(log.fileno(), stream)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_part(config, part, checkpoints)


def run_parallel(
    preset: str, tasks: list[str], configs: dict[str, SimulationConfig], args: argparse.Namespace
) -> int:
    """Every (task, seed) and each task's full-data reference as a process; then merge and report.

    Returns the number of parts that failed (stopped at the deadline does not count: their finished cycles
    are kept and a later run resumes them)."""
    # Spawned, not forked: the parent may hold a CUDA context; each child gets its config as an object.
    context = multiprocessing.get_context("spawn")
    jobs = []
    for task in tasks:
        config = configs[task]
        _, checkpoints = output_dirs(preset, task, args.device, args.out, config.protocol)
        if config.pretrain_size:  # the source model first, once, before the parts that share it
            source = Simulator(
                config,
                checkpoints / "parts" / "source",
                progress=False,
                pretrained_path=checkpoints / PRETRAINED_FILE,
            )
            source.pretrained()
        parts = [f"seed{seed}" for seed in config.seeds] + (["full"] if config.full_data else [])
        for part in parts:
            (checkpoints / "parts" / part).mkdir(parents=True, exist_ok=True)
            process = context.Process(target=_part_process, args=(config, part, checkpoints, args.threads))
            process.start()
            jobs.append((task, part, process))
    started = time.perf_counter()
    deadline = started + args.deadline if args.deadline is not None else None
    stopped: set[int | None] = set()
    while any(process.is_alive() for _, _, process in jobs):
        if deadline is not None and time.perf_counter() > deadline:
            print(f"deadline of {args.deadline:.0f} s: stopping the parts still running", flush=True)
            for _, _, process in jobs:
                if process.is_alive():
                    stopped.add(process.pid)
                    process.terminate()
            break
        time.sleep(2)
    for _, _, process in jobs:
        process.join()
    elapsed = time.perf_counter() - started
    failed = 0
    for task, part, process in jobs:
        state = "stopped at the deadline" if process.pid in stopped else f"exit {process.exitcode}"
        failed += process.exitcode != 0 and process.pid not in stopped
        print(f"{task} {part}: {state}", flush=True)
    for task in tasks:
        out, checkpoints = output_dirs(preset, task, args.device, args.out, configs[task].protocol)
        merge_task(out, checkpoints, elapsed)
    return failed


def merge_task(out: Path, checkpoints: Path, elapsed: float | None) -> None:
    """Merge a task's parts into ``out`` (results.json, report, the first seed's selected-pairs figure)."""
    folders = sorted(
        (f for f in (checkpoints / "parts").glob("*/") if f.name != "source"),
        key=lambda f: (f.name == "full", f.name),
    )
    parts = [json.loads((f / RESULTS_FILE).read_text()) for f in folders if (f / RESULTS_FILE).exists()]
    if not parts:
        print(f"{out.name}: no part wrote results", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    merged = merge_results(parts, elapsed_seconds=elapsed)
    (out / RESULTS_FILE).write_text(json.dumps(merged, indent=1))
    for folder in folders:
        if (folder / "selected_pairs.png").exists():
            shutil.copyfile(folder / "selected_pairs.png", out / "selected_pairs.png")
            break
    write_report(merged, out)
    print((out / "summary.md").read_text(), flush=True)


def readme_section(tasks: list[str]) -> str:
    """The generated README text: per protocol and preset, per task, the summary tables and the figures."""
    parts = [
        "## Active learning on synthetic RGB-T",
        "",
        "The paper's protocol on the synthetic generator (`model/data/synthetic.py`: a pool that is ~65% "
        "clear day, the rest dusk, night, thermal crossover, cold objects and glare, where one sensor fails "
        "or misleads - cold silhouettes of parked vehicles at night, bodies faintly colder than hot "
        "asphalt, person-shaped decoys seen by one sensor only; a test split balanced across the six "
        "conditions; since version 3, objects below the noise level in both sensors are ignore regions, "
        "like KAIST's, never misses): a random initial set of b pairs, train, score the pool, label the "
        "next b, fine-tune on the enlarged set from the previous weights, evaluate the fused branch on the "
        "test split; repeat until B. **Warm start** (the paper's setting, whose extractors start from "
        "ImageNet): one model is first trained on a generated source set (another generator seed, 85% "
        "clear day) and every seed's first model, and the full-data model, are fine-tuned from it. "
        "**Cold start**: every first model starts from random weights. Strategies are paired over seeds "
        "(same initial set and initial model per seed): random, the paper's cross-modality inconsistency "
        "and the extensions of `model/acquisition.py`: `combined` (mean of the percentile ranks of "
        "inconsistency and fused-branch entropy), `ppal` (PPAL-like: the 4b most uncertain pairs by "
        "`combined`, then b of them by k-means++ seeding on fused-branch features), "
        "`inconsistency-diverse` (the 3b most inconsistent pairs clustered on fused-branch features, the "
        "most inconsistent of each of b clusters), `inconsistency-objects` (I averaged only where "
        "either branch predicts an object) and `ls-queue` (what Label Studio's queue serves one annotator "
        "with `QUEUE_CLUSTERS`: the default's scores, taken round-robin over ceil(b/5) k-means clusters "
        "of fused-branch features). AUC is the area under the learning curve divided by its "
        "labelled-pairs span (the mean metric over the run); the sign test is the exact binomial test of "
        "the number of seeds a strategy beats random in. Regenerated by `.venv/bin/python "
        "benchmarks/al_synthetic.py` (resumable; `--protocol cold-start` for the cold tables, "
        "`--report-only` to rewrite this section from the results); every cycle's numbers, selected pair "
        "ids and timings are in the `results.json` next to each summary.",
        "",
    ]
    groups = [
        ("### Warm start, CPU sizes", [RESULTS / "warm-start" / task for task in tasks]),
        (
            "### Warm start, CPU sizes, starting models rebuilt on another machine",
            [RESULTS / "rebuilt" / "warm-start" / task for task in tasks],
        ),
        ("### Cold start, CPU sizes", [RESULTS / task for task in tasks]),
    ]
    for device in sorted(p.name for p in PAPER_RESULTS.glob("*/") if p.is_dir()):
        folders = [PAPER_RESULTS / device / "warm-start" / task for task in tasks]
        folders += [PAPER_RESULTS / device / task for task in tasks]
        groups.append((f"### At the paper's sizes, on {device}", folders))
    for heading, folders in groups:
        present = [folder for folder in folders if (folder / RESULTS_FILE).exists()]
        if not present:
            continue
        parts += [heading, ""]
        if heading.startswith("### At the paper's"):
            parts += ["Generated there by `python benchmarks/al_synthetic.py --preset paper --parallel`.", ""]
        if "rebuilt" in heading:
            parts += [
                "The source model and each seed's first model could not be reproduced bit for bit on a "
                "new machine (seed 2's first segmentation model: mIoU 0.594 rebuilt against 0.559), so "
                "`ls-queue` is compared here with `random` and `combined` run again from the same rebuilt "
                "models (`--out benchmarks/results/al_synthetic/rebuilt "
                "--strategies ls-queue,random,combined`).",
                "",
            ]
        for folder in present:
            results = json.loads((folder / RESULTS_FILE).read_text())
            summary = summarise(results)
            relative = folder.relative_to(ROOT).as_posix()
            task = results["config"]["task"]
            parts += [
                markdown_summary(results, summary, heading="####").rstrip(),
                "",
                f"![{task} learning curves]({relative}/learning_curves.png)",
                "",
            ]
            if (folder / "condition_shares.png").exists():
                parts += [f"![{task} conditions of the selected pairs]({relative}/condition_shares.png)", ""]
            if (folder / "selected_pairs.png").exists():
                strategy = (results.get("selected_pairs_figure") or {}).get("strategy", "inconsistency")
                parts += [
                    f"The first pairs `{strategy}` labels under the first seed's initial model, with both "
                    f"branches' predictions and the I map ([full size]({relative}/selected_pairs.png)):",
                    "",
                    f"![{task} first selected pairs]({relative}/selected_pairs.png)",
                    "",
                ]
    return "\n".join(parts).rstrip() + "\n"


def rewrite_readme(text: str, section: str) -> str:
    """Replace what lies between the markers (appending the markers at the end when missing)."""
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="sizes (default: cpu)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="warm-start",
        help="warm-start (default: every first model fine-tuned from a source-set model) or cold-start",
    )
    parser.add_argument("--tasks", default="detection,segmentation", help="comma-separated")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the benchmark's 0,1,2)")
    parser.add_argument("--strategies", help="comma-separated (default: random,inconsistency)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda...")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every cycle's model in runs/")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--parallel", action="store_true", help="one process per seed and full-data model")
    parser.add_argument("--deadline", type=float, help="--parallel: stop the parts after this many seconds")
    parser.add_argument("--out", type=Path, help="results (and runs/) under this folder instead")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the reports and the README section from the results.json files, train nothing",
    )
    parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), help="override the preset's image size"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    presets = preset_configs(args.preset, args.protocol)
    unknown = set(tasks) - set(presets)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {', '.join(presets)}")
    changes: dict = {"device": args.device}
    if args.seeds:
        changes["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.strategies:
        changes["strategies"] = [s.strip() for s in args.strategies.split(",")]
    if args.image_size:
        changes["image_size"] = tuple(args.image_size)
    configs = {task: replace(presets[task], **changes) for task in tasks}
    if args.report_only:
        for task in tasks:
            out, _ = output_dirs(args.preset, task, args.device, args.out, configs[task].protocol)
            if (out / RESULTS_FILE).exists():
                write_report(json.loads((out / RESULTS_FILE).read_text()), out)
                print((out / "summary.md").read_text(), flush=True)
        if not args.no_readme and args.out is None:
            README.write_text(rewrite_readme(README.read_text(), readme_section(list(CONFIGS))))
        return 0
    failed = run_parallel(args.preset, tasks, configs, args) if args.parallel else 0
    for task in [] if args.parallel else tasks:
        config = configs[task]
        out, checkpoints = output_dirs(args.preset, task, args.device, args.out, config.protocol)
        started = time.perf_counter()
        results = simulate(config, out, progress=not args.quiet, checkpoint_dir=checkpoints)
        print(
            f"{task}: this session {time.perf_counter() - started:.0f} s, "
            f"all sessions {results['wall_seconds']:.0f} s -> {out}",
            flush=True,
        )
        complete = all(run["done"] for run in results["runs"].values())
        if complete and not args.keep_checkpoints:
            # Keep each seed's initial model: a strategy added later must start from the same one.
            for folder in checkpoints.glob("*-seed*/"):
                shutil.rmtree(folder, ignore_errors=True)
        print((out / "summary.md").read_text(), flush=True)
    if not args.no_readme and args.out is None:
        README.write_text(rewrite_readme(README.read_text(), readme_section(list(CONFIGS))))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
