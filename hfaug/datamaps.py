"""Data maps: training-dynamics statistics of the teacher's checkpoints, and the select figures.

Two forms of the statistics, both over a probability tensor ``P[n, e, l]`` (row n, checkpoint
(epoch) e, label l; rows of ``P[n, e]`` sum to 1):

* the paper's form (:func:`dynamics`), used by the ambiguous and easy strategies on unlabelled
  generations (the authors' ``pseudo_label_xnli_cartography.py``)::

      variability[n]     = max_l  std_e  P[n, e, l]      (population std, ddof = 0)
      mean_confidence[n] = max_l  mean_e P[n, e, l]
      final_class[n]     = argmax_l P[n, E-1, l]         (the last checkpoint's prediction)

* the original gold-label form of Swayamdipta et al. (2020, "Dataset Cartography"), where a gold
  label ``y[n]`` exists (:func:`gold_dynamics`; for generations: the prompt's label)::

      confidence[n]  = mean_e P[n, e, y[n]]
      variability[n] = std_e  P[n, e, y[n]]              (ddof = 0, as in their code)
      correctness[n] = mean_e [argmax_l P[n, e, l] == y[n]]

The figures (:func:`write_figures`) are PNGs drawn with matplotlib's Agg canvas (no pyplot, no
global backend change): the data map (confidence against variability, one colour per class), the
label histogram and the confidence histogram, for the dataset card.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

#: scatter plots draw at most this many points (a seeded sample); 130,000 dots are a grey blob
MAX_SCATTER_POINTS = 20_000


@dataclass
class Dynamics:
    """The paper's per-row statistics over checkpoints (see the module docstring)."""

    variability: "np.ndarray"  # [n] float64
    mean_confidence: "np.ndarray"  # [n] float64
    final_class: "np.ndarray"  # [n] int64


@dataclass
class GoldDynamics:
    """Swayamdipta et al.'s per-row statistics of the gold label's probability."""

    confidence: "np.ndarray"  # [n]
    variability: "np.ndarray"  # [n]
    correctness: "np.ndarray"  # [n] in [0, 1]


def _as_tensor(probs) -> "np.ndarray":
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"checkpoint probabilities must be [rows, checkpoints, labels], got shape {p.shape}")
    return p


def dynamics(probs) -> Dynamics:
    """The paper's form: ``variability = max_l std_e P``, ``mean_confidence = max_l mean_e P``,
    ``final_class = argmax_l P[:, -1]``. ``probs`` is ``[rows, checkpoints, labels]``."""
    p = _as_tensor(probs)
    if p.shape[0] == 0:
        import numpy as np

        empty = np.zeros(0)
        return Dynamics(empty, empty, np.zeros(0, dtype=np.int64))
    return Dynamics(
        variability=p.std(axis=1).max(axis=-1),
        mean_confidence=p.mean(axis=1).max(axis=-1),
        final_class=p[:, -1, :].argmax(axis=-1),
    )


def gold_dynamics(probs, gold) -> GoldDynamics:
    """Swayamdipta et al.'s form with gold labels ``y``: ``confidence = mean_e P[n, e, y]``,
    ``variability = std_e P[n, e, y]``, ``correctness = mean_e [argmax_l P[n, e] == y]``."""
    import numpy as np

    p = _as_tensor(probs)
    y = np.asarray(gold, dtype=np.int64)
    if y.shape != (p.shape[0],):
        raise ValueError(f"need one gold label per row: {p.shape[0]} rows, {y.shape} labels")
    gold_p = np.take_along_axis(p, y[:, None, None], axis=2)[:, :, 0]  # [n, e]
    return GoldDynamics(
        confidence=gold_p.mean(axis=1),
        variability=gold_p.std(axis=1),
        correctness=(p.argmax(axis=2) == y[:, None]).mean(axis=1),
    )


# ---------------------------------------------------------------------------------------------
# figures


def _figure(width: float = 6.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def _sample(n: int, seed: int) -> "np.ndarray":
    import numpy as np

    if n <= MAX_SCATTER_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_SCATTER_POINTS, replace=False))


