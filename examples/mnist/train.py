"""Training and evaluation of the MNIST models with ``optax_rmsprop.rmsprop``.

Written as the notebook is (``nnx.Optimizer``, train and eval steps that update an
``nnx.MultiMetric``, ``nnx.jit``), plus: one code path for every device (a 1-D mesh
``('data',)``, each batch sharded over it, the rest replicated), and several train
steps per ``nnx.jit`` call on data already on the devices. The robustness add-ons
are modules of their own, each called in one line of :func:`train_and_evaluate`:
``workdir_lock``, ``preemption``, ``checkpoints`` and :func:`stop_if_diverged`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

import optax_rmsprop
from examples.mnist import checkpoints, input_pipeline, models, preemption, reporting, workdir_lock
from examples.mnist.config import RUN_DEFINING, Config

QUANTILES = {"p0": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p100": 1.0}


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def loss_fn(model: nnx.Module, images: jax.Array, labels: jax.Array):
    """The batch's mean cross-entropy, and (logits, each example's loss) for the metrics."""
    logits = model(images.astype(jnp.float32) / 255.0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses.mean(), (logits, losses)


def train_step(model, optimizer, metrics, images, labels) -> jax.Array:
    """One RMSProp step on one batch, as in the notebook; returns the batch's loss."""
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, losses)), grads = grad_fn(model, images, labels)
    metrics.update(loss=losses, logits=logits, labels=labels)
    optimizer.update(model, grads)
    return loss


def _sharded(mesh: jax.sharding.Mesh, *arrays: jax.Array) -> list[jax.Array]:
    return [jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P("data"))) for a in arrays]


# One nnx.jit call for several steps: its per-call cost (flattening the graph) is paid once.
@nnx.jit(static_argnames=("mesh", "batch_size", "num_steps"), donate_argnums=(0, 1, 2))
def train_chunk(model, optimizer, metrics, images, labels, order, start, *, mesh, batch_size,
                num_steps):  # fmt: skip
    """``num_steps`` steps on ``order[start * batch_size:]``: the losses, and all params finite."""
    losses = []
    for i in range(num_steps):  # unrolled: XLA:CPU runs a rolled loop ~8x slower (benchmarks/)
        idx = jax.lax.dynamic_slice_in_dim(order, (start + i) * batch_size, batch_size)
        batch = _sharded(mesh, images[idx], labels[idx])
        losses.append(train_step(model, optimizer, metrics, *batch))
    state = nnx.state((model, optimizer, metrics))
    replicated = NamedSharding(mesh, P())
    nnx.update((model, optimizer, metrics), jax.lax.with_sharding_constraint(state, replicated))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    return jnp.stack(losses), jnp.all(jnp.stack([jnp.isfinite(p).all() for p in params]))


@nnx.jit(static_argnames=("mesh", "size"))
def eval_step(model, metrics, images, labels, start, *, mesh, size):
    """Adds the test examples ``start`` to ``start + size`` to ``metrics``."""
    x, y = (jax.lax.dynamic_slice_in_dim(a, start, size) for a in (images, labels))
    if size % mesh.size == 0:  # else (a short last batch) each device computes all of it
        x, y = _sharded(mesh, x, y)
    _, (logits, losses) = loss_fn(model, x, y)
    metrics.update(loss=losses, logits=logits, labels=y)


@nnx.jit(static_argnames=("learning_rate", "eps"))
def step_size_quantiles(model, optimizer, *, learning_rate, eps) -> jax.Array:
    """Quantiles (``QUANTILES``) of each parameter's effective step size, one row per leaf."""
    params = nnx.state(model, nnx.Param)  # their shapes, which 4-bit state needs
    opt_state = optimizer.opt_state
    sizes = optax_rmsprop.effective_step_size(opt_state, learning_rate, eps=eps, params=params)
    qs = jnp.asarray(list(QUANTILES.values()))
    return jnp.stack([jnp.quantile(leaf.ravel(), qs) for leaf in jax.tree.leaves(sizes)])


@functools.partial(jax.jit, static_argnames=("num_examples", "mesh"))
def epoch_order(seed, epoch, *, num_examples: int, mesh: jax.sharding.Mesh) -> jax.Array:
    """The epoch's order of the training examples (a function of seed and epoch), replicated."""
    order = jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), num_examples)
    return jax.lax.with_sharding_constraint(order, NamedSharding(mesh, P()))


