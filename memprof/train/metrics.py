"""Classification metrics in the deck's form: per-class precision, recall, F1 and support.

The deck ("Results") prints scikit-learn's ``classification_report`` layout: one row per class,
then ``accuracy``, ``macro avg`` and ``weighted avg``. :class:`ClassificationReport` computes the
same numbers from a confusion matrix (no scikit-learn needed) and renders them as that text, a
DataFrame, CSV, markdown or JSON, and as a confusion-matrix plot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..rendering.result import Result
from ..reports.files import atomic_write_bytes, atomic_write_text, figure_png
from ..vocabulary import Format

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["ClassificationReport", "compute_confusion_matrix", "build_classification_report"]

#: CIFAR-10's class names, in label order.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def compute_confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix ``C[true, predicted]`` (int64, ``num_classes`` x ``num_classes``).

    Args:
        targets: true labels, 1-D integer tensor.
        preds: predicted labels, same shape.
        num_classes: the number of classes.

    Returns:
        The count matrix, rows indexed by the true class, columns by the predicted class.

    Raises:
        ValueError: if the shapes differ or a label is outside ``[0, num_classes)``.
    """
    targets = torch.as_tensor(targets).reshape(-1).long().cpu()
    preds = torch.as_tensor(preds).reshape(-1).long().cpu()
    if targets.shape != preds.shape:
        raise ValueError(f"targets and preds differ in length: {targets.numel()} vs {preds.numel()}")
    for name, t in (("target", targets), ("prediction", preds)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"a {name} label is outside [0, {num_classes}): min {int(t.min())}, max {int(t.max())}")
    flat = targets * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # NOTE [ Zero division ]
    # A class that is never predicted has no precision (0/0), one with no samples no recall.
    # Like scikit-learn's default we report 0.0 there rather than NaN, so averages stay defined.
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


