"""Figures and summary of an active-learning simulation, from its results.json alone.

- ``learning_curves.png``: metric vs labelled pairs per strategy, mean and spread over seeds, the full-data
  metric as a dotted line (like the paper's Fig. 4);
- ``summary.md``: area under the learning curve, final metric, labels needed to reach 95% of the full-data
  metric, a paired sign-flip test over seeds of inconsistency vs random, and which conditions each strategy
  selected compared with the pool.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

#: Share of the full-data metric a strategy must reach ("labels needed to reach 95%").
TARGET_FRACTION = 0.95


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per strategy: labelled counts (x) and a (seeds, cycles) metric array, complete runs only."""
    metric = results["metric"]
    by_strategy: dict[str, dict[int, list[float]]] = {}
    xs: dict[str, list[int]] = {}
    for run in results["runs"].values():
        if not run.get("done"):
            continue
        values = [c["metrics"].get(metric) or 0.0 for c in run["cycles"]]
        by_strategy.setdefault(run["strategy"], {})[run["seed"]] = values
        xs[run["strategy"]] = [c["labelled_count"] for c in run["cycles"]]
    out = {}
    for name, seeds in by_strategy.items():
        ordered = sorted(seeds)
        out[name] = {"x": np.array(xs[name]), "y": np.array([seeds[s] for s in ordered]), "seeds": ordered}
    return out


def normalised_auc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Area under each curve (rows of y) divided by the x range: the mean metric over the labelling run."""
    span = float(x[-1] - x[0]) or 1.0
    return np.trapezoid(y, x, axis=-1) / span


def labels_to_reach(x: np.ndarray, mean_curve: np.ndarray, target: float) -> int | None:
    hits = np.nonzero(mean_curve >= target)[0]
    return int(x[hits[0]]) if len(hits) else None


def sign_flip_test(differences: np.ndarray) -> tuple[float, float]:
    """Exact paired permutation test of mean(differences) > 0: (one-sided p, two-sided p).

    With n seeds there are 2^n sign assignments; the smallest possible one-sided p is 2^-n (0.125 for 3).
    """
    n = len(differences)
    observed = differences.mean()
    means = np.array(
        [(differences * np.array(signs)).mean() for signs in itertools.product((1, -1), repeat=n)]
    )
    one_sided = float(np.mean(means >= observed - 1e-12))
    two_sided = float(np.mean(np.abs(means) >= abs(observed) - 1e-12))
    return one_sided, two_sided


def condition_shares(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Share of each condition among each strategy's selected pairs (all cycles and seeds), and the pool's."""
    conditions = results["pool_conditions"]
    shares: dict[str, dict[str, float]] = {}
    pool = Counter(conditions)
    shares["(pool)"] = {k: v / len(conditions) for k, v in pool.items()}
    picked: dict[str, Counter] = {}
    for run in results["runs"].values():
        counter = picked.setdefault(run["strategy"], Counter())
        for cycle in run["cycles"]:
            counter.update(conditions[i] for i in cycle["selected"])
    for name, counter in picked.items():
        total = sum(counter.values()) or 1
        shares[name] = {k: counter.get(k, 0) / total for k in pool}
    return shares


def full_data_metric(results: dict[str, Any]) -> float | None:
    values = [r["metrics"].get(results["metric"]) for r in results["full_data"].values()]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    data = curves(results)
    full = full_data_metric(results)
    table = {}
    for name, curve in data.items():
        aucs = normalised_auc(curve["x"], curve["y"])
        mean = curve["y"].mean(axis=0)
        table[name] = {
            "auc_mean": float(aucs.mean()),
            "auc_std": float(aucs.std()),
            "auc_per_seed": dict(zip(curve["seeds"], aucs.tolist(), strict=True)),
            "final_mean": float(mean[-1]),
            "labels_to_95": labels_to_reach(curve["x"], mean, TARGET_FRACTION * full) if full else None,
            "seeds": len(curve["seeds"]),
        }
    comparison = None
    if "inconsistency" in data and "random" in data:
        a, b = table["inconsistency"]["auc_per_seed"], table["random"]["auc_per_seed"]
        seeds = sorted(set(a) & set(b))
        diffs = np.array([a[s] - b[s] for s in seeds])
        one, two = sign_flip_test(diffs) if len(diffs) else (float("nan"), float("nan"))
        comparison = {
            "seeds": seeds,
            "auc_differences": diffs.tolist(),
            "wins": int((diffs > 0).sum()),
            "p_one_sided": one,
            "p_two_sided": two,
        }
    return {
        "full_data": full,
        "strategies": table,
        "inconsistency_vs_random": comparison,
        "condition_shares": condition_shares(results),
    }


