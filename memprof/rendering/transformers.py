"""ViT against Rev-ViT as Markdown and a plot: the depth sweep and the step time against the twin.

Inputs are the plain rows and dicts of :mod:`memprof.aggregation.transformers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..aggregation.transformers import ACTIVATION_TARGET, REPORT_BATCH_SIZE, TIME_TARGET
from ..units import MiB, format_bytes
from .plots import _new_figure

__all__ = ["plot_depth_sweep", "render_depth_sweep", "render_transformer_section"]

SECTION_TITLE = "## Transformers: ViT and Rev-ViT"


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
    setting = f"Batch {batch_size}, float32, SGD with momentum; estimated under FakeTensorMode."
    if len(rows) > 1:
        lines.append(
            f"{setting} From depth {lo['depth']} to {hi['depth']} ViT's activation peak grows "
            f"{hi['vit_activation_bytes'] / lo['vit_activation_bytes']:.2f}x "
            f"and Rev-ViT's {max(acts) / min(acts):.2f}x (max over min): autograd keeps only the reversible "
            "sequence's output, and backward rebuilds one coupling at a time, so what it holds does not grow "
            "with depth.")
    else:
        lines.append(f"{setting} One depth only: how the peaks grow with depth is in the depth sweep.")
    at12 = next((r for r in rows if r["depth"] == 12), None)
    if at12 is not None:
        ok = "meets" if at12["activation_ratio"] <= ACTIVATION_TARGET else "misses"
        lines.append(f"At depth 12 Rev-ViT's activation peak is {at12['activation_ratio']:.3f} of ViT's: it {ok} "
                     f"the target of {ACTIVATION_TARGET:.2f}.")
    return "\n".join(lines) + "\n"


def render_transformer_section(rows: list[dict[str, Any]], timing: dict[str, Any] | None, batch_size: int,
                               *, heading: bool = True) -> str:
    """The Markdown section on ViT and Rev-ViT (depth sweep, and step time against the twin).

    Args:
        rows: the depth sweep's rows.
        timing: the twin timing (None: not timed).
        batch_size: the sweep's batch.
        heading: start with the section's ``##`` heading.
    """
    lines = [SECTION_TITLE, ""] if heading else []
    counts = "; ".join(f"{r['params']:,} at depth {r['depth']}" for r in rows if r.get("params") is not None)
    lines += ["`vit` is a pre-norm ViT (a conv stem of stride 4, 192 wide, 3 heads, a BatchNorm head); `revvit` "
              "its reversible twin (two streams, `Y1 = X1 + Attn(LN(X2))`, `Y2 = X2 + MLP(LN(Y1))`, one "
              "ReversibleSequence)." + (f" Both have the same parameters: {counts}." if counts else ""),
              "", render_depth_sweep(rows, batch_size)]
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


def plot_depth_sweep(rows: list[dict[str, Any]], path: str | Path | None = None,
                     batch_size: int = REPORT_BATCH_SIZE) -> Any:
    """Activation peak against depth for vit and revvit (MiB, estimated); returns the Figure."""
    fig = _new_figure(figsize=(6, 4))
    ax = fig.subplots()
    depths = [r["depth"] for r in rows]
    for key, label in (("vit_activation_bytes", "vit"), ("revvit_activation_bytes", "revvit")):
        ax.plot(depths, [r[key] / MiB for r in rows], marker="o", label=label)
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
