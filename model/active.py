"""The active-learning simulator (Zhang et al., ICIP 2021, Sec. 3 protocol).

Two protocols. **Cold start**: every seed's first model is trained from random weights on its ``b`` initial
pairs. **Warm start** (``pretrain_size`` > 0, the paper's setting, whose extractors start from ImageNet):
one model is first trained on a generated *source* set (another generator seed, a day-heavy condition mix:
the stand-in for a public dataset, as no weights can be downloaded here), cached, and every seed's first
model and the full-data reference are fine-tuned from it; the pool and the test split come from the target
mix as before.

For each seed: a random initial labelled set of ``b`` pairs; train; then, per strategy and until the budget
``B``: score the unlabelled pool with the current model, label the strategy's top ``b``, fine-tune on the
enlarged set, evaluate on the fixed test split. The initial model is shared by all strategies of a seed, so
curves start from the same point. A full-data model per seed gives the reference line.

Training length is either epochs (``epochs_*``) or, when set, a number of optimizer steps (``steps_*``)
drawn with replacement from the labelled set: tiny labelled sets get too few updates from a few epochs.

Progress is saved to ``results.json`` after every cycle, with a model checkpoint per cycle (the last two of
each run are kept, in ``checkpoint_dir``), so an interrupted simulation resumes where it stopped: finished
cycles are never recomputed, and a cycle whose record was lost is redone from the previous cycle's model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from model.acquisition import compute_signals, make_strategy
from model.checkpoint import atomic_write_bytes, load_model, save_checkpoint
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.sample import PairReader
from model.data.transforms import eval_transform, train_transform
from model.device import select_device
from model.network import ThreeBranchNet
from model.train import PRIMARY_METRIC, TrainConfig, evaluate, fit

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PRETRAINED_FILE = "pretrained.pt"
#: The warm-start source: day-heavy, the rare conditions a few percent each (the target pool is 65% day).
SOURCE_CONDITION_SHARES = {
    "clear_day": 0.85,
    "dusk": 0.05,
    "night": 0.03,
    "crossover": 0.02,
    "cold_objects": 0.03,
    "glare": 0.02,
}
#: Settings that may differ between sessions or processes of one simulation: what runs, and where.
RUN_SETTINGS = frozenset({"strategies", "seeds", "device", "num_workers"})


@dataclass
class SimulationConfig:
    """Everything that defines a simulation; stored in results.json and checked on resume."""

    task: str = "detection"
    dataset: str = "synthetic"  # "synthetic" or a reader format ("flir-aligned", "kaist", "llvip", "mfnet")
    data_root: str | None = None
    pool_size: int = 600  # synthetic only: pairs in the unlabelled pool
    test_size: int = 180  # synthetic only: pairs in the (condition-balanced) test split
    synthetic_seed: int = 1234
    initial: int = 50  # b: initial labelled set and pairs labelled per cycle
    budget: int = 300  # B: labelled pairs at the end
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    strategies: list[str] = field(default_factory=lambda: ["random", "inconsistency"])
    epochs_initial: int = 20
    epochs_per_cycle: int = 10
    full_data_epochs: int = 20
    #: Optimizer steps (batches drawn with replacement); each overrides its ``epochs_*`` when set.
    steps_initial: int | None = None
    steps_per_cycle: int | None = None
    full_data_steps: int | None = None
    full_data: bool = True
    #: Seeds that get a full-data reference model (None: every seed); the reference is their mean. A
    #: converged full-data model costs more than a whole seed's cycles on a CPU, so one can be enough.
    full_data_seeds: list[int] | None = None
    #: Synthetic only: overrides of :class:`model.data.synthetic.SyntheticConfig` (e.g. ``min_height``).
    synthetic_options: dict[str, Any] = field(default_factory=dict)
    width: float = 0.125
    image_size: tuple[int, int] = (64, 80)
    batch_size: int = 16
    lr: float = 2e-3
    device: str = "auto"
    #: DataLoader worker processes for training batches (0: in the training process). A GPU run is bound by
    #: preparing batches on the CPU without them; the pool is rendered once, before the workers fork.
    num_workers: int = 0
    #: Warm start: pairs of the generated source set the shared starting model is trained on (0: cold
    #: start, every first model from random weights). Synthetic only.
    pretrain_size: int = 0
    pretrain_seed: int = 4321
    pretrain_steps: int = 1000
    pretrain_condition_shares: dict[str, float] = field(default_factory=lambda: dict(SOURCE_CONDITION_SHARES))
    #: Learning rate of every training on pool pairs (initial, cycles, full data) when set, ``lr`` else.
    #: Warm start: fine-tuning the source model at the source's rate on 25 pairs forgets it (detection
    #: AP50 0.637 -> 0.538 after 150 steps at 2e-3, 0.624 after 100 steps at 5e-4).
    finetune_lr: float | None = None

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)  # type: ignore[assignment]
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.initial < 1 or self.budget < self.initial:
            raise ValueError("need 1 <= initial (b) <= budget (B)")
        if not self.strategies or not self.seeds:
            raise ValueError("need at least one strategy and one seed")
        if len(set(self.strategies)) != len(self.strategies) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("strategies and seeds must not repeat")
        for name in self.strategies:
            make_strategy(name)  # unknown names fail before any training
        for steps in (self.steps_initial, self.steps_per_cycle, self.full_data_steps):
            if steps is not None and steps < 1:
                raise ValueError("steps_* must be >= 1 (or None to train by epochs)")
        self.synthetic_options = dict(self.synthetic_options)
        self.pretrain_condition_shares = dict(self.pretrain_condition_shares)
        if self.pretrain_size < 0 or self.pretrain_steps < 1:
            raise ValueError("pretrain_size must be >= 0 and pretrain_steps >= 1")
        if self.pretrain_size and self.dataset != "synthetic":
            raise ValueError("pretrain_size (a generated source set) needs the synthetic dataset")
        if self.pretrain_size and self.pretrain_seed == self.synthetic_seed:
            raise ValueError("the warm-start source set needs another generator seed than the pool's")
        if self.synthetic_options:
            if self.dataset != "synthetic":
                raise ValueError("synthetic_options apply to the synthetic dataset only")
            from model.data.synthetic import SyntheticConfig

            try:  # unknown or invalid knobs fail here, before any training
                SyntheticConfig(**self.synthetic_options)
            except TypeError as error:
                raise ValueError(f"bad synthetic_options: {error}") from error

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.task]

    @property
    def protocol(self) -> str:
        """``"warm-start"`` (every first model fine-tuned from the source-set model) or ``"cold-start"``."""
        return "warm-start" if self.pretrain_size else "cold-start"


@dataclass
class Splits:
    pool: PairReader
    test: PairReader
    class_names: list[str]


class CachedReader:
    """Memoises a reader's records (the synthetic generator renders a pair on every access)."""

    def __init__(self, reader: PairReader) -> None:
        self.reader = reader
        self.cache: dict[int, Any] = {}
        self.class_names = list(getattr(reader, "class_names", []))
        self.conditions = getattr(reader, "conditions", None)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Any:
        if index not in self.cache:
            self.cache[index] = self.reader[index]
        return self.cache[index]

    def fill(self) -> None:
        """Read every record now (DataLoader workers get a copy of the filled cache, not an empty one)."""
        for index in range(len(self.reader)):
            self[index]

    @property
    def pair_ids(self) -> list[str]:
        return self.reader.pair_ids