def plot_datamap(path: Path, variability, confidence, classes, label_names: Sequence[str], *,
                 title: str = "", seed: int = 0, ylabel: str = "confidence") -> Path:
    """Scatter of confidence (y) against variability (x), one colour per class."""
    import numpy as np

    variability, confidence, classes = map(np.asarray, (variability, confidence, classes))
    keep = _sample(len(classes), seed)
    fig, ax = _figure()
    for c, name in enumerate(label_names):
        mask = classes[keep] == c
        if mask.any():
            total = int((classes == c).sum())
            ax.scatter(variability[keep][mask], confidence[keep][mask], s=6, alpha=0.5,
                       label=f"{name} ({total})")
    ax.set_xlabel("variability")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "data map")
    if len(classes):
        ax.legend(loc="lower right", fontsize="small", markerscale=2)
    return _save(fig, path)


def plot_gold_datamap(path: Path, gold: GoldDynamics, *, title: str = "", seed: int = 0) -> Path:
    """Swayamdipta et al.'s map: gold-label confidence against variability, coloured by correctness."""
    import numpy as np

    keep = _sample(len(gold.confidence), seed)
    fig, ax = _figure()
    points = ax.scatter(gold.variability[keep], gold.confidence[keep], c=np.asarray(gold.correctness)[keep],
                        cmap="viridis", vmin=0.0, vmax=1.0, s=6, alpha=0.6)
    fig.colorbar(points, ax=ax, label="correctness")
    ax.set_xlabel("variability (gold label)")
    ax.set_ylabel("confidence (gold label)")
    ax.set_title(title or "data map (gold labels)")
    return _save(fig, path)


def plot_label_histogram(path: Path, classes, label_names: Sequence[str], *, title: str = "") -> Path:
    """Bar chart of the rows per class."""
    import numpy as np

    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(label_names))[: len(label_names)]
    fig, ax = _figure(5.0, 3.5)
    bars = ax.bar(list(label_names), counts)
    ax.bar_label(bars, labels=[str(int(c)) for c in counts])
    ax.set_ylabel("rows")
    ax.set_title(title or "teacher labels")
    return _save(fig, path)


def plot_confidence_histogram(path: Path, confidence, classes, label_names: Sequence[str], *,
                              title: str = "", bins: int = 20) -> Path:
    """Histogram of the teacher's max probability, one (overlaid) series per class."""
    import numpy as np

    confidence, classes = np.asarray(confidence, dtype=np.float64), np.asarray(classes)
    fig, ax = _figure(5.5, 3.8)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for c, name in enumerate(label_names):
        values = confidence[(classes == c) & np.isfinite(confidence)]
        if len(values):
            ax.hist(values, bins=edges, alpha=0.5, label=name)
    ax.set_xlabel("teacher max probability")
    ax.set_ylabel("rows")
    ax.set_title(title or "teacher confidence")
    if len(classes):
        ax.legend(fontsize="small")
    return _save(fig, path)


def write_figures(out_dir: Path, lang: str, label_names: Sequence[str], *, classes, confidence,
                  variability=None, mean_confidence=None, gold: GoldDynamics | None = None,
                  seed: int = 0) -> list[Path]:
    """Write the figures of one language's pool into ``out_dir``; returns their paths.

    ``labels-<lang>.png`` and ``confidence-<lang>.png`` always; ``datamap-<lang>.png`` when the
    dynamics (variability, mean confidence) are known; ``datamap-gold-<lang>.png`` when gold-label
    statistics are given.
    """
    out_dir = Path(out_dir)
    paths = [
        plot_label_histogram(out_dir / f"labels-{lang}.png", classes, label_names,
                             title=f"teacher labels ({lang})"),
        plot_confidence_histogram(out_dir / f"confidence-{lang}.png", confidence, classes, label_names,
                                  title=f"teacher confidence ({lang})"),
    ]
    if variability is not None and mean_confidence is not None:
        paths.append(plot_datamap(out_dir / f"datamap-{lang}.png", variability, mean_confidence, classes,
                                  label_names, seed=seed,
                                  title=f"data map ({lang}): max-label mean and std over checkpoints"))
    if gold is not None:
        paths.append(plot_gold_datamap(out_dir / f"datamap-gold-{lang}.png", gold,
                                       title=f"data map, gold labels ({lang})", seed=seed))
    return paths
