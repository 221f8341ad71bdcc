"""Famous published RMSProp settings, as named optimizers.

Each recipe is built on :func:`optax_rmsprop.rmsprop` with the conventions of
the code the authors actually ran (not just the numbers in the paper), and
says where the usual port goes wrong. Recipes trained with TensorFlow 1 agree
with :func:`optax_rmsprop.compat.tensorflow_v1` up to rounding (tested); use
that port where bit-level agreement with TF's order of operations matters.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from optax_rmsprop._rmsprop import rmsprop
from optax_rmsprop._tree import Tree

__all__ = ["a3c", "dqn_nature", "efficientnet", "graves_2013", "impala", "inception"]


def graves_2013(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    """Graves (2013), the first centered RMSProp, with momentum.

    ``rho = 0.95``, ``eps = 1e-4`` inside the root, centered, momentum 0.9 with
    the learning rate inside the buffer (eqs. 38-41; Chainer's ``RMSpropGraves``).

    The usual mistake: reading eq. 40's ``Δ = ℶΔ - ℷ ε / sqrt(n - g² + ℸ)`` as
    PyTorch's ``RMSprop(momentum=0.9, centered=True, eps=1e-4)``, which puts eps
    outside the root and is a different optimizer for small gradients.

    References:
      Graves, `Generating Sequences With Recurrent Neural Networks
      <https://arxiv.org/abs/1308.0850>`_, 2013, section 4.
    """
    return rmsprop(
        learning_rate, decay=0.95, eps=1e-4, eps_in_sqrt=True, centered=True, momentum=0.9
    )


def dqn_nature(
    learning_rate: optax.ScalarOrSchedule = 2.5e-4,
    *,
    batch_size: int = 32,
    loss_reduction: str = "sum",
) -> optax.GradientTransformationExtraArgs:
    """DQN (Mnih et al., Nature 2015): centered RMSProp, no momentum.

    DeepMind's Lua code: ``rho = 0.95`` for both the mean gradient and the mean
    square, ``eps = 0.01`` inside the root, centered, accumulators from 0, on
    the gradient **summed** over the minibatch of 32.

    Where ports go wrong: the paper's "gradient momentum 0.95" is the decay of
    the centered mean, not a momentum term (``momentum=0.95`` is a different
    optimizer); and a loss **averaged** over the batch scales the gradient by
    1/32 and the mean square by 1/32², so eps must be 0.01/32² to match (DQN Zoo
    does this). Pass ``loss_reduction='mean'`` for that.

    Args:
      learning_rate: 2.5e-4 in the paper.
      batch_size: the minibatch size the gradient is averaged over.
      loss_reduction: 'sum' (the original) or 'mean'.

    References:
      Mnih et al., `Human-level control through deep reinforcement learning
      <https://www.nature.com/articles/nature14236>`_, Nature 2015; the released
      ``dqn/NeuralQLearner.lua``; DQN Zoo's ``dqn_zoo/dqn/run_atari.py``.
    """
    if loss_reduction not in ("sum", "mean"):
        raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {loss_reduction!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    eps = 0.01 if loss_reduction == "sum" else 0.01 / batch_size**2
    return rmsprop(learning_rate, decay=0.95, eps=eps, eps_in_sqrt=True, centered=True)


def impala(learning_rate: optax.ScalarOrSchedule = 4.8e-4) -> optax.GradientTransformationExtraArgs:
    """IMPALA (Espeholt et al., 2018): TF1 RMSProp, ``rho = 0.99``, ``eps = 0.1``.

    TF1 conventions: the mean square starts at **1**, eps inside the root, no
    momentum. The original decays the learning rate linearly to 0 over the
    run: pass ``optax.linear_schedule(4.8e-4, 0.0, total_updates)``.

    Where ports go wrong: ``torch.optim.RMSprop(eps=0.1)`` puts eps outside
    the root (0.1 outside is like 0.01 inside) and starts the mean square at 0
    (first steps ~10x larger); torchbeast's 0.01-outside differs again.

    References:
      Espeholt et al., `IMPALA <https://arxiv.org/abs/1802.01561>`_, 2018;
      ``deepmind/scalable_agent`` ``experiment.py``.
    """
    return rmsprop(learning_rate, decay=0.99, eps=0.1, eps_in_sqrt=True, initial_scale=1.0)


def _tf_slim(
    learning_rate: optax.ScalarOrSchedule,
    eps: float,
    weight_decay: float,
    weight_decay_mask: Tree | Callable[[Tree], Tree] | None,
) -> optax.GradientTransformationExtraArgs:
    return rmsprop(
        learning_rate,
        decay=0.9,
        eps=eps,
        eps_in_sqrt=True,
        initial_scale=1.0,
        momentum=0.9,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
    )


def efficientnet(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 1e-5,
    weight_decay_mask: Tree | Callable[[Tree], Tree] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """EfficientNet / MnasNet / MobileNetV3 (TF TPU): TF1 RMSProp, rho .9, momentum .9, eps 1e-3.

    TF1 conventions (mean square from **1**, eps inside the root, learning rate
    inside the momentum buffer) plus L2 ``1e-5 * sum(l2_loss(w))`` on the
    non-batch-norm weights, i.e. a coupled gradient term ``1e-5 * w``: mask the
    batch-norm scales and biases out with ``weight_decay_mask``. The original
    schedule: ``0.016 * batch / 256``, x0.97 every 2.4 epochs, 5 warm-up epochs.

    Where ports go wrong: PyTorch's RMSprop with ``eps=1e-3`` (outside the root,
    accumulator from 0) trains unstably; timm's ``RMSpropTF`` exists for this
    reason. And AdamW-style decoupled decay is not what the TF code did.

    References:
      Tan and Le, `EfficientNet <https://arxiv.org/abs/1905.11946>`_, 2019;
      ``tensorflow/tpu`` ``models/official/efficientnet/utils.py``.
    """
    return _tf_slim(learning_rate, 1e-3, weight_decay, weight_decay_mask)


def inception(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 4e-5,
    weight_decay_mask: Tree | Callable[[Tree], Tree] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Inception v3 / TF-slim ImageNet (MobileNet v1/v2, NASNet): rho .9, momentum .9, eps **1.0**.

    TF1 conventions as :func:`efficientnet`, with ``eps = 1.0`` inside the root
    (``RMSPROP_EPSILON = 1.0``, TF-slim ``--opt_epsilon=1.0``) and TF-slim's
    default L2 of 4e-5. The paper's schedule: 0.045, x0.94 every 2 epochs.

    Where ports go wrong: treating eps as negligible. With eps = 1 inside the
    root, the denominator is at least 1, so small gradients take SGD-like steps
    of ``lr * g``: the optimizer is part RMSProp, part momentum SGD.

    References:
      Szegedy et al., `Rethinking the Inception Architecture
      <https://arxiv.org/abs/1512.00567>`_, 2015; ``tensorflow/models``
      ``research/inception/inception/inception_train.py``.
    """
    return _tf_slim(learning_rate, 1.0, weight_decay, weight_decay_mask)


def a3c(learning_rate: optax.ScalarOrSchedule = 7e-4) -> optax.GradientTransformationExtraArgs:
    """A3C (Mnih et al., 2016) as reproduced by ChainerRL: rho .99, eps 0.1 inside the root.

    The paper shares one set of RMSProp statistics across all actor threads;
    in JAX that is simply one optimizer state for the summed or averaged
    gradients of all actors.

    References:
      Mnih et al., `Asynchronous Methods for Deep Reinforcement Learning
      <https://arxiv.org/abs/1602.01783>`_, 2016; ChainerRL ``RMSpropAsync``.
    """
    return rmsprop(learning_rate, decay=0.99, eps=0.1, eps_in_sqrt=True)
