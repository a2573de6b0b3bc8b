"""Training throughput (pairs/s) through ``model.train.fit``: AMP against fp32 on a GPU, fp32 on a CPU.

Pairs come from the synthetic RGB-T generator, generated once into memory (so generation is not timed), with
the training augmentation (random crop, expand, flip) applied per step as in real training. Each timed run
is a ``fit`` with a step budget after a short warm-up ``fit``; on a GPU the AMP and fp32 runs take turns.
The figure is ``EpochLog.pairs_per_second`` (data loading, forward, the three branches' losses, backward and
the optimizer step).

    python benchmarks/bench_training.py        # CPU: width 0.25 at 128x160, batch 8 (sizes are recorded)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import benchutil

from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.memory import InMemoryReader
from model.data.synthetic import SYNTH_CLASSES, SyntheticRGBT
from model.data.transforms import train_transform
from model.device import amp_dtype, select_device
from model.network import ThreeBranchNet
from model.train import TrainConfig, fit


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = select_device(args.device)
    size = tuple(args.size)
    reader = SyntheticRGBT(args.pairs, 0, split="train", image_size=size)
    records = [reader[i] for i in range(len(reader))]
    dataset = PairDataset(InMemoryReader(records, list(SYNTH_CLASSES)), transform=train_transform(size))
    config = NetConfig(class_names=tuple(SYNTH_CLASSES), width=args.width, image_size=size)
    modes = ["amp", "fp32"] if device.type == "cuda" else ["fp32"]
    models = {mode: ThreeBranchNet(config) for mode in modes}

    def train(mode: str, steps: int) -> float:
        train_config = TrainConfig(
            steps=steps,
            batch_size=args.batch_size,
            device=str(device),
            amp=mode == "amp",
            num_workers=args.loader_workers,
            lr=1e-4,
        )
        history = fit(models[mode], dataset, train_config, progress=False)
        return history[-1].pairs_per_second

    load_before = benchutil.load_average()
    for mode in modes:  # warm-up: allocator, cuDNN autotuning, oneDNN primitives
        train(mode, args.warmup_steps)
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rates[mode].append(train(mode, args.steps))
    load_after = benchutil.load_average()
    result: dict[str, Any] = {
        "device": benchutil.device_name(args.device),
        "quick": args.quick,
        "image_size": list(size),
        "width": args.width,
        "batch_size": args.batch_size,
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "loader_workers": args.loader_workers,
        "pairs_per_s": {mode: round(benchutil.median(values), 2) for mode, values in rates.items()},
        "samples_pairs_per_s": {mode: [round(v, 2) for v in values] for mode, values in rates.items()},
        "amp_dtype": str(amp_dtype(device)).replace("torch.", "") if amp_dtype(device) else None,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if "amp" in rates:
        result["amp_speedup"] = round(benchutil.median(rates["amp"]) / benchutil.median(rates["fp32"]), 2)
    else:
        result["amp_note"] = "AMP runs on CUDA only (CPU autocast is off: slower than fp32 on these CPUs)"
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per timed run")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=64, help="distinct synthetic pairs drawn from")
    parser.add_argument("--loader-workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    gpu = select_device(args.device).type == "cuda"
    args.size = tuple(args.size or ((512, 640) if gpu else ((64, 80) if args.quick else (128, 160))))
    args.width = args.width or (1.0 if gpu else 0.25)
    args.batch_size = args.batch_size or (16 if gpu else 8)
    args.steps = args.steps or (30 if gpu else (3 if args.quick else 10))
    args.rounds = args.rounds or (3 if gpu else (1 if args.quick else 2))
    args.loader_workers = args.loader_workers if args.loader_workers is not None else (6 if gpu else 0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    out = benchutil.results_path(result["device"], quick=args.quick, out=args.out)
    benchutil.write_section(out, "training", result)
    benchutil.print_table(
        f"Training throughput, width {result['width']} at "
        f"{result['image_size'][0]}x{result['image_size'][1]}, batch {result['batch_size']} "
        f"(loadavg {result['loadavg_before']} -> {result['loadavg_after']})",
        [[mode, rate, result["samples_pairs_per_s"][mode]] for mode, rate in result["pairs_per_s"].items()],
        ["precision", "pairs/s (median)", "runs"],
    )
    print(f"\nwrote the `training` key of {out}")


if __name__ == "__main__":
    main()
