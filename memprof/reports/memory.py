"""``reports/memory.md``: whole-step memory of vgg19, revvgg and irevvgg, measured side by side.

A last section sets vit and revvit side by side at depth 12 (estimated; the sweep over depth is
``reports/transformers.md``, :mod:`memprof.reports.transformers`).

Run by ``memprof report`` (registered as ``memory`` in :data:`memprof.reports.REPORTS`).
Everything is measured in one process, one model after another, on one intra-op thread (on a
shared machine two OpenMP threads make timings swing tenfold). Byte figures are deterministic:
the attributed ones equal the FakeTensorMode estimate byte for byte, and they are also written
to ``reports/memory.json`` so that a test can check the report is not stale without rerunning
the measurement. Time figures are ratios only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..api.step import profile_step
from ..recording.allocations import conv_backward_scratch
from ..recording.estimate import NOT_MODELLED_CUDA
from ..recording.runner import StepSetup, make_optimizer, targets_for, time_steps, warm_up
from ..recording.threads import one_thread
from ..units import format_bytes
from ..vocabulary import Category
from .files import atomic_write_text, provenance
from .transformers import transformer_memory_section

__all__ = ["BATCH_SIZE", "GAP_BOUND", "MODELS", "TARGETS", "deterministic_figures", "write_memory_report"]

BATCH_SIZE = 128
MODELS = ("vgg19", "revvgg", "irevvgg")
#: targets the reversible models are held to: activation peak relative to vgg19's, and step
#: time relative to the same architecture built with reversible=False (the twin).
TARGETS = {"revvgg": (0.40, 1.4), "irevvgg": (0.17, 1.4)}
#: The deck's figures ("MB" in the deck; the numbers are MiB). Seed, not memprof output.
SEED = {"vgg19": {"activation_mib": 311.75, "param_mib": 78.45},
        "revvgg": {"activation_mib": 51.50, "param_mib": 79.43}}
#: the bound on the unattributed gap (memory no tensor owns), as a share of the measured peak.
GAP_BOUND = 0.03
TIMING_REPEATS = 3
#: convolutions (in channels, out channels, size) whose backward scratch the report measures
SCRATCH_SHAPES = ((64, 64, 16), (64, 64, 32))
CATEGORIES = tuple(c.value for c in Category)


def _plain_step_times(models: dict[str, torch.nn.Module], repeats: int) -> dict[str, Any]:
    """Fastest of ``repeats`` plain steps per model (and its phases), in CPU time, models interleaved by round."""
    setups = {}
    for name, model in models.items():
        model.train()
        x = torch.randn(BATCH_SIZE, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        opt = make_optimizer("sgd", model.parameters())
        targets = warm_up(model, opt, x, targets_for(BATCH_SIZE, torch.device("cpu"), 0))
        setups[name] = StepSetup(model, opt, x, targets)
    times = time_steps(setups, repeats, clock=time.process_time, phases=True)
    out: dict[str, Any] = {n: min(t.rounds) for n, t in times.items()}
    out["phases"] = {n: t.phases for n, t in times.items()}
    return out


def deterministic_figures(profile: Any) -> dict[str, Any]:
    """The figures of a profile that do not depend on timing or kernel scratch: tensor-owned bytes."""
    return {
        "attributed_peak_bytes": profile.attributed_peak_bytes,
        "activation_peak_bytes": profile.activation_peak_bytes,
        "at_peak": {k: v for k, v in profile.at_peak.items() if k != "unattributed"},
    }


def _mib(v: float) -> str:
    return format_bytes(v, "MiB")


def write_memory_report(out_dir: Path) -> list[Path]:
    """Measure the three models at batch 128 and write ``memory.md`` and ``memory.json``.

    Returns:
        The paths written.
    """
    from ..models import get_model

    with one_thread():
        profiles = {}
        for name in MODELS:
            torch.manual_seed(0)
            profiles[name] = profile_step(get_model(name), BATCH_SIZE, (3, 32, 32), name=name)
        torch.manual_seed(0)
        timed = {name: get_model(name) for name in MODELS}
        for name in TARGETS:
            torch.manual_seed(0)
            timed[f"{name} (reversible=False)"] = get_model(name, reversible=False)
        times = _plain_step_times(timed, TIMING_REPEATS)
        scratch = {shape: conv_backward_scratch(*shape, BATCH_SIZE) for shape in SCRATCH_SHAPES}
    text = _render(profiles, times, scratch)
    figures = {
        "batch_size": BATCH_SIZE,
        "note": "tensor-owned bytes of a measured step (equal to the FakeTensorMode estimate); "
                "checked by tests/test_estimate.py",
        "models": {n: deterministic_figures(p) for n, p in profiles.items()},
    }
    text += "\n" + transformer_memory_section()
    out = Path(out_dir)
    return [
        atomic_write_text(out / "memory.md", text),
        atomic_write_text(out / "memory.json", json.dumps(figures, indent=2) + "\n"),
    ]


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _intro() -> list[str]:
    """Title and what every figure means."""
    return [
        provenance("memprof report memory"),
        "",
        "# Whole-step memory: VGG-19, Rev-VGG and i-Rev-VGG at batch 128",
        "",
        f"One steady-state training step (SGD, momentum 0.9; after one warm-up step) per model on the CPU, "
        f"float32, input 3x32x32, batch {BATCH_SIZE}, torch {torch.__version__}, one intra-op thread, all in "
        "one run. **Peak** is measured at the c10 CPU allocator (every allocation and free replayed from "
        "the profiler's memory events); the breakdown is the tensor-owned bytes live at the peak, and "
        "**unattributed** is what the allocator held that no tensor owned (kernel workspaces). "
        "**Activation peak** = the peak over the step of live bytes other than parameters, gradients and "
        "optimizer state (saved activations, temporaries and the input batch; tensor-owned bytes). "
        "MiB = 2^20 bytes. Byte figures are deterministic; times are ratios of the fastest of "
        f"{TIMING_REPEATS} plain (uninstrumented) steps, in CPU time of the process (on a shared "
        "machine wall time swings with other processes' load; CPU time on one thread does much less).",
        "",
    ]


def _side_by_side(profiles: dict[str, Any], times: dict[str, Any]) -> list[str]:
    """Peaks and step times of every model against vgg19's."""
    base = profiles["vgg19"]
    rows = []
    for name, p in profiles.items():
        rows.append([
            name,
            _mib(p.peak_bytes), f"{p.peak_bytes / base.peak_bytes:.3f}",
            _mib(p.activation_peak_bytes), f"{p.activation_peak_bytes / base.activation_peak_bytes:.3f}",
            f"{times[name] / times['vgg19']:.2f}",
        ])
    return ["## Side by side (measured)", "",
            _table(rows, ["model", "peak", "peak / vgg19", "activation peak", "act. peak / vgg19",
                          "step time / vgg19"])]


