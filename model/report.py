"""Figures and summary of an active-learning simulation, from its results.json alone.

- ``learning_curves.png``: metric vs labelled pairs per strategy, mean and spread over seeds, the full-data
  metric as a dotted line (like the paper's Fig. 4);
- ``summary.md``: area under the learning curve (mean and per seed), final metric (overall and per test
  condition), labels needed to reach 95% of the full-data metric, a paired sign-flip test over seeds of
  inconsistency vs random, whether the target (inconsistency reaches 95% with at most half of random's labels
  and beats it on AUC in every seed) is met, which conditions each strategy selected compared with the pool,
  and wall times.

(``selected_pairs.png`` needs a model and is drawn by the simulator, see :mod:`model.figures`.)
"""

from __future__ import annotations

import itertools
import json
import math
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


def exact_sign_test(wins: int, losses: int) -> float:
    """One-sided exact paired sign test: P(at least ``wins`` successes of ``wins + losses`` fair coin flips)
    (ties dropped). 5 wins of 5 gives 0.031, 4 of 5 gives 0.19."""
    n = wins + losses
    if n == 0:
        return float("nan")
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def compare(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any]:
    """Paired comparison of two strategies' per-seed AUCs (``a`` minus ``b`` over their common seeds)."""
    seeds = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in seeds])
    one, two = sign_flip_test(diffs) if len(diffs) else (float("nan"), float("nan"))
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    return {
        "seeds": seeds,
        "auc_differences": diffs.tolist(),
        "wins": wins,
        "losses": losses,
        "p_sign_test": exact_sign_test(wins, losses),
        "p_one_sided": one,
        "p_two_sided": two,
    }


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