class Chunk(NamedTuple):
    """What one jitted call of several train steps reports."""

    losses: np.ndarray  # one per step
    params_finite: bool  # after the last step
    seconds: float  # wall time of the call, compilation excluded
    num_steps: int


class Trainer:
    """The model, optimizer and metrics of one run, and the calls that advance and measure them."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh, steps_per_epoch: int):
        self.config, self.mesh, self.steps_per_epoch = config, mesh, steps_per_epoch
        scheduled = config.epochs * steps_per_epoch  # the schedule spans every epoch
        self.total_steps = min(scheduled, config.max_steps or scheduled)
        self.schedule = config.learning_rate
        if config.schedule == "cosine":
            self.schedule = optax.cosine_decay_schedule(config.learning_rate, scheduled)
        self.model = models.create(config.model, config.mlp_widths, config.seed)
        tx = optax_rmsprop.rmsprop(
            self.schedule, decay=config.decay, eps=config.eps, momentum=config.momentum or None,
            centered=config.centered, state_dtype=config.state_dtype,
        )  # fmt: skip
        self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        metrics = lambda: nnx.MultiMetric(
            accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))  # fmt: skip
        self.metrics, self.eval_metrics = metrics(), metrics()
        self.objects = (self.model, self.optimizer, self.metrics)  # what a checkpoint holds
        params = nnx.to_pure_dict(nnx.state(self.model, nnx.Param))
        paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        self.layers = [jax.tree_util.keystr(p, simple=True, separator="/") for p in paths]
        self.num_params = sum(p.size for p in jax.tree.leaves(nnx.state(self.model, nnx.Param)))
        self._replicate(*self.objects)
        self.examples, self.seconds = 0, 0.0  # trained so far by this process, compile excluded
        self._window = (0, 0.0)  # (examples, seconds) at the last evaluation
        self._order: tuple[int, Any] = (-1, None)  # (epoch, its permutation)

    def _replicate(self, *objects: Any) -> None:
        put = lambda x: input_pipeline.replicate(self.mesh, np.asarray(x))
        nnx.update(objects, jax.tree.map(put, nnx.state(objects)))

    def chunk_end(self, step: int) -> int:
        """Where the chunk from ``step`` ends: ``steps_per_dispatch`` from the epoch's start, cut
        at its end and at ``total_steps`` (two lengths compile; a continued run replays them)."""
        epoch_start, k = step - step % self.steps_per_epoch, self.config.steps_per_dispatch
        next_dispatch = epoch_start + ((step - epoch_start) // k + 1) * k
        return min(next_dispatch, epoch_start + self.steps_per_epoch, self.total_steps)

    def train_chunk(self, data: input_pipeline.DeviceData, step: int, num_steps: int = 0) -> Chunk:
        """Runs the chunk from ``step`` (``num_steps`` steps if given) in one jitted call."""
        num_steps = num_steps or self.chunk_end(step) - step
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            seed, n = np.uint32(self.config.seed), len(data.train_labels)
            self._order = epoch, epoch_order(seed, np.int32(epoch), num_examples=n, mesh=self.mesh)
        t0, compiling = time.perf_counter(), reporting.compile_seconds()
        losses, finite = train_chunk(
            *self.objects, data.train_images, data.train_labels, self._order[1],
            np.int32(position), mesh=self.mesh, batch_size=self.config.batch_size,
            num_steps=num_steps,
        )  # fmt: skip
        losses = np.asarray(losses, np.float64)
        seconds = time.perf_counter() - t0 - (reporting.compile_seconds() - compiling)
        self.examples += num_steps * self.config.batch_size
        self.seconds += seconds
        return Chunk(losses, bool(finite), seconds, num_steps)

    def evaluate(self, data: input_pipeline.DeviceData) -> dict[str, float]:
        """Test loss and accuracy of the current model: ``{'test_loss', 'test_accuracy'}``."""
        self.eval_metrics.reset()
        self._replicate(self.eval_metrics)
        n, size = len(data.test_labels), data.eval_batch
        for start in range(0, n, size):
            batch = (data.test_images, data.test_labels, np.int32(start))
            length = min(size, n - start)
            eval_step(self.model, self.eval_metrics, *batch, mesh=self.mesh, size=length)
        return {f"test_{k}": float(v) for k, v in self.eval_metrics.compute().items()}

    def evaluation_record(self, step: int, data: input_pipeline.DeviceData) -> dict:
        """One line of metrics.jsonl; the train metrics start afresh at the end of an epoch."""
        train = {f"train_{k}": float(v) for k, v in self.metrics.compute().items()}
        if step % self.steps_per_epoch == 0:
            self.metrics.reset()
            self._replicate(self.metrics)
        examples, seconds = self.examples - self._window[0], self.seconds - self._window[1]
        self._window = (self.examples, self.seconds)
        lr = self.schedule(step - 1) if callable(self.schedule) else self.schedule
        rows = step_size_quantiles(
            self.model, self.optimizer, learning_rate=self.schedule, eps=self.config.eps
        )
        rows = zip(self.layers, jax.device_get(rows), strict=True)
        sizes = {layer: dict(zip(QUANTILES, map(float, row), strict=True)) for layer, row in rows}
        return {
            "step": step, "epoch": round(step / self.steps_per_epoch, 4), **train,
            **self.evaluate(data), "learning_rate": float(lr),
            "examples_per_sec": examples / seconds if seconds else None,
            "effective_step_size": sizes,
        }  # fmt: skip

    def non_finite_layers(self) -> list[str]:
        """The parameter leaves holding a nan or an inf (after a divergence)."""
        params = jax.tree.leaves(jax.device_get(nnx.state(self.model, nnx.Param)))
        return [n for n, p in zip(self.layers, params, strict=True) if not np.isfinite(p).all()]

    def checkpoint(self, step: int) -> dict:
        """What a checkpoint holds: the model, optimizer and train metrics, and the step."""
        state = nnx.to_pure_dict(nnx.state(self.objects))
        return {"state": state, "step": np.asarray(step, np.int64)}

    def open_run(self, log: Callable[[str], None]) -> tuple[checkpoints.Checkpoints, int]:
        """The run's checkpoints, and the step it continues from (restored into this state)."""
        config = self.config.to_dict()
        ckpt, step, tree = checkpoints.open_run(config, RUN_DEFINING, self.checkpoint(0), log)
        if tree is not None:
            state = nnx.state(self.objects)
            nnx.replace_by_pure_dict(state, tree["state"])
            nnx.update(self.objects, state)
        return ckpt, step

    def summary(self, record: dict, step: int, source: str, wall_s: float, compile_s: float):
        """summary.json: the final test metrics, where and how fast the run trained."""
        return {
            "test_accuracy": record["test_accuracy"], "test_loss": record["test_loss"],
            "epochs": step / self.steps_per_epoch, "steps": step, "wall_time_s": wall_s,
            "train_time_s": self.seconds, "compile_time_s": compile_s,
            "examples_per_sec": self.examples / self.seconds if self.seconds else None,
            "devices": [str(d) for d in jax.devices()], "dataset": source,
            "num_params": self.num_params, "config": self.config.to_dict(),
        }  # fmt: skip