def _breakdown(profiles: dict[str, Any]) -> list[str]:
    """Every category's bytes at each model's peak, and the phase the peak falls in."""
    rows = []
    for cat in CATEGORIES:
        row = [cat]
        for name, p in profiles.items():
            row += [_mib(p.at_peak[cat]), f"{100 * p.at_peak[cat] / p.peak_bytes:.1f}%"]
        rows.append(row)
    rows.append(["total"] + sum(([_mib(sum(p.at_peak.values())), "100.0%"] for p in profiles.values()), []))
    headers = ["category"] + sum(([n, "share"] for n in profiles), [])
    return [
        "", "## Breakdown at the peak (measured)", "", _table(rows, headers), "",
        "Phase of the peak: " + "; ".join(
            f"{n}: {_phase_of(p, 'total')} (activation peak in {_phase_of(p, 'activations')})"
            for n, p in profiles.items()) + ".",
        "",
    ]


def _targets(profiles: dict[str, Any], times: dict[str, Any]) -> list[str]:
    """The reversible models against their targets (activation peak, step time against the twin)."""
    base = profiles["vgg19"]
    rows = []
    for name, (act_target, time_target) in TARGETS.items():
        p = profiles[name]
        act = p.activation_peak_bytes / base.activation_peak_bytes
        t = times[name] / times[f"{name} (reversible=False)"]
        rows.append([
            name, f"{act:.3f}", f"<= {act_target:.2f}", "met" if act <= act_target else f"missed by {act - act_target:.3f}",
            f"{t:.2f}", f"<= {time_target:.1f}", "met" if t <= time_target else f"missed by {t - time_target:.2f}",
        ])
    return ["## Targets", "",
            _table(rows, ["model", "act. peak / vgg19", "target", "", "step time / twin", "target", ""])]


