"""The model's own command line: ``python -m model`` (and the same subcommands of ``rgbt-al``).

python -m model synth | train | evaluate | score | export    the model on its own, on disk datasets
python -m model simulate                                     the active-learning simulator

Nothing here needs Label Studio, Redis or the web server: the model package stands alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from model.config import ENGINES
from model.data.readers import ALL_FORMATS


class CommandError(RuntimeError):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 512x640, got {text!r}") from error
    return height, width


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


def cmd_export(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_model
    from model.engines import EngineError, export_onnx
    from model.inference import export_path

    try:
        model, _ = load_model(args.checkpoint)
        out = export_onnx(model, args.out or export_path(args.checkpoint))
    except (CheckpointError, EngineError) as error:
        raise CommandError(str(error)) from error
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import csv

    from model.checkpoint import CheckpointError
    from model.data.dataset import PairDataset
    from model.data.transforms import eval_transform
    from model.inference import Predictor, score_dataset

    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, engine=args.engine)
    except CheckpointError as error:
        raise CommandError(str(error)) from error
    if predictor.engine_name != args.engine:
        print(
            f"warning: {args.engine} unavailable for {args.checkpoint}: scoring with torch",
            file=sys.stderr,
        )
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


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """Add synth, train, evaluate, score, export and simulate to a subcommand parser."""
    synth = commands.add_parser("synth", help="write a synthetic RGB-T dataset in a real on-disk format")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--format", choices=("flir-aligned", "mfnet"), default="flir-aligned")
    synth.add_argument("--train", type=int, default=400)
    synth.add_argument("--val", type=int, default=50)
    synth.add_argument("--test", type=int, default=120)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=parse_size, default=(128, 160), help="HEIGHTxWIDTH (default 128x160)")
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
    train.add_argument("--image-size", type=parse_size, default=(512, 640), help="network input HEIGHTxWIDTH")
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
    score.add_argument(
        "--engine", choices=ENGINES, default="torch", help="onnxruntime runs the checkpoint's `export`"
    )
    score.set_defaults(func=cmd_score)

    export = commands.add_parser("export", help="export a checkpoint's network to ONNX for onnxruntime")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", help="the .onnx file (default: beside the checkpoint, same name)")
    export.set_defaults(func=cmd_export)

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
    sim.add_argument("--image-size", type=parse_size, default=(64, 80))
    sim.add_argument("--batch-size", type=int, default=16)
    sim.add_argument("--lr", type=float, default=2e-3)
    sim.add_argument("--device", default="auto")
    sim.add_argument("--quiet", action="store_true")
    sim.set_defaults(func=cmd_simulate)


def build_parser(prog: str = "python -m model") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_model_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except CommandError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