def plot_learning_curves(results: dict[str, Any], path: Path) -> None:
    plt = _matplotlib()
    data = curves(results)
    full = full_data_metric(results)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, curve in sorted(data.items()):
        mean, std = curve["y"].mean(axis=0), curve["y"].std(axis=0)
        (line,) = ax.plot(curve["x"], mean, marker="o", ms=3, label=f"{name} (n={len(curve['seeds'])})")
        ax.fill_between(curve["x"], mean - std, mean + std, color=line.get_color(), alpha=0.15)
    if full is not None:
        ax.axhline(full, color="k", linestyle=":", label="full data")
        ax.axhline(
            TARGET_FRACTION * full, color="grey", linestyle=":", linewidth=0.8, label="95% of full data"
        )
    config = results["config"]
    ax.set_xlabel("labelled pairs")
    ax.set_ylabel(results["metric"])
    ax.set_title(f"{config['task']} on {config['dataset']}: b={config['initial']}, B={config['budget']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown_summary(results: dict[str, Any], summary: dict[str, Any]) -> str:
    metric = results["metric"]
    config = results["config"]
    full = summary["full_data"]
    lines = [
        f"# Active learning: {config['task']} on {config['dataset']}",
        "",
        f"Pool {len(results['pool_ids'])} pairs, b={config['initial']}, B={config['budget']}, "
        f"seeds {config['seeds']}, width {config['width']}, "
        f"{config['image_size'][0]}x{config['image_size'][1]} pixels.",
        f"Full-data {metric}: {full:.4f}" if full is not None else "Full-data reference: not computed.",
        "",
        f"| strategy | AUC ({metric}, mean ± sd) | final {metric} | labels to 95% of full data | seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in sorted(summary["strategies"].items(), key=lambda kv: -kv[1]["auc_mean"]):
        reach = row["labels_to_95"] if row["labels_to_95"] is not None else f"not within {config['budget']}"
        lines.append(
            f"| {name} | {row['auc_mean']:.4f} ± {row['auc_std']:.4f} | {row['final_mean']:.4f} | {reach} | "
            f"{row['seeds']} |"
        )
    comparison = summary["inconsistency_vs_random"]
    if comparison:
        lines += [
            "",
            f"Inconsistency vs random, paired over seeds {comparison['seeds']}: AUC differences "
            f"{[round(d, 4) for d in comparison['auc_differences']]}, inconsistency better in "
            f"{comparison['wins']}/{len(comparison['seeds'])} seeds; exact sign-flip test p = "
            f"{comparison['p_one_sided']:.3f} (one-sided), {comparison['p_two_sided']:.3f} (two-sided).",
        ]
    shares = summary["condition_shares"]
    conditions = sorted(shares["(pool)"])
    lines += ["", "Share of each condition among selected pairs:", ""]
    lines.append("| strategy | " + " | ".join(conditions) + " |")
    lines.append("| --- |" + " --- |" * len(conditions))
    for name in ["(pool)", *sorted(k for k in shares if k != "(pool)")]:
        lines.append(
            f"| {name} | " + " | ".join(f"{100 * shares[name].get(c, 0):.0f}%" for c in conditions) + " |"
        )
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    out = Path(out_dir)
    summary = summarise(results)
    if summary["strategies"]:
        plot_learning_curves(results, out / "learning_curves.png")
    (out / "summary.md").write_text(markdown_summary(results, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
