"""Training curves as PNG bytes: loss and the validation metric per epoch, best epoch marked."""

from __future__ import annotations

import io


def training_curve_png(history: list[dict], *, metric_name: str = "validation metric",
                       best_epoch: int | None = None, title: str | None = None) -> bytes:
    """PNG of `history` (dicts with epoch, loss, validation_metric). Needs matplotlib, imported here so
    that importing the model never pulls it in; a bare Figure renders with Agg and leaves pyplot's
    global backend alone."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is in requirements.lock
        raise RuntimeError("training curves need matplotlib: pip install matplotlib") from error
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(8, 3.2), dpi=100)
    loss_axis, metric_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [h["loss"] for h in history], marker="o", color="tab:blue")
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="loss")
    metric_axis.plot(epochs, [h["validation_metric"] for h in history], marker="o", color="tab:green")
    metric_axis.set(xlabel="epoch", ylabel=metric_name, title=f"validation {metric_name}")
    if best_epoch is not None:
        for axis in (loss_axis, metric_axis):
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
