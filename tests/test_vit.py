"""vit and revvit: options and their checks, attention, twins, memory over depth, compare --family vit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from memprof.aggregation.compare import list_strategies
from memprof.api.compare import compare_strategies
from memprof.api.transformers import depth_sweep
from memprof.cli import main
from memprof.errors import UsageError
from memprof.models import get_model
from memprof.models.strategies import checkpoint_sqrt, checkpoint_stages
from memprof.models.vit import Attention, ViTBlock
from memprof.recording.threads import one_thread
from memprof.rendering.training import render_training_report
from memprof.reports.training import read_training_runs
from memprof.reversible import ReversibleSequence
from tests.helpers import rel_err

SMALL = dict(width=24, depth=3, heads=3)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_defaults_and_options() -> None:
    vit, rev = get_model("vit"), get_model("revvit")
    assert count(vit) == count(rev) == 5_518_618
    assert len(vit.blocks) == 12 and len(rev.blocks) == 12
    assert vit.blocks[0].attn[1].heads == 3 and vit.patch_embed.proj[-1].kernel_size == (1, 1)  # conv stem, stride 4
    assert isinstance(rev.blocks, ReversibleSequence)
    small = get_model("revvit", num_classes=7, width=48, depth=2, heads=4, patch=8)
    assert len(small.blocks) == 2 and small.head.fc.out_features == 7
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # The same options give the same parameter names and shapes in both models' blocks.
    a = [tuple(v.shape) for v in get_model("vit", **SMALL).blocks[0].state_dict().values()]
    b = [tuple(v.shape) for v in get_model("revvit", **SMALL).blocks[0].state_dict().values()]
    assert a == b


def test_attention_starts_with_unit_scale_logits() -> None:
    # NOTE [ A ViT that SGD trains ]: q, k and v are each Xavier-uniform on their (D, D) block
    # (std D ** -0.5), every other Linear truncated-normal(0.02), so the attention logits start near
    # unit scale instead of ~0.08 and the heads do not all attend uniformly.
    from memprof.models.vit import Attention

    for name in ("vit", "revvit"):
        torch.manual_seed(0)
        model = get_model(name)
        attns = [m for m in model.modules() if isinstance(m, Attention)]
        assert len(attns) == 12
        for a in attns:
            d = a.proj.in_features
            for block in a.qkv.weight.detach().chunk(3, dim=0):
                assert abs(block.std().item() * d ** 0.5 - 1) < 0.05
            assert abs(a.proj.weight.std().item() - 0.02) < 0.002
        logits: list[float] = []

        def hook(mod, inp, out, logits=logits):
            x = inp[0]
            b, n, d = x.shape
            q, k, _ = mod.qkv(x).view(b, n, 3, mod.heads, d // mod.heads).permute(2, 0, 3, 1, 4)
            logits.append((q @ k.transpose(-1, -2) / (d // mod.heads) ** 0.5).std().item())

        handles = [a.register_forward_hook(hook) for a in attns]
        try:
            with torch.no_grad():
                model(torch.randn(4, 3, 32, 32))
        finally:
            for h in handles:
                h.remove()
        assert min(logits) > 0.3, logits  # std 0.02 everywhere gave 0.07-0.08


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(width=100), "width 100 is not divisible by heads 3"),
        (dict(image_size=30), "input size 30 is not divisible by the patch size 4"),
        (dict(depth=0), "depth must be a positive integer, got 0"),
        (dict(heads=2.5), "heads must be a positive integer"),
        (dict(widht=96), "unknown ViT option"),
    ],
)
@pytest.mark.parametrize("name", ["vit", "revvit"])
def test_bad_options_are_usage_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        get_model(name, **options)


def test_options_of_a_model_without_any() -> None:
    with pytest.raises(ValueError, match="model 'revvgg' takes no option.*allowed: reversible"):
        get_model("revvgg", width=8)
    with pytest.raises(ValueError, match="model 'vgg19' takes no option.*allowed: classifier_input_gain"):
        get_model("vgg19", width=8)


@pytest.mark.parametrize(("shape", "match"), [("3,30,30", "not divisible by the patch size 4"),
                                               ("3,28,28", "differs from the model's image_size 32")])
def test_cli_bad_input_size(shape: str, match: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["table", "revvit", "--input-shape", shape, "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and match in err


def test_attention_is_multi_head_softmax_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(12, 3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = [torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(4), dim=-1) @ vh
             for qh, kh, vh in zip(q.split(4, -1), k.split(4, -1), v.split(4, -1))]
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert rel_err(attn(x), expected) < 1e-12


def test_revvit_coupling_is_the_two_stream_block() -> None:
    """Y1 = X1 + Attn(LN(X2)), Y2 = X2 + MLP(LN(Y1)), with the ViT block's own modules."""
    torch.manual_seed(0)
    rev = get_model("revvit", **SMALL).double()
    c = rev.blocks[0]
    x1, x2 = torch.randn(2, 2, 64, 24, dtype=torch.float64)
    y1 = x1 + c.F(x2)
    y2 = x2 + c.G(y1)
    with torch.no_grad():
        y = c(torch.cat([x1, x2], dim=2))
        assert rel_err(y, torch.cat([y1, y2], dim=2)) < 1e-12
        assert rel_err(c.inverse(y), torch.cat([x1, x2], dim=2)) < 1e-12
    assert isinstance(c.F[0], nn.LayerNorm) and isinstance(c.F[1], Attention)
    assert isinstance(c.G[0], nn.LayerNorm) and isinstance(c.G[2], nn.GELU)