def load_splits(config: SimulationConfig) -> Splits:
    """The unlabelled pool and the fixed test split."""
    if config.dataset == "synthetic":
        from model.data.synthetic import SYNTH_CLASSES, SyntheticConfig, SyntheticRGBT

        generator = SyntheticConfig(**config.synthetic_options)
        pool = SyntheticRGBT(
            config.pool_size, config.synthetic_seed, generator, split="train", image_size=config.image_size
        )
        test = SyntheticRGBT(
            config.test_size, config.synthetic_seed, generator, split="test", image_size=config.image_size
        )
        # Small generated images: keep them in memory rather than re-render every access.
        return Splits(CachedReader(pool), CachedReader(test), list(SYNTH_CLASSES))
    from model.data.readers import open_dataset

    if config.data_root is None:
        raise ValueError(f"dataset {config.dataset!r} needs data_root")
    pool = open_dataset(config.data_root, config.dataset, "train")
    test = open_dataset(config.data_root, config.dataset, "test")
    return Splits(pool, test, list(pool.class_names))


def source_dataset(config: SimulationConfig) -> PairDataset:
    """The warm-start source set: ``pretrain_size`` generated pairs of another seed, day-heavy mix, with the
    training augmentation."""
    from model.data.synthetic import SyntheticConfig, SyntheticRGBT

    options = {**config.synthetic_options, "condition_shares": config.pretrain_condition_shares}
    reader = SyntheticRGBT(
        config.pretrain_size,
        config.pretrain_seed,
        SyntheticConfig(**options),
        split="train",
        image_size=config.image_size,
    )
    return PairDataset(CachedReader(reader), transform=train_transform(config.image_size))


