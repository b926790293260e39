"""ViT against Rev-ViT: the activation peak over depth, and the step time of Rev-ViT against its twin.

Two measurements, both side by side in one run:

- :func:`depth_sweep`: the activation peak (NOTE [ The activation peak, defined once ] in
  :mod:`memprof.aggregation.step`) of one training step of ``vit`` and ``revvit`` at each depth,
  estimated under FakeTensorMode (deterministic, nothing allocated; it equals the measured
  tensor-owned bytes, see ``reports/memory.json``'s note), with the ratio Rev-ViT / ViT.
- :func:`time_twins`: the CPU time of one training step of ``vit``, ``revvit`` and
  ``revvit`` with ``reversible=False`` (its plain-autograd twin, the same weights), interleaved
  round by round on one intra-op thread; reported as ratios (fastest over fastest, and the
  range of the within-round ratios).

``reports/transformers.md`` and ``.png`` (``memprof report transformers``) and the transformer
section of ``reports/memory.md`` are rendered from these; ``benchmarks/revvit_depth.py``
prints the same tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..recording.threads import one_thread
from ..units import format_bytes

__all__ = [
    "ACTIVATION_TARGET",
    "DEPTHS",
    "REPORT_BATCH_SIZE",
    "TIME_TARGET",
    "depth_sweep",
    "plot_depth_sweep",
    "render_depth_sweep",
    "render_transformer_section",
    "time_twins",
    "transformer_memory_section",
    "write_transformer_reports",
]

#: Depths of the sweep (blocks of the ViT, couplings of the Rev-ViT).
DEPTHS: tuple[int, ...] = (6, 12, 24, 48)
REPORT_BATCH_SIZE = 128
#: Issue 15's targets at depth 12, batch 128: Rev-ViT's activation peak over ViT's, and its step
#: time over its reversible=False twin's.
ACTIVATION_TARGET = 0.20
TIME_TARGET = 1.35
TIMING_REPEATS = 3
#: Batch of the timed steps in the report: 32, since a batch-128 ViT step takes minutes on a
#: busy 2-core machine; the ratio is of the same arithmetic either way.
TIMING_BATCH_SIZE = 32


def depth_sweep(depths: Sequence[int] = DEPTHS, batch_size: int = REPORT_BATCH_SIZE,
                **options: Any) -> list[dict[str, Any]]:
    """Estimated activation and step peaks of vit and revvit at each depth.

    Args:
        depths: the depths.
        batch_size: samples per step.
        **options: other ViT options (``width``, ``heads``, ...), the same for both.

    Returns:
        One dict per depth: ``depth``, ``vit_activation_bytes``, ``revvit_activation_bytes``,
        ``vit_peak_bytes``, ``revvit_peak_bytes``, ``activation_ratio`` (Rev-ViT / ViT).
    """
    from ..models import get_model
    from .step import profile_step

    rows = []
    for depth in depths:
        prof = {}
        for name in ("vit", "revvit"):
            torch.manual_seed(0)
            model = get_model(name, depth=depth, **options)
            prof[name] = profile_step(model, batch_size, (3, 32, 32), estimate=True, name=name)
        rows.append({
            "depth": depth,
            "vit_activation_bytes": prof["vit"].activation_peak_bytes,
            "revvit_activation_bytes": prof["revvit"].activation_peak_bytes,
            "vit_peak_bytes": prof["vit"].peak_bytes,
            "revvit_peak_bytes": prof["revvit"].peak_bytes,
            "activation_ratio": prof["revvit"].activation_peak_bytes / prof["vit"].activation_peak_bytes,
        })
    return rows


def time_twins(depth: int = 12, batch_size: int = REPORT_BATCH_SIZE, repeats: int = TIMING_REPEATS,
               **options: Any) -> dict[str, Any]:
    """CPU time of one training step of vit, revvit and revvit(reversible=False), interleaved.

    Every model is set up and warmed up first; then each round runs one step of each in turn
    (NOTE [ Step times side by side ] in :mod:`memprof.aggregation.compare`), timed with
    ``time.process_time`` on one intra-op thread, so that other processes on the machine
    change the wall time but hardly the CPU time.

    Returns:
        ``{"times": {name: [seconds per round]}, "ratio": fastest revvit / fastest twin,
        "ratio_range": (min, max) of the within-round ratios, "vit_ratio": fastest revvit /
        fastest vit, "depth", "batch_size", "repeats"}``.
    """
    from ..models import get_model
    from .step import make_optimizer, run_step

    with one_thread():
        torch.manual_seed(0)
        models = {"vit": get_model("vit", depth=depth, **options)}
        torch.manual_seed(0)
        models["revvit"] = get_model("revvit", depth=depth, **options)
        models["revvit (reversible=False)"] = get_model("revvit", reversible=False, depth=depth, **options)
        models["revvit (reversible=False)"].load_state_dict(models["revvit"].state_dict())
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 3, 32, 32, generator=g)
        y = torch.randint(10, (batch_size,), generator=g)
        setups = {}
        for name, model in models.items():
            model.train()
            opt = make_optimizer("sgd", model.parameters())
            run_step(model, opt, x, y)  # warm-up: optimizer state, caches
            setups[name] = (model, opt)
        times: dict[str, list[float]] = {n: [] for n in models}
        for _ in range(repeats):
            for name, (model, opt) in setups.items():
                opt.zero_grad(set_to_none=True)
                t0 = time.process_time()
                run_step(model, opt, x, y)
                times[name].append(time.process_time() - t0)
    rev, twin = times["revvit"], times["revvit (reversible=False)"]
    within = [a / b for a, b in zip(rev, twin)]
    return {"times": times, "ratio": min(rev) / min(twin), "ratio_range": (min(within), max(within)),
            "vit_ratio": min(rev) / min(times["vit"]), "depth": depth, "batch_size": batch_size,
            "repeats": repeats}


def _mib(v: float) -> str:
    return format_bytes(v, "MiB")


def render_depth_sweep(rows: list[dict[str, Any]], batch_size: int) -> str:
    """The sweep as a Markdown table, with the flatness and the depth-12 target stated."""
    from tabulate import tabulate

    table = [[r["depth"], _mib(r["vit_activation_bytes"]), _mib(r["revvit_activation_bytes"]),
              f"{r['activation_ratio']:.3f}", _mib(r["vit_peak_bytes"]), _mib(r["revvit_peak_bytes"])]
             for r in rows]
    lines = [tabulate(table, headers=["depth", "vit act. peak (est.)", "revvit act. peak (est.)", "revvit / vit",
                                      "vit step peak (est.)", "revvit step peak (est.)"],
                      tablefmt="github", disable_numparse=True), ""]
    acts = [r["revvit_activation_bytes"] for r in rows]
    lo, hi = rows[0], rows[-1]
    lines.append(
        f"Batch {batch_size}, float32, SGD with momentum; estimated under FakeTensorMode. From depth "
        f"{lo['depth']} to {hi['depth']} ViT's activation peak grows {hi['vit_activation_bytes'] / lo['vit_activation_bytes']:.2f}x "
        f"and Rev-ViT's {max(acts) / min(acts):.2f}x (max over min): autograd keeps only the reversible "
        "sequence's output, and backward rebuilds one coupling at a time, so what it holds does not grow "
        "with depth.")
    at12 = next((r for r in rows if r["depth"] == 12), None)
    if at12 is not None:
        ok = "meets" if at12["activation_ratio"] <= ACTIVATION_TARGET else "misses"
        lines.append(f"At depth 12 Rev-ViT's activation peak is {at12['activation_ratio']:.3f} of ViT's: it {ok} "
                     f"the target of {ACTIVATION_TARGET:.2f}.")
    return "\n".join(lines) + "\n"


def render_transformer_section(rows: list[dict[str, Any]], timing: dict[str, Any] | None, batch_size: int) -> str:
    """The Markdown section on ViT and Rev-ViT (depth sweep, and step time against the twin)."""
    lines = ["## Transformers: ViT and Rev-ViT", "",
             "`vit` is a pre-norm ViT (patch 4, 192 wide, 3 heads); `revvit` its reversible twin (two "
             "streams, `Y1 = X1 + Attn(LN(X2))`, `Y2 = X2 + MLP(LN(Y1))`, one ReversibleSequence). Both have "
             "5,362,378 parameters at depth 12.", "", render_depth_sweep(rows, batch_size)]
    if timing is not None:
        lo, hi = timing["ratio_range"]
        ok = "meets" if timing["ratio"] <= TIME_TARGET else "misses"
        lines += [
            f"Step time at depth {timing['depth']}, batch {timing['batch_size']} (measured CPU time, one thread, "
            f"{timing['repeats']} interleaved rounds after a warm-up): Rev-ViT / its reversible=False twin "
            f"{timing['ratio']:.2f} (range over rounds {lo:.2f}-{hi:.2f}); Rev-ViT / ViT {timing['vit_ratio']:.2f}. "
            f"It {ok} the target of {TIME_TARGET:.2f}. The reversible backward runs every block's forward a "
            "second time (to rebuild its input and its graph), about a third more arithmetic than forward + "
            "backward.", ""]
    lines.append("MiB = 2^20 bytes.")
    return "\n".join(lines) + "\n"


def plot_depth_sweep(rows: list[dict[str, Any]], path: str | Path | None = None, batch_size: int = REPORT_BATCH_SIZE) -> Any:
    """Activation peak against depth for vit and revvit (MiB, estimated); returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    depths = [r["depth"] for r in rows]
    for key, label in (("vit_activation_bytes", "vit"), ("revvit_activation_bytes", "revvit")):
        ax.plot(depths, [r[key] / 2**20 for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("depth (blocks)")
    ax.set_ylabel("activation peak, MiB (estimated)")
    ax.set_title(f"Activation peak of a training step, batch {batch_size}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_transformer_reports(out_dir: Path) -> list[Path]:
    """``reports/transformers.md`` and ``transformers.png``: the depth sweep and the twin timing.

    Takes several minutes on 2 CPU cores (the step times are real, at batch 32).

    Returns:
        The paths written.
    """
    import io

    from ..reporting import atomic_write_bytes, atomic_write_text, provenance

    with one_thread():
        rows = depth_sweep()
    timing = time_twins(batch_size=TIMING_BATCH_SIZE)
    md = (f"{provenance('memprof report transformers')}\n\n# ViT and Rev-ViT\n\n"
          "`python benchmarks/revvit_depth.py` prints the same figures.\n\n"
          + render_transformer_section(rows, timing, REPORT_BATCH_SIZE).replace("## Transformers: ViT and Rev-ViT\n\n", "")
          + "\n![activation peak against depth](transformers.png)\n")
    buf = io.BytesIO()
    fig = plot_depth_sweep(rows)
    fig.savefig(buf, format="png", dpi=110)
    out = Path(out_dir)
    return [atomic_write_text(out / "transformers.md", md), atomic_write_bytes(out / "transformers.png", buf.getvalue())]


def transformer_memory_section(batch_size: int = REPORT_BATCH_SIZE) -> str:
    """The transformer section of ``reports/memory.md``: vit and revvit at depth 12 (estimated).

    Only depth 12 and no timing, so that ``memprof report memory`` stays quick; the depth sweep
    and the step times are in ``reports/transformers.md``.
    """
    with one_thread():
        rows = depth_sweep((12,), batch_size)
    return (render_transformer_section(rows, None, batch_size)
            + "\nThe sweep over depth (6-48) and the step time against the twin: [transformers.md](transformers.md).\n")
