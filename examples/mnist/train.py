"""Training and evaluation of the MNIST models with ``optax_rmsprop.rmsprop``.

One code path for one CPU, a GPU, a TPU host or several hosts: a 1-D mesh
``('data',)`` over every device, the global batch sharded over it, params and
optimizer state replicated. Each jitted call runs ``steps_per_dispatch`` train
steps with ``jax.lax.scan`` on data that already lives on the devices, so
neither Python dispatch nor the input pipeline is the bottleneck.
"""

from __future__ import annotations

import dataclasses
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
from examples.mnist import checkpoints, input_pipeline, models, reporting
from examples.mnist.config import Config

QUANTILES = {"p0": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p100": 1.0}


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


def _layer_name(path) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(n for n in names if n != "value")


class Chunk(NamedTuple):
    """What one jitted call of several train steps reports."""

    losses: np.ndarray  # one per step
    accuracies: np.ndarray  # one per step
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
    """The model, the optimizer and the jitted functions that train and evaluate them."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh, steps_per_epoch: int):
        self.config = config
        self.mesh = mesh
        self.steps_per_epoch = steps_per_epoch
        scheduled_steps = config.epochs * steps_per_epoch  # the schedule spans every epoch
        self.total_steps = min(scheduled_steps, config.max_steps or scheduled_steps)
        self.schedule = learning_rate_schedule(config, scheduled_steps)
        model = models.create(config.model, config.mlp_widths, config.seed)
        self.num_params = models.count_params(model)
        tx = make_optimizer(config, self.schedule)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.graphdef, state = nnx.split((model, optimizer))
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.state = jax.tree.map(lambda x: input_pipeline.replicate(mesh, np.asarray(x)), state)
        self._train = jax.jit(
            self._train_chunk,
            static_argnames="num_steps",
            donate_argnums=0,
            out_shardings=(self.replicated, self.replicated),
        )
        self._eval = jax.jit(self._evaluate, out_shardings=self.replicated)
        self._sizes = jax.jit(self._step_size_quantiles, out_shardings=self.replicated)
        self._permute = jax.jit(
            input_pipeline.epoch_permutation, static_argnums=2, out_shardings=self.replicated
        )
        self._key = jax.random.key(config.seed)
        self._permutation: tuple[int, jax.Array | None] = (-1, None)  # (epoch, its order)
        self._compiled: dict[int, Any] = {}
        self.compile_time_s = 0.0

    # -- jitted bodies -------------------------------------------------------
    def _train_chunk(self, state, images, labels, perm, start, *, num_steps: int):
        batch = self.config.batch_size

        def one_step(state, i):
            idx = jax.lax.dynamic_slice_in_dim(perm, i * batch, batch)
            x = jax.lax.with_sharding_constraint(images[idx], self.batch_sharding)
            y = jax.lax.with_sharding_constraint(labels[idx], self.batch_sharding)
            return train_step(self.graphdef, state, x, y)

        # Unrolled: XLA:CPU runs a rolled loop body ~8x slower (measured, see
        # benchmarks/), and the unrolled chunk is still one dispatch.
        return jax.lax.scan(one_step, state, start + jnp.arange(num_steps), unroll=True)

    def _evaluate(self, state, images, labels, weights):
        model, _ = nnx.merge(self.graphdef, state)

        def one_batch(totals, batch):
            x, y, w = (jax.lax.with_sharding_constraint(a, self.batch_sharding) for a in batch)
            loss, correct = eval_step(model, x, y, w)
            return (totals[0] + loss, totals[1] + correct), None

        (loss, correct), _ = jax.lax.scan(one_batch, (0.0, 0.0), (images, labels, weights))
        total = jnp.sum(weights)
        return loss / total, correct / total

    def _step_size_quantiles(self, state):
        _, optimizer = nnx.merge(self.graphdef, state)
        sizes = optax_rmsprop.effective_step_size(
            optimizer.opt_state, self.schedule, eps=self.config.eps
        )
        qs = jnp.asarray(list(QUANTILES.values()))
        return {
            _layer_name(path): jnp.quantile(leaf.ravel(), qs)
            for path, leaf in jax.tree_util.tree_leaves_with_path(sizes)
        }

    # -- host-side API ------------------------------------------------------
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
        if self._permutation[0] != epoch:
            self._permutation = (epoch, self._permute(self._key, epoch, num_train))
        return self._permutation[1]

    def train_chunk(self, data: input_pipeline.DeviceData, step: int, num_steps: int) -> Chunk:
        """Runs ``num_steps`` steps from ``step`` (within one epoch) in one jitted call."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch, data.num_train)
        args = (self.state, data.train_images, data.train_labels, order, jnp.int32(position))
        if num_steps not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[num_steps] = self._train.lower(*args, num_steps=num_steps).compile()
            self.compile_time_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.state, (losses, accuracies) = self._compiled[num_steps](*args)
        losses, accuracies = np.asarray(losses, np.float64), np.asarray(accuracies, np.float64)
        return Chunk(losses, accuracies, time.perf_counter() - t0)

    def evaluate(self, data: input_pipeline.DeviceData) -> tuple[float, float]:
        """Test loss and accuracy of the current model."""
        loss, accuracy = self._eval(
            self.state, data.test_images, data.test_labels, data.test_weights
        )
        return float(loss), float(accuracy)

    def effective_step_sizes(self) -> dict[str, dict[str, float]]:
        quantiles = jax.device_get(self._sizes(self.state))
        return {
            layer: {name: float(v) for name, v in zip(QUANTILES, q, strict=True)}
            for layer, q in quantiles.items()
        }

    def learning_rate(self, step: int) -> float:
        lr = self.schedule(step) if callable(self.schedule) else self.schedule
        return float(lr)

    def evaluation_record(
        self,
        step: int,
        data: input_pipeline.DeviceData,
        epoch_sums: EpochSums,
        examples_per_sec: float | None,
    ) -> dict:
        """One line of metrics.jsonl: the epoch's train means, the test metrics, the step sizes."""
        test_loss, test_accuracy = self.evaluate(data)
        train_loss, train_accuracy = epoch_sums.means()
        return {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "learning_rate": self.learning_rate(step - 1),
            "examples_per_sec": examples_per_sec,
            "effective_step_size": self.effective_step_sizes(),
        }

    def checkpoint_tree(self, step: int, epoch_sums: EpochSums) -> dict:
        return {
            "state": nnx.to_pure_dict(self.state),
            "step": np.asarray(step, np.int64),
            "epoch_sums": np.asarray(epoch_sums, np.float64),
        }

    def load_checkpoint_tree(self, tree: dict) -> tuple[int, EpochSums]:
        nnx.replace_by_pure_dict(self.state, tree["state"])
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


def _summary(
    trainer: Trainer,
    record: dict,
    step: int,
    throughput: Throughput,
    wall_time_s: float,
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
        "compile_time_s": trainer.compile_time_s,
        "examples_per_sec": throughput.per_second(),
        "devices": [str(d) for d in jax.devices()],
        "dataset": dataset_source,
        "num_params": trainer.num_params,
        "config": trainer.config.to_dict(),
    }


def train_and_evaluate(
    config: Config, dataset: input_pipeline.Dataset, log: Callable[[str], None] = print
) -> dict:
    """Trains ``config.model`` on ``dataset``; returns the summary (also in summary.json)."""
    t_start = time.perf_counter()
    mesh = make_mesh()
    trainer = Trainer(config, mesh, steps_per_epoch(config, dataset.num_train, mesh.size))
    main_process = jax.process_index() == 0
    ckpt, restored = checkpoints.open_run(
        config.workdir,
        config.to_dict(),
        Config.resumable_fields(),
        resume=config.resume,
        target=trainer.checkpoint_tree(0, EpochSums()),
        main_process=main_process,
        log=log,
    )
    step, epoch_sums = trainer.load_checkpoint_tree(restored) if restored else (0, EpochSums())
    resume_step = step if config.resume else None
    reporter = reporting.Reporter(config.workdir, enabled=main_process, resume_step=resume_step)
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
    # Epoch lines go through the bar when it is shown (so it stays at the bottom),
    # else through ``log``: quiet on other processes and when the caller says so.
    say = bar.write if shown else log
    total, window, record = Throughput(), Throughput(), {}
    while step < trainer.total_steps:
        chunk = trainer.train_chunk(data, step, trainer.chunk_end(step) - step)
        previous, step = step, step + chunk.num_steps
        examples = chunk.num_steps * config.batch_size
        total.add(examples, chunk.seconds)
        window.add(examples, chunk.seconds)
        epoch_sums = epoch_sums.add_all(chunk.losses, chunk.accuracies)
        bar.update(chunk.num_steps)
        bar.set_postfix(
            loss=f"{chunk.losses[-1]:.4f}",
            acc=f"{chunk.accuracies[-1]:.3f}",
            ex_per_s=f"{examples / chunk.seconds:,.0f}",
        )
        epoch_end = step % trainer.steps_per_epoch == 0
        if epoch_end or step == trainer.total_steps:
            record = trainer.evaluation_record(step, data, epoch_sums, window.per_second())
            reporter.record(record)
            say(reporting.epoch_line(record))
            window = Throughput()
            if epoch_end:
                epoch_sums = EpochSums()
        if checkpoint_due(previous, step, config.checkpoint_every) or step == trainer.total_steps:
            ckpt.save(step, trainer.checkpoint_tree(step, epoch_sums))
    bar.close()
    ckpt.close()
    if not record:  # resumed after the last step: evaluate what was restored
        record = dict(zip(("test_loss", "test_accuracy"), trainer.evaluate(data), strict=True))
    wall_time_s = time.perf_counter() - t_start
    summary = _summary(trainer, record, step, total, wall_time_s, dataset.source)
    reporter.finish(summary)
    log(reporting.done_line(summary, config.workdir))
    return summary
