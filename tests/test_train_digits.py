"""Training on real data: scikit-learn's digits (split, augmentation, errors), short and long runs."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

from memprof.cli import main
from memprof.errors import UsageError
from memprof.models import get_model, list_models
from memprof.train import TrainConfig, load_datasets, train
from memprof.train.data import DIGITS_TEST_SIZE, check_dataset, load_digits

pytest.importorskip("sklearn", reason="the digits set ships with scikit-learn: pip install scikit-learn")


def _labels(ds) -> torch.Tensor:
    return ds.labels


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    a, b = load_digits(), load_digits()
    assert (len(a.train), len(a.test)) == (1437, DIGITS_TEST_SIZE) == (1437, 360)
    assert a.classes == tuple(str(i) for i in range(10))
    assert torch.equal(a.test.images, b.test.images) and torch.equal(_labels(a.train), _labels(b.train))
    assert torch.bincount(_labels(a.test), minlength=10).tolist() == [36] * 10
    # No test image is a training image (the raw set has no exact duplicates across the split).
    flat_train = a.train.images.flatten(1)
    for x in a.test.images[:40]:
        assert not (flat_train == x.flatten()).all(dim=1).any()
    x, y = a.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    # Normalised with the training images' statistics.
    assert abs(float(a.train.images.mean())) < 1e-4 and abs(float(a.train.images.std()) - 1) < 1e-3


def test_digits_augmentation_shifts_training_images_only() -> None:
    data = load_digits(max_shift=4)
    torch.manual_seed(0)
    x0 = data.train.images[5]
    shifted = [data.train[5][0] for _ in range(20)]
    assert any(not torch.equal(s, x0) for s in shifted)
    for s in shifted:  # each is x0 translated by (dy, dx) in [-4, 4]^2, background filled in
        found = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                pad = torch.nn.functional.pad(x0, (4, 4, 4, 4), value=data.train.fill)
                if torch.equal(pad[:, 4 + dy:36 + dy, 4 + dx:36 + dx], s):
                    found = True
        assert found
    assert all(torch.equal(data.test[3][0], data.test.images[3]) for _ in range(3))


def test_unknown_dataset_and_missing_scikit_learn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="unknown dataset 'mnist'; allowed: cifar10, digits"):
        check_dataset("mnist")
    with pytest.raises(UsageError, match="unknown dataset"):
        load_datasets(dataset="mnist")
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: exit 2 from parse_args
        main(["train", "--dataset", "mnist", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'mnist'" in err

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    rc = main(["train", "--dataset", "digits", "--model", "revvgg", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "needs scikit-learn" in err and "pip install scikit-learn" in err
    assert not (tmp_path / "o").exists()  # checked before any work


def test_reversible_model_learns_real_digits(tmp_path: Path) -> None:
    """A few dozen SGD steps of a small Rev-ViT (deck's recipe) on the real digits: loss falls, stays finite."""
    cfg = TrainConfig(model="revvit", dataset="digits", epochs=4, batch_size=64, lr=0.1, momentum=0.9,
                      weight_decay=5e-4, lr_step=5, limit_batches=8, device="cpu", progress=False, seed=0,
                      out_dir=str(tmp_path), model_options=dict(width=48, depth=2, heads=3))
    result = train(cfg)
    history = result.history
    assert len(result.model.blocks) == 2 and result.model.cfg.width == 48  # built from model_options
    losses = [h.loss for h in history]
    assert all(math.isfinite(v) for v in losses + [h.test_loss for h in history])
    assert losses[-1] < losses[0] - 0.05, losses
    assert history[-1].recon_rel_err is not None and history[-1].recon_rel_err < 1e-4
    assert (tmp_path / "train_log.csv").is_file()


def test_model_options_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for option, message in (("depth=x", "must be a positive integer"), ("foo=3", "has no option 'foo'"),
                            ("width=100", "not divisible by heads")):
        rc = main(["train", "--dataset", "digits", "--model", "vit", "--model-option", option,
                   "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    rc = main(["train", "--dataset", "digits", "--model", "vgg19", "--model-option", "depth=3", "--out", str(tmp_path / "o")])
    assert rc == 2 and "has no option 'depth'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


#: The recipe of reports/training.md (memprof.aggregation.training.RECIPE_COMMAND): the deck's (SGD, lr 0.1,
#: momentum 0.9, no warm-up, lr / 10 every 5 epochs: its 300-epoch schedule's first three phases scaled to
#: 15 epochs), with weight decay 5e-4.
RECIPE = dict(dataset="digits", epochs=15, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-4, lr_step=5,
              warmup_epochs=0, gamma=0.1, device="cpu", progress=False, seed=0)


def test_recipe_is_the_training_reports() -> None:
    from memprof.aggregation.training import TRAIN_DEFAULTS, TrainingRun

    keys = [flag.lstrip("-").replace("-", "_") for flag in TRAIN_DEFAULTS]
    command = "memprof train " + " ".join(f"--{k.replace('_', '-')} {RECIPE[k]}" for k in keys)
    assert TrainingRun("recipe", [], command).recipe_changes == []


_SLOW = pytest.mark.skipif(not os.environ.get("MEMPROF_SLOW_TRAINING"),
                           reason="15-epoch trainings of every registered model (and its twin): 15-30 minutes each on "
                           "one busy CPU core; set MEMPROF_SLOW_TRAINING=1 to run")


@pytest.mark.slow
@_SLOW
@pytest.mark.parametrize("name", list_models())
def test_every_model_reaches_95_percent_on_digits(name: str, tmp_path: Path) -> None:
    accs = {}
    for reversible in (True, False):
        torch.manual_seed(0)
        res = train(TrainConfig(model=name, reversible=reversible, out_dir=str(tmp_path / str(reversible)), **RECIPE))
        assert all(math.isfinite(h.loss) for h in res.history)
        accs[reversible] = res.history[-1].test_acc
        if not any(m.__class__.__name__ == "ReversibleSequence" for m in res.model.modules()):
            break  # no reversible twin to compare with
    assert accs[True] >= 0.95, accs
    if False in accs:
        assert abs(accs[True] - accs[False]) <= 0.01, accs


def test_warmup_raises_the_learning_rate_linearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_train import _cfg, _seeded_tiny

    with pytest.raises(UsageError, match="warmup epochs must be an integer >= 0"):
        train(_cfg(tmp_path, epochs=1, warmup_epochs=-1), _seeded_tiny())
    optimizers: list[torch.optim.Optimizer] = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    seen: list[float] = []
    model = _seeded_tiny()
    model.register_forward_pre_hook(lambda m, a: seen.append(optimizers[0].param_groups[0]["lr"]) if torch.is_grad_enabled() else None)
    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    # 32 images, batch 16: 2 steps per epoch; warm-up over 2 epochs (4 steps), then lr 0.1.
    train(_cfg(tmp_path / "w", epochs=3, warmup_epochs=2, lr=0.1, synthetic_size=32, batch_size=16), model)
    assert seen[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert seen[4:] == pytest.approx([0.1, 0.1])
