"""Training and evaluation of the MNIST models with ``optax_rmsprop.rmsprop``.

Written as Flax's MNIST example and the notebook are: ``nnx.Optimizer``, train and eval
steps that update an ``nnx.MultiMetric``, ``nnx.jit``. Two changes for speed and scale:
one code path for every device (a 1-D mesh ``('data',)``, each batch sharded over it, the
rest replicated), and several train steps per ``nnx.jit`` call on data already on the
devices. What lets a run survive real machines (the workdir lock, checkpoints, preemption,
divergence) is in ``robust/``, each called in one line of :func:`train_and_evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop
from examples.mnist import input_pipeline, models, reporting
from examples.mnist.config import Config
from examples.mnist.robust import checkpoints, divergence, preemption, workdir_lock

QUANTILES = {"p0": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p100": 1.0}


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def learning_rate_schedule(config: Config, num_steps: int) -> optax.ScalarOrSchedule:
    """The learning rate: ``config.learning_rate``, cosine-decayed to 0 over ``num_steps``."""
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, num_steps)
    return config.learning_rate


def create_optimizer(config: Config, learning_rate: optax.ScalarOrSchedule):
    """RMSProp from ``optax_rmsprop`` with the run's settings; with bfloat16 parameters,
    followed by ``param_rounding`` (unless ``param_rounding="nearest"``), last in the chain."""
    tx = optax_rmsprop.rmsprop(
        learning_rate,
        decay=config.decay,
        eps=config.eps,
        momentum=config.momentum or None,
        centered=config.centered,
        state_dtype=config.state_dtype,
    )
    if config.param_dtype == "float32" or config.param_rounding == "nearest":
        return tx
    return optax.chain(tx, optax_rmsprop.param_rounding(config.param_rounding))


def rmsprop_state(opt_state):
    """The ``RMSPropState`` in the optimizer's state (the first of a chain's)."""
    return opt_state if hasattr(opt_state, "rms") else opt_state[0]


def create_metrics() -> nnx.MultiMetric:
    return nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))


def loss_fn(model: nnx.Module, images: jax.Array, labels: jax.Array):
    """The batch's mean cross-entropy, and (logits, each example's loss) for the metrics."""
    logits = model(images.astype(jnp.float32) / 255.0).astype(jnp.float32)  # bfloat16 models
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
def train_chunk(
    model, optimizer, metrics, images, labels, order, start, *, mesh, batch_size, num_steps
):
    """``num_steps`` steps on ``order[start * batch_size:]``: the losses, and all params finite."""
    losses = []
    for i in range(num_steps):  # unrolled: XLA:CPU runs a rolled loop slower (docs/benchmarks.md)
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
    opt_state = rmsprop_state(optimizer.opt_state)
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


@dataclasses.dataclass
class Throughput:
    """Examples trained, and the seconds they took (compilation excluded)."""

    examples: int = 0
    seconds: float = 0.0

    def add(self, examples: int, seconds: float) -> None:
        self.examples += examples
        self.seconds += seconds

    @property
    def per_second(self) -> float | None:
        return self.examples / self.seconds if self.seconds else None


class Trainer:
    """The model, optimizer and metrics of one run, and the calls that advance and measure them."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh, steps_per_epoch: int):
        self.config = config
        self.mesh = mesh
        self.steps_per_epoch = steps_per_epoch
        scheduled = config.epochs * steps_per_epoch  # the schedule spans every epoch
        self.total_steps = min(scheduled, config.max_steps or scheduled)
        self.schedule = learning_rate_schedule(config, scheduled)
        self.model = models.create(config)
        tx = create_optimizer(config, self.schedule)
        self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        self.metrics = create_metrics()
        self.eval_metrics = create_metrics()
        self.objects = (self.model, self.optimizer, self.metrics)  # what a checkpoint holds
        params = nnx.state(self.model, nnx.Param)
        paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params))]
        self.layers = [jax.tree_util.keystr(p, simple=True, separator="/") for p in paths]
        self.num_params = sum(p.size for p in jax.tree.leaves(params))
        self._replicate(*self.objects)
        self.trained = Throughput()  # by this process
        self.since_evaluation = Throughput()
        self._orders: dict[int, jax.Array] = {}  # the current epoch's order of the examples

    def _replicate(self, *objects: nnx.Module | nnx.Optimizer | nnx.MultiMetric) -> None:
        put = lambda x: input_pipeline.replicate(self.mesh, np.asarray(x))
        nnx.update(objects, jax.tree.map(put, nnx.state(objects)))

    def chunk_end(self, step: int) -> int:
        """Where the chunk from ``step`` ends: ``steps_per_dispatch`` from the epoch's start, cut
        at its end and at ``total_steps`` (two lengths compile; a continued run replays them)."""
        epoch_start = step - step % self.steps_per_epoch
        k = self.config.steps_per_dispatch
        next_dispatch = epoch_start + ((step - epoch_start) // k + 1) * k
        return min(next_dispatch, epoch_start + self.steps_per_epoch, self.total_steps)

    def epoch_order(self, epoch: int, num_examples: int) -> jax.Array:
        """The order of the training examples in ``epoch``, computed once per epoch."""
        if epoch not in self._orders:
            seed = np.uint32(self.config.seed)
            order = epoch_order(seed, np.int32(epoch), num_examples=num_examples, mesh=self.mesh)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def train_chunk(self, data: input_pipeline.DeviceData, step: int) -> Chunk:
        """Runs the steps from ``step`` to :meth:`chunk_end` in one jitted call."""
        num_steps = self.chunk_end(step) - step
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch, len(data.train_labels))
        started = time.perf_counter()
        compiled = reporting.compile_time.seconds
        losses, finite = train_chunk(
            *self.objects,
            data.train_images,
            data.train_labels,
            order,
            np.int32(position),
            mesh=self.mesh,
            batch_size=self.config.batch_size,
            num_steps=num_steps,
        )
        losses = np.asarray(losses, np.float64)  # waits for the devices
        compiling = reporting.compile_time.seconds - compiled
        seconds = time.perf_counter() - started - compiling
        for throughput in (self.trained, self.since_evaluation):
            throughput.add(num_steps * self.config.batch_size, seconds)
        return Chunk(losses, bool(finite), seconds, num_steps)

    def evaluate(self, data: input_pipeline.DeviceData) -> dict[str, float]:
        """Test loss and accuracy of the current model: ``{'test_loss', 'test_accuracy'}``."""
        self.eval_metrics.reset()
        self._replicate(self.eval_metrics)
        n = len(data.test_labels)
        for start in range(0, n, data.eval_batch):
            batch = (data.test_images, data.test_labels, np.int32(start))
            size = min(data.eval_batch, n - start)
            eval_step(self.model, self.eval_metrics, *batch, mesh=self.mesh, size=size)
        return {f"test_{k}": float(v) for k, v in self.eval_metrics.compute().items()}

    def step_sizes(self) -> dict[str, dict[str, float]]:
        """The quantiles of each layer's effective step size ``lr / (sqrt(nu) + eps)``."""
        rows = step_size_quantiles(
            self.model, self.optimizer, learning_rate=self.schedule, eps=self.config.eps
        )
        rows = zip(self.layers, jax.device_get(rows), strict=True)
        return {layer: dict(zip(QUANTILES, map(float, row), strict=True)) for layer, row in rows}

    def evaluation_record(self, step: int, data: input_pipeline.DeviceData) -> dict:
        """One line of metrics.jsonl; the train metrics start afresh at the end of an epoch."""
        train = {f"train_{k}": float(v) for k, v in self.metrics.compute().items()}
        if step % self.steps_per_epoch == 0:
            self.metrics.reset()
            self._replicate(self.metrics)
        speed = self.since_evaluation.per_second
        self.since_evaluation = Throughput()
        lr = self.schedule(step - 1) if callable(self.schedule) else self.schedule
        return {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            **train,
            **self.evaluate(data),
            "learning_rate": float(lr),
            "examples_per_sec": speed,
            "effective_step_size": self.step_sizes(),
        }

    def non_finite_layers(self) -> list[str]:
        """The parameter leaves holding a nan or an inf (after a divergence)."""
        params = jax.tree.leaves(jax.device_get(nnx.state(self.model, nnx.Param)))
        return [n for n, p in zip(self.layers, params, strict=True) if not np.isfinite(p).all()]

    def summary(self, record: dict, step: int, source: str, wall_s: float, compile_s: float):
        """summary.json: the final test metrics, where and how fast the run trained."""
        return {
            "test_accuracy": record["test_accuracy"],
            "test_loss": record["test_loss"],
            "epochs": step / self.steps_per_epoch,
            "steps": step,
            "wall_time_s": wall_s,
            "train_time_s": self.trained.seconds,
            "compile_time_s": compile_s,
            "examples_per_sec": self.trained.per_second,
            "devices": [str(d) for d in jax.devices()],
            "dataset": source,
            "num_params": self.num_params,
            "config": self.config.to_dict(),
        }


