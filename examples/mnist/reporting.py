"""What a run reports: console lines, metrics.jsonl, TensorBoard events, plots, summary.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import jax
from tqdm.auto import tqdm

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES_PNG = "curves.png"
STEP_SIZES_PNG = "effective_step_sizes.png"
TENSORBOARD = "tensorboard"
OUTPUTS = (METRICS, SUMMARY, CURVES_PNG, STEP_SIZES_PNG, TENSORBOARD)

# JAX's own reports of each compilation (tracing, lowering, XLA's compile): the
# trainer subtracts them from a dispatch's time, so examples/s measures training.
COMPILE_EVENTS = {
    f"/jax/core/compile/{e}_duration"
    for e in ("jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile")
}


class CompileTime:
    """Seconds this process has spent compiling since :meth:`listen`, as JAX reports them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._listening = False

    def listen(self) -> None:
        """Starts counting; registers the listener once per process (jax 0.7 cannot remove it)."""
        if not self._listening:
            jax.monitoring.register_event_duration_secs_listener(self._on_duration)
            self._listening = True

    def _on_duration(self, event: str, duration_secs: float, **_: object) -> None:
        if event in COMPILE_EVENTS:
            self.seconds += duration_secs


compile_time = CompileTime()  # the trainer calls compile_time.listen() when it starts


class Reporter:
    """A run's progress bar, console lines, metrics.jsonl, TensorBoard events, plots and
    summary.json. Only the main process reports. Closed as a context manager."""

    def __init__(
        self, workdir: str, step: int, last_step: int, progress: bool = True, log=print
    ) -> None:
        """Starts at ``step``, where the run continues: metrics.jsonl keeps the records to it."""
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        shown = progress and self.enabled
        self._bar = tqdm(total=last_step, initial=step, disable=not shown)
        self.say = self._bar.write if shown else log  # above the bar, which stays at the bottom
        self._tb = None
        if not self.enabled:
            return
        kept = [r for r in read_metrics(workdir) if r["step"] <= step]
        with open(os.path.join(workdir, METRICS), "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in kept)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD))

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
        if self._tb:
            self._tb.close()

    def progress(self, num_steps: int, loss: float) -> None:
        """Advances the progress bar by ``num_steps`` steps, the last of which had ``loss``."""
        self._bar.update(num_steps)
        self._bar.set_postfix(loss=f"{loss:.4f}")

    def record(self, record: dict) -> None:
        """Appends one evaluation record to metrics.jsonl and TensorBoard, and says its line."""
        if not self.enabled:
            return
        self.say(epoch_line(record))
        with open(os.path.join(self.workdir, METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in _flatten(record):
            self._tb.add_scalar(key, value, record["step"])
        self._tb.flush()

    def finish(self, summary: dict) -> None:
        """Writes summary.json and the plots, and says the run's last line."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, SUMMARY), "w") as f:
            json.dump(summary, f, indent=2)
        plot(self.workdir)
        self.say(done_line(summary, self.workdir))


def epoch_line(record: dict) -> str:
    """The line a run prints after each evaluation."""
    return (
        f"step {record['step']:>6} epoch {record['epoch']:.2f} | train loss "
        f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | test loss "
        f"{record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
        f"{record['examples_per_sec'] or 0:,.0f} ex/s"
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
        elif isinstance(value, (int, float)) and key != "step":
            yield f"{prefix}{key}", value


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def finished(workdir: str, step: int, total_steps: int, log=print) -> dict | None:
    """The summary of the run in ``workdir`` if it already ended at ``step``, said in the log."""
    try:
        with open(os.path.join(workdir, SUMMARY)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if step < total_steps or summary["steps"] != step:
        return None
    log(f"The run in {workdir} is finished (step {step} of {total_steps}); its summary:")
    log(done_line(summary, workdir))
    return summary


def plot(workdir: str) -> None:
    """curves.png (loss, accuracy) and effective_step_sizes.png (lr/denom per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    steps = [r["step"] for r in records]
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        loss.plot(steps, [r[f"{split}_loss"] for r in records], "o-", label=split)
        accuracy.plot(steps, [100 * r[f"{split}_accuracy"] for r in records], "o-", label=split)
    loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    accuracy.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    _save(fig, os.path.join(workdir, CURVES_PNG))
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in records[-1]["effective_step_size"] if records else ():
        q = [r["effective_step_size"][layer] for r in records]
        ax.plot(steps, [x["p50"] for x in q], "o-", label=layer)
        ax.fill_between(steps, [x["p10"] for x in q], [x["p90"] for x in q], alpha=0.15)
    title = "effective step size (median, 10-90%)"
    ax.set(xlabel="step", ylabel="lr / denom", yscale="log", title=title)
    _save(fig, os.path.join(workdir, STEP_SIZES_PNG))


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
