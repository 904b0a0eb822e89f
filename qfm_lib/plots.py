"""Plot helpers shared by the notebooks: saving figures and tables, image galleries."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .images import load_rgb


def _in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel: a notebook, papermill, JupyterLab."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def save_figure(fig, out_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save `fig` to out_dir/name. In a notebook kernel, also show the saved image as the cell's
    output and close the figure (so it is not shown twice); this works under any matplotlib backend,
    Agg included."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    print(f"saved {path}")
    if _in_kernel():
        from IPython.display import Image, display

        if path.suffix.lower() == ".png":
            png = path.read_bytes()
        else:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
            png = buffer.getvalue()
        display(Image(data=png, format="png"))
        plt.close(fig)
    return path


def save_table(table: pd.DataFrame, out_dir: str | Path, stem: str, floatfmt: str = ".3f",
               formats: tuple[str, ...] = ("csv", "md")) -> list[Path]:
    """Write tables/<stem>.csv (full precision) and .md / .tex (rounded)."""
    folder = Path(out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        if fmt == "csv":
            table.to_csv(path, index=False)
        elif fmt == "md":
            path.write_text(table.to_markdown(index=False, floatfmt=floatfmt) + "\n")
        elif fmt == "tex":
            path.write_text(table.to_latex(index=False, float_format=lambda v: format(v, floatfmt)))
        written.append(path)
    print("saved " + ", ".join(str(p) for p in written))
    return written


def thumbnail(path: str, side: int = 160) -> np.ndarray:
    img = load_rgb(path)
    img.thumbnail((side, side))
    return np.asarray(img)


def pair_gallery(pairs: pd.DataFrame, paths: dict[str, str], title: str, n: int = 6,
                 caption=lambda r: f"d={r['distance']:.2f}"):
    """Rows of image pairs with their MOS: one pair per column, a above b."""
    pairs = pairs.head(n)
    fig, axes = plt.subplots(2, max(1, len(pairs)), figsize=(2.2 * max(1, len(pairs)), 5), squeeze=False)
    for col, (_, r) in enumerate(pairs.iterrows()):
        for row, side in enumerate("ab"):
            ax = axes[row, col]
            ax.imshow(thumbnail(paths[r[f"image_{side}"]]))
            ax.set_title(f"{r[f'image_{side}']}\nMOS {r[f'mos_{side}']:.1f}", fontsize=8)
            ax.axis("off")
        axes[1, col].text(0.5, -0.12, caption(r), transform=axes[1, col].transAxes, ha="center", fontsize=8)
    for ax in axes.ravel()[2 * len(pairs):]:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def split_boxplots(results: pd.DataFrame, title: str, figsize: tuple[float, float], sharey: bool = False):
    """Test PLCC and SRCC per variant over splits: a box per variant with one dot per split.
    `title` may contain {metric}, which becomes PLCC or SRCC."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=figsize, sharey=sharey)
    for ax, metric in zip(axes, ["plcc", "srcc"]):
        sns.boxplot(data=results, y="variant", x=metric, ax=ax, color="lightsteelblue", showfliers=False)
        state = np.random.get_state()
        np.random.seed(0)  # seaborn jitters the dots with numpy's global generator: same figure every run
        try:
            sns.stripplot(data=results, y="variant", x=metric, ax=ax, color="k", size=3)
        finally:
            np.random.set_state(state)
        ax.set_title(title.format(metric=metric.upper()))
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def validation_vs_test(scores: pd.DataFrame, title: str, highlight: str | None = None,
                       figsize: tuple[float, float] = (8, 6.5)):
    """A slope chart of ranks: each variant (index) from its rank by median validation score (left) to its
    rank by median test score (right), with both scores in its labels; `highlight` drawn in colour."""
    fig, ax = plt.subplots(figsize=figsize)
    for name, row in scores.iterrows():
        colour, width = ("tab:red", 2.0) if name == highlight else ("0.45", 0.9)
        ax.plot([0, 1], [row["val_rank"], row["test_rank"]], color=colour, lw=width, marker="o", ms=3)
        ax.annotate(f"{name}  {row['val_score']:.3f}", (0, row["val_rank"]), xytext=(-6, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=7, color=colour)
        ax.annotate(f"{row['test_score']:.3f}  {name}", (1, row["test_rank"]), xytext=(6, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=7, color=colour)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(len(scores) + 0.5, 0.5)
    ax.set_xticks([0, 1], ["rank by median validation score", "rank by median test score"])
    ax.set_yticks([])
    ax.grid(False)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)
    return fig
