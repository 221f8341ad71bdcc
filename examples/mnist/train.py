"""Training and evaluation of the MNIST models with ``optax_rmsprop.rmsprop``.

One code path for one CPU, a GPU, a TPU host or several hosts: a 1-D mesh
``('data',)`` over every device, the global batch sharded over it, params and
optimizer state replicated. Each jitted call runs ``steps_per_dispatch`` train
steps with ``jax.lax.scan`` on data that already lives on the devices, so
neither Python dispatch nor the input pipeline is the bottleneck.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

import optax_rmsprop
from examples.mnist import (
    checkpoints,
    input_pipeline,
    models,
    preemption,
    reporting,
    workdir_lock,
)
from examples.mnist.config import Config

QUANTILES = {"p0": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p100": 1.0}

# jax 0.7 (Colab's TPU image): a chunk's output state fed straight into the next
# chunk gives that chunk's first step wrong inputs (on XLA:CPU the loss at step 5
# of the sample is 2.23 where the same model, evaluated eagerly, gives 1.67; an
# resumed run then disagrees with a straight one). A copy of the state between
# chunks avoids it. jax 0.10.2 does not need it; versions in between are not
# checked, so every version before 0.10 gets the copy.
OLD_JAX = tuple(int(v) for v in jax.__version__.split(".")[:2]) < (0, 10)


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def learning_rate_schedule(config: Config, total_steps: int) -> optax.ScalarOrSchedule:
    if config.schedule == "constant":
        return config.learning_rate
    return optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))


def make_optimizer(
    config: Config, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
    """``optax_rmsprop.rmsprop`` with the run's settings and learning rate (or schedule)."""
    return optax_rmsprop.rmsprop(
        learning_rate,
        decay=config.decay,
        eps=config.eps,
        momentum=config.momentum or None,
        centered=config.centered,
        state_dtype=config.state_dtype,
    )


def loss_and_accuracy(model: nnx.Module, images: jax.Array, labels: jax.Array):
    logits = model(images.astype(jnp.float32) / 255.0)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


class EpochSums(NamedTuple):
    """Running sums over the current epoch's steps, for its mean train loss and accuracy."""

    loss: float = 0.0
    accuracy: float = 0.0
    steps: float = 0.0

    def add(self, loss: float, accuracy: float) -> EpochSums:
        return EpochSums(self.loss + loss, self.accuracy + accuracy, self.steps + 1.0)

    def add_all(self, losses: np.ndarray, accuracies: np.ndarray) -> EpochSums:
        sums = self
        for loss, accuracy in zip(losses, accuracies, strict=True):
            sums = sums.add(float(loss), float(accuracy))
        return sums

    def means(self) -> tuple[float, float]:
        return self.loss / self.steps, self.accuracy / self.steps


def train_step(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, labels: jax.Array):
    """One optimizer step on one batch: the new (model, optimizer) state, (loss, accuracy)."""
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_and_accuracy, has_aux=True)
    (loss, accuracy), grads = grad_fn(model, images, labels)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), (loss, accuracy)


def eval_step(model: nnx.Module, images: jax.Array, labels: jax.Array, weights: jax.Array):
    """Weighted sums of the loss and of the correct predictions over one batch."""
    logits = model(images.astype(jnp.float32) / 255.0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(weights * losses), jnp.sum(weights * correct)


def _params(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.State:
    model, _ = nnx.merge(graphdef, state)
    return nnx.state(model, nnx.Param)


def leaf_names(tree: Any) -> list[str]:
    """``layer/leaf`` names of the arrays of an nnx State, in ``jax.tree.leaves`` order."""
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(tree))
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]


