"""Pool-scoring throughput: the product path against a naive baseline, side by side in one run.

Product path: one ThreeBranchNet pass per batch (the two trunks run once and feed their own branch and the
fusion), ``inference_mode``, channels_last, bf16/fp16 autocast on CUDA, inconsistency reduced to one float
per pair on the device (``Predictor.score_batch``), inputs pinned on CUDA as the DataLoader delivers them.

Naive baseline: per pair, fp32, three separate networks - visible-only, thermal-only and a fusion network -
so four trunk passes per pair, and the scores computed on the host.

The calls take turns (product, naive, product, ...) so all see the same machine load. Also: the same product
path through the onnxruntime engine (the network exported to ONNX, ``INFERENCE_ENGINE=onnxruntime``) and with
contiguous (NCHW) tensors (what channels_last buys on this device), FLOPs per pair (torch's FLOP counter),
achieved GFLOP/s against a peak measured here by a GEMM microbenchmark (square fp32 matmuls on the CPU, bf16
on a GPU, where the datasheet peak is reported beside it); scoring time for growing pools of small synthetic
pairs through ``score_dataset`` (linearity); peak GPU memory per batch size.

    python benchmarks/bench_scoring.py                 # writes the `scoring` key of results/<device>.json
    python benchmarks/bench_scoring.py --quick         # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil
import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from model.config import NetConfig
from model.device import amp_dtype, select_device
from model.inconsistency import pair_scores, prediction_inconsistency, scale_balanced_mean
from model.inference import Predictor, PreparedBatch, score_dataset
from model.network import ThreeBranchNet

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of the GPUs this may run on.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}

#: The product target on an H100 (pairs/s at 640x512, width 1.0, bf16) and the CPU ratio target.
TARGET_H100_PAIRS_PER_S = 1000.0
TARGET_SPEEDUP = 3.0


class NaiveThreeNetworks(nn.Module):
    """Three independent networks, as one would build them without the shared-trunk design."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.visible_net = ThreeBranchNet(config)
        self.thermal_net = ThreeBranchNet(config)
        self.fusion_net = ThreeBranchNet(config)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        # Each single-modality network needs only its trunk and head.
        v = self.visible_net
        visible = v.heads["visible"](v.rgb_trunk((rgb - v.rgb_mean) / v.rgb_std))[0]
        t = self.thermal_net
        thermal_out = t.heads["thermal"](t.thermal_trunk((thermal - 0.449) / 0.226))[0]
        self.fusion_net(rgb, thermal)  # the fusion network's own two trunks, for the user's predictions
        p_v = [logits.softmax(-1).cpu() for logits in visible]
        p_t = [logits.softmax(-1).cpu() for logits in thermal_out]
        maps = [prediction_inconsistency(a, b, class_dim=-1) for a, b in zip(p_v, p_t, strict=True)]
        return scale_balanced_mean(maps)