@dataclass(frozen=True)
class ClassificationReport(Result):
    """Per-class precision/recall/F1/support and overall accuracy, from a confusion matrix.

    Follows the result protocol: ``to_dataframe()``, ``to_json()``, ``render(format)`` (text in
    the deck's layout, Markdown, CSV, JSON) and ``plot(path)`` (the confusion matrix).

    Attributes:
        confusion: ``C[true, predicted]`` counts (int64, K x K).
        class_names: one name per class, used in the legend, CSV and the plot.
    """

    confusion: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def support(self) -> torch.Tensor:
        """Samples per true class."""
        return self.confusion.sum(dim=1)

    @property
    def precision(self) -> torch.Tensor:
        c = self.confusion.double()
        return _safe_div(c.diagonal(), c.sum(dim=0))

    @property
    def recall(self) -> torch.Tensor:
        c = self.confusion.double()
        return _safe_div(c.diagonal(), c.sum(dim=1))

    @property
    def f1(self) -> torch.Tensor:
        p, r = self.precision, self.recall
        return _safe_div(2 * p * r, p + r)

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diagonal().sum()) / self.total if self.total else 0.0

    def _averages(self) -> dict[str, tuple[float, float, float]]:
        w = self.support.double()
        weights = w / w.sum() if float(w.sum()) > 0 else w
        out = {}
        for name, vals in (("macro avg", None), ("weighted avg", weights)):
            row = []
            for metric in (self.precision, self.recall, self.f1):
                row.append(float(metric.mean()) if vals is None else float((metric * vals).sum()))
            out[name] = (row[0], row[1], row[2])
        return out

    def to_rows(self) -> list[dict[str, object]]:
        """One dict per row of the deck's table (classes, accuracy, macro avg, weighted avg)."""
        rows: list[dict[str, object]] = []
        p, r, f, s = self.precision, self.recall, self.f1, self.support
        for k in range(self.num_classes):
            rows.append({"label": str(k), "name": self.class_names[k], "precision": float(p[k]),
                         "recall": float(r[k]), "f1-score": float(f[k]), "support": int(s[k])})
        rows.append({"label": "accuracy", "name": "", "precision": None, "recall": None,
                     "f1-score": self.accuracy, "support": self.total})
        for name, (ap, ar, af) in self._averages().items():
            rows.append({"label": name, "name": "", "precision": ap, "recall": ar, "f1-score": af,
                         "support": self.total})
        return rows

    def to_text(self, digits: int = 2) -> str:
        """The deck's layout (scikit-learn's ``classification_report``), plus a class legend."""
        rows = self.to_rows()
        width = max(len("weighted avg"), *(len(str(r["label"])) for r in rows))
        col = max(digits + 2, len("f1-score")) + 2

        def num(v: object) -> str:
            return "" if v is None else f"{v:.{digits}f}"

        lines = [" " * width + "".join(h.rjust(col) for h in ("precision", "recall", "f1-score", "support")), ""]
        for i, row in enumerate(rows):
            if i == self.num_classes:
                lines.append("")
            cells = [num(row["precision"]), num(row["recall"]), num(row["f1-score"]), str(row["support"])]
            lines.append(str(row["label"]).rjust(width) + "".join(c.rjust(col) for c in cells))
        legend = ", ".join(f"{k} {n}" for k, n in enumerate(self.class_names))
        lines += ["", f"classes: {legend}"]
        return "\n".join(lines) + "\n"

    def _render(self, fmt: Format, **options: Any) -> str:
        return self.to_text(**options) if fmt is Format.TEXT else self.to_markdown(**options) + "\n"

    def to_dataframe(self) -> pd.DataFrame:
        """The rows of :meth:`to_rows` as a pandas DataFrame indexed by label."""
        import pandas as pd

        return pd.DataFrame(self.to_rows()).set_index("label")

    def to_csv(self) -> str:
        """CSV with full precision (the text form rounds to 2 digits like the deck)."""
        return self.to_dataframe().to_csv()

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table of :meth:`to_rows`."""
        return self.to_dataframe().to_markdown(floatfmt=f".{digits}f")

    def to_json(self) -> str:
        """JSON with the rows, the accuracy and the confusion matrix."""
        return json.dumps(
            {"accuracy": self.accuracy, "rows": self.to_rows(),
             "confusion": self.confusion.tolist(), "class_names": list(self.class_names)},
            indent=2,
        )

    def plot(self, path: str | Path | None = None, title: str = "Confusion matrix") -> Any:
        """The confusion matrix (row-normalised colours, counts written in the cells).

        A ``matplotlib.figure.Figure`` on matplotlib's Agg canvas (no pyplot, no global backend switch).

        Args:
            path: where to write it as PNG (atomically); None to only return the figure.
            title: the figure title.

        Returns:
            The Figure.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        k = self.num_classes
        counts = self.confusion.double()
        rates = _safe_div(counts, counts.sum(dim=1, keepdim=True).expand_as(counts))
        fig = Figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        ticks = [f"{i} {n}" for i, n in enumerate(self.class_names)]
        ax.set_xticks(range(k), ticks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), ticks, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{title} (accuracy {self.accuracy:.2%}, n={self.total})", fontsize=9)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                        color="white" if float(rates[i, j]) > 0.5 else "black")
        fig.tight_layout()
        if path is not None:
            atomic_write_bytes(path, figure_png(fig, dpi=fig.dpi))
        return fig

    def write(self, out_dir: str | Path, header: str | None = None) -> list[Path]:
        """Write ``classification_report.txt``, ``.csv``, ``.json`` and ``confusion_matrix.png``.

        Args:
            out_dir: the report directory (created if missing).
            header: a first line for the text file and a ``provenance`` key in the JSON (the CSV
                stays plain, so that ``pandas.read_csv`` reads its header).

        Returns:
            The paths written.
        """
        out = Path(out_dir)
        lead = f"{header}\n\n" if header else ""
        paths = [  # the CSV stays plain CSV: its provenance is in the .txt and .json beside it
            atomic_write_text(out / "classification_report.txt", lead + self.to_text()),
            atomic_write_text(out / "classification_report.csv", self.to_csv()),
            atomic_write_text(out / "classification_report.json", json.dumps(
                {"provenance": header, **json.loads(self.to_json())}, indent=2) + "\n"),
        ]
        png = out / "confusion_matrix.png"
        self.plot(png)
        paths.append(png)
        return paths


def build_classification_report(
    targets: torch.Tensor, preds: torch.Tensor, class_names: Sequence[str] | int
) -> ClassificationReport:
    """Build a :class:`ClassificationReport` from labels and predictions.

    Args:
        targets: true labels.
        preds: predicted labels.
        class_names: the class names, or the number of classes (names become ``"0"``, ``"1"``...).

    Returns:
        The report.

    Raises:
        ValueError: as :func:`compute_confusion_matrix`.
    """
    names = tuple(str(i) for i in range(class_names)) if isinstance(class_names, int) else tuple(class_names)
    return ClassificationReport(compute_confusion_matrix(targets, preds, len(names)), names)
