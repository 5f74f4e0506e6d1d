"""Training plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from gendeploy.fileio import atomic_write


def save_loss_curve(history: list[dict[str, float]], path: Path) -> None:
    """Discriminator and generator losses (and an upscaler's L1) against step, moving-averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not history:
        return
    steps = np.array([m["step"] for m in history])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    keys = [("loss_d", "tab:blue"), ("loss_g", "tab:orange")]
    if "loss_pixel" in history[0]:  # upscalers: the L1 part of the generator's loss
        keys.append(("loss_pixel", "tab:green"))
    for key, color in keys:
        values = np.array([m[key] for m in history])
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color=color, label=f"{key} (moving avg {window})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("GAN losses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
