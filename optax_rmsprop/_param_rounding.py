"""``param_rounding``: low-precision parameters that keep the updates under half a unit.

``optax.apply_updates`` adds an update to a bfloat16 parameter and rounds the sum
to the nearest bfloat16, which keeps 8 significant bits: an update under half a
unit in the last place (0.2% to 0.4% of the weight) is lost, every step. Placed last in
a chain, :func:`param_rounding` returns float32 updates that land each
low-precision parameter, through the same ``optax.apply_updates``, on a rounding
of ``p + u`` that keeps them: stochastic (right in expectation, no memory) or
compensated (an exact float32 master weight, split into the bfloat16 parameter
and a 16-bit remainder kept in the state).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_rmsprop import _rounding, _xla_hints
from optax_rmsprop._tree import Tree

METHODS = ("stochastic", "compensated")
_SALT = 0x2545F491  # the parameters' streams, apart from the optimizer state's (salts 0, 1, ...)
_HALF = np.uint32(0x8000)  # half a bfloat16 unit in the last place, in float32's low 16 bits


class ParamRoundingState(NamedTuple):
    """State of :func:`param_rounding`.

    Attributes:
      count: with ``method="stochastic"``, the number of updates so far (int32
        scalar, saturating), which seeds the random bits: a run resumed from a
        checkpoint rounds as the uninterrupted run would; else None.
      remainder: with ``method="compensated"``, per parameter the low 16 bits
        of its float32 master weight (``int16``), whose top 16 bits, rounded
        to nearest, are the bfloat16 parameter itself; a scalar 0 at leaves
        kept in their own precision (float32, float64, complex); else None.
    """

    count: jax.Array | None
    remainder: Tree | None


def _rounds(dtype: np.dtype, method: str, path: str) -> bool:
    """Whether leaves of ``dtype`` are rounded here (False: kept as given); raises if refused."""
    dtype = jnp.dtype(dtype)
    where = f"the parameter {path or '<root>'}"
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
            f"param_rounding rounds floating-point parameters, but {where} has dtype "
            f"{dtype.name}. Leave it out with optax.masked or optax.multi_transform."
        )
    if jnp.issubdtype(dtype, jnp.complexfloating) or jnp.finfo(dtype).nmant >= 23:
        return False  # float32 or wider: apply_updates keeps every update already
    if dtype == jnp.bfloat16 or (dtype == jnp.float16 and method == "stochastic"):
        return True
    if dtype == jnp.float16:
        raise ValueError(
            f"param_rounding(method='compensated') keeps the low 16 bits of a float32 "
            f"whose high 16 bits are a bfloat16, but {where} is float16, whose bits are laid "
            f"out otherwise. Use method='stochastic' for float16 parameters, or bfloat16."
        )
    raise ValueError(
        f"param_rounding supports bfloat16 and float16 parameters (float32 and wider pass "
        f"through), but {where} has dtype {dtype.name}."
    )


def _check_params(params: Tree, method: str) -> list[bool]:
    """Per leaf of ``params``, whether it is rounded here; raises on a leaf it cannot take."""
    if params is None:
        raise ValueError(
            "param_rounding needs the parameters: call tx.update(updates, state, params). "
            "Place it last in an optax.chain, whose update passes params to every link, and "
            "apply the updates with optax.apply_updates (or nnx.Optimizer.update)."
        )
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [_rounds(leaf.dtype, method, jax.tree_util.keystr(path)) for path, leaf in flat]


def _landing(target: jax.Array, p: jax.Array) -> jax.Array:
    """The float32 update that ``optax.apply_updates`` turns into ``target`` from ``p``.

    Both are in ``p``'s dtype, whose 8 (or 11) significant bits make their
    difference exact in float32 unless ``|target| < 2**-16 |p|``; there it is
    off by at most float32's own rounding of ``p + u``.
    """
    return target.astype(jnp.float32) - p.astype(jnp.float32)


def _stochastic_leaf(u: jax.Array, p: jax.Array, seed: jax.Array) -> jax.Array:
    """The update landing ``p`` on a neighbour of ``p + u``, up with the probability that
    makes it right in expectation."""
    total = p.astype(jnp.float32) + u.astype(jnp.float32)
    rounded = _rounding.stochastic_cast(total, p.dtype, _rounding.random_bits(p.shape, seed))
    return _landing(rounded, p)


def split(master: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A float32 ``master`` as (its bfloat16 rounded to nearest, the int16 low 16 bits).

    Ties round away from zero. :func:`join` gives back ``master`` bit for bit.
    """
    bits = jax.lax.bitcast_convert_type(master.astype(jnp.float32), jnp.uint32)
    high = ((bits + _HALF) >> 16).astype(jnp.uint16)
    low = (bits & np.uint32(0xFFFF)).astype(jnp.uint16)
    return (
        jax.lax.bitcast_convert_type(high, jnp.bfloat16),
        jax.lax.bitcast_convert_type(low, jnp.int16),
    )


def join(param: jax.Array, remainder: jax.Array) -> jax.Array:
    """The float32 whose :func:`split` is ``(param, remainder)``."""
    high = jax.lax.bitcast_convert_type(param, jnp.uint16).astype(jnp.uint32)
    low = jax.lax.bitcast_convert_type(remainder, jnp.uint16).astype(jnp.uint32)
    rounded_up = (low >> 15) * ((high & np.uint32(0x7FFF)) != 0)  # never below a zero param
    return jax.lax.bitcast_convert_type(((high - rounded_up) << 16) | low, jnp.float32)


