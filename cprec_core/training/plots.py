"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

def _save(fig, png_path: Path) -> Path:
    """The figure written to ``png_path`` (its folder made) and closed."""
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


PHASE_COLOURS = {"warmup": "#fde68a", "stable": "#bfdbfe", "anneal": "#bbf7d0"}


def training_curves(log_path: Path, png_path: Path, title: str = "") -> Path:
    """Loss and learning rate per optimiser step; CPT's phases shaded and its data switch
    marked (an SFT log has neither)."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    start = 0
    phased = bool(rows) and all("phase" in r and "data" in r for r in rows)
    for i, row in enumerate(rows + [None] if phased else []):
        if row is None or row["phase"] != rows[start]["phase"]:
            for ax in (ax_loss, ax_lr):
                ax.axvspan(steps[start] - 0.5, steps[i - 1] + 0.5,
                           color=PHASE_COLOURS.get(rows[start]["phase"], "#eee"), alpha=0.6,
                           label=rows[start]["phase"] if ax is ax_loss else None)
            start = i
    switches = [r["step"] for a, r in zip(rows, rows[1:]) if phased and a["data"] != r["data"]]
    for s in switches:
        for ax in (ax_loss, ax_lr):
            ax.axvline(s - 0.5, color="black", linestyle="--", linewidth=1)
    ax_loss.plot(steps, [r["loss"] for r in rows], color="#1d4ed8", marker=".")
    ax_loss.set_ylabel("loss")
    if phased:
        ax_loss.legend(loc="upper right", fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in rows], color="#b91c1c", marker=".")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimiser step (dashed: data switch)")
    ax_loss.set_title(title)
    return _save(fig, png_path)


def preference_curves(log_path: Path, png_path: Path, title: str = "") -> Path:
    """DPO per optimiser step: the loss (ln 2 where the policy is still the reference), the
    reward margin of chosen over rejected, and the share of pairs it orders right."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
    for ax, key, colour, label in zip(axes, ("loss", "margin", "accuracy"),
                                      ("#1d4ed8", "#15803d", "#b91c1c"),
                                      ("loss", "reward margin", "accuracy")):
        ax.plot(steps, [r[key] for r in rows], color=colour, marker=".")
        ax.set_ylabel(label)
    axes[0].axhline(0.6931, color="grey", linestyle=":", linewidth=1)  # ln 2: no preference yet
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_xlabel("optimiser step")
    axes[0].set_title(title)
    return _save(fig, png_path)


def epoch_curves(history: list[dict], png_path: Path, title: str = "") -> Path:
    """A next-item model per epoch: the training loss and the validation NDCG@10 and HR@10
    that early stopping reads."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_valid) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax_loss.plot(epochs, [r["loss"] for r in history], color="#1d4ed8", marker=".")
    ax_loss.set_ylabel("loss")
    for key, colour in (("ndcg@10", "#15803d"), ("hr@10", "#b91c1c")):
        ax_valid.plot(epochs, [r[key] for r in history], color=colour, marker=".", label=key)
    ax_valid.set_ylabel("validation")
    ax_valid.legend(loc="lower right", fontsize=8)
    ax_valid.set_xlabel("epoch")
    ax_loss.set_title(title)
    return _save(fig, png_path)
