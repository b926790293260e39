"""Plots. Each figure is its own function taking DataFrames or a timeline, never a result object.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot (NOTE [ Figures without
pyplot ]); nothing here imports hook code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..units import MiB
from ..vocabulary import TRACKED_CATEGORIES, Mode

__all__ = ["plot_layer_activations", "plot_step_timeline", "plot_strategies", "plot_sweep"]

_PHASE_COLOURS = {"forward": "#dbe9f6", "backward": "#fde2cf", "optimizer": "#e3f1dc"}


# NOTE [ Figures without pyplot ]
# The figures below are matplotlib.figure.Figure objects built without pyplot: no backend is
# selected or switched (a notebook keeps its inline backend, a script needs no display), no
# global figure list grows, and savefig renders through Agg. Jupyter displays them as images.
def _new_figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_step_timeline(
    timeline: Any,
    path: str | Path | None = None,
    *,
    peak_bytes: int,
    mode: str,
    title: str,
) -> Any:
    """Live bytes of one training step by category, with the forward/backward/optimizer phases.

    The x axis is the tracker's event clock (one tick per allocation, free, save or module
    boundary), so that phases with many small ops are not squeezed. The allocator's peak (or
    the estimated peak) is drawn as a dashed line.

    Args:
        timeline: live bytes per category after every event (``by_category``: category name ->
            array, ``total``: their sum) and the phases' spans (``phases``: (phase, start, end));
            a step profile's ``timeline``.
        path: write a PNG there if given.
        peak_bytes: the step's peak, drawn as a line.
        mode: ``measured`` or ``estimated``, for the labels.
        title: the axes' title.

    Returns:
        The matplotlib Figure.
    """
    import numpy as np

    tl = timeline
    start = min(s for _, s, _ in tl.phases)
    x = np.arange(len(tl.total))[start:]
    fig = _new_figure(figsize=(10, 4.5))
    ax = fig.subplots()
    for phase, s, e in tl.phases:
        if phase in _PHASE_COLOURS:
            ax.axvspan(s, e, color=_PHASE_COLOURS[phase], zorder=0)
            ax.text((s + e) / 2, 1.0, phase, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
    ys = [tl.by_category[c.value][start:] / MiB for c in TRACKED_CATEGORIES]
    ax.stackplot(x, ys, labels=[c.value for c in TRACKED_CATEGORIES], alpha=0.85, zorder=1)
    label = f"peak ({mode}, allocator)" if mode == Mode.MEASURED else f"peak ({mode})"
    ax.axhline(peak_bytes / MiB, color="black", ls="--", lw=1, label=label)
    ax.set_xlabel("event (allocation, free, save, module boundary)")
    ax.set_ylabel("live MiB (2^20 bytes)")
    ax.set_title(title, pad=16)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(x[0], x[-1])
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


# -- sweeps, strategies and per-layer activations (plots from DataFrames) ------------------------

_METRIC_STYLES = {
    "activation_peak_bytes": ("-", "o", "activation peak"),
    "saved_bytes": ("--", "s", "autograd-saved (forward)"),
    "seed_activation_bytes": (":", "^", "seed convention (deck)"),
    "peak_bytes": ("-.", "D", "step peak"),
}


def _spans(values: Any, factor: float) -> bool:
    """Whether positive ``values`` span more than ``factor`` (a log axis then helps)."""
    v = [float(x) for x in values if x is not None and x == x and float(x) > 0]
    return len(v) > 1 and max(v) / min(v) > factor


def _finish(fig: Any, path: str | Path | None) -> Any:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_sweep(
    df: Any,
    path: str | Path | None = None,
    *,
    reference: str | None = None,
    kind: str = "estimated",
    title: str | None = None,
) -> Any:
    """Memory against batch size per model (left, middle) and savings in percent (right).

    Left: activation memory three ways (activation peak of a training step, bytes autograd
    saves in a forward, the deck's convention); middle: the step peak (parameters, gradients
    and optimizer state included); right: each model's saving against ``reference``. Colour is
    the model, line style the figure. Axes are logarithmic where the values span more than
    a factor of 8 (batch) or 20 (bytes); rows without figures (out of memory) are left out.

    Args:
        df: a :meth:`memprof.rendering.sweep.SweepResult.to_dataframe` frame (columns
            ``model``, ``batch_size``, the byte figures and ``<figure>_saving_pct``).
        path: write a PNG there if given.
        reference: the model of the savings (default: the first model in ``df``).
        kind: ``estimated`` or ``measured``, for the labels.
        title: the figure's title.

    Returns:
        The matplotlib Figure.
    """
    models = list(dict.fromkeys(df["model"]))
    reference = reference or models[0]
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    # a savings panel needs a second model: with one, it is left out rather than drawn empty
    fig = _new_figure(figsize=(16, 5) if len(models) > 1 else (11, 5))
    axes = fig.subplots(1, 3 if len(models) > 1 else 2)
    _sweep_memory_panels(axes[:2], df, models, colours, kind)
    if len(models) > 1:
        _sweep_savings_panel(axes[2], df, models, reference, colours)
    _mark_out_of_memory(axes, df, models, colours)
    _sweep_axes_and_legend(fig, axes, df, models, colours, kind, title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _sweep_memory_panels(axes: Any, df: Any, models: list[str], colours: dict[str, str], kind: str) -> None:
    """Left: activation memory three ways; middle: the step peak. One line per model and figure."""
    import pandas as pd

    panels = [
        (axes[0], ["activation_peak_bytes", "saved_bytes", "seed_activation_bytes"], "activation memory"),
        (axes[1], ["peak_bytes"], f"training-step peak ({kind})"),
    ]
    for ax, metrics, name in panels:
        for m in models:
            sub = df[df["model"] == m]
            for metric in metrics:
                ok = sub[metric].notna()
                if not ok.any():
                    continue
                ls, marker, _ = _METRIC_STYLES[metric]
                ax.plot(sub["batch_size"][ok], sub[metric][ok].astype(float) / MiB, ls=ls, marker=marker,
                        color=colours[m], ms=4)
        ax.set_title(name)
        ax.set_xlabel("batch size")
        ax.set_ylabel("MiB (2^20 bytes)")
        values = pd.concat([df[c].astype("Float64") for c in metrics]).dropna()
        if _spans(values, 20):
            ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)


def _mark_out_of_memory(axes: Any, df: Any, models: list[str], colours: dict[str, str]) -> None:
    """Mark each batch size that ran out of memory (its row has no figures): a dotted line and a label."""
    if "status" not in df:
        return
    for m in models:
        failed = df[(df["model"] == m) & df["status"].astype(str).str.startswith("out of memory")]
        for b in failed["batch_size"]:
            for ax in axes:
                ax.axvline(int(b), color=colours[m], ls=":", lw=1)
                ax.text(int(b), 0.5, f"{m}: out of memory", transform=ax.get_xaxis_transform(), rotation=90,
                        ha="right", va="center", fontsize=8, color=colours[m])


def _sweep_savings_panel(ax: Any, df: Any, models: list[str], reference: str, colours: dict[str, str]) -> None:
    """Right: each model's saving against the reference, in percent."""
    for m in models:
        if m == reference:
            continue
        sub = df[df["model"] == m]
        for metric in ("activation_peak_bytes", "seed_activation_bytes", "peak_bytes"):
            col = f"{metric}_saving_pct"
            ok = sub[col].notna()
            if not ok.any():
                continue
            ls, marker, _ = _METRIC_STYLES[metric]
            ax.plot(sub["batch_size"][ok], sub[col][ok], ls=ls, marker=marker, color=colours[m], ms=4)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(f"saving against {reference}")
    ax.set_xlabel("batch size")
    ax.set_ylabel("saving, % (higher is better)")
    ax.grid(True, which="major", alpha=0.3)


