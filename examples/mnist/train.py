"""Training and evaluation of the MNIST models with ``optax_rmsprop.rmsprop``.

One code path for one CPU, a GPU, a TPU host or several hosts: a 1-D mesh
``('data',)`` over every device, the global batch sharded over it, params and
optimizer state replicated. Each jitted call runs ``steps_per_dispatch`` train
steps with ``jax.lax.scan`` on data that already lives on the devices, so
neither Python dispatch nor the input pipeline is the bottleneck.
"""

from __future__ import annotations

import dataclasses
import math
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
    def train_chunk(self, data: dict, perm: jax.Array, start: int, num_steps: int):
        """Runs ``num_steps`` steps from position ``start`` of the epoch's ``perm``."""
        args = (
            self.state,
            data["train_images"],
            data["train_labels"],
            perm,
            jnp.int32(start),
        )
        if num_steps not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[num_steps] = self._train.lower(*args, num_steps=num_steps).compile()
            self.compile_time_s += time.perf_counter() - t0
        self.state, (losses, accuracies) = self._compiled[num_steps](*args)
        return np.asarray(losses, np.float64), np.asarray(accuracies, np.float64)

    def evaluate(self, data: dict) -> tuple[float, float]:
        loss, accuracy = self._eval(
            self.state, data["test_images"], data["test_labels"], data["test_weights"]
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

    def checkpoint_tree(self, step: int, epoch_sums: EpochSums) -> dict:
        return {
            "state": nnx.to_pure_dict(self.state),
            "step": np.asarray(step, np.int64),
            "epoch_sums": np.asarray(epoch_sums, np.float64),
        }

    def load_checkpoint_tree(self, tree: dict) -> tuple[int, EpochSums]:
        nnx.replace_by_pure_dict(self.state, tree["state"])
        return int(tree["step"]), EpochSums(*np.asarray(tree["epoch_sums"], np.float64).tolist())


def put_data_on_devices(dataset: input_pipeline.Dataset, mesh, eval_batch: int) -> dict:
    """Every array replicated on every device; the test set padded into eval batches."""
    n = len(dataset.test_labels)
    num_batches = max(1, math.ceil(n / eval_batch))
    pad = num_batches * eval_batch - n
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    test_images = np.concatenate(
        [dataset.test_images, np.zeros((pad, 28, 28, 1), np.uint8)]
    ).reshape(num_batches, eval_batch, 28, 28, 1)
    test_labels = np.concatenate([dataset.test_labels, np.zeros(pad, np.int32)])
    host = {
        "train_images": dataset.train_images,
        "train_labels": dataset.train_labels,
        "test_images": test_images,
        "test_labels": test_labels.reshape(num_batches, eval_batch),
        "test_weights": weights.reshape(num_batches, eval_batch),
    }
    return {k: input_pipeline.replicate(mesh, v) for k, v in host.items()}


def _next_boundary(step: int, config: Config, steps_per_epoch: int, total: int) -> int:
    """The end of the chunk that starts at ``step``.

    Chunks are ``steps_per_dispatch`` long counted from the start of each epoch
    (so only two chunk lengths are ever compiled), cut at the epoch's end and
    at ``total``. The boundaries depend on the step alone, so a run resumed
    from a checkpoint (always written at a boundary) replays the same chunks.
    """
    epoch_start = step - step % steps_per_epoch
    k = config.steps_per_dispatch
    next_dispatch = epoch_start + ((step - epoch_start) // k + 1) * k
    return min(next_dispatch, epoch_start + steps_per_epoch, total)


def train_and_evaluate(
    config: Config, dataset: input_pipeline.Dataset, log: Callable[[str], None] = print
) -> dict:
    """Trains ``config.model`` on ``dataset``; returns the summary (also in summary.json)."""
    t_start = time.perf_counter()
    mesh = make_mesh()
    devices = jax.device_count()
    if config.batch_size % devices:
        raise ValueError(
            f"--batch-size {config.batch_size} must be a multiple of the {devices} devices"
        )
    steps_per_epoch = dataset.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the {dataset.num_train} "
            "training examples"
        )
    eval_batch = devices * math.ceil(config.eval_batch_size / devices)
    trainer = Trainer(config, mesh, steps_per_epoch)
    main_process = jax.process_index() == 0
    ckpt = checkpoints.Checkpoints(config.workdir)
    step, epoch_sums = 0, EpochSums()
    if config.resume:
        checkpoints.check_config(config.workdir, config.to_dict(), Config.RESUMABLE)
        latest = ckpt.latest_step()
        if latest is not None:
            restored = ckpt.restore(latest, trainer.checkpoint_tree(0, epoch_sums))
            step, epoch_sums = trainer.load_checkpoint_tree(restored)
            log(f"Resumed from the checkpoint at step {step}.")
        else:
            log(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0.")
    elif main_process and ckpt.latest_step() is not None:
        removed = ckpt.clear()
        log(
            f"New run in {config.workdir}: removed {removed} checkpoint(s) of the previous run "
            "(pass --resume to continue a run instead)."
        )
    if main_process:
        checkpoints.write_config(config.workdir, config.to_dict())
    reporter = reporting.Reporter(
        config.workdir,
        enabled=main_process,
        resume_step=step if config.resume else None,
    )
    log(
        f"{config.model}: {trainer.num_params:,} params | data: {dataset.source} "
        f"({dataset.num_train:,} train, {len(dataset.test_labels):,} test) | "
        f"{steps_per_epoch} steps/epoch, {trainer.total_steps} steps in all"
    )
    data = put_data_on_devices(dataset, mesh, eval_batch)
    key = jax.random.key(config.seed)
    permute = jax.jit(
        input_pipeline.epoch_permutation,
        static_argnums=2,
        out_shardings=trainer.replicated,
    )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=trainer.total_steps,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        disable=not (config.progress and main_process),
    )
    perm, perm_epoch = None, -1
    train_time, trained_examples = 0.0, 0
    window_time, window_examples = 0.0, 0
    last_record: dict = {}
    while step < trainer.total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = permute(key, epoch, dataset.num_train), epoch
        end = _next_boundary(step, config, steps_per_epoch, trainer.total_steps)
        t0 = time.perf_counter()
        compile_before = trainer.compile_time_s
        losses, accuracies = trainer.train_chunk(data, perm, position, end - step)
        elapsed = time.perf_counter() - t0 - (trainer.compile_time_s - compile_before)
        examples = (end - step) * config.batch_size
        train_time += elapsed
        trained_examples += examples
        window_time += elapsed
        window_examples += examples
        for loss, accuracy in zip(losses, accuracies, strict=True):
            epoch_sums = epoch_sums.add(loss, accuracy)
        step = end
        bar.update(len(losses))
        bar.set_postfix(
            loss=f"{losses[-1]:.4f}",
            acc=f"{accuracies[-1]:.3f}",
            ex_per_s=f"{examples / max(elapsed, 1e-9):,.0f}",
        )
        at_epoch_end = step % steps_per_epoch == 0
        if at_epoch_end or step == trainer.total_steps:
            test_loss, test_accuracy = trainer.evaluate(data)
            last_record = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                "train_loss": epoch_sums.means()[0],
                "train_accuracy": epoch_sums.means()[1],
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "learning_rate": trainer.learning_rate(step - 1),
                "examples_per_sec": window_examples / max(window_time, 1e-9),
                "effective_step_size": trainer.effective_step_sizes(),
            }
            reporter.record(last_record)
            # Through the bar when it is shown (so it stays at the bottom), else
            # through ``log``: quiet on other processes and when the caller says so.
            (log if bar.disable else bar.write)(
                f"step {step:>6} epoch {last_record['epoch']:.2f} | train loss "
                f"{last_record['train_loss']:.4f} acc {last_record['train_accuracy']:.4f}"
                f" | test loss {test_loss:.4f} acc {test_accuracy:.4f} | "
                f"{last_record['examples_per_sec']:,.0f} ex/s"
            )
            window_time, window_examples = 0.0, 0
            if at_epoch_end:
                epoch_sums = EpochSums()
        crossed = config.checkpoint_every and (
            (step - len(losses)) // config.checkpoint_every != step // config.checkpoint_every
        )
        if crossed or step == trainer.total_steps:
            ckpt.save(step, trainer.checkpoint_tree(step, epoch_sums))
    bar.close()
    ckpt.close()
    if not last_record:  # resumed after the last step: evaluate what was restored
        test_loss, test_accuracy = trainer.evaluate(data)
        last_record = {"test_loss": test_loss, "test_accuracy": test_accuracy}
    summary = {
        "test_accuracy": last_record["test_accuracy"],
        "test_loss": last_record["test_loss"],
        "epochs": step / steps_per_epoch,
        "steps": step,
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time,
        "compile_time_s": trainer.compile_time_s,
        "examples_per_sec": trained_examples / train_time if train_time else None,
        "devices": [str(d) for d in jax.devices()],
        "dataset": dataset.source,
        "num_params": trainer.num_params,
        "config": dataclasses.asdict(config),
    }
    reporter.finish(summary)
    log(
        f"Done: test accuracy {summary['test_accuracy']:.4f}, test loss "
        f"{summary['test_loss']:.4f}, {step} steps in {summary['wall_time_s']:.1f} s. "
        f"Results in {config.workdir}/"
    )
    return summary
