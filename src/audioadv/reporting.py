"""Tables and figures of results: Markdown matrices and PNG curves (no attack or model code here)."""
from __future__ import annotations

from pathlib import Path


def format_matrix(matrix: dict, *, diagonal: str = "N/A") -> str:
    """Markdown table of a transfer matrix (rows: crafted on, columns: evaluated on)."""
    cols = list(next(iter(matrix.values())).keys()) if matrix else []
    lines = ["| crafted on \\ evaluated on | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for src, row in matrix.items():
        cells = [(diagonal if (c == src and diagonal) else f"{row[c]:.3f}") for c in cols]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curve(rows: list[dict], x_key: str, path, *, title: str = "", xlabel: str | None = None,
               series_key: str | None = None, logx: bool = False) -> Path:
    """Fooling rate and mean SNR against ``x_key`` (e.g. "n_points" for Fig. 2, "kappa" for Fig. 1) as a PNG.

    rows: dicts with x_key, "success_rate", "mean_snr" and optionally series_key (one line per value).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_curve: no results to plot")
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get(series_key) if series_key else "", []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r[x_key])
        xs = [r[x_key] for r in rs]
        axes[0].plot(xs, [r["success_rate"] for r in rs], marker="o", label=str(name) or None)
        axes[1].plot(xs, [r["mean_snr"] for r in rs], marker="o", label=str(name) or None)
    for ax, lab in zip(axes, ("test success rate", "mean SNR (dB)")):
        ax.set_xlabel(xlabel or x_key)
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
        if logx:
            ax.set_xscale("log")
    if series_key:
        axes[0].legend(fontsize=8)
    axes[0].set_ylim(0, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
