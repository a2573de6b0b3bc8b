"""The active-learning simulator (Zhang et al., ICIP 2021, Sec. 3 protocol).

For each seed: a random initial labelled set of ``b`` pairs; train; then, per strategy and until the budget
``B``: score the unlabelled pool with the current model, label the strategy's top ``b``, fine-tune on the
enlarged set, evaluate on the fixed test split. The initial model is shared by all strategies of a seed, so
curves start from the same point. A full-data model per seed gives the reference line.

Progress is saved to ``results.json`` after every cycle (with a checkpoint per running strategy), so an
interrupted simulation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset
from tqdm import tqdm

from model.acquisition import make_strategy
from model.checkpoint import atomic_write_bytes, load_model, save_checkpoint
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.sample import PairReader
from model.data.transforms import eval_transform, train_transform
from model.network import ThreeBranchNet
from model.train import PRIMARY_METRIC, TrainConfig, evaluate, fit

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


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
    full_data: bool = True
    width: float = 0.125
    image_size: tuple[int, int] = (64, 80)
    batch_size: int = 16
    lr: float = 2e-3
    device: str = "auto"

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)  # type: ignore[assignment]
        if self.initial < 1 or self.budget < self.initial:
            raise ValueError("need 1 <= initial (b) <= budget (B)")
        for name in self.strategies:
            make_strategy(name)  # unknown names fail before any training

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.task]


@dataclass
class Splits:
    pool: PairReader
    test: PairReader
    class_names: list[str]


def load_splits(config: SimulationConfig) -> Splits:
    """The unlabelled pool and the fixed test split."""
    if config.dataset == "synthetic":
        from model.data.synthetic import SYNTH_CLASSES, SyntheticRGBT

        pool = SyntheticRGBT(
            config.pool_size, config.synthetic_seed, split="train", image_size=config.image_size
        )
        test = SyntheticRGBT(
            config.test_size, config.synthetic_seed, split="test", image_size=config.image_size
        )
        return Splits(pool, test, list(SYNTH_CLASSES))
    from model.data.readers import open_dataset

    if config.data_root is None:
        raise ValueError(f"dataset {config.dataset!r} needs data_root")
    pool = open_dataset(config.data_root, config.dataset, "train")
    test = open_dataset(config.data_root, config.dataset, "test")
    return Splits(pool, test, list(pool.class_names))


class Simulator:
    """Runs (or resumes) a simulation into ``out_dir``."""

    def __init__(self, config: SimulationConfig, out_dir: str | Path, *, progress: bool = True) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        self.progress = progress
        self.splits = load_splits(config)
        size = config.image_size
        self.pool_train = PairDataset(self.splits.pool, transform=train_transform(size))
        self.pool_eval = PairDataset(self.splits.pool, transform=eval_transform(size))
        self.test = PairDataset(self.splits.test, transform=eval_transform(size))
        self.results = self._load_results()

    # ------------------------------------------------------------------ persistence
    def _load_results(self) -> dict[str, Any]:
        path = self.out / RESULTS_FILE
        fresh = {
            "config": asdict(self.config),
            "metric": self.config.metric,
            "pool_ids": self.splits.pool.pair_ids,
            "pool_conditions": [self._condition(i) for i in range(len(self.splits.pool))],
            "initial": {},
            "full_data": {},
            "runs": {},
        }
        if not path.exists():
            return fresh
        saved = json.loads(path.read_text())
        saved_config = {**saved["config"], "image_size": list(saved["config"]["image_size"])}
        current = {**fresh["config"], "image_size": list(fresh["config"]["image_size"])}
        # Strategies and seeds may grow between runs; everything else must match to resume.
        keys = set(current) - {"strategies", "seeds"}
        changed = {k for k in keys if saved_config.get(k) != current[k]}
        if changed:
            raise ValueError(
                f"{path} was made with other settings ({sorted(changed)}); use another output folder"
            )
        saved["config"] = fresh["config"]
        return saved

    def _save(self) -> None:
        data = json.dumps(self.results, indent=1, default=_json_default).encode()
        atomic_write_bytes(self.out / RESULTS_FILE, lambda handle: handle.write(data))

    def _condition(self, index: int) -> str:
        reader = self.splits.pool
        conditions = getattr(reader, "conditions", None)
        if conditions is not None:
            return conditions[index] or "unknown"
        return reader[index].condition or "unknown"

    # ------------------------------------------------------------------ training helpers
    def _net_config(self) -> NetConfig:
        return NetConfig(
            task=self.config.task,  # type: ignore[arg-type]
            class_names=tuple(self.splits.class_names),
            width=self.config.width,
            image_size=self.config.image_size,
        )

    def _train(self, model: ThreeBranchNet, indices: list[int], epochs: int, seed: int) -> float:
        config = TrainConfig(
            epochs=epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            device=self.config.device,
            seed=seed,
        )
        started = time.perf_counter()
        fit(model, Subset(self.pool_train, indices), config, progress=False)
        return time.perf_counter() - started

    def _evaluate(self, model: ThreeBranchNet) -> dict[str, Any]:
        metrics = evaluate(model, self.test, batch_size=32, device=self.config.device, by_condition=True)
        return _to_plain(metrics)

    # ------------------------------------------------------------------ the protocol
    def run(self) -> dict[str, Any]:
        c = self.config
        for seed in c.seeds:
            initial_path = self._initial_model(seed)
            if c.full_data:
                self._full_data(seed)
            for name in c.strategies:
                self._run_strategy(name, seed, initial_path)
        self._save()
        return self.results

    def _initial_model(self, seed: int) -> Path:
        path = self.out / "checkpoints" / f"initial-seed{seed}.pt"
        key = str(seed)
        if key in self.results["initial"] and path.exists():
            return path
        rng = np.random.default_rng(seed)
        labelled = sorted(rng.choice(len(self.splits.pool), size=self.config.initial, replace=False).tolist())
        model = ThreeBranchNet(self._net_config())
        seconds = self._train(model, labelled, self.config.epochs_initial, seed)
        save_checkpoint(path, model)
        self.results["initial"][key] = {
            "labelled": labelled,
            "metrics": self._evaluate(model),
            "train_seconds": round(seconds, 2),
        }
        self._save()
        return path

    def _full_data(self, seed: int) -> None:
        key = str(seed)
        if key in self.results["full_data"]:
            return
        model = ThreeBranchNet(self._net_config())
        seconds = self._train(model, list(range(len(self.splits.pool))), self.config.full_data_epochs, seed)
        self.results["full_data"][key] = {
            "metrics": self._evaluate(model),
            "train_seconds": round(seconds, 2),
        }
        self._save()

    def _run_strategy(self, name: str, seed: int, initial_path: Path) -> None:
        c = self.config
        key = f"{name}/seed{seed}"
        run = self.results["runs"].setdefault(
            key, {"strategy": name, "seed": seed, "cycles": [], "done": False}
        )
        if run["done"]:
            return
        state_path = self.out / "checkpoints" / f"{name}-seed{seed}.pt"
        initial = self.results["initial"][str(seed)]
        if run["cycles"] and state_path.exists():
            model, _ = load_model(state_path)
            labelled = list(run["cycles"][-1]["labelled"])
        else:
            run["cycles"] = [
                {
                    "cycle": 0,
                    "labelled_count": len(initial["labelled"]),
                    "labelled": initial["labelled"],
                    "selected": [],
                    "metrics": initial["metrics"],
                    "select_seconds": 0.0,
                    "train_seconds": initial["train_seconds"],
                }
            ]
            model, _ = load_model(initial_path)
            labelled = list(initial["labelled"])
        strategy = make_strategy(name)
        total_cycles = -(-(c.budget - c.initial) // c.initial)
        bar = tqdm(total=total_cycles, initial=len(run["cycles"]) - 1, desc=key, disable=not self.progress)
        while len(labelled) < c.budget:
            cycle = len(run["cycles"])
            rng = np.random.default_rng([seed, cycle, zlib.crc32(name.encode())])
            taken = set(labelled)
            pool = np.array([i for i in range(len(self.splits.pool)) if i not in taken])
            count = min(c.initial, c.budget - len(labelled))
            started = time.perf_counter()
            signals = None
            if strategy.needs_model:
                from model.acquisition import compute_signals

                signals = compute_signals(model, Subset(self.pool_eval, pool.tolist()), device=c.device)
            picks = strategy.select(signals, count, rng, len(pool))
            selected = sorted(pool[picks].tolist())
            select_seconds = time.perf_counter() - started
            labelled = sorted(labelled + selected)
            train_seconds = self._train(model, labelled, c.epochs_per_cycle, seed * 1000 + cycle)
            run["cycles"].append(
                {
                    "cycle": cycle,
                    "labelled_count": len(labelled),
                    "labelled": labelled,
                    "selected": selected,
                    "metrics": self._evaluate(model),
                    "select_seconds": round(select_seconds, 3),
                    "train_seconds": round(train_seconds, 2),
                }
            )
            save_checkpoint(state_path, model)
            self._save()
            bar.update(1)
        bar.close()
        run["done"] = True
        self._save()
        state_path.unlink(missing_ok=True)


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


def simulate(config: SimulationConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a simulation, then write the plots and the summary next to results.json."""
    from model.report import write_report

    results = Simulator(config, out_dir, progress=progress).run()
    write_report(results, out_dir)
    return results