def steps_per_epoch(config: Config, num_train: int, num_devices: int) -> int:
    """Full batches per epoch; ValueError if the batch does not fit the devices or the data."""
    batch = f"--batch-size {config.batch_size}"
    if config.batch_size % num_devices:
        raise ValueError(f"{batch} must be a multiple of the {num_devices} devices")
    if config.batch_size > num_train:
        raise ValueError(f"{batch} is larger than the {num_train} training examples")
    return num_train // config.batch_size


def train_and_evaluate(
    config: Config, dataset: input_pipeline.Dataset, log: Callable[[str], None] = print
) -> dict:
    """Trains ``config.model`` on ``dataset``, or continues the run in ``config.workdir``.

    Returns the summary (also in summary.json). Raises ``preemption.Preempted`` (a
    checkpoint saved), ``divergence.Diverged``, ``workdir_lock.WorkdirBusy`` and
    ``checkpoints.CheckpointError``.
    """
    started = time.perf_counter()
    reporting.compile_time.listen()
    compiled = reporting.compile_time.seconds
    mesh = make_mesh()
    trainer = Trainer(config, mesh, steps_per_epoch(config, dataset.num_train, mesh.size))
    total_steps = trainer.total_steps
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lock.hold(config.workdir, enabled=jax.process_index() == 0))
        stop = stack.enter_context(preemption.StopSignal())
        ckpt = stack.enter_context(checkpoints.open_run(config, trainer.objects, total_steps, log))
        if summary := reporting.finished(config.workdir, ckpt.step, total_steps, log):
            return summary
        log(
            f"{config.model}: {trainer.num_params:,} params | data: {dataset.source} | "
            f"{trainer.steps_per_epoch} steps/epoch, {total_steps} in all"
        )
        data = input_pipeline.put_on_devices(dataset, mesh, config.eval_batch_size)
        reporter = reporting.Reporter(config.workdir, ckpt.step, total_steps, config.progress, log)
        stack.enter_context(reporter)
        step = ckpt.step
        dispatches = 0  # on every process alike: preemption's sync point counts them
        record = {}
        while step < total_steps:
            chunk = trainer.train_chunk(data, step)
            divergence.check_steps(chunk, step, trainer.non_finite_layers, ckpt)
            reporter.progress(chunk.num_steps, chunk.losses[-1])
            previous = step
            step += chunk.num_steps
            dispatches += 1
            if step % trainer.steps_per_epoch == 0 or step == total_steps:
                record = trainer.evaluation_record(step, data)
                reporter.record(record)
                divergence.check_test_loss(record, ckpt)
            ckpt.save_if_due(previous, step, trainer.objects)
            stop.stop_if_asked(dispatches, step, ckpt, trainer.objects)
        record = record or trainer.evaluate(data)  # continued after the last step: evaluate it
        wall_s = time.perf_counter() - started
        compile_s = reporting.compile_time.seconds - compiled
        summary = trainer.summary(record, step, dataset.source, wall_s, compile_s)
        reporter.finish(summary)
        return summary