def all_finite(tree: Any) -> jax.Array:
    """One bool: every element of every leaf of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@functools.partial(
    jax.jit, static_argnames=("graphdef", "mesh", "batch_size", "num_steps"), donate_argnums=1
)
def train_chunk(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    start: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    num_steps: int,
):
    """``num_steps`` train steps on the batches ``order[start * batch_size:]``, in one call.

    Returns the new state (replicated), the loss and accuracy of each step,
    and whether every parameter is still finite (one bool, so that the host
    learns of a divergence from what it fetches anyway).
    """
    batch = NamedSharding(mesh, P("data"))

    def one_step(state, i):
        idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        x = jax.lax.with_sharding_constraint(images[idx], batch)
        y = jax.lax.with_sharding_constraint(labels[idx], batch)
        return train_step(graphdef, state, x, y)

    # Unrolled: XLA:CPU runs a rolled loop body ~8x slower (measured, see
    # benchmarks/), and the unrolled chunk is still one dispatch.
    state, (losses, accuracies) = jax.lax.scan(
        one_step, state, start + jnp.arange(num_steps), unroll=True
    )
    state = jax.lax.with_sharding_constraint(state, NamedSharding(mesh, P()))
    return state, losses, accuracies, all_finite(_params(graphdef, state))


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"))
def evaluate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    images: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
):
    """Test loss and accuracy over the padded test batches (weight 0 marks padding)."""
    model, _ = nnx.merge(graphdef, state)
    batch = NamedSharding(mesh, P("data"))

    def one_batch(totals, arrays):
        x, y, w = (jax.lax.with_sharding_constraint(a, batch) for a in arrays)
        loss, correct = eval_step(model, x, y, w)
        return (totals[0] + loss, totals[1] + correct), None

    (loss, correct), _ = jax.lax.scan(one_batch, (0.0, 0.0), (images, labels, weights))
    total = jnp.sum(weights)
    return loss / total, correct / total


@functools.partial(jax.jit, static_argnames=("graphdef", "learning_rate", "eps"))
def step_size_quantiles(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    *,
    learning_rate: optax.ScalarOrSchedule,
    eps: float,
) -> jax.Array:
    """Quantiles (``QUANTILES``) of each parameter's effective step size, one row per leaf."""
    model, optimizer = nnx.merge(graphdef, state)
    params = nnx.state(model, nnx.Param)  # their shapes, which 4-bit state needs
    sizes = optax_rmsprop.effective_step_size(
        optimizer.opt_state, learning_rate, eps=eps, params=params
    )
    qs = jnp.asarray(list(QUANTILES.values()))
    return jnp.stack([jnp.quantile(leaf.ravel(), qs) for leaf in jax.tree.leaves(sizes)])


@functools.partial(jax.jit, static_argnames=("num_examples", "mesh"))
def epoch_order(
    seed: jax.Array, epoch: jax.Array, *, num_examples: int, mesh: jax.sharding.Mesh
) -> jax.Array:
    """The epoch's permutation of the training examples, replicated on ``mesh``."""
    order = input_pipeline.epoch_permutation(jax.random.key(seed), epoch, num_examples)
    return jax.lax.with_sharding_constraint(order, NamedSharding(mesh, P()))


class Chunk(NamedTuple):
    """What one jitted call of several train steps reports."""

    losses: np.ndarray  # one per step
    accuracies: np.ndarray  # one per step
    params_finite: bool  # after the last step
    seconds: float  # wall time of the call, compilation excluded

    @property
    def num_steps(self) -> int:
        return len(self.losses)


@dataclasses.dataclass
class Throughput:
    """Examples trained and the seconds they took (compilation excluded)."""

    examples: int = 0
    seconds: float = 0.0

    def add(self, examples: int, seconds: float) -> None:
        self.examples += examples
        self.seconds += seconds

    def per_second(self) -> float | None:
        return self.examples / self.seconds if self.seconds else None


