"""The demo's starter model: a three-branch detector trained on a generated *source* set.

It stands in for "the model from last season's data": another seed than the demo's pool and a day-heavy
condition mix, so the demo's project starts from a model that already detects (its first version) and the
annotations fine-tune it, as a real user would start from a model trained on KAIST, FLIR or LLVIP.

Reproduce the shipped file (2,400 steps: about 25 minutes on a 2-core CPU shared with a test run)::

    nice -n 10 python -m model.starter --out model/pretrained/synthetic_detection.pt

It writes the checkpoint (with per-class score thresholds calibrated on the source validation split in its
``extra``) and ``<out>.json`` with the recipe and the metrics it reached.
"""

from __future__ import annotations

import os

# A busy shared CPU: libgomp's spin-waiting would burn the time slices (see benchmarks/benchutil.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Where the package keeps the shipped starter model of the demo (detection).
STARTER_DIR = Path(__file__).resolve().parent / "pretrained"
STARTER_DETECTION = STARTER_DIR / "synthetic_detection.pt"

#: Day-heavy: most of "last season's" pairs were recorded by day, few at night or in crossover.
SOURCE_MIX: dict[str, float] = {
    "clear_day": 0.80,
    "dusk": 0.08,
    "night": 0.04,
    "crossover": 0.03,
    "cold_objects": 0.03,
    "glare": 0.02,
}


@dataclass
class StarterRecipe:
    """Everything that decides the starter model (recorded next to it)."""

    seed: int = 1  # the demo's pool uses seed 0
    train_pairs: int = 1600
    val_pairs: int = 150
    image_size: tuple[int, int] = (128, 160)
    width: float = 0.125
    epochs: int = 24  # 100 steps each; a checkpoint after every epoch, so an interrupted run resumes
    batch_size: int = 16
    lr: float = 2e-3
    condition_shares: dict[str, float] = field(default_factory=lambda: dict(SOURCE_MIX))


def train_starter(out: Path, recipe: StarterRecipe, *, device: str = "auto") -> dict[str, Any]:
    """Train (resuming from ``out`` when a run was interrupted), calibrate thresholds, record metrics."""
    import torch

    from model.checkpoint import load_model, read_checkpoint, save_checkpoint
    from model.config import NetConfig
    from model.data.dataset import PairDataset
    from model.data.memory import InMemoryReader
    from model.data.synthetic import SYNTH_CLASSES, SyntheticConfig, SyntheticRGBT
    from model.data.transforms import eval_transform, train_transform
    from model.metrics import calibrate_thresholds
    from model.network import ThreeBranchNet
    from model.train import TrainConfig, collect_predictions, compute_metrics, fit

    config = SyntheticConfig(condition_shares=recipe.condition_shares)
    started = time.perf_counter()

    def records(split: str, n: int) -> InMemoryReader:
        reader = SyntheticRGBT(n, recipe.seed, config, split=split, image_size=recipe.image_size)
        return InMemoryReader([reader[i] for i in range(n)], list(SYNTH_CLASSES))

    net = NetConfig(class_names=SYNTH_CLASSES, width=recipe.width, image_size=recipe.image_size)
    work = out.with_suffix(".training.pt")  # per-epoch checkpoint with the optimizer, removed at the end
    model = ThreeBranchNet(net)
    fit(
        model,
        PairDataset(records("train", recipe.train_pairs), transform=train_transform(recipe.image_size)),
        TrainConfig(
            epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, device=device, seed=recipe.seed
        ),
        checkpoint_path=work,
        resume=True,
        progress=False,
    )
    model, _ = load_model(work)
    history = read_checkpoint(work)["extra"].get("history", [])
    val = PairDataset(records("val", recipe.val_pairs), transform=eval_transform(recipe.image_size))
    predictions, targets = collect_predictions(model, val, device=device)
    metrics = compute_metrics("detection", predictions, targets, list(SYNTH_CLASSES))
    thresholds = calibrate_thresholds(predictions, targets, list(SYNTH_CLASSES))
    summary = {
        "recipe": asdict(recipe),
        "command": f"nice -n 10 python -m model.starter --out {out}",
        "source_val": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "thresholds": thresholds,
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    save_checkpoint(
        out,
        model.cpu(),
        extra={
            "thresholds": thresholds,
            "metrics": {"source_AP50": summary["source_val"].get("AP50")},
            "source": "model.starter",
        },
    )
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    work.unlink(missing_ok=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a busy CPU)")
    parser.add_argument("--out", type=Path, default=STARTER_DETECTION)
    parser.add_argument("--epochs", type=int, default=StarterRecipe.epochs)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    summary = train_starter(args.out, StarterRecipe(epochs=args.epochs), device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