def test_revvit_twin_gradients_equal_in_float64() -> None:
    torch.manual_seed(0)
    rev = get_model("revvit", **SMALL).double()
    plain = get_model("revvit", reversible=False, **SMALL).double()
    plain.load_state_dict(rev.state_dict())
    assert list(rev.state_dict()) == list(plain.state_dict())
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    grads = []
    for m in (rev, plain):
        xi = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(m(xi), torch.tensor([1, 2, 3])).backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-10


def test_checkpointed_vit_matches_plain() -> None:
    torch.manual_seed(0)
    vit = get_model("vit", **SMALL).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = vit(x)
    ref.sum().backward()
    g_ref = [p.grad.clone() for p in vit.parameters()]
    for wrap in (checkpoint_stages, checkpoint_sqrt):
        vit.zero_grad()
        out = wrap(vit)(x)
        out.sum().backward()
        assert rel_err(out, ref) < 1e-12
        assert all(rel_err(p.grad, g) < 1e-10 for p, g in zip(vit.parameters(), g_ref))
    assert len(checkpoint_stages(vit).segments) == 3 + 1  # embed + block 1, blocks 2 and 3, head


def test_revvit_activation_peak_is_flat_in_depth() -> None:
    rows = depth_sweep((2, 4, 8), batch_size=4, width=24, heads=3)
    rev = [r["revvit_activation_bytes"] for r in rows]
    vit = [r["vit_activation_bytes"] for r in rows]
    assert rev[0] == rev[1] == rev[2]
    assert vit[0] < vit[1] < vit[2] and vit[2] > 2.5 * vit[0]
    assert rows[-1]["activation_ratio"] < rows[0]["activation_ratio"] < 1


def test_compare_family_vit() -> None:
    assert list_strategies("vit") == ["plain", "checkpoint-stages", "checkpoint-sqrt", "reversible", "offload"]
    result = compare_strategies(batch_size=4, family="vit", timing=False)
    by = {r["strategy"]: r for r in result.rows}
    assert set(by) == {"plain", "checkpoint-stages", "checkpoint-sqrt", "reversible"}
    assert by["reversible"]["model"] == "revvit" and by["plain"]["model"] == "vit"
    assert len({r["params"] for r in result.rows}) == 1
    assert (by["reversible"]["activation_ratio"] < by["checkpoint-stages"]["activation_ratio"]
            < by["checkpoint-sqrt"]["activation_ratio"] < 1)
    assert result.title.startswith("memprof compare: ViT")
    with pytest.raises(UsageError, match="unknown family 'resnet'; allowed: vgg, vit"):
        compare_strategies(family="resnet", timing=False)
    with pytest.raises(UsageError, match="unknown strategy 'invertible'"):
        compare_strategies("invertible", family="vit", timing=False)