def _gap(profiles: dict[str, Any], scratch: dict[tuple[int, int, int], Any]) -> list[str]:
    """The unattributed gap against its bound, and the convolution scratch that explains it."""
    rows = []
    for name, p in profiles.items():
        gap = p.at_peak["unattributed"] / p.peak_bytes
        rows.append([name, _mib(p.at_peak["unattributed"]), f"{100 * gap:.1f}%", f"<= {100 * GAP_BOUND:.0f}%",
                     "met" if gap <= GAP_BOUND else f"missed by {100 * (gap - GAP_BOUND):.1f} points", _peak_op(p)])
    return [
        "", "The unattributed gap at the peak (memory no tensor owns), against the bound of "
        f"{100 * GAP_BOUND:.0f}% of the peak:", "",
        _table(rows, ["model", "unattributed", "share of peak", "bound", "", "outermost op at the allocator peak"]),
        "",
        "On the CPU this gap is scratch that oneDNN allocates inside `aten::convolution_backward`: "
        "it reorders the layer's input and its output gradient into a blocked layout, buffers that no "
        "tensor owns. Measured in this run, one 3x3 convolution's backward at batch "
        f"{BATCH_SIZE} (allocator peak inside the op minus the gradient tensors it returns): "
        + "; ".join(f"{ci}->{co} channels at {hw}x{hw}: {_mib(m.scratch_bytes)} "
                    f"({m.scratch_bytes / m.input_bytes:.1f}x the layer's input)"
                    for (ci, co, hw), m in scratch.items())
        + " (`python benchmarks/conv_workspace.py` covers more shapes). Where the allocator peak falls "
        "inside such a backward, the gap is that scratch, and the smaller a model's own peak, the "
        "larger its share. It is measured, shown as its own category, and not attributed to any tensor.",
    ]


def _twin_phases(times: dict[str, Any]) -> list[str]:
    """Per-phase time ratios of each reversible model to its plain-autograd twin."""
    return [
        "",
        "The twin is the same architecture built with `reversible=False` (ordinary autograd, same "
        "weights), timed in the same run. Per phase (fastest of the runs, reversible / twin): "
        + "; ".join(
            f"{n}: " + ", ".join(
                f"{ph} {times['phases'][n][ph] / times['phases'][n + ' (reversible=False)'][ph]:.2f}"
                for ph in ("forward", "backward", "optimizer"))
            for n in TARGETS)
        + ". Even in CPU time, these ratios move by about 0.1 from one run to the next on a shared "
        "machine (caches and memory bandwidth are shared); the byte figures do not move."
        " A reversible backward runs each block's F and G again (one extra forward of the "
        "reversible part) and splits, concatenates and subtracts halves; where the step-time target "
        "is missed, the backward ratio above shows it is that recomputation.",
        "",
    ]


def _holders(profiles: dict[str, Any]) -> list[str]:
    """The largest holders at each model's activation peak, and what they say about the targets."""
    lines = [
        "## What holds the activation peak",
        "",
        "The largest holders at each model's activation peak (module that allocated the storage; "
        "'recomputed in backward' = a reversible block's F/G run again inside backward):",
        "",
    ]
    for name, p in profiles.items():
        rows = [[h["category"], h["module"], _mib(h["bytes"])] for h in p.activation_peak_holders[:8]]
        lines += [f"**{name}** (activation peak {_mib(p.activation_peak_bytes)}):", "",
                  _table(rows, ["category", "module", "bytes"]), ""]
    return lines + _explain(profiles)


def _deck_contrast(profiles: dict[str, Any]) -> list[str]:
    """The deck's activation figures beside the saved-bytes peak and the activation peak."""
    v_seed, r_seed = SEED["vgg19"]["activation_mib"], SEED["revvgg"]["activation_mib"]
    saved = {n: _saved_peak(p) for n, p in profiles.items()}
    act = {n: p.activation_peak_bytes for n, p in profiles.items()}
    rows = [
        ["vgg19", f"{v_seed:.2f} MiB", _mib(saved["vgg19"]), _mib(act["vgg19"])],
        ["revvgg", f"{r_seed:.2f} MiB", _mib(saved["revvgg"]), _mib(act["revvgg"])],
        ["irevvgg", "(none)", _mib(saved["irevvgg"]), _mib(act["irevvgg"])],
        ["revvgg / vgg19", f"{r_seed / v_seed:.3f} (\"83.4% saved\")",
         f"{saved['revvgg'] / saved['vgg19']:.3f}", f"{act['revvgg'] / act['vgg19']:.3f}"],
        ["irevvgg / vgg19", "(none)", f"{saved['irevvgg'] / saved['vgg19']:.3f}", f"{act['irevvgg'] / act['vgg19']:.3f}"],
    ]
    return [
        "## The deck's convention, for contrast",
        "",
        "The deck counts, per sample, the output elements of each convolution, batch norm, pooling and "
        "linear layer, times 4 bytes and 128 samples, and a reversible block as zero. It writes MB; "
        "the figures are MiB.",
        "",
        _table(rows, ["model", "seed (deck)", "peak of bytes saved by autograd (measured)", "activation peak (measured)"]),
        "",
        "The deck's 83.4% compares stored layer outputs only. A training step also needs the "
        "transients of backward: for a reversible network the recomputed block's graph and its "
        "incoming and outgoing gradients, which the deck's convention does not count.",
        "",
    ]


