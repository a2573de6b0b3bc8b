"""`rgbt-al report`: how a project's model improved, for ML engineers.

One point per published version (pruned ones included, from the registry's history): its held-out metric
(AP50 for detection, mIoU for segmentation) against the number of labelled tasks it saw (train + held-out),
marked by status (accepted, rejected, initial). Written as a PNG and as the same data in JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ls_backend.registry import ModelRegistry

PRIMARY_METRIC = {"detection": "AP50", "segmentation": "mIoU"}
_STYLE = {"accepted": ("tab:blue", "o"), "rejected": ("tab:red", "x"), "initial": ("tab:gray", "s")}


def report_points(registry: ModelRegistry, project: str) -> dict[str, Any]:
    """The report's data: project, metric name, current version, one entry per version."""
    history = registry.history(project)
    task = history[0].task if history else "detection"
    name = PRIMARY_METRIC.get(task, "AP50")
    points = []
    for info in history:
        holdout = info.metrics.get("holdout_tasks") or 0
        value = info.metrics.get(name)
        baseline = info.baseline.get(name)
        points.append(
            {
                "version": info.version,
                "status": info.status,
                "created_at": info.created_at,
                "labelled_tasks": int(info.num_train_tasks) + int(holdout),
                "train_tasks": int(info.num_train_tasks),
                "holdout_tasks": int(holdout),
                name: value if isinstance(value, (int, float)) else None,
                f"current_{name}_on_same_tasks": baseline if isinstance(baseline, (int, float)) else None,
                "thresholds": info.thresholds,
                "note": info.note,
            }
        )
    return {
        "project": str(project),
        "task": task,
        "metric": name,
        "current": registry.current_version(project),
        "versions": points,
    }


def write_report(registry: ModelRegistry, project: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report-<project>.png`` and ``report-<project>.json`` under ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report_points(registry, project)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / f"report-{project}.png", out_dir / f"report-{project}.json"
    name = data["metric"]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    measured = [p for p in data["versions"] if p[name] is not None]
    accepted = [p for p in measured if p["status"] == "accepted"]
    if accepted:
        axes.plot(
            [p["labelled_tasks"] for p in accepted], [p[name] for p in accepted], color="tab:blue", lw=1
        )
    for status, (color, marker) in _STYLE.items():
        chosen = [p for p in measured if p["status"] == status]
        if chosen:
            axes.scatter(
                [p["labelled_tasks"] for p in chosen],
                [p[name] for p in chosen],
                color=color,
                marker=marker,
                label=f"{status} ({len(chosen)})",
                zorder=3,
            )
    for point in measured:
        label = point["version"].split("-")[1]  # v<N>
        axes.annotate(
            label, (point["labelled_tasks"], point[name]), textcoords="offset points", xytext=(4, 4)
        )
    unmeasured = len(data["versions"]) - len(measured)
    title = f"Project {project}: held-out {name} per model version"
    if unmeasured:
        title += f" ({unmeasured} without held-out tasks)"
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("labelled tasks (train + held-out)")
    axes.set_ylabel(f"held-out {name}")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    if measured:
        axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    plt.close(figure)
    js.write_text(json.dumps(data, indent=2) + "\n")
    return png, js