def _sweep_axes_and_legend(fig: Any, axes: Any, df: Any, models: list[str], colours: dict[str, str], kind: str,
                           title: str | None) -> None:
    """Batch-size ticks on every panel, one legend for models and figures, the title, the layout."""
    from matplotlib.lines import Line2D

    sizes = sorted(set(int(b) for b in df["batch_size"]))
    for a in axes:
        if _spans(sizes, 8):
            a.set_xscale("log", base=2)
        a.set_xticks(sizes)
        a.set_xticklabels([str(b) for b in sizes])
        a.minorticks_off()
    handles = [Line2D([], [], color=colours[m], lw=2, label=m) for m in models]
    handles += [Line2D([], [], color="black", ls=ls, marker=mk, ms=4, label=lab + (f" ({kind})" if "peak" in lab else ""))
                for ls, mk, lab in _METRIC_STYLES.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))


def plot_strategies(df: Any, path: str | Path | None = None, *, title: str | None = None) -> Any:
    """Memory against step time, one point per strategy (lower left is better).

    Filled markers are the activation peak, hollow ones the step peak of the same strategy,
    joined by a thin line, the strategy named by colour in the legend; the x axis is the step time as a ratio
    to plain autograd (fastest round over plain's fastest; a thick bar spans the ratios taken
    within each round, a measure of the run's noise).

    Args:
        df: a :meth:`memprof.rendering.compare.StrategyComparison.to_dataframe` frame
            (columns ``strategy``, ``activation_peak_bytes``, ``peak_bytes``, ``time_ratio``).
        path: write a PNG there if given.
        title: the figure's title.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: if no strategy has a step time (timing was switched off).
    """
    if df["time_ratio"].isna().all():
        raise ValueError("no step times to plot: the comparison ran without timing")
    fig = _new_figure(figsize=(8, 5.5))
    ax = fig.subplots()
    for i, r in enumerate(df.itertuples(index=False)):
        if r.time_ratio is None or r.time_ratio != r.time_ratio or r.activation_peak_bytes is None \
                or r.activation_peak_bytes != r.activation_peak_bytes:
            continue  # not timed, or out of memory
        c = f"C{i}"
        act, peak = r.activation_peak_bytes / MiB, r.peak_bytes / MiB
        ax.plot([r.time_ratio, r.time_ratio], [act, peak], color=c, lw=0.8, alpha=0.6)
        lo, hi = getattr(r, "time_ratio_min", None), getattr(r, "time_ratio_max", None)
        if lo is not None and hi is not None and lo == lo and hi == hi:  # the range over the rounds
            ax.plot([lo, hi], [act, act], color=c, lw=3, alpha=0.35, solid_capstyle="butt")
        # named in the legend, not beside the points: at small batches points coincide and labels collide
        ax.scatter([r.time_ratio], [act], color=c, s=60, zorder=3, label=r.strategy)
        ax.scatter([r.time_ratio], [peak], facecolors="none", edgecolors=c, s=60, zorder=3)
    ax.set_xlabel("step time / plain autograd's (measured, fastest rounds; bar: range of within-round ratios)")
    ax.set_ylabel("MiB (2^20 bytes): filled = activation peak, hollow = step peak")
    ax.set_ylim(bottom=0)
    lo = float(df.get("time_ratio_min", df["time_ratio"]).min())
    hi = float(df.get("time_ratio_max", df["time_ratio"]).max())
    pad = 0.08 * max(hi - lo, 0.5)
    ax.set_xlim(lo - pad, hi + pad)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, title="strategy (colour)", title_fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)


