import numpy as np
import pytest

from model.report import labels_to_reach, normalised_auc, sign_flip_test, summarise


def test_normalised_auc_is_mean_height():
    x = np.array([10, 20, 30])
    y = np.array([[0.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    # trapezoids: (0+1)/2*10 + (1+1)/2*10 = 15 over a span of 20
    np.testing.assert_allclose(normalised_auc(x, y), [0.75, 0.5])


def test_labels_to_reach():
    x = np.array([50, 100, 150])
    assert labels_to_reach(x, np.array([0.2, 0.6, 0.9]), 0.55) == 100
    assert labels_to_reach(x, np.array([0.2, 0.3, 0.4]), 0.55) is None


def test_sign_flip_test_exact_values():
    one, two = sign_flip_test(np.array([0.1, 0.2, 0.3]))
    assert one == pytest.approx(1 / 8) and two == pytest.approx(2 / 8)
    one, _ = sign_flip_test(np.array([0.1, -0.2, 0.3]))
    # sign vectors whose mean >= 0.0667: (+,+,+) 0.2, (+,-,+)=obs, (-,+,+) 0.1333, (-,-,+) 0 no -> 3/8
    assert one == pytest.approx(3 / 8)


def _run(strategy, seed, values, selected):
    cycles = [
        {"labelled_count": 10 * (i + 1), "metrics": {"AP50": v}, "selected": s}
        for i, (v, s) in enumerate(zip(values, selected, strict=True))
    ]
    return {"strategy": strategy, "seed": seed, "cycles": cycles, "done": True}


def test_summary_compares_strategies_and_conditions():
    results = {
        "metric": "AP50",
        "config": {
            "task": "detection",
            "dataset": "synthetic",
            "initial": 10,
            "budget": 30,
            "seeds": [0, 1],
            "width": 0.125,
            "image_size": [64, 80],
        },
        "pool_ids": [str(i) for i in range(6)],
        "pool_conditions": ["day", "day", "day", "day", "night", "night"],
        "full_data": {"0": {"metrics": {"AP50": 0.8}}, "1": {"metrics": {"AP50": 0.8}}},
        "runs": {
            "random/seed0": _run("random", 0, [0.2, 0.4, 0.6], [[], [0], [1]]),
            "random/seed1": _run("random", 1, [0.2, 0.5, 0.6], [[], [2], [3]]),
            "inconsistency/seed0": _run("inconsistency", 0, [0.2, 0.7, 0.8], [[], [4], [5]]),
            "inconsistency/seed1": _run("inconsistency", 1, [0.2, 0.6, 0.79], [[], [4], [0]]),
        },
    }
    summary = summarise(results)
    table = summary["strategies"]
    assert table["inconsistency"]["auc_mean"] > table["random"]["auc_mean"]
    assert table["inconsistency"]["labels_to_95"] == 30  # mean 0.795 >= 0.76 first at 30
    assert table["random"]["labels_to_95"] is None
    assert summary["inconsistency_vs_random"]["wins"] == 2
    shares = summary["condition_shares"]
    assert shares["inconsistency"]["night"] == pytest.approx(3 / 4)
    assert shares["random"]["night"] == 0.0
    assert shares["(pool)"]["night"] == pytest.approx(1 / 3)