def _pretrain_key(config: SimulationConfig) -> dict[str, Any]:
    """What the cached source model depends on (a cache made with anything else is retrained)."""
    keys = ("task", "width", "image_size", "batch_size", "lr", "synthetic_options")
    return {
        **{k: _to_plain(getattr(config, k)) for k in keys},
        **{k: _to_plain(getattr(config, k)) for k in config.__dataclass_fields__ if k.startswith("pretrain")},
        "generator_version": _generator_version(config),
    }


class Simulator:
    """Runs (or resumes) a simulation into ``out_dir``.

    Args:
        config: the simulation.
        out_dir: ``results.json`` (and, through :func:`simulate`, the report) go here.
        progress: a progress bar per strategy and seed, advancing once per cycle.
        checkpoint_dir: model checkpoints (default ``out_dir/checkpoints``): the initial model of each seed
            and the last two cycles of each run. Put them elsewhere when ``out_dir`` gets committed.
        figure_pairs: rows of ``selected_pairs.png`` (0: no figure).
        pretrained_path: where the warm-start source model is cached (default
            ``checkpoint_dir/pretrained.pt``; parallel parts share their task's).
    """

    def __init__(
        self,
        config: SimulationConfig,
        out_dir: str | Path,
        *,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        figure_pairs: int = 6,
        pretrained_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else self.out / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.figure_pairs = figure_pairs
        self.pretrained_path = Path(pretrained_path or self.checkpoints / PRETRAINED_FILE)
        self.splits = load_splits(config)
        size = config.image_size
        self.pool_train = PairDataset(self.splits.pool, transform=train_transform(size))
        self.pool_eval = PairDataset(self.splits.pool, transform=eval_transform(size))
        self.test = PairDataset(self.splits.test, transform=eval_transform(size))
        self.pool_ids = list(self.splits.pool.pair_ids)
        self.results = self._load_results()
        self._session_started = time.perf_counter()
        self._wall_before = float(self.results.get("wall_seconds", 0.0))
        # One entry per run()/resume: where and how long (wall times are only comparable on one machine).
        self._session = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": 0.0,
            "device": str(select_device(config.device)),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        }
        self.results.setdefault("sessions", []).append(self._session)

    # ------------------------------------------------------------------ persistence
    def _load_results(self) -> dict[str, Any]:
        path = self.out / RESULTS_FILE
        fresh = {
            "config": asdict(self.config),
            "protocol": self.config.protocol,
            "generator_version": _generator_version(self.config),
            "metric": self.config.metric,
            "pool_ids": self.pool_ids,
            "pool_conditions": [self._condition(i) for i in range(len(self.splits.pool))],
            "test_conditions": _conditions(self.splits.test),
            "initial": {},
            "full_data": {},
            "runs": {},
            "wall_seconds": 0.0,
        }
        if not path.exists():
            return fresh
        saved = json.loads(path.read_text())
        defaults = asdict(SimulationConfig())
        saved_config = {**defaults, **saved["config"]}
        saved_config["image_size"] = list(saved_config["image_size"])
        current = {**fresh["config"], "image_size": list(fresh["config"]["image_size"])}
        # Strategies and seeds may grow between runs; everything else must match to resume.
        keys = set(current) - RUN_SETTINGS
        changed = {k for k in keys if saved_config.get(k) != current[k]}
        if changed:
            raise ValueError(
                f"{path} was made with other settings ({sorted(changed)}); use another output folder"
            )
        # Results from before the version was recorded were made by generator version 1.
        made_by = saved.get("generator_version", 1 if self.config.dataset == "synthetic" else None)
        if made_by != fresh["generator_version"]:
            raise ValueError(
                f"{path} was made with synthetic generator version {made_by}, this is version "
                f"{fresh['generator_version']}; use another output folder"
            )
        saved["config"] = fresh["config"]
        for key, value in fresh.items():
            saved.setdefault(key, value)
        return saved

    def _save(self) -> None:
        elapsed = time.perf_counter() - self._session_started
        self.results["wall_seconds"] = round(self._wall_before + elapsed, 1)
        self._session["seconds"] = round(elapsed, 1)
        data = json.dumps(self.results, indent=1, default=_json_default).encode()
        atomic_write_bytes(self.out / RESULTS_FILE, lambda handle: handle.write(data))

    def _condition(self, index: int) -> str:
        reader = self.splits.pool
        conditions = getattr(reader, "conditions", None)
        if conditions is not None:
            return conditions[index] or "unknown"
        return reader[index].condition or "unknown"

    def _initial_path(self, seed: int) -> Path:
        return self.checkpoints / f"initial-seed{seed}.pt"

    def _cycle_path(self, name: str, seed: int, cycle: int) -> Path:
        if cycle == 0:
            return self._initial_path(seed)
        return self.checkpoints / f"{name}-seed{seed}" / f"cycle{cycle}.pt"

    def _prune(self, name: str, seed: int, keep_from: int) -> None:
        """Delete the run's checkpoints of cycles before ``keep_from`` (cycle 0, the initial, stays)."""
        folder = self.checkpoints / f"{name}-seed{seed}"
        for path in folder.glob("cycle*.pt"):
            match = re.fullmatch(r"cycle(\d+)\.pt", path.name)
            if match and int(match.group(1)) < keep_from:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ training helpers
    def _net_config(self) -> NetConfig:
        return NetConfig(
            task=self.config.task,  # type: ignore[arg-type]
            class_names=tuple(self.splits.class_names),
            width=self.config.width,
            image_size=self.config.image_size,
        )

    def _train(
        self,
        model: ThreeBranchNet,
        indices: list[int] | None,
        epochs: int,
        steps: int | None,
        seed: int,
        dataset: PairDataset | None = None,
    ) -> float:
        """Train ``model`` on the pool pairs ``indices`` (or on the whole of ``dataset``); returns seconds."""
        config = TrainConfig(
            epochs=epochs,
            steps=steps,
            batch_size=self.config.batch_size,
            lr=self.config.lr if dataset is not None else (self.config.finetune_lr or self.config.lr),
            device=self.config.device,
            seed=seed,
            num_workers=self.config.num_workers,
        )
        if self.config.num_workers and isinstance(self.splits.pool, CachedReader):
            self.splits.pool.fill()
        started = time.perf_counter()
        data = dataset if dataset is not None else Subset(self.pool_train, indices or [])
        fit(model, data, config, progress=False)
        return time.perf_counter() - started

    def _evaluate(self, model: ThreeBranchNet) -> dict[str, Any]:
        metrics = evaluate(model, self.test, batch_size=32, device=self.config.device, by_condition=True)
        return _to_plain(metrics)

    # ------------------------------------------------------------------ the protocol
    def run(self) -> dict[str, Any]:
        c = self.config
        for seed in c.seeds:
            for name in c.strategies:
                self._run_strategy(name, seed)
            if c.full_data and (c.full_data_seeds is None or seed in c.full_data_seeds):
                self.full_data_reference(seed)
        self._selected_pairs_figure()
        self._save()
        return self.results

    def _starting_model(self) -> ThreeBranchNet:
        """Random weights (cold start) or a copy of the source-set model (warm start)."""
        if not self.config.pretrain_size:
            return ThreeBranchNet(self._net_config())
        model, _ = load_model(self.pretrained())
        return model

    def pretrained(self) -> Path:
        """The warm-start source model: trained once on :func:`source_dataset` and cached at
        ``pretrained_path`` (with a ``.json`` sidecar of what it depends on); its test metrics go to
        ``results["pretrained"]``."""
        c = self.config
        path, sidecar = self.pretrained_path, self.pretrained_path.with_suffix(".json")
        key = _pretrain_key(c)
        cached = path.exists() and sidecar.exists() and json.loads(sidecar.read_text())["key"] == key
        if not cached:
            model = ThreeBranchNet(self._net_config())
            source = source_dataset(c)
            seconds = self._train(model, None, 1, c.pretrain_steps, c.pretrain_seed, dataset=source)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, model)
            record = {"key": key, "train_seconds": round(seconds, 2), "metrics": self._evaluate(model)}
            data = json.dumps(record, indent=1).encode()
            atomic_write_bytes(sidecar, lambda handle: handle.write(data))
        if "pretrained" not in self.results:
            record = json.loads(sidecar.read_text())
            self.results["pretrained"] = {
                "source": {
                    "pairs": c.pretrain_size,
                    "generator_seed": c.pretrain_seed,
                    "condition_shares": c.pretrain_condition_shares,
                    "steps": c.pretrain_steps,
                },
                "train_seconds": record["train_seconds"],
                "metrics": record["metrics"],
            }
            self._save()
        return path

    def _initial_model(self, seed: int) -> Path:
        path = self._initial_path(seed)
        key = str(seed)
        if key in self.results["initial"] and path.exists():
            return path
        if key in self.results["initial"]:
            log.warning("initial model of seed %d is missing from %s: training it again", seed, path)
        rng = np.random.default_rng(seed)
        labelled = sorted(rng.choice(len(self.splits.pool), size=self.config.initial, replace=False).tolist())
        model = self._starting_model()
        started = time.perf_counter()
        seconds = self._train(model, labelled, self.config.epochs_initial, self.config.steps_initial, seed)
        save_checkpoint(path, model)
        self.results["initial"][key] = {
            "labelled": labelled,
            "labelled_ids": [self.pool_ids[i] for i in labelled],
            "metrics": self._evaluate(model),
            "train_seconds": round(seconds, 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
        }
        self._save()
        return path

    def full_data_reference(self, seed: int) -> None:
        """Train the full-data model of ``seed`` on the whole pool and record its test metrics (once)."""
        key = str(seed)
        if key in self.results["full_data"]:
            return
        model = self._starting_model()
        everything = list(range(len(self.splits.pool)))
        started = time.perf_counter()
        c = self.config
        seconds = self._train(model, everything, c.full_data_epochs, c.full_data_steps, seed)
        self.results["full_data"][key] = {
            "metrics": self._evaluate(model),
            "train_seconds": round(seconds, 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
        }
        self._save()

    def _first_cycle(self, seed: int) -> dict[str, Any]:
        initial = self.results["initial"][str(seed)]
        return {
            "cycle": 0,
            "labelled_count": len(initial["labelled"]),
            "labelled": initial["labelled"],
            "selected": [],
            "selected_ids": [],
            "metrics": initial["metrics"],
            "select_seconds": 0.0,
            "train_seconds": initial["train_seconds"],
            "wall_seconds": initial.get("wall_seconds", initial["train_seconds"]),
        }

    def _run_strategy(self, name: str, seed: int) -> None:
        c = self.config
        key = f"{name}/seed{seed}"
        run = self.results["runs"].setdefault(
            key, {"strategy": name, "seed": seed, "cycles": [], "done": False}
        )
        cycles: list[dict[str, Any]] = run["cycles"]
        if cycles and cycles[-1]["labelled_count"] >= c.budget:
            if not run["done"]:
                run["done"] = True
                self._save()
            return
        run["done"] = False
        self._initial_model(seed)
        # Resume from the latest recorded cycle whose model is on disk (cycle 0: the initial model).
        while len(cycles) > 1 and not self._cycle_path(name, seed, cycles[-1]["cycle"]).exists():
            log.warning("%s: no checkpoint of cycle %d, redoing it", key, cycles[-1]["cycle"])
            cycles.pop()
        if not cycles:
            cycles.append(self._first_cycle(seed))
        model, _ = load_model(self._cycle_path(name, seed, cycles[-1]["cycle"]))
        labelled = list(cycles[-1]["labelled"])
        strategy = make_strategy(name)
        total_cycles = -(-(c.budget - c.initial) // c.initial)
        bar = tqdm(total=total_cycles, initial=len(cycles) - 1, desc=key, disable=not self.progress)
        while len(labelled) < c.budget:
            cycle = len(cycles)
            started = time.perf_counter()
            rng = np.random.default_rng([seed, cycle, zlib.crc32(name.encode())])
            taken = set(labelled)
            pool = np.array([i for i in range(len(self.splits.pool)) if i not in taken])
            count = min(c.initial, c.budget - len(labelled))
            signals = None
            if strategy.needs_model:
                signals = compute_signals(model, Subset(self.pool_eval, pool.tolist()), device=c.device)
            picks = np.asarray(strategy.select(signals, count, rng, len(pool)))
            selected = sorted(pool[picks].tolist())
            if len(set(selected)) != len(selected) or taken & set(selected):
                raise RuntimeError(f"strategy {name!r} selected labelled or repeated pairs")
            select_seconds = time.perf_counter() - started
            labelled = sorted(labelled + selected)
            train_seconds = self._train(
                model, labelled, c.epochs_per_cycle, c.steps_per_cycle, seed * 1000 + cycle
            )
            save_checkpoint(self._cycle_path(name, seed, cycle), model)
            evaluated = time.perf_counter()
            metrics = self._evaluate(model)
            record = {
                "cycle": cycle,
                "labelled_count": len(labelled),
                "labelled": labelled,
                "selected": selected,
                "selected_ids": [self.pool_ids[i] for i in selected],
                "metrics": metrics,
                "select_seconds": round(select_seconds, 3),
                "train_seconds": round(train_seconds, 2),
                "eval_seconds": round(time.perf_counter() - evaluated, 2),
                "wall_seconds": round(time.perf_counter() - started, 2),
            }
            if signals is not None:  # how the score separates the picks from the rest (calibration)
                record["pool_inconsistency_mean"] = float(signals.inconsistency.mean())
                record["selected_inconsistency_mean"] = float(signals.inconsistency[picks].mean())
            cycles.append(record)
            self._save()
            self._prune(name, seed, keep_from=cycle - 1)
            bar.update(1)
        bar.close()
        run["done"] = True
        self._save()

    # ------------------------------------------------------------------ figures
    def _selected_pairs_figure(self) -> None:
        """``selected_pairs.png``: the first batch the first seed's initial model makes the product's default
        strategy label (the paper's inconsistency when the default is not simulated), with both branches'
        predictions and the I map."""
        if self.figure_pairs <= 0 or not self.config.seeds:
            return
        seed = self.config.seeds[0]
        path = self._initial_path(seed)
        if str(seed) not in self.results["initial"] or not path.exists():
            return
        from model.acquisition import DEFAULT_STRATEGY
        from model.figures import plot_selected_pairs

        name = DEFAULT_STRATEGY if DEFAULT_STRATEGY in self.config.strategies else "inconsistency"
        model, _ = load_model(path)
        taken = set(self.results["initial"][str(seed)]["labelled"])
        pool = [i for i in range(len(self.splits.pool)) if i not in taken]
        signals = compute_signals(model, Subset(self.pool_eval, pool), device=self.config.device)
        rng = np.random.default_rng([seed, 1, zlib.crc32(name.encode())])  # as the run's first cycle
        order = make_strategy(name).order(signals, self.figure_pairs, rng)[: self.figure_pairs]
        positions = [pool[i] for i in order]
        scores = [float(signals.inconsistency[i]) for i in order]
        plot_selected_pairs(
            model,
            self.pool_eval,
            positions,
            self.out / "selected_pairs.png",
            scores=scores,
            device=self.config.device,
            title=(
                f"{self.config.task}: the first {len(positions)} pool pairs `{name}` labels under the "
                f"initial model (seed {seed}, {self.config.initial} labelled pairs; each pair's I at left)"
            ),
        )
        self.results["selected_pairs_figure"] = {
            "seed": seed,
            "strategy": name,
            "pair_ids": [self.pool_ids[i] for i in positions],
            "conditions": [self._condition(i) for i in positions],
            "inconsistency": scores,
            "pool_inconsistency_mean": float(signals.inconsistency.mean()),
        }


def _generator_version(config: SimulationConfig) -> int | None:
    """The synthetic generator's version (its pairs change with it), None for datasets read from disk."""
    if config.dataset != "synthetic":
        return None
    from model.data.synthetic import GENERATOR_VERSION

    return GENERATOR_VERSION


def _conditions(reader: PairReader) -> list[str]:
    conditions = getattr(reader, "conditions", None)
    if conditions is None:
        conditions = [reader[i].condition for i in range(len(reader))]
    return [c or "unknown" for c in conditions]


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def merge_results(parts: list[dict[str, Any]], *, elapsed_seconds: float | None = None) -> dict[str, Any]:
    """One results.json from simulations of the same settings run apart (seeds, or the full-data reference, in
    parallel processes): their initial models, runs and full-data models side by side.

    Raises ValueError when the parts differ in anything but seeds and strategies, or when two parts hold the
    same run, initial or full-data model with different numbers.
    """
    if not parts:
        raise ValueError("nothing to merge")
    ignored = RUN_SETTINGS | {"full_data_seeds", "full_data"}  # a part may hold no full-data model
    first = {k: v for k, v in parts[0]["config"].items() if k not in ignored}
    merged: dict[str, Any] = {
        **{k: v for k, v in parts[0].items() if k not in ("initial", "full_data", "runs", "sessions")},
        "initial": {},
        "full_data": {},
        "runs": {},
        "sessions": [],
    }
    seeds: set[int] = set()
    strategies: list[str] = []
    for part in parts:
        config = {k: v for k, v in part["config"].items() if k not in ignored}
        if config != first or part["pool_ids"] != parts[0]["pool_ids"]:
            changed = sorted(k for k in set(config) | set(first) if config.get(k) != first.get(k))
            raise ValueError(f"cannot merge simulations with other settings ({changed or ['pool']})")
        seeds.update(int(s) for s in part["config"]["seeds"])
        strategies += [s for s in part["config"]["strategies"] if s not in strategies]
        for section in ("initial", "full_data", "runs"):
            for key, entry in part[section].items():
                if key in merged[section] and merged[section][key] != entry:
                    raise ValueError(f"two parts hold different {section} entries for {key!r}")
                merged[section][key] = entry
        merged["sessions"] += part.get("sessions", [])
    merged["config"] = {**parts[0]["config"], "seeds": sorted(seeds), "strategies": strategies}
    merged["config"]["full_data_seeds"] = sorted(int(k) for k in merged["full_data"])
    # Compute time summed over the parts; elapsed time is the parallel run's.
    merged["wall_seconds"] = round(sum(float(p.get("wall_seconds", 0.0)) for p in parts), 1)
    if elapsed_seconds is not None:
        merged["parallel"] = {"processes": len(parts), "elapsed_seconds": round(elapsed_seconds, 1)}
    return merged


def simulate(
    config: SimulationConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    figure_pairs: int = 6,
) -> dict[str, Any]:
    """Run (or resume) a simulation, then write the plots and the summary next to results.json."""
    from model.report import write_report

    simulator = Simulator(
        config, out_dir, progress=progress, checkpoint_dir=checkpoint_dir, figure_pairs=figure_pairs
    )
    results = simulator.run()
    write_report(results, out_dir)
    return results