def final_by_condition(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean over seeds of the last cycle's metric per test condition, per strategy (plus the initial and the
    full-data models)."""
    metric = results["metric"]
    collected: dict[str, dict[str, list[float]]] = {}

    def add(name: str, metrics: dict[str, Any]) -> None:
        for condition, values in (metrics.get("by_condition") or {}).items():
            value = values.get(metric)
            if value is not None:
                collected.setdefault(name, {}).setdefault(condition, []).append(float(value))

    for run in results["runs"].values():
        if run.get("done") and run["cycles"]:
            add(run["strategy"], run["cycles"][-1]["metrics"])
    for entry in results.get("initial", {}).values():
        add("(initial)", entry["metrics"])
    for entry in results.get("full_data", {}).values():
        add("(full data)", entry["metrics"])
    return {name: {k: float(np.mean(v)) for k, v in by.items()} for name, by in collected.items()}


def timing(results: dict[str, Any]) -> dict[str, Any]:
    """Wall time of the whole simulation (all sessions) and seconds spent per part."""
    per_strategy: dict[str, float] = {}
    for run in results["runs"].values():
        seconds = sum(c.get("wall_seconds", c.get("train_seconds", 0.0)) for c in run["cycles"][1:])
        per_strategy[run["strategy"]] = per_strategy.get(run["strategy"], 0.0) + seconds

    def seconds(part: str) -> float:
        return sum(e.get("wall_seconds", e.get("train_seconds", 0.0)) for e in results.get(part, {}).values())

    return {
        "wall_seconds": results.get("wall_seconds"),
        "initial_seconds": seconds("initial"),
        "full_data_seconds": seconds("full_data"),
        "strategy_seconds": per_strategy,
    }


#: Share of the seeds in which the default strategy must beat random on AUC (4 of 5).
TARGET_WIN_SHARE = 0.8


def target_verdict(
    table: dict[str, Any], comparison: dict[str, Any] | None, budget: int, strategy: str
) -> dict[str, Any] | None:
    """Is ``strategy`` at 95% of full data with at most half of random's labels, and better on AUC in at
    least 80% of the seeds (4 of 5)? ``labels`` is True/False, or None when undetermined (random never
    reached the target within the budget and the strategy needed more than half of it)."""
    if strategy not in table or "random" not in table or comparison is None:
        return None
    mine, theirs = table[strategy]["labels_to_95"], table["random"]["labels_to_95"]
    labels: bool | None
    if mine is None:
        labels = False
    elif theirs is not None:
        labels = mine <= theirs / 2
    else:  # random needs more than the budget: half of it is a lower bound
        labels = True if mine <= budget / 2 else None
    seeds = len(comparison["seeds"])
    enough = bool(seeds) and comparison["wins"] >= math.ceil(TARGET_WIN_SHARE * seeds)
    return {
        "strategy": strategy,
        "labels_half": labels,
        "auc_wins": f"{comparison['wins']}/{seeds}",
        "auc_enough_seeds": enough,
        "met": bool(labels) and enough,
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    data = curves(results)
    full = full_data_metric(results)
    table = {}
    for name, curve in data.items():
        aucs = normalised_auc(curve["x"], curve["y"])
        mean = curve["y"].mean(axis=0)
        target = TARGET_FRACTION * full if full else None
        table[name] = {
            "auc_mean": float(aucs.mean()),
            "auc_std": float(aucs.std()),
            "auc_per_seed": dict(zip(curve["seeds"], aucs.tolist(), strict=True)),
            "final_mean": float(mean[-1]),
            "labels_to_95": labels_to_reach(curve["x"], mean, target) if target else None,
            "labels_to_95_per_seed": {
                seed: (labels_to_reach(curve["x"], row, target) if target else None)
                for seed, row in zip(curve["seeds"], curve["y"], strict=True)
            },
            "seeds": len(curve["seeds"]),
        }
    from model.acquisition import DEFAULT_STRATEGY

    vs_random = {
        name: compare(table[name]["auc_per_seed"], table["random"]["auc_per_seed"])
        for name in table
        if name != "random" and "random" in table
    }
    budget = int(results["config"]["budget"])
    return {
        "protocol": results.get("protocol", "cold-start"),
        "task": results["config"]["task"],
        "default_strategy": DEFAULT_STRATEGY,
        "generator_version": results.get("generator_version"),
        "full_data": full,
        "pretrained": (results.get("pretrained") or {}).get("metrics", {}).get(results["metric"]),
        "strategies": table,
        "vs_random": vs_random,
        "inconsistency_vs_random": vs_random.get("inconsistency"),
        "target": target_verdict(table, vs_random.get(DEFAULT_STRATEGY), budget, DEFAULT_STRATEGY),
        "condition_shares": condition_shares(results),
        "final_by_condition": final_by_condition(results),
        "timing": timing(results),
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


def plot_condition_shares(results: dict[str, Any], path: Path) -> None:
    """Bars: the share of each condition among each strategy's selected pairs, next to the pool's."""
    plt = _matplotlib()
    shares = condition_shares(results)
    conditions = sorted(shares["(pool)"])
    names = ["(pool)", *sorted(k for k in shares if k != "(pool)")]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        x = np.arange(len(conditions)) + (index - (len(names) - 1) / 2) * width
        values = [100 * shares[name].get(c, 0.0) for c in conditions]
        ax.bar(x, values, width, label=name, color="lightgrey" if name == "(pool)" else None)
    ax.set_xticks(np.arange(len(conditions)), conditions, fontsize=8)
    ax.set_ylabel("% of selected pairs")
    config = results["config"]
    protocol = results.get("protocol", "cold-start")
    ax.set_title(f"{config['task']}, {protocol}: conditions of the labelled pairs")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _reach(value: int | None, budget: int) -> str:
    return str(value) if value is not None else f"> {budget}"


def _learning_rate(config: dict[str, Any]) -> str:
    if config.get("finetune_lr"):
        return f", learning rate {config['lr']:g} for the source model and {config['finetune_lr']:g} from it"
    return f", learning rate {config['lr']:g}"


def _generator(results: dict[str, Any]) -> str:
    version = results.get("generator_version")
    return f", synthetic generator version {version}" if version else ""


def _pretrained_line(results: dict[str, Any]) -> list[str]:
    pretrained = results.get("pretrained")
    if not pretrained:
        return []
    source, metric = pretrained["source"], results["metric"]
    value = pretrained["metrics"].get(metric)
    day = 100 * source["condition_shares"].get("clear_day", 0)
    if value is None:
        return []
    return [
        f"Warm start: every first model and the full-data model are fine-tuned from one model trained "
        f"{source['steps']} steps on {source['pairs']} generated source pairs (generator seed "
        f"{source['generator_seed']}, {day:.0f}% clear day); its test {metric} before fine-tuning: "
        f"{value:.4f}."
    ]


def markdown_summary(results: dict[str, Any], summary: dict[str, Any], *, heading: str = "#") -> str:
    """The summary as Markdown; ``heading`` is the level of its title (sub-headings get one more #)."""
    metric = results["metric"]
    config = results["config"]
    budget = int(config["budget"])
    full = summary["full_data"]
    training = (
        f"{config['steps_initial']} steps initially, {config['steps_per_cycle']} per cycle, "
        f"{config['full_data_steps']} for the full-data model"
        if config.get("steps_per_cycle")
        else f"{config['epochs_initial']} epochs initially, {config['epochs_per_cycle']} per cycle, "
        f"{config['full_data_epochs']} for the full-data model"
    )
    lines = [
        f"{heading} Active learning: {config['task']} on {config['dataset']}, "
        f"{results.get('protocol', 'cold-start')}",
        "",
        f"Pool {len(results['pool_ids'])} pairs, test {len(results.get('test_conditions', []))} pairs, "
        f"b={config['initial']}, B={budget}, seeds {config['seeds']}, width {config['width']}, "
        f"{config['image_size'][0]}x{config['image_size'][1]} pixels, batch {config['batch_size']}, "
        f"{training}{_learning_rate(config)}{_generator(results)}.",
        f"Full-data {metric} (fused branch, seeds {sorted(int(k) for k in results['full_data'])}, "
        f"{len(results['pool_ids'])} pairs): {full:.4f}; 95% of it: {TARGET_FRACTION * full:.4f}."
        if full is not None
        else "Full-data reference: not computed.",
        *_pretrained_line(results),
        "",
        f"| strategy | AUC ({metric}, mean ± sd) | final {metric} | labels to 95% of full data | seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    ranked = sorted(summary["strategies"].items(), key=lambda kv: -kv[1]["auc_mean"])
    for name, row in ranked:
        lines.append(
            f"| {name} | {row['auc_mean']:.4f} ± {row['auc_std']:.4f} | {row['final_mean']:.4f} | "
            f"{_reach(row['labels_to_95'], budget)} | {row['seeds']} |"
        )
    seeds = sorted({seed for _, row in ranked for seed in row["auc_per_seed"]})
    if seeds:
        lines += [
            "",
            "Per seed: AUC (labels to 95% of full data):",
            "",
            "| strategy | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
            "| --- |" + " --- |" * len(seeds),
        ]
        for name, row in ranked:
            cells = []
            for seed in seeds:
                if seed in row["auc_per_seed"]:
                    reach = _reach(row["labels_to_95_per_seed"].get(seed), budget)
                    cells.append(f"{row['auc_per_seed'][seed]:.4f} ({reach})")
                else:
                    cells.append("-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    comparisons = summary.get("vs_random") or {}
    if comparisons:
        lines += [
            "",
            "Paired over seeds against random (AUC difference per seed; exact sign test, and the exact "
            "sign-flip test of the mean difference, one-sided):",
            "",
            "| strategy | AUC differences | better in | sign test p | sign-flip p |",
            "| --- | --- | --- | --- | --- |",
        ]
        def mean_difference(item: tuple[str, dict[str, Any]]) -> float:
            return -float(np.mean(item[1]["auc_differences"] or [0.0]))

        for name, comparison in sorted(comparisons.items(), key=mean_difference):
            sign_p = comparison.get("p_sign_test", float("nan"))
            lines.append(
                f"| {name} | {[round(d, 4) for d in comparison['auc_differences']]} | "
                f"{comparison['wins']}/{len(comparison['seeds'])} | {sign_p:.3f} | "
                f"{comparison['p_one_sided']:.3f} |"
            )
    verdict = summary.get("target")
    if verdict:
        labels = {True: "yes", False: "no", None: "undetermined (random did not reach it within B)"}
        half = labels[verdict["labels_half"]]
        lines += [
            "",
            f"Target for the default strategy `{verdict['strategy']}` (reaches 95% of full data with at most "
            f"half of random's labels, and beats random on AUC in at least 4 of 5 seeds): "
            f"**{'met' if verdict['met'] else 'not met'}** (half the labels: {half}; "
            f"AUC better in {verdict['auc_wins']} seeds).",
        ]
    by_condition = summary.get("final_by_condition") or {}
    if by_condition:
        conditions = sorted({c for values in by_condition.values() for c in values})
        order = ["(initial)", *sorted(k for k in by_condition if not k.startswith("(")), "(full data)"]
        lines += [
            "",
            f"Final {metric} per test condition (mean over seeds; initial model and full-data model for "
            "reference):",
            "",
            "| model | " + " | ".join(conditions) + " |",
            "| --- |" + " --- |" * len(conditions),
        ]
        for name in order:
            if name in by_condition:
                cells = [f"{by_condition[name].get(c, float('nan')):.3f}" for c in conditions]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    shares = summary["condition_shares"]
    conditions = sorted(shares["(pool)"])
    lines += ["", "Share of each condition among selected pairs:", ""]
    lines.append("| strategy | " + " | ".join(conditions) + " |")
    lines.append("| --- |" + " --- |" * len(conditions))
    for name in ["(pool)", *sorted(k for k in shares if k != "(pool)")]:
        lines.append(
            f"| {name} | " + " | ".join(f"{100 * shares[name].get(c, 0):.0f}%" for c in conditions) + " |"
        )
    times = summary.get("timing")
    if times and times.get("wall_seconds") is not None:
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(times["strategy_seconds"].items()))
        sessions = results.get("sessions") or []
        where = ""
        if sessions:
            last = sessions[-1]
            where = (
                f" on {last.get('device')} with {last.get('torch_threads')} torch thread(s), "
                f"{last.get('cpu_count')} CPUs, {len(sessions)} session(s)"
            )
        parallel = results.get("parallel")
        elapsed = (
            f", run as {parallel['processes']} parallel processes: "
            f"{parallel['elapsed_seconds'] / 60:.1f} min elapsed"
            if parallel
            else ""
        )
        lines += [
            "",
            f"Wall time{where}: {times['wall_seconds'] / 60:.1f} min in all (initial models "
            f"{times['initial_seconds'] / 60:.1f}, full-data models {times['full_data_seconds'] / 60:.1f}, "
            f"cycles per strategy: {parts}){elapsed}.",
        ]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    out = Path(out_dir)
    summary = summarise(results)
    if summary["strategies"]:
        plot_learning_curves(results, out / "learning_curves.png")
        plot_condition_shares(results, out / "condition_shares.png")
    (out / "summary.md").write_text(markdown_summary(results, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