def steps_per_epoch(config: Config, num_train: int, num_devices: int) -> int:
    """Full batches per epoch; ValueError if the batch does not fit the devices or the data."""
    batch = f"--batch-size {config.batch_size}"
    if config.batch_size % num_devices:
        raise ValueError(f"{batch} must be a multiple of the {num_devices} devices")
    if config.batch_size > num_train:
        raise ValueError(f"{batch} is larger than the {num_train} training examples")
    return num_train // config.batch_size


def checkpoint_due(previous: int, step: int, every: int, total_steps: int) -> bool:
    """At the last step, and when the steps since ``previous`` crossed a multiple of ``every``."""
    return step == total_steps or (bool(every) and previous // every != step // every)


class RunStopped(RuntimeError):
    """The run stopped before its last step; ``exit_code`` is what the command line returns."""

    exit_code = 1


class Preempted(RunStopped):
    """SIGTERM or Ctrl-C: the run saved a checkpoint at ``step``; a rerun continues it."""

    def __init__(self, stop: preemption.StopSignal, step: int, total_steps: int, checkpoint: str):
        name = stop.received or "a preemption notice (SIGTERM to one of the processes)"
        self.where = f"Stopped by {name} at step {step} of {total_steps}; checkpoint "
        self.where += f"saved in {checkpoint}."
        super().__init__(f"{self.where} Run again with the same settings to continue.")
        self.exit_code = stop.exit_code()


class Diverged(RunStopped):
    """A loss or a parameter became nan or inf; nothing of it was checkpointed."""


def divergence(chunk: Chunk, first_step: int, trainer: Trainer) -> str | None:
    """What went non-finite in ``chunk`` (which started after ``first_step`` steps), or None."""
    bad = np.flatnonzero(~np.isfinite(chunk.losses))
    if bad.size:
        return f"at step {first_step + bad[0] + 1} the train loss is {chunk.losses[bad[0]]}"
    if not chunk.params_finite:
        layers = ", ".join(trainer.non_finite_layers())
        return f"after step {first_step + chunk.num_steps} parameters are not finite ({layers})"
    return None


def stop_if_diverged(problem: str | None, ckpt: checkpoints.Checkpoints) -> None:
    """Raises :class:`Diverged` naming ``problem`` and the last good checkpoint, if any problem."""
    if problem is None:
        return
    last = ckpt.latest_step()
    good = f"the last good checkpoint is step {last} ({ckpt.step_path(last)})"
    raise Diverged(
        f"Diverged: {problem}. Training stopped and nothing non-finite was checkpointed; "
        f"{good if last is not None else 'no checkpoint was written before it'}. Metrics so "
        f"far are in {os.path.join(ckpt.workdir, reporting.METRICS)}. Try a smaller "
        "--learning-rate or a larger --eps."
    )


def train_and_evaluate(
    config: Config, dataset: input_pipeline.Dataset, log: Callable[[str], None] = print
) -> dict:
    """Trains ``config.model`` on ``dataset``, or continues the run in ``config.workdir``;
    returns the summary (also in summary.json). Raises :class:`Preempted` (a checkpoint
    saved), :class:`Diverged`, ``workdir_lock.WorkdirBusy`` and ``checkpoints.CheckpointError``.
    """
    t_start, compile_start = time.perf_counter(), reporting.compile_seconds()
    main_process = jax.process_index() == 0
    mesh = make_mesh()
    trainer = Trainer(config, mesh, steps_per_epoch(config, dataset.num_train, mesh.size))
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lock.hold(config.workdir, enabled=main_process))
        stop = stack.enter_context(preemption.StopSignal())
        ckpt, step = trainer.open_run(log)
        stack.callback(ckpt.close)
        if summary := reporting.finished(config.workdir, step, trainer.total_steps, log):
            return summary
        log(f"{config.model}: {trainer.num_params:,} params | data: {dataset.source} | "
            f"{trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} in all")  # fmt: skip
        data = input_pipeline.put_on_devices(dataset, mesh, config.eval_batch_size)
        shown = config.progress and main_process
        bar = stack.enter_context(tqdm(total=trainer.total_steps, initial=step, disable=not shown))
        say = bar.write if shown else log  # through the bar, which stays at the bottom
        reporter = reporting.Reporter(config.workdir, enabled=main_process, step=step, say=say)
        stack.callback(reporter.close)
        record, dispatch = {}, 0
        while step < trainer.total_steps:
            chunk = trainer.train_chunk(data, step)
            stop_if_diverged(divergence(chunk, step, trainer), ckpt)
            previous, step, dispatch = step, step + chunk.num_steps, dispatch + 1
            bar.update(chunk.num_steps)
            bar.set_postfix(loss=f"{chunk.losses[-1]:.4f}")
            if step % trainer.steps_per_epoch == 0 or step == trainer.total_steps:
                record = trainer.evaluation_record(step, data)
                reporter.record(record)
                loss = record["test_loss"]
                stop_if_diverged(
                    None if np.isfinite(loss) else f"at step {step} the test loss is {loss}", ckpt
                )
            stopping = stop.reached(dispatch) and step < trainer.total_steps
            due = checkpoint_due(previous, step, config.checkpoint_every, trainer.total_steps)
            if due or stopping:
                ckpt.save(step, trainer.checkpoint(step))
            if stopping:
                raise Preempted(stop, step, trainer.total_steps, ckpt.step_path(step))
        record = record or trainer.evaluate(data)  # continued after the last step: evaluate it
        compile_s = reporting.compile_seconds() - compile_start
        wall_s = time.perf_counter() - t_start
        summary = trainer.summary(record, step, dataset.source, wall_s, compile_s)
        reporter.finish(summary)
        log(reporting.done_line(summary, config.workdir))
        return summary