class RandomPairs(Dataset):
    """``count`` synthetic pairs at ``size``, generated per index (deterministic): ``to_tensors`` triples."""

    def __init__(self, count: int, size: tuple[int, int], seed: int = 0) -> None:
        self.count = count
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pair = torch.randint(0, 256, (4, *self.size), generator=generator, dtype=torch.uint8)
        pair = pair.float().div_(255.0)
        return pair[:3], pair[3:], {"pair_id": str(index)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_pair(config: NetConfig) -> float:
    """FLOPs of one ThreeBranchNet forward pass for one pair (2 per multiply-add); shapes only (meta
    tensors) when that works, else a real CPU pass."""
    size = config.image_size
    counter = FlopCounterMode(display=False)
    try:
        with torch.device("meta"):
            model = ThreeBranchNet(config).eval()
            rgb, thermal = torch.rand(1, 3, *size), torch.rand(1, 1, *size)
        with counter, torch.inference_mode():
            model(rgb, thermal)
    except (RuntimeError, NotImplementedError):
        counter = FlopCounterMode(display=False)
        model = ThreeBranchNet(config).eval()
        with counter, torch.inference_mode():
            model(torch.rand(1, 3, *size), torch.rand(1, 1, *size))
    return float(counter.get_total_flops())


def measured_gemm_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """The best GFLOP/s of square matmuls on ``device`` (fp32 on CPU, bf16 on GPU) with torch's threads: a
    measured ceiling for dense compute here, rather than an assumed one."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.rand(size, size, device=device, dtype=dtype)
    b = torch.rand(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, kernels
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return {
        "gflops": round(2 * size**3 / best / 1e9, 1),
        "dtype": str(dtype).replace("torch.", ""),
        "matrix": size,
        "threads": torch.get_num_threads(),
    }


def onnx_engine_predictor(model: ThreeBranchNet, device: torch.device, workdir: Path) -> Predictor | None:
    """The product path with the network exported to ONNX, run by onnxruntime; None without the extra."""
    try:
        from model.engines import EngineError, OnnxRuntimeEngine, export_onnx
    except ImportError:
        return None
    try:
        path = export_onnx(model.cpu(), workdir / "bench.onnx")
        model.to(device)
        return Predictor(model, device, engine=OnnxRuntimeEngine(path, model.config))
    except EngineError as error:
        print(f"onnxruntime engine skipped: {error}")
        return None


def gpu_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    size = tuple(args.size)
    config = NetConfig(class_names=("person", "car", "bicycle"), width=args.width, image_size=size)
    flops = flops_per_pair(config)
    model = ThreeBranchNet(config).eval()
    if args.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    product = Predictor(model, device)  # memory layout and autocast: the Predictor's defaults
    product_layout = "channels_last" if product.memory_format == torch.channels_last else "nchw"
    # The same path in the other memory layout: what the default layout buys on this device.
    other = Predictor(ThreeBranchNet(config).eval(), device, channels_last=product_layout == "nchw")
    batch = args.batch_size
    rgb = torch.rand(batch, 3, *size)
    thermal = torch.rand(batch, 1, *size)
    if device.type == "cuda":  # as the DataLoader (pin_memory=True) hands batches over
        rgb, thermal = rgb.pin_memory(), thermal.pin_memory()
    naive = NaiveThreeNetworks(config).to(device).eval()
    one_rgb, one_thermal = rgb[:1].to(device), thermal[:1].to(device)

    def naive_pair() -> None:
        with torch.inference_mode():
            naive(one_rgb, one_thermal)

    calls = {
        "product": lambda: product.score_batch(rgb, thermal)[0].cpu(),
        "naive": naive_pair,
    }
    if args.layouts:
        calls["product_other_layout"] = lambda: other.score_batch(rgb, thermal)[0].cpu()
    engine = onnx_engine_predictor(model, device, Path(args.workdir)) if args.engines else None
    if engine is not None:
        calls["onnxruntime"] = lambda: engine.score_batch(rgb, thermal)[0].cpu()
    if args.decode:
        # What a scoring job runs per batch: the scores plus the user-facing boxes (decoding, NMS per pair).
        prepared = PreparedBatch(rgb, thermal, [size] * batch)
        calls["product_with_decode"] = lambda: product.predict_batch(prepared)
    load_before = benchutil.load_average()
    samples = benchutil.interleaved(calls, args.repeats, warmup=1, sync=lambda: synchronize(device))
    load_after = benchutil.load_average()
    seconds = {name: benchutil.median(values) for name, values in samples.items()}
    per_call_pairs = {
        "product": batch,
        "naive": 1,
        "product_other_layout": batch,
        "product_with_decode": batch,
        "onnxruntime": batch,
    }
    rates = {name: per_call_pairs[name] / s for name, s in seconds.items()}

    # Sanity: the product path computes scores in [0, 1].
    with torch.inference_mode():
        check = pair_scores(product.forward(rgb[:2], thermal[:2]))
    assert torch.all((check >= 0) & (check <= 1))

    achieved = flops * rates["product"] / 1e12
    peak = gpu_peak(device)
    gemm = measured_gemm_peak(device)
    result: dict[str, Any] = {
        "image_size": list(size),
        "width": args.width,
        "batch_size": batch,
        "precision": str(amp_dtype(device)).replace("torch.", "") if amp_dtype(device) else "fp32",
        "naive_precision": "fp32",
        "memory_layout": product_layout,
        "torch_compile": bool(args.compile),
        "repeats": args.repeats,
        "gflops_per_pair": round(flops / 1e9, 2),
        "product_pairs_per_s": round(rates["product"], 3),
        "naive_pairs_per_s": round(rates["naive"], 3),
        "speedup": round(rates["product"] / rates["naive"], 2),
        "speedup_target": TARGET_SPEEDUP,
        "samples_s": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "achieved_tflops": round(achieved, 4),
        "bf16_peak_tflops": peak,
        "fraction_of_peak": round(achieved / peak, 4) if peak else None,
        "measured_gemm_peak": gemm,
        "achieved_gflops": {name: round(flops * rate / 1e9, 1) for name, rate in rates.items()},
        "fraction_of_measured_peak": {
            name: round(flops * rate / 1e9 / gemm["gflops"], 3) for name, rate in rates.items()
        },
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if "product_other_layout" in rates:
        result["other_layout"] = "nchw" if product_layout == "channels_last" else "channels_last"
        result["other_layout_pairs_per_s"] = round(rates["product_other_layout"], 3)
        result["default_layout_gain"] = round(rates["product"] / rates["product_other_layout"], 2)
    if "onnxruntime" in rates:
        result["onnxruntime_pairs_per_s"] = round(rates["onnxruntime"], 3)
        result["onnxruntime_speedup"] = round(rates["onnxruntime"] / rates["naive"], 2)
        result["onnxruntime_vs_torch"] = round(rates["onnxruntime"] / rates["product"], 2)
    if "product_with_decode" in rates:
        result["product_with_decode_pairs_per_s"] = round(rates["product_with_decode"], 3)
    if peak:
        result["h100_target_pairs_per_s"] = TARGET_H100_PAIRS_PER_S
    return result


def growth(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Scoring time for growing pools through ``score_dataset`` (DataLoader, batches, on-device reduction)."""
    size = tuple(args.pool_size)
    config = NetConfig(class_names=("person",), width=args.pool_width, image_size=size)
    predictor = Predictor(ThreeBranchNet(config).eval(), device)
    workers = args.loader_workers
    score_dataset(predictor, RandomPairs(args.pool_batch * 2, size), batch_size=args.pool_batch)  # warm-up
    rows = []
    for pool in args.pools:
        load = benchutil.load_average()
        started = time.perf_counter()
        scores, _, ids = score_dataset(
            predictor, RandomPairs(pool, size, seed=pool), batch_size=args.pool_batch, num_workers=workers
        )
        synchronize(device)
        seconds = time.perf_counter() - started
        assert len(scores) == len(ids) == pool
        rows.append(
            {
                "pairs": pool,
                "seconds": round(seconds, 3),
                "ms_per_pair": round(1000 * seconds / pool, 3),
                "pairs_per_s": round(pool / seconds, 1),
                "loadavg": load,
            }
        )
    per_pair = [row["ms_per_pair"] for row in rows]
    return {
        "image_size": list(size),
        "width": args.pool_width,
        "batch_size": args.pool_batch,
        "loader_workers": workers,
        "pools": rows,
        # 1.0 = perfectly linear (time per pair the same at the largest pool as at the smallest).
        "largest_vs_smallest_time_per_pair": round(per_pair[-1] / per_pair[0], 3) if per_pair else None,
    }


def gpu_memory(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": "no GPU on this machine: peak GPU memory per batch size is measured on CUDA only"}
    size = tuple(args.size)
    config = NetConfig(class_names=("person", "car", "bicycle"), width=args.width, image_size=size)
    predictor = Predictor(ThreeBranchNet(config).eval(), device)
    rows = []
    for batch in args.memory_batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            predictor.score_batch(torch.rand(batch, 3, *size), torch.rand(batch, 1, *size))[0].cpu()
            synchronize(device)
            rows.append(
                {"batch": batch, "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
            )
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "peak_gib": None, "error": "out of memory"})
            torch.cuda.empty_cache()
    return {"image_size": list(size), "width": args.width, "per_batch": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = select_device(args.device)
    result: dict[str, Any] = {
        "device": benchutil.device_name(args.device),
        "machine": benchutil.machine_info(),
        "quick": args.quick,
    }
    result["throughput"] = throughput(args, device)
    result["pool_growth"] = growth(args, device)
    result["gpu_memory"] = gpu_memory(args, device)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every step")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 2 on CPU, 10 GPU)")
    parser.add_argument(
        "--no-layouts", dest="layouts", action="store_false", help="skip the run in the other memory layout"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the product network")
    parser.add_argument(
        "--no-engines", dest="engines", action="store_false", help="skip the onnxruntime engine row"
    )
    parser.add_argument("--workdir", default=None, help="where the ONNX export goes (default: a temp dir)")
    parser.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time scores + decoded boxes per batch, as scoring jobs run (default: on a GPU)",
    )
    parser.add_argument("--pools", type=int, nargs="+", default=None)
    parser.add_argument("--pool-size", type=int, nargs=2, default=(64, 80), metavar=("H", "W"))
    parser.add_argument("--pool-width", type=float, default=0.125)
    parser.add_argument("--pool-batch", type=int, default=128)
    parser.add_argument("--loader-workers", type=int, default=None, help="default: 0 on CPU, 4 on a GPU")
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<device>.json")
    args = parser.parse_args(argv)
    gpu = select_device(args.device).type == "cuda"
    quick = args.quick
    args.size = tuple(args.size or ((256, 320) if quick else (512, 640)))
    args.width = args.width or (0.25 if quick else 1.0)
    args.batch_size = args.batch_size or (64 if gpu else 2)
    args.repeats = args.repeats or (10 if gpu else (1 if quick else 2))
    args.pools = args.pools or ([200, 400, 800] if quick else [1000, 4000, 16000])
    args.loader_workers = args.loader_workers if args.loader_workers is not None else (4 if gpu else 0)
    args.decode = gpu if args.decode is None else args.decode
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scoring-")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    out = benchutil.results_path(result["device"], quick=args.quick, out=args.out)
    benchutil.write_section(out, "scoring", result)
    t = result["throughput"]
    benchutil.print_table(
        f"Scoring throughput, {t['image_size'][0]}x{t['image_size'][1]} width {t['width']} "
        f"(loadavg {t['loadavg_before']} -> {t['loadavg_after']})",
        [
            [
                f"product (shared trunks, batched, {t['memory_layout']})",
                t["product_pairs_per_s"],
                t["precision"],
            ],
            *(
                [[f"product, {t['other_layout']}", t["other_layout_pairs_per_s"], t["precision"]]]
                if "other_layout_pairs_per_s" in t
                else []
            ),
            *(
                [
                    [
                        "product + decoded boxes (scoring jobs)",
                        t["product_with_decode_pairs_per_s"],
                        t["precision"],
                    ]
                ]
                if "product_with_decode_pairs_per_s" in t
                else []
            ),
            *(
                [["onnxruntime engine (exported graph)", t["onnxruntime_pairs_per_s"], "fp32"]]
                if "onnxruntime_pairs_per_s" in t
                else []
            ),
            ["naive (3 networks, per pair)", t["naive_pairs_per_s"], "fp32"],
            ["speedup", f"{t['speedup']}x", f"target >= {TARGET_SPEEDUP}x"],
            *(
                [["onnxruntime speedup", f"{t['onnxruntime_speedup']}x", f"target >= {TARGET_SPEEDUP}x"]]
                if "onnxruntime_speedup" in t
                else []
            ),
            [
                "measured GEMM peak (GFLOP/s)",
                t["measured_gemm_peak"]["gflops"],
                t["measured_gemm_peak"]["dtype"],
            ],
            ["product, fraction of measured peak", t["fraction_of_measured_peak"]["product"], ""],
        ],
        ["path", "pairs/s", "precision"],
    )
    g = result["pool_growth"]
    benchutil.print_table(
        f"Pool growth, {g['image_size'][0]}x{g['image_size'][1]} width {g['width']}",
        [[r["pairs"], r["seconds"], r["ms_per_pair"], r["loadavg"]] for r in g["pools"]],
        ["pairs", "seconds", "ms/pair", "loadavg"],
    )
    print(f"\nwrote the `scoring` key of {out}")


if __name__ == "__main__":
    main()