def plot_layer_activations(
    frames: dict[str, Any], batch_size: int, path: str | Path | None = None, *, bytes_per_element: int = 4
) -> Any:
    """Activation memory per table row, one panel per model: deck convention beside autograd's.

    Args:
        frames: model name -> :meth:`memprof.rendering.layer_table.LayerTable.to_dataframe` frame
            (columns ``name``, ``layer``, ``activations`` per sample, ``saved_bytes``).
        batch_size: the batch of the tables (the deck's convention is scaled to it).
        path: write a PNG there if given.
        bytes_per_element: element size of the deck's convention (4: float32).

    Returns:
        The matplotlib Figure.
    """
    import numpy as np

    n = len(frames)
    widths = [max(len(df), 4) for df in frames.values()]
    fig = _new_figure(figsize=(max(8, 0.32 * sum(widths) + 2), 5))
    axes = fig.subplots(1, n, squeeze=False, gridspec_kw={"width_ratios": widths}, sharey=True)
    for ax, (model, df) in zip(axes[0], frames.items()):
        x = np.arange(len(df))
        seed = df["activations"].astype(float) * batch_size * bytes_per_element / MiB
        saved = df["saved_bytes"].astype(float) / MiB
        ax.bar(x - 0.2, seed, width=0.4, label="deck convention (output elements)", color="C0")
        ax.bar(x + 0.2, saved, width=0.4, label="saved by autograd (measured)", color="C3")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{a}" for a in df["layer"]], rotation=90, fontsize=7)
        ax.set_title(f"{model}: {seed.sum():.1f} MiB (deck conv.) vs {saved.sum():.1f} MiB (autograd)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"MiB (2^20 bytes) at batch {batch_size}")
    axes[0][0].legend(fontsize=8)
    return _finish(fig, path)