def test_training_report_from_logs(tmp_path: Path) -> None:
    header = "epoch,loss,train_acc,test_loss,test_acc,lr,step_time_s,epoch_time_s,steps,peak_mem_source,peak_mem_rank0_bytes"
    logs = {"revvgg": [(1, 1.0, 0.90), (2, 0.5, 0.96)], "revvgg-plain": [(1, 1.1, 0.91), (2, 0.6, 0.955)],
            "vgg19": [(1, 2.0, 0.5)]}
    for name, rows in logs.items():
        (tmp_path / name).mkdir()
        lines = [header] + [f"{e},{loss},0.5,0.1,{acc},0.1,1.5,30,23,rss_epoch,{2**30}" for e, loss, acc in rows]
        (tmp_path / name / "train_log.csv").write_text("\n".join(lines) + "\n")
    runs = read_training_runs(tmp_path)
    assert [r.name for r in runs] == ["revvgg", "revvgg-plain", "vgg19"]  # sorted by run name
    assert runs[0].first_epoch_at(0.95) == 2 and runs[2].first_epoch_at(0.95) is None
    text = render_training_report(runs, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| revvgg ") and "| yes" in line)
    assert "96.0%" in row and "+0.5 (epoch 2)" in row and "1024.00 MiB" in row
    assert "Not trained yet: irevvgg, revvit, vit." in text
    assert "Unfinished" in text and "vgg19" in text.split("Unfinished")[1].splitlines()[0]
    assert "No runs found" in render_training_report([], tmp_path / "none")


def test_vit_block_is_pre_norm() -> None:
    torch.manual_seed(0)
    block = ViTBlock(get_model("vit", **SMALL).cfg).double()
    x = torch.randn(2, 64, 24, dtype=torch.float64)
    h = x + block.attn[1](block.attn[0](x))
    expected = h + block.mlp[1:](block.mlp[0](h))
    assert rel_err(block(x), expected) < 1e-12


def test_depth_sweep_text_states_growth_only_across_depths() -> None:
    from memprof.rendering.transformers import render_depth_sweep

    def row(depth: int, vit: int, rev: int) -> dict:
        return {"depth": depth, "vit_activation_bytes": vit, "revvit_activation_bytes": rev,
                "activation_ratio": rev / vit, "vit_peak_bytes": vit, "revvit_peak_bytes": rev}

    one = render_depth_sweep([row(12, 100 << 20, 8 << 20)], 128)
    assert "From depth" not in one and "One depth only" in one
    two = render_depth_sweep([row(6, 50 << 20, 8 << 20), row(12, 100 << 20, 8 << 20)], 128)
    assert "From depth 6 to 12 ViT's activation peak grows 2.00x and Rev-ViT's 1.00x" in two


def test_training_report_names_model_options() -> None:
    from memprof.aggregation.training import RECIPE_COMMAND, TrainingRun

    row = {"epoch": 1.0, "loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.96, "lr": 0.1,
           "step_time_s": 1.0}
    cmd = RECIPE_COMMAND.replace("MODEL [--no-reversible]", "vit --model-option depth=6 --model-option width=96")
    run = TrainingRun("vit", [row], cmd)
    assert run.model_options == ["depth=6", "width=96"] and TrainingRun("vit", [row]).model_options == []
    assert "| vit (depth=6, width=96) " in render_training_report([run], "runs/digits", known_models=["vit"])


def test_training_report_names_changed_recipe_settings() -> None:
    from memprof.aggregation.training import RECIPE_COMMAND, TrainingRun

    row = {"epoch": 1.0, "loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.9, "lr": 0.1,
           "step_time_s": 1.0}
    recipe = RECIPE_COMMAND.replace("MODEL [--no-reversible]", "vgg19").replace("RUN", "vgg19-warmup3")
    run = TrainingRun("vgg19-warmup3", [row], recipe.replace(" --out", " --warmup-epochs 3 --out"))
    assert run.model == "vgg19" and run.reversible and run.recipe_changes == ["warmup-epochs 3"]
    same = TrainingRun("vgg19", [row], recipe)
    assert same.recipe_changes == [] and same.model == "vgg19"
    # A flag the command does not give ran at memprof train's default, which may differ from the recipe's.
    short = TrainingRun("vgg19-b", [row], recipe.replace(" --batch-size 64", "").replace(" --weight-decay 5e-4", ""))
    assert short.recipe_changes == ["batch-size 128", "weight-decay 0"]
    assert TrainingRun("v", [row], recipe + " --warmup-epochs 0 --seed 0").recipe_changes == []
    twin = TrainingRun("x", [row], recipe.replace("vgg19 ", "revvgg --no-reversible "))
    assert twin.model == "revvgg" and not twin.reversible  # from the command, whatever the directory's name
    text = render_training_report([same, run], "runs/digits", known_models=["vgg19"])
    assert "| vgg19 (warmup-epochs 3) " in text and "| vgg19   " in text


def test_train_defaults_are_memprof_trains() -> None:
    # The report's reading of a command that omits a flag (aggregation may not import memprof.train).
    from memprof.aggregation.training import TRAIN_DEFAULTS
    from memprof.train.config import TrainConfig

    defaults = TrainConfig()
    assert TRAIN_DEFAULTS == {flag: getattr(defaults, flag.lstrip("-").replace("-", "_")) for flag in TRAIN_DEFAULTS}


def test_training_report_pairs_twins_by_run_name() -> None:
    from memprof.aggregation.training import RECIPE_COMMAND, TrainingRun, summarise_runs

    def run(name: str, acc: float) -> TrainingRun:
        cmd = RECIPE_COMMAND.replace("MODEL [--no-reversible]", "revvit" + (" --no-reversible" if "plain" in name else ""))
        if "warmup3" in name:
            cmd += " --warmup-epochs 3"
        return TrainingRun(name, [{"epoch": 1.0, "loss": 1.0, "test_acc": acc, "step_time_s": 1.0}], cmd)

    runs = [run("revvit", 0.90), run("revvit-plain", 0.89), run("revvit-warmup3", 0.96), run("revvit-warmup3-plain", 0.955)]
    gaps = {s.run.name: round(s.twin_gap[0], 6) for s in summarise_runs(runs)}
    assert gaps == {"revvit": 1.0, "revvit-plain": -1.0, "revvit-warmup3": 0.5, "revvit-warmup3-plain": -0.5}


def test_training_report_gathers_twin_gaps_over_seeds() -> None:
    from memprof.aggregation.training import (
        RECIPE_COMMAND,
        TrainingRun,
        summarise_runs,
        twin_gaps_over_seeds,
    )

    def run(name: str, acc: float, seed: int | None, warmup: int = 0) -> TrainingRun:
        cmd = RECIPE_COMMAND.replace("MODEL [--no-reversible]", "revvgg" + (" --no-reversible" if "plain" in name else ""))
        cmd += f" --warmup-epochs {warmup}" + (f" --seed {seed}" if seed is not None else "")
        return TrainingRun(name, [{"epoch": 1.0, "loss": 1.0, "test_acc": acc, "step_time_s": 1.0}], cmd)

    runs = [run("revvgg", 0.99, None), run("revvgg-plain", 0.98, None),
            run("revvgg-seed1", 0.985, 1), run("revvgg-seed1-plain", 0.99, 1),
            run("revvgg-w3", 0.97, None, 3), run("revvgg-w3-plain", 0.96, None, 3)]  # one seed: not gathered
    assert runs[2].recipe_changes == ["seed 1"]
    gaps = twin_gaps_over_seeds(summarise_runs(runs))
    assert list(gaps) == ["revvgg"]
    assert [(seed, round(g, 6)) for seed, g in gaps["revvgg"]] == [(0, 1.0), (1, -0.5)]
    text = render_training_report(runs, "runs/digits", known_models=["revvgg"])
    assert "- revvgg: +1.0 (seed 0), -0.5 (seed 1); mean +0.25 points over 2 seeds" in text
    assert "| revvgg (seed 1) " in text