def _cuda_estimates() -> list[str]:
    """What a CUDA estimate models and what it leaves out."""
    return [
        "## Estimates for a CUDA device",
        "",
        "`memprof profile MODEL --device cuda --estimate` replays the same storage stream through a "
        "model of the CUDA caching allocator (512-byte rounding, small/large pools, segment sizes, "
        "block splitting). Not modelled:",
        "",
        *[f"- {n}" for n in NOT_MODELLED_CUDA],
        "",
        "`benchmarks/cuda_check.py` compares these estimates with `max_memory_allocated` on a GPU.",
        "",
    ]


def _render(profiles: dict[str, Any], times: dict[str, Any], scratch: dict[tuple[int, int, int], Any]) -> str:
    """The whole of memory.md, section by section."""
    lines = [*_intro(), *_side_by_side(profiles, times), *_breakdown(profiles), *_targets(profiles, times),
             *_gap(profiles, scratch), *_twin_phases(times), *_holders(profiles), *_deck_contrast(profiles),
             *_cuda_estimates()]
    return "\n".join(lines)


def _saved_peak(profile: Any) -> int:
    """The highest bytes autograd held for backward at any moment of the step."""
    tl = profile.timeline
    start = min(s for _, s, _ in tl.phases)
    return int(tl.by_category["activations"][start:].max())


def _peak_op(profile: Any) -> str:
    """The outermost ATen op running at the allocator peak, from the profile's notes."""
    return next((x.split("inside ")[1] for x in profile.notes if "allocator peak" in x), "?")


def _phase_of(profile: Any, what: str) -> str:
    """The phase in which the total ('total') or activation ('activations') peak falls."""
    tl = profile.timeline
    start = min(s for _, s, _ in tl.phases)
    series = tl.total if what == "total" else tl.activations
    idx = start + int(series[start:].argmax())
    for phase, s, e in tl.phases:
        if s <= idx <= e:
            return phase
    return "?"


def _explain(profiles: dict[str, Any]) -> list[str]:
    """Prose on each reversible model's holders, computed from the holders themselves."""
    out = []
    base = profiles["vgg19"].activation_peak_bytes
    for name in TARGETS:
        p = profiles[name]
        act_target = TARGETS[name][0]
        ratio = p.activation_peak_bytes / base
        holders = p.activation_peak_holders
        saved = [h for h in holders if h["category"] == "activations" and "backward" not in h["module"]]
        transient = [h for h in holders if "backward" in h["module"]]
        if ratio <= act_target:
            out.append(f"- **{name}** meets its target ({ratio:.3f} <= {act_target:.2f}).")
            continue
        over = p.activation_peak_bytes - act_target * base
        out.append(
            f"- **{name}** misses its target by {ratio - act_target:.3f} of vgg19's activation peak "
            f"({_mib(over)} too much at batch {p.batch_size}). At its activation peak "
            f"({_phase_of(p, 'activations')}) the largest holders are tensors saved by "
            + ", ".join(f"`{h['module']}` ({_mib(h['bytes'])})" for h in saved[:4])
            + " and backward transients of "
            + ", ".join(f"`{h['module']}` ({_mib(h['bytes'])})" for h in transient[:3])
            + ". The stem and the max-pooling layers are not invertible, so autograd keeps their "
            "inputs and the pooling indices (int64, twice the bytes of a float32 output); each "
            "reversible sequence also keeps its output for backward, and while a block is rebuilt its "
            "recomputed graph and the gradients in flight are alive. irevvgg avoids the pooling indices "
            "by replacing max-pooling with invertible downsampling."
        )
    out.append("")
    return out
