"""Plots as PNG bytes: training curves (loss and the validation metric per epoch, best epoch marked),
the offline metrics against the baselines, and an experiment's arms over its days."""

from __future__ import annotations

import io


def _png(figure) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


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
    return _png(figure)


BAR_METRICS = ("ndcg@10", "recall@10", "precision@10", "map@10", "hit_rate@10", "mrr")


def metrics_bar_png(results: dict[str, dict], metric_names=BAR_METRICS, title: str | None = None) -> bytes:
    """PNG of grouped bars: one group per metric, one bar per model (the run and each baseline)."""
    from matplotlib.figure import Figure

    models = [name for name in results if isinstance(results[name], dict) and name != "skipped"]
    figure = Figure(figsize=(8, 3.4), dpi=100)
    axis = figure.subplots()
    width = 0.8 / max(1, len(models))
    for i, name in enumerate(models):
        values = [float(results[name].get(m, float("nan"))) for m in metric_names]
        axis.bar([j + i * width for j in range(len(metric_names))], values, width, label=name)
    axis.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(metric_names))], list(metric_names))
    axis.set(ylabel="value", title=title or "offline metrics on the held-out exposures")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return _png(figure)


def experiment_png(looks: list[dict], title: str | None = None) -> bytes:
    """PNG of an experiment over its days: each arm's cumulative accept rate (left), and the
    challenger minus the champion with its always-valid interval (right; 0 marked)."""
    from matplotlib.figure import Figure

    days = [look["day"] for look in looks]
    figure = Figure(figsize=(9, 3.4), dpi=100)
    rates, difference = figure.subplots(1, 2)
    rates.plot(days, [look["champion_rate"] for look in looks], marker="o", label="champion")
    rates.plot(days, [look["challenger_rate"] for look in looks], marker="o", label="challenger")
    rates.set(ylabel="accept rate (cumulative)", title="accept rate by arm")
    rates.legend(fontsize=8)
    difference.plot(days, [look["difference"] for look in looks], marker="o", color="tab:purple")
    difference.fill_between(days, [look["low"] for look in looks], [look["high"] for look in looks],
                            color="tab:purple", alpha=0.2, label="always-valid 95% interval")
    difference.axhline(0.0, color="grey", linewidth=1)
    difference.set(ylabel="challenger - champion", title="difference")
    difference.legend(fontsize=8)
    for axis in (rates, difference):
        axis.grid(alpha=0.3)
        axis.tick_params(axis="x", labelrotation=45, labelsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _png(figure)
