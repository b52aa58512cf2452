"""The run's metrics for people: metrics.csv (one row per step, every loss term) and a loss plot.

metrics.csv only grows by appending the rows since the previous checkpoint, so neither memory nor a
checkpoint carries the whole history; the plot is drawn from the file."""

from __future__ import annotations

import csv
import io

import numpy as np

from unmask_core import storage

METRICS_FILE = "metrics.csv"
PLOT_POINTS = 2000  # rows drawn per curve at most: a plot of a million steps reads the file, not a list
NOT_LOSSES = ("step", "step_seconds", "wall_time", "adam_step", "resumed_from_step")


def format_losses(row: dict[str, float]) -> str:
    """A metrics row's losses for people: `loss 0.532 (l2 0.211, lpips 0.310, id 0.011)`."""
    terms = [f"{name} {row[name]:.4g}" for name in metrics_columns(row) if name not in (*NOT_LOSSES, "loss")]
    total = f"loss {row['loss']:.4g}" if "loss" in row else ""
    return f"{total} ({', '.join(terms)})" if total and terms else total or ", ".join(terms) or "no losses"


def metrics_columns(row: dict[str, float]) -> list[str]:
    return sorted(row, key=lambda k: (k != "step", k))


def _csv_text(rows: list[dict[str, float]], columns: list[str], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def append_metrics(run_uri: str, rows: list[dict[str, float]]) -> None:
    """Append rows to RUN/metrics.csv (created with a header by the first call)."""
    if not rows:
        return
    uri = storage.join(run_uri, METRICS_FILE)
    if not storage.exists(uri):
        storage.write_bytes_atomic(uri, _csv_text(rows, metrics_columns(rows[0]), header=True).encode())
        return
    columns = storage.first_line(uri).split(",")
    storage.append_bytes(uri, _csv_text(rows, columns, header=False).encode())


def read_metrics(run_uri: str) -> list[dict[str, float]]:
    uri = storage.join(run_uri, METRICS_FILE)
    if not storage.exists(uri):
        return []
    text = storage.read_bytes(uri).decode()
    return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(io.StringIO(text))]


def truncate_metrics(run_uri: str, last_step: int) -> None:
    """Keep the rows up to `last_step`: a run resumed from a checkpoint redoes the steps after it.
    Rewrites the file once per (re)start, never during training."""
    rows = [row for row in read_metrics(run_uri) if row["step"] <= last_step]
    uri = storage.join(run_uri, METRICS_FILE)
    if rows:
        storage.write_bytes_atomic(uri, _csv_text(rows, metrics_columns(rows[0]), header=True).encode())
    else:
        storage.delete(uri)


def plot_metrics(run_uri: str) -> None:
    """RUN/losses.png from RUN/metrics.csv: every loss term against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_uri)
    if not rows:
        return
    rows = rows[:: max(1, len(rows) // PLOT_POINTS)]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in rows]
    for name in [c for c in metrics_columns(rows[0]) if c not in NOT_LOSSES]:
        ax.plot(steps, [row.get(name, np.nan) for row in rows], label=name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(run_uri, "losses.png"), image.getvalue())
