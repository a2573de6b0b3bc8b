"""The active-learning simulator: a tiny simulation end to end, its outputs, resume and validation."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.acquisition import DEFAULT_STRATEGY, compute_signals
from model.active import RESULTS_FILE, SimulationConfig, Simulator, merge_results, simulate
from model.checkpoint import load_model
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.synthetic import GENERATOR_VERSION, SYNTH_CLASSES, SyntheticRGBT
from model.data.transforms import eval_transform
from model.network import ThreeBranchNet
from model.report import markdown_summary, summarise
from model.train import TrainConfig, fit

STRATEGIES = ["random", "inconsistency", DEFAULT_STRATEGY]


def tiny_config(**changes) -> SimulationConfig:
    values = dict(
        task="detection",
        pool_size=24,
        test_size=12,
        initial=4,
        budget=12,
        seeds=[0, 1],
        strategies=STRATEGIES,
        steps_initial=2,
        steps_per_cycle=1,
        full_data_steps=1,
        width=0.0625,
        image_size=(32, 40),
        batch_size=4,
        device="cpu",
        synthetic_options={"min_height": 0.3, "max_height": 0.6},
    )
    values.update(changes)
    return SimulationConfig(**values)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: one thread is fastest, and robust on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One complete tiny simulation shared by the tests: (out dir, checkpoint dir, results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sim")
    out, checkpoints = root / "out", root / "checkpoints"
    results = simulate(tiny_config(), out, progress=False, checkpoint_dir=checkpoints, figure_pairs=2)
    torch.set_num_threads(threads)
    return out, checkpoints, results


def test_simulation_writes_results_plots_and_summary(finished):
    out, _, _ = finished
    for name in ("results.json", "learning_curves.png", "selected_pairs.png", "summary.md", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "checkpoints").exists()  # checkpoints went to their own folder
    saved = json.loads((out / RESULTS_FILE).read_text())
    assert saved["metric"] == "AP50"
    assert len(saved["pool_ids"]) == len(saved["pool_conditions"]) == 24
    assert set(saved["full_data"]) == set(saved["initial"]) == {"0", "1"}
    assert set(saved["runs"]) == {f"{s}/seed{seed}" for s in STRATEGIES for seed in (0, 1)}
    assert saved["wall_seconds"] > 0
    for run in saved["runs"].values():
        assert run["done"]
        assert [c["labelled_count"] for c in run["cycles"]] == [4, 8, 12]
        for cycle in run["cycles"][1:]:
            assert "AP50" in cycle["metrics"] and "by_condition" in cycle["metrics"]
            assert cycle["selected_ids"] == [saved["pool_ids"][i] for i in cycle["selected"]]
            assert cycle["wall_seconds"] >= cycle["train_seconds"] >= 0
    # Every strategy of a seed starts from the same initial model.
    for seed in (0, 1):
        starts = [saved["runs"][f"{s}/seed{seed}"]["cycles"][0] for s in STRATEGIES]
        assert starts[0]["labelled"] == starts[1]["labelled"] == saved["initial"][str(seed)]["labelled"]
        assert starts[0]["metrics"] == starts[1]["metrics"]
    figure = saved["selected_pairs_figure"]
    assert len(figure["pair_ids"]) == 2 and figure["strategy"] == DEFAULT_STRATEGY
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == set(STRATEGIES)
    assert summary["inconsistency_vs_random"]["seeds"] == [0, 1]
    assert (summary["protocol"], summary["task"]) == ("cold-start", "detection")
    assert summary["default_strategy"] == DEFAULT_STRATEGY == summary["target"]["strategy"]
    assert set(summary["vs_random"]) == set(STRATEGIES) - {"random"}
    assert summary["vs_random"][DEFAULT_STRATEGY]["seeds"] == [0, 1]
    assert set(summary["target"]) == {"strategy", "labels_half", "auc_wins", "auc_enough_seeds", "met"}
    text = (out / "summary.md").read_text()
    for expected in ("| inconsistency |", "| random |", "sign test", "Per seed", "Target", "Wall time"):
        assert expected in text


def test_selected_pairs_never_repeat_nor_include_the_initial_set(finished):
    _, _, results = finished
    for run in results["runs"].values():
        initial = set(run["cycles"][0]["labelled"])
        selected = [i for cycle in run["cycles"] for i in cycle["selected"]]
        assert len(selected) == len(set(selected)) == 8
        assert not initial & set(selected)
        assert sorted(initial | set(selected)) == run["cycles"][-1]["labelled"]


def test_resume_redoes_only_the_lost_cycle(finished, tmp_path, monkeypatch):
    source_out, source_checkpoints, _ = finished
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    shutil.copytree(source_out, out)
    shutil.copytree(source_checkpoints, checkpoints)
    path = out / RESULTS_FILE
    saved = json.loads(path.read_text())
    lost = saved["runs"]["inconsistency/seed1"]
    kept_cycles = lost["cycles"][:-1]
    removed = lost["cycles"][-1]
    lost["cycles"] = kept_cycles
    lost["done"] = False  # as if the process died before recording the last cycle
    path.write_text(json.dumps(saved))

    calls = []
    original = Simulator._train

    def counting(self, model, indices, epochs, steps, seed, dataset=None):
        calls.append(len(indices))
        return original(self, model, indices, epochs, steps, seed, dataset)

    monkeypatch.setattr(Simulator, "_train", counting)
    results = Simulator(tiny_config(), out, progress=False, checkpoint_dir=checkpoints, figure_pairs=0).run()
    assert calls == [12]  # one fine-tuning on the 12 labelled pairs of the last cycle; nothing else
    redone = results["runs"]["inconsistency/seed1"]["cycles"]
    assert redone[:-1] == kept_cycles  # finished cycles untouched (their timings too)
    assert redone[-1]["cycle"] == removed["cycle"] and redone[-1]["selected"] == removed["selected"]
    assert results["runs"]["inconsistency/seed1"]["done"]
    for key, run in results["runs"].items():
        if key != "inconsistency/seed1":
            assert run == saved["runs"][key]


def test_resume_refuses_other_settings(finished, tmp_path):
    source_out, _, _ = finished
    shutil.copytree(source_out, tmp_path / "out")
    with pytest.raises(ValueError, match="other settings"):
        Simulator(tiny_config(budget=16), tmp_path / "out", progress=False, checkpoint_dir=tmp_path / "c")


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_warm_start_fine_tunes_every_first_model_from_one_cached_source_model(tmp_path, monkeypatch):
    config = tiny_config(seeds=[0, 1], strategies=["random"], budget=8, pretrain_size=8, pretrain_steps=2)
    assert config.protocol == "warm-start" and tiny_config().protocol == "cold-start"
    starts: list[tuple[str, torch.Tensor]] = []
    original = Simulator._train

    def recording(self, model, indices, epochs, steps, seed, dataset=None):
        kind = "source" if dataset is not None else f"pool:{len(indices)}"
        starts.append((kind, _weights(model).clone()))
        return original(self, model, indices, epochs, steps, seed, dataset)

    monkeypatch.setattr(Simulator, "_train", recording)
    checkpoints = tmp_path / "c"
    results = simulate(config, tmp_path / "out", progress=False, checkpoint_dir=checkpoints, figure_pairs=0)
    source, _ = load_model(checkpoints / "pretrained.pt")
    kinds = [kind for kind, _ in starts]
    assert kinds.count("source") == 1  # trained once, shared by both seeds and the full-data model
    firsts = [w for kind, w in starts if kind in ("pool:4", "pool:24")]  # initial sets and full data
    assert len(firsts) == 4  # 2 initial models, 2 full-data models
    for weights in firsts:
        assert torch.equal(weights, _weights(source))
    assert results["protocol"] == "warm-start"
    assert results["pretrained"]["source"]["pairs"] == 8 and "AP50" in results["pretrained"]["metrics"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["protocol"] == "warm-start" and summary["pretrained"] is not None
    assert "Warm start" in (tmp_path / "out" / "summary.md").read_text()

    # A second simulation with the same source settings reuses the cache; other settings retrain it.
    starts.clear()
    simulate(replace(config, seeds=[2]), tmp_path / "out2", progress=False, checkpoint_dir=checkpoints)
    assert [kind for kind, _ in starts].count("source") == 0
    starts.clear()
    other = replace(config, seeds=[2], pretrain_steps=3)
    simulate(other, tmp_path / "out3", progress=False, checkpoint_dir=checkpoints, figure_pairs=0)
    assert [kind for kind, _ in starts].count("source") == 1
    with pytest.raises(ValueError, match="another generator seed"):
        tiny_config(pretrain_size=8, pretrain_seed=1234)


def test_unknown_strategy_fails_fast():
    with pytest.raises(ValueError, match="unknown strategy"):
        tiny_config(strategies=["random", "most-confusing"])
    with pytest.raises(ValueError):
        tiny_config(synthetic_options={"no_such_knob": 1})
    with pytest.raises(ValueError):
        tiny_config(initial=8, budget=4)
    with pytest.raises(ValueError):
        tiny_config(steps_per_cycle=0)


def test_steps_override_epochs():
    size = (32, 40)
    data = PairDataset(SyntheticRGBT(3, seed=0, image_size=size), eval_transform(size))
    model = ThreeBranchNet(NetConfig(class_names=SYNTH_CLASSES, width=0.0625, image_size=size))
    batches = []
    model.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    history = fit(model, data, TrainConfig(epochs=5, steps=4, batch_size=2, device="cpu"), progress=False)
    assert len(history) == 1
    assert batches == [2, 2, 2, 2]  # 4 steps of full batches, drawn with replacement from 3 pairs


def test_resume_refuses_results_of_another_generator_version(finished, tmp_path):
    source_out, _, _ = finished
    shutil.copytree(source_out, tmp_path / "out")
    path = tmp_path / "out" / RESULTS_FILE
    saved = json.loads(path.read_text())
    assert saved["generator_version"] == GENERATOR_VERSION
    del saved["generator_version"]  # results written before the version was recorded: version 1
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="generator version 1"):
        Simulator(tiny_config(), tmp_path / "out", progress=False, checkpoint_dir=tmp_path / "c")


def _part(results: dict, seeds: list[int], with_full: bool) -> dict:
    """A copy of ``results`` as one process of a parallel run would have written it."""
    part = json.loads(json.dumps(results))
    part["config"]["seeds"] = seeds
    part["initial"] = {k: v for k, v in part["initial"].items() if int(k) in seeds}
    part["runs"] = {k: v for k, v in part["runs"].items() if v["seed"] in seeds}
    part["full_data"] = part["full_data"] if with_full else {}
    part["wall_seconds"] = 10.0
    return part


def test_merge_results_puts_parallel_parts_back_together(finished):
    _, _, results = finished
    parts = [_part(results, [0], False), _part(results, [1], False), _part(results, [], True)]
    merged = merge_results(parts, elapsed_seconds=12.5)
    assert merged["config"]["seeds"] == [0, 1] and merged["config"]["full_data_seeds"] == [0, 1]
    for section in ("initial", "runs", "full_data"):
        assert merged[section] == results[section]
    assert merged["wall_seconds"] == 30.0  # compute summed over the parts
    assert merged["parallel"] == {"processes": 3, "elapsed_seconds": 12.5}
    assert "3 parallel processes" in markdown_summary(merged, summarise(merged))


def test_merge_results_refuses_parts_that_do_not_belong_together(finished):
    _, _, results = finished
    other = _part(results, [1], False)
    other["config"]["budget"] = 99
    with pytest.raises(ValueError, match="budget"):
        merge_results([_part(results, [0], False), other])
    clash = _part(results, [0], False)
    clash["runs"]["random/seed0"]["cycles"][1]["metrics"]["AP50"] = -1.0
    with pytest.raises(ValueError, match="random/seed0"):
        merge_results([_part(results, [0], False), clash])
    with pytest.raises(ValueError, match="nothing"):
        merge_results([])


def test_training_batches_from_worker_processes(tmp_path):
    """``num_workers`` > 0: the pool is rendered once in the parent, so workers start from a full cache."""
    config = tiny_config(seeds=[0], strategies=["random"], budget=8, num_workers=1, full_data=False)
    simulator = Simulator(config, tmp_path, progress=False, checkpoint_dir=tmp_path / "c", figure_pairs=0)
    results = simulator.run()
    assert len(simulator.splits.pool.cache) == config.pool_size
    assert [c["labelled_count"] for c in results["runs"]["random/seed0"]["cycles"]] == [4, 8]
    with pytest.raises(ValueError, match="num_workers"):
        tiny_config(num_workers=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: moving to the CPU is a no-op there")
def test_fine_tuning_after_scoring_on_cuda():
    """Scoring moves a CPU-loaded model to the GPU inside inference mode; training it next must still work."""
    size = (32, 40)
    data = PairDataset(SyntheticRGBT(4, seed=0, image_size=size), eval_transform(size))
    model = ThreeBranchNet(NetConfig(class_names=SYNTH_CLASSES, width=0.0625, image_size=size))
    compute_signals(model, data, device="cuda")
    history = fit(model, data, TrainConfig(epochs=1, steps=2, batch_size=2, device="cuda"), progress=False)
    assert len(history) == 1