def _compensated_leaf(
    u: jax.Array, p: jax.Array, remainder: jax.Array, hints: _xla_hints.Hints
) -> tuple[jax.Array, jax.Array]:
    """The update landing ``p`` on its master weight plus ``u``, rounded; the new remainder.

    Each output reads both old buffers, so XLA copies one of them. Computed after
    the new remainder, the update makes it copy one leaf's old remainder (2 bytes)
    in a training step, not the float32 master (4) of every leaf.
    """
    param, remainder = split(join(p, remainder) + u.astype(jnp.float32))
    return hints.after(_landing(param, p), remainder.astype(jnp.float32)), remainder


def _init_remainder(p: jax.Array, rounded: bool) -> jax.Array:
    return jnp.zeros(p.shape if rounded else (), jnp.int16)


def param_rounding(method: str = "stochastic") -> optax.GradientTransformation:
    r"""Round low-precision parameters so that small updates are kept, not lost.

    Place it last in a chain, after the optimizer, and apply the updates with
    ``optax.apply_updates`` (or ``nnx.Optimizer``, which calls it). Each
    bfloat16 (or float16) parameter then lands on a rounding of the float32
    sum :math:`p + u` chosen by ``method``, where ``apply_updates`` alone
    would round it to nearest and drop every update under half a unit in the
    last place (:math:`2^{-9}` to :math:`2^{-8}` of :math:`|p|` for bfloat16).
    Parameters in float32 or wider, and complex ones, pass through untouched.

    - ``"stochastic"``: up or down with the probabilities that make the stored
      value right in expectation. No memory beyond a step count; each weight's
      displacement is exact on average but noisy when it is a few units in
      the last place. The random bits are a hash of the element's position,
      the step count (in the state) and the leaf: no key to thread, the same
      bits when resumed from a checkpoint, and no collective for sharded
      parameters.
    - ``"compensated"``: each parameter is the bfloat16 half of an exact
      float32 master weight whose low 16 bits the state keeps (2 bytes per
      parameter), as NVIDIA apex's ``store_param_remainders``: the master
      weight follows the updates exactly as a float32 parameter would.
      bfloat16 only.

    The update it returns is float32, ``rounded - p``, which is exact, so
    ``apply_updates`` lands on ``rounded`` bit for bit, unless the new value
    is under :math:`2^{-16}` of the old (then within float32's own rounding
    of :math:`p + u`). A transform placed after it would change where the
    parameter lands.

    Args:
      method: ``"stochastic"`` or ``"compensated"``.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``;
      its state is a :class:`ParamRoundingState`.

    Raises:
      ValueError: at ``init`` or ``update``, for integer parameters, for
        float16 parameters with ``method="compensated"``, for other
        low-precision dtypes (float8), and at ``update`` without ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax, optax_rmsprop
      >>> params = jnp.ones(3, jnp.bfloat16)
      >>> tx = optax.chain(optax.sgd(1e-3), optax_rmsprop.param_rounding("compensated"))
      >>> state = tx.init(params)
      >>> for _ in range(10):  # each step is 1e-3: under half of bfloat16's 7.8e-3 near 1
      ...     updates, state = tx.update(-jnp.ones(3, jnp.bfloat16), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params  # 1.01 rounded to bfloat16; optax.apply_updates alone stays at 1
      Array([1.00781, 1.00781, 1.00781], dtype=bfloat16)

    References:
      Gupta, Agrawal, Gopalakrishnan and Narayanan, `Deep Learning with Limited
      Numerical Precision <https://arxiv.org/abs/1502.02551>`_, ICML 2015.
      Zamirai, Zhang, Aberger and De Sa, `Revisiting BFloat16 Training
      <https://arxiv.org/abs/2010.06192>`_, 2020.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    hints = _xla_hints.chosen()

    def init_fn(params):
        rounds = _check_params(params, method)
        if method == "stochastic":
            return ParamRoundingState(count=jnp.zeros([], jnp.int32), remainder=None)
        leaves, tree = jax.tree.flatten(params)
        remainder = [_init_remainder(p, r) for p, r in zip(leaves, rounds, strict=True)]
        return ParamRoundingState(count=None, remainder=jax.tree.unflatten(tree, remainder))

    def update_fn(updates, state, params=None):
        rounds = _check_params(params, method)
        leaves, tree = jax.tree.flatten(updates)
        p_leaves = tree.flatten_up_to(params)
        if method == "stochastic":
            salts = hints.unfolded([_SALT + i for i in range(len(leaves))])
            out = [
                _stochastic_leaf(u, p, _rounding.stream_seed(state.count, salt)) if r else u
                for u, p, r, salt in zip(leaves, p_leaves, rounds, salts, strict=True)
            ]
            count = optax.safe_int32_increment(state.count)
            return jax.tree.unflatten(tree, out), ParamRoundingState(count, None)
        out, remainders = [], []
        for u, p, rem, r in zip(
            leaves, p_leaves, tree.flatten_up_to(state.remainder), rounds, strict=True
        ):
            u, rem = _compensated_leaf(u, p, rem, hints) if r else (u, rem)
            out.append(u)
            remainders.append(rem)
        remainder = jax.tree.unflatten(tree, remainders)
        return jax.tree.unflatten(tree, out), ParamRoundingState(None, remainder)

    return optax.GradientTransformation(init_fn, update_fn)
