"""The run's metrics for people: metrics.csv (one row per step, every loss term) and a loss plot."""

from __future__ import annotations

import numpy as np

from unmask_core import storage


def write_metrics(run_uri: str, history: list[dict[str, float]]) -> None:
    """metrics.csv (one row per step, every loss term) and a loss plot."""
    import csv
    import io

    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    storage.write_bytes_atomic(storage.join(run_uri, "metrics.csv"), buffer.getvalue().encode())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    for name in [c for c in columns if c not in ("step", "step_seconds")]:
        ax.plot(steps, [row.get(name, np.nan) for row in history], label=name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(run_uri, "losses.png"), image.getvalue())
