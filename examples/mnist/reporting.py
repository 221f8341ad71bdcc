"""What a run reports: console lines, metrics.jsonl, TensorBoard events, plots, summary.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import jax

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES_PNG = "curves.png"
STEP_SIZES_PNG = "effective_step_sizes.png"
TENSORBOARD = "tensorboard"
OUTPUTS = (METRICS, SUMMARY, CURVES_PNG, STEP_SIZES_PNG, TENSORBOARD)


# What JAX itself reports about each compilation (jax.monitoring): tracing,
# lowering to MLIR and XLA's compile. The trainer subtracts it from the time of
# a dispatch, so examples/s measures training, not compiling.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_duration(event: str, duration_secs: float, **_: object) -> None:
    if event in COMPILE_EVENTS:
        _compile_seconds[0] += duration_secs


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far, as JAX's monitoring events report them."""
    return _compile_seconds[0]


class Reporter:
    """Writes records on the main process only; every other process is silent."""

    def __init__(self, workdir: str, *, enabled: bool = True, step: int = 0, say=print):
        """Keeps the records of ``metrics.jsonl`` up to ``step``, where the run continues;
        ``say`` prints each record's line."""
        self.workdir, self.enabled, self.say, self._tb = workdir, enabled, say, None
        if enabled:
            kept = [r for r in read_metrics(workdir) if r["step"] <= step]
            with open(os.path.join(workdir, METRICS), "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in kept)

    def _writer(self):
        """The TensorBoard writer, or None when tensorboardX is not installed.

        TensorBoard events are an extra: metrics.jsonl and the plots hold the
        same numbers, so a machine without tensorboardX (a GPU image, say)
        still trains and reports, after one line that says so.
        """
        if self._tb is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print("tensorboardX is not installed: no TensorBoard events (see metrics.jsonl).")
                self._tb = False
            else:
                self._tb = SummaryWriter(os.path.join(self.workdir, TENSORBOARD))
        return self._tb or None

    def record(self, record: dict) -> None:
        """Appends one evaluation record to metrics.jsonl and TensorBoard, and says its line."""
        if not self.enabled:
            return
        self.say(epoch_line(record))
        with open(os.path.join(self.workdir, METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._writer()
        if writer is None:
            return
        for key, value in _flatten(record):
            if key != "step":
                writer.add_scalar(key, value, record["step"])
        writer.flush()

    def finish(self, summary: dict) -> None:
        """Writes summary.json and the plots."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, SUMMARY), "w") as f:
            json.dump(summary, f, indent=2)
        plot(self.workdir)

    def close(self) -> None:
        """Flushes and closes the TensorBoard events (metrics.jsonl is closed after each line)."""
        if self._tb:
            self._tb.close()
            self._tb = None


def progress_bar(shown: bool, total: int, initial: int):
    """A tqdm bar of the run's steps; a disabled one does nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not shown)


def epoch_line(record: dict) -> str:
    """The line a run prints after each evaluation."""
    rate = record["examples_per_sec"]
    return (
        f"step {record['step']:>6} epoch {record['epoch']:.2f} | train loss "
        f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | test loss "
        f"{record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
        f"{rate or 0:,.0f} ex/s"
    )


def done_line(summary: dict, workdir: str) -> str:
    """The line a run ends with."""
    return (
        f"Done: test accuracy {summary['test_accuracy']:.4f}, test loss "
        f"{summary['test_loss']:.4f}, {summary['steps']} steps in "
        f"{summary['wall_time_s']:.1f} s. Results in {workdir}/"
    )


def _flatten(record: dict, prefix: str = "") -> Iterable[tuple[str, float]]:
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)):
            yield f"{prefix}{key}", value


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_summary(workdir: str) -> dict | None:
    """The summary.json of a finished run in ``workdir``, or None."""
    try:
        with open(os.path.join(workdir, SUMMARY)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def plot(workdir: str) -> None:
    """curves.png (loss, accuracy) and effective_step_sizes.png (median lr/denom per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(steps, [r[f"{split}_loss"] for r in records], "o-", label=split)
        ax_acc.plot(steps, [100 * r[f"{split}_accuracy"] for r in records], "o-", label=split)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, CURVES_PNG), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in records[-1]["effective_step_size"]:
        q = [r["effective_step_size"][layer] for r in records]
        ax.plot(steps, [x["p50"] for x in q], "o-", label=layer)
        ax.fill_between(steps, [x["p10"] for x in q], [x["p90"] for x in q], alpha=0.15)
    ax.set(
        xlabel="step",
        ylabel="lr / denom",
        yscale="log",
        title="effective step size (median, 10-90%)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, STEP_SIZES_PNG), dpi=100)
    plt.close(fig)