class Trainer:
    """The model and optimizer state of one run, and the calls that advance and measure it."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh, steps_per_epoch: int):
        self.config = config
        self.mesh = mesh
        self.steps_per_epoch = steps_per_epoch
        scheduled_steps = config.epochs * steps_per_epoch  # the schedule spans every epoch
        self.total_steps = min(scheduled_steps, config.max_steps or scheduled_steps)
        self.schedule = learning_rate_schedule(config, scheduled_steps)
        model = models.create(config.model, config.mlp_widths, config.seed)
        self.num_params = models.count_params(model)
        optimizer = nnx.Optimizer(model, make_optimizer(config, self.schedule), wrt=nnx.Param)
        self.graphdef, state = nnx.split((model, optimizer))
        self.state = jax.tree.map(lambda x: input_pipeline.replicate(mesh, np.asarray(x)), state)
        self.layers = leaf_names(nnx.state(model, nnx.Param))
        self._order: tuple[int, jax.Array | None] = (-1, None)  # (epoch, its permutation)

    def chunk_end(self, step: int) -> int:
        """The step at which the chunk that starts at ``step`` ends.

        Chunks are ``steps_per_dispatch`` long counted from the start of each
        epoch (so only two chunk lengths are ever compiled), cut at the
        epoch's end and at ``total_steps``. The boundaries depend on the step
        alone, so a run resumed from a checkpoint (always written at a
        boundary) replays the same chunks.
        """
        epoch_start = step - step % self.steps_per_epoch
        k = self.config.steps_per_dispatch
        next_dispatch = epoch_start + ((step - epoch_start) // k + 1) * k
        return min(next_dispatch, epoch_start + self.steps_per_epoch, self.total_steps)

    def _epoch_order(self, epoch: int, num_train: int) -> jax.Array:
        if self._order[0] != epoch:
            order = epoch_order(
                np.uint32(self.config.seed), np.int32(epoch), num_examples=num_train, mesh=self.mesh
            )
            self._order = (epoch, order)
        return self._order[1]

    def train_chunk(self, data: input_pipeline.DeviceData, step: int, num_steps: int) -> Chunk:
        """Runs ``num_steps`` steps from ``step`` (within one epoch) in one jitted call."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch, data.num_train)
        t0, compiling = time.perf_counter(), reporting.compile_seconds()
        self.state, losses, accuracies, finite = train_chunk(
            self.graphdef,
            self.state,
            data.train_images,
            data.train_labels,
            order,
            np.int32(position),
            mesh=self.mesh,
            batch_size=self.config.batch_size,
            num_steps=num_steps,
        )
        if OLD_JAX:
            self.state = jax.tree.map(lambda x: x.copy(), self.state)
        losses, accuracies = np.asarray(losses, np.float64), np.asarray(accuracies, np.float64)
        seconds = time.perf_counter() - t0 - (reporting.compile_seconds() - compiling)
        return Chunk(losses, accuracies, bool(finite), seconds)

    def evaluate(self, data: input_pipeline.DeviceData) -> tuple[float, float]:
        """Test loss and accuracy of the current model."""
        loss, accuracy = evaluate(
            self.graphdef,
            self.state,
            data.test_images,
            data.test_labels,
            data.test_weights,
            mesh=self.mesh,
        )
        return float(loss), float(accuracy)

    def effective_step_sizes(self) -> dict[str, dict[str, float]]:
        """Per parameter leaf, the quantiles of ``lr / denom`` at the current step."""
        rows = jax.device_get(
            step_size_quantiles(
                self.graphdef, self.state, learning_rate=self.schedule, eps=self.config.eps
            )
        )
        return {
            layer: {name: float(v) for name, v in zip(QUANTILES, row, strict=True)}
            for layer, row in zip(self.layers, rows, strict=True)
        }

    def non_finite_layers(self) -> list[str]:
        """The parameter leaves holding a nan or an inf (after a divergence)."""
        params = jax.device_get(_params(self.graphdef, self.state))
        return [
            name
            for name, leaf in zip(self.layers, jax.tree.leaves(params), strict=True)
            if not np.isfinite(leaf).all()
        ]

    def learning_rate(self, step: int) -> float:
        lr = self.schedule(step) if callable(self.schedule) else self.schedule
        return float(lr)


def evaluation_record(
    trainer: Trainer,
    step: int,
    data: input_pipeline.DeviceData,
    epoch_sums: EpochSums,
    examples_per_sec: float | None,
) -> dict:
    """One line of metrics.jsonl: the epoch's train means, the test metrics, the step sizes."""
    test_loss, test_accuracy = trainer.evaluate(data)
    train_loss, train_accuracy = epoch_sums.means()
    return {
        "step": step,
        "epoch": round(step / trainer.steps_per_epoch, 4),
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "learning_rate": trainer.learning_rate(step - 1),
        "examples_per_sec": examples_per_sec,
        "effective_step_size": trainer.effective_step_sizes(),
    }


def checkpoint_tree(state: nnx.State, step: int, epoch_sums: EpochSums) -> dict:
    """What a checkpoint holds: the model and optimizer state, the step, the epoch's sums."""
    return {
        "state": nnx.to_pure_dict(state),
        "step": np.asarray(step, np.int64),
        "epoch_sums": np.asarray(epoch_sums, np.float64),
    }


