"""Training loop: a tiny network overfits a few synthetic pairs; checkpoints resume exactly."""

from pathlib import Path

import pytest
import torch

from model.checkpoint import read_checkpoint
from model.config import NetConfig
from model.data.dataset import PairDataset
from model.data.synthetic import SYNTH_CLASSES, SyntheticConfig, SyntheticRGBT
from model.data.transforms import eval_transform
from model.network import ThreeBranchNet
from model.train import TrainConfig, evaluate, fit

SIZE = (64, 80)
#: Objects of 19-38 px: large enough for the stride-8 pyramid of a 64x80 input.
BIG_OBJECTS = SyntheticConfig(min_height=0.3, max_height=0.6, max_objects=3)


def tiny_set(n: int = 8) -> PairDataset:
    return PairDataset(SyntheticRGBT(n, seed=0, config=BIG_OBJECTS, image_size=SIZE), eval_transform(SIZE))


@pytest.mark.parametrize(("task", "metric"), [("detection", "AP50"), ("segmentation", "mIoU")])
def test_tiny_network_overfits_a_few_pairs(task, metric):
    torch.manual_seed(0)
    model = ThreeBranchNet(NetConfig(task=task, class_names=SYNTH_CLASSES, width=0.125, image_size=SIZE))
    data = tiny_set()
    before = evaluate(model, data, device="cpu")[metric]
    history = fit(model, data, TrainConfig(epochs=120, batch_size=8, lr=3e-3, device="cpu"), progress=False)
    after = evaluate(model, data, device="cpu", by_condition=True)
    assert history[-1].losses["total"] < 0.25 * history[0].losses["total"]
    assert after[metric] > before + 0.4, (before, after[metric])
    assert after[metric] > 0.5
    assert set(after["by_condition"]) <= {"clear_day", "dusk", "night", "crossover", "cold_objects", "glare"}


def test_resume_continues_from_the_saved_epoch(tmp_path: Path):
    data = tiny_set(4)  # one batch of 4: one optimizer step per epoch
    config = NetConfig(class_names=SYNTH_CLASSES, width=0.125, image_size=SIZE)
    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    first = ThreeBranchNet(config)
    fit(first, data, TrainConfig(epochs=2, batch_size=4, device="cpu"), checkpoint_path=path, progress=False)
    saved = read_checkpoint(path)
    assert saved["extra"]["epoch"] == 2

    # Nothing left to train: the resumed model is exactly the saved one, not its own random init.
    torch.manual_seed(1)
    restored = ThreeBranchNet(config)
    again = TrainConfig(epochs=2, batch_size=4, device="cpu")
    history = fit(restored, data, again, checkpoint_path=path, resume=True, progress=False)
    assert [h.epoch for h in history] == [1, 2]
    for name, value in restored.state_dict().items():
        assert torch.equal(value, saved["state_dict"][name]), name

    resumed = ThreeBranchNet(config)
    history = fit(
        resumed,
        data,
        TrainConfig(epochs=4, batch_size=4, device="cpu"),
        checkpoint_path=path,
        resume=True,
        progress=False,
    )
    assert [h.epoch for h in history] == [1, 2, 3, 4]  # two restored from the checkpoint, two new
    final = read_checkpoint(path)
    assert final["extra"]["epoch"] == 4
    # The optimizer state came back too: AdamW counted the two saved steps before the two new ones.
    steps = {float(state["step"]) for state in final["optimizer"]["state"].values()}
    assert steps == {4.0}, steps


def test_empty_training_set_is_refused():
    model = ThreeBranchNet(NetConfig(width=0.125, image_size=SIZE))
    with pytest.raises(ValueError, match="empty"):
        fit(model, tiny_set(0), TrainConfig(epochs=1, device="cpu"), progress=False)