def load_checkpoint_tree(state: nnx.State, tree: dict) -> tuple[int, EpochSums]:
    """Puts a restored checkpoint's arrays into ``state``; its step and epoch sums."""
    nnx.replace_by_pure_dict(state, tree["state"])
    return int(tree["step"]), EpochSums(*np.asarray(tree["epoch_sums"], np.float64).tolist())


def steps_per_epoch(config: Config, num_train: int, num_devices: int) -> int:
    """Full batches per epoch; ValueError if the batch does not fit the devices or the data."""
    if config.batch_size % num_devices:
        raise ValueError(
            f"--batch-size {config.batch_size} must be a multiple of the {num_devices} devices"
        )
    if config.batch_size > num_train:
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the {num_train} training examples"
        )
    return num_train // config.batch_size


def checkpoint_due(previous: int, step: int, every: int) -> bool:
    """Whether the steps from ``previous`` to ``step`` crossed a multiple of ``every``."""
    return bool(every) and previous // every != step // every


class RunStopped(RuntimeError):
    """The run stopped before its last step; ``exit_code`` is what the command line returns."""

    exit_code = 1


class Preempted(RunStopped):
    """SIGTERM or Ctrl-C: the run saved a checkpoint at ``step`` and can be resumed."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: str, code: int):
        self.where = (
            f"Stopped by {signal_name} at step {step} of {total_steps}; checkpoint saved in "
            f"{checkpoint}."
        )
        super().__init__(f"{self.where} Continue with the same settings and resume=True.")
        self.step, self.checkpoint, self.exit_code = step, checkpoint, code


class Diverged(RunStopped):
    """A train loss or a parameter became nan or inf; nothing of it was checkpointed."""


def divergence(chunk: Chunk, first_step: int, trainer: Trainer) -> str | None:
    """What went non-finite in ``chunk`` (which started after ``first_step`` steps), or None.

    Uses what the chunk returned anyway (its losses and one bool for the
    parameters); only when that bool is false are the parameters fetched, to
    name the layers.
    """
    bad = np.flatnonzero(~np.isfinite(chunk.losses))
    if bad.size:
        i = int(bad[0])
        return f"at step {first_step + i + 1} the train loss is {chunk.losses[i]}"
    if not chunk.params_finite:
        layers = ", ".join(trainer.non_finite_layers())
        return f"after step {first_step + chunk.num_steps} parameters are not finite ({layers})"
    return None


def _diverged_message(problem: str, ckpt: checkpoints.Checkpoints, workdir: str) -> str:
    last = ckpt.latest_step()
    good = (
        f"the last good checkpoint is step {last} ({ckpt.step_path(last)})"
        if last is not None
        else "no checkpoint was written before it"
    )
    return (
        f"Diverged: {problem}. Training stopped and nothing non-finite was checkpointed; "
        f"{good}. Metrics so far are in {os.path.join(workdir, reporting.METRICS)}. "
        f"Try a smaller --learning-rate or a larger --eps."
    )


def _summary(
    trainer: Trainer,
    record: dict,
    step: int,
    throughput: Throughput,
    wall_time_s: float,
    compile_time_s: float,
    dataset_source: str,
) -> dict:
    """summary.json: the final test metrics, where and how fast the run trained."""
    return {
        "test_accuracy": record["test_accuracy"],
        "test_loss": record["test_loss"],
        "epochs": step / trainer.steps_per_epoch,
        "steps": step,
        "wall_time_s": wall_time_s,
        "train_time_s": throughput.seconds,
        "compile_time_s": compile_time_s,
        "examples_per_sec": throughput.per_second(),
        "devices": [str(d) for d in jax.devices()],
        "dataset": dataset_source,
        "num_params": trainer.num_params,
        "config": trainer.config.to_dict(),
    }


def train_and_evaluate(
    config: Config, dataset: input_pipeline.Dataset, log: Callable[[str], None] = print
) -> dict:
    """Trains ``config.model`` on ``dataset``; returns the summary (also in summary.json).

    Raises :class:`Preempted` after SIGTERM or Ctrl-C (a checkpoint at the step
    reached is saved first), :class:`Diverged` when a loss or a parameter
    stops being finite, ``workdir_lock.WorkdirBusy`` when another run uses
    ``config.workdir``, and ``checkpoints.CheckpointError`` when ``--resume``
    cannot continue.
    """
    main_process = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(workdir_lock.hold(config.workdir, enabled=main_process))
        stop = stack.enter_context(preemption.StopSignal())
        return _train(config, dataset, log, stop, stack, main_process)


def _train(
    config: Config,
    dataset: input_pipeline.Dataset,
    log: Callable[[str], None],
    stop: preemption.StopSignal,
    stack: contextlib.ExitStack,
    main_process: bool,
) -> dict:
    """The body of :func:`train_and_evaluate`, with the workdir locked and signals watched."""
    t_start = time.perf_counter()
    compile_start = reporting.compile_seconds()
    mesh = make_mesh()
    trainer = Trainer(config, mesh, steps_per_epoch(config, dataset.num_train, mesh.size))
    ckpt, restored = checkpoints.open_run(
        config.workdir,
        config.to_dict(),
        Config.resumable_fields(),
        resume=config.resume,
        target=checkpoint_tree(trainer.state, 0, EpochSums()),
        main_process=main_process,
        log=log,
    )
    stack.callback(ckpt.close)
    step, epoch_sums = (
        load_checkpoint_tree(trainer.state, restored) if restored else (0, EpochSums())
    )
    resume_step = step if config.resume else None
    reporter = reporting.Reporter(config.workdir, enabled=main_process, resume_step=resume_step)
    stack.callback(reporter.close)
    log(
        f"{config.model}: {trainer.num_params:,} params | data: {dataset.source} "
        f"({dataset.num_train:,} train, {len(dataset.test_labels):,} test) | "
        f"{trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps in all"
    )
    data = input_pipeline.put_on_devices(dataset, mesh, config.eval_batch_size)
    from tqdm.auto import tqdm

    shown = config.progress and main_process
    bar = tqdm(
        total=trainer.total_steps, initial=step, unit="step", dynamic_ncols=True, disable=not shown
    )
    stack.callback(bar.close)
    # Epoch lines go through the bar when it is shown (so it stays at the bottom),
    # else through ``log``: quiet on other processes and when the caller says so.
    say = bar.write if shown else log
    total, window, record, dispatch = Throughput(), Throughput(), {}, 0
    while step < trainer.total_steps:
        chunk = trainer.train_chunk(data, step, trainer.chunk_end(step) - step)
        dispatch += 1
        problem = divergence(chunk, step, trainer)
        if problem:
            raise Diverged(_diverged_message(problem, ckpt, config.workdir))
        previous, step = step, step + chunk.num_steps
        examples = chunk.num_steps * config.batch_size
        total.add(examples, chunk.seconds)
        window.add(examples, chunk.seconds)
        epoch_sums = epoch_sums.add_all(chunk.losses, chunk.accuracies)
        bar.update(chunk.num_steps)
        bar.set_postfix(
            loss=f"{chunk.losses[-1]:.4f}",
            acc=f"{chunk.accuracies[-1]:.3f}",
            ex_per_s=f"{examples / max(chunk.seconds, 1e-9):,.0f}",
        )
        epoch_end = step % trainer.steps_per_epoch == 0
        if epoch_end or step == trainer.total_steps:
            record = evaluation_record(trainer, step, data, epoch_sums, window.per_second())
            reporter.record(record)
            say(reporting.epoch_line(record))
            if not np.isfinite(record["test_loss"]):
                problem = f"at step {step} the test loss is {record['test_loss']}"
                raise Diverged(_diverged_message(problem, ckpt, config.workdir))
            window = Throughput()
            if epoch_end:
                epoch_sums = EpochSums()
        stopping = stop.reached(dispatch) and step < trainer.total_steps
        due = checkpoint_due(previous, step, config.checkpoint_every)
        if due or stopping or step == trainer.total_steps:
            ckpt.save(step, checkpoint_tree(trainer.state, step, epoch_sums))
        if stopping:
            raise Preempted(
                stop.name(), step, trainer.total_steps, ckpt.step_path(step), stop.exit_code()
            )
    if not record:  # resumed after the last step: evaluate what was restored
        record = dict(zip(("test_loss", "test_accuracy"), trainer.evaluate(data), strict=True))
    summary = _summary(
        trainer,
        record,
        step,
        total,
        time.perf_counter() - t_start,
        reporting.compile_seconds() - compile_start,
        dataset.source,
    )
    reporter.finish(summary)
    log(reporting.done_line(summary, config.workdir))
    return summary
