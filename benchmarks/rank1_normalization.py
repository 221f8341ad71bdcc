"""Rank-1 normalization of 4-bit ``nu``: does it beat block-wise absmax here?

    python -m benchmarks.rank1_normalization [--steps 1000] [--small] [--out DIR]

Li, Chen and Zhu (2023) scale each entry of a matrix's second moment by
``min(row max, column max)`` instead of its block's absmax, and find it
slightly better; torchao leaves it out. This runs the drift problem of the
state-precision page (a noisy least-squares problem, 64 x 4096, lr 1e-3,
decay 0.99, momentum 0.9) with float32 state and with 4-bit ``nu`` scaled
either way (the momentum buffer on the 4-bit signed map in blocks of 128 for
both), and reports each run's drift from float32 state and its final loss.

The 4-bit runs quantize by round trip: after each step the buffers are
replaced by what their codes stand for, which is what storing the codes does
(the library's own ``state_dtype="int4"`` run is reported beside them as a
check of that).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp

import optax_rmsprop
from benchmarks import common
from optax_rmsprop import _quantize

SHAPE, SMALL_SHAPE = (64, 4096), (16, 512)
LR, DECAY, MOMENTUM, EPS = 1e-3, 0.99, 0.9, 1e-8


def block_round_trip(x: jax.Array, codebook: _quantize.Codebook, block: int = 128) -> jax.Array:
    """``x`` as stored by 4-bit codes on blocks of ``block`` along the last axis."""
    absmax = _quantize.block_absmax(x, _quantize.num_blocks(x.shape[-1], block))
    codes = _quantize.encode_blocks(x, absmax, codebook)
    return _quantize.decode_blocks(codes, absmax, codebook, x.shape[-1])


def rank1_round_trip(x: jax.Array, codebook: _quantize.Codebook) -> jax.Array:
    """``x`` as stored by codes relative to ``min(row max, column max)`` of ``|x|``."""
    a = jnp.abs(x)
    scale = jnp.minimum(jnp.max(a, axis=1, keepdims=True), jnp.max(a, axis=0, keepdims=True))
    safe = jnp.where(scale > 0, scale, 1.0)
    return _quantize.decode(_quantize.encode(x / safe, codebook), codebook) * scale


def noisy_problem(shape: tuple[int, int]) -> tuple[jax.Array, Callable]:
    """The target and the gradient at step ``t`` of the noisy least-squares problem."""
    key = jax.random.key(0)
    target = jax.random.normal(key, shape)

    def grad(t: jax.Array, p: jax.Array) -> jax.Array:
        return (p - target) + 0.5 * jax.random.normal(jax.random.fold_in(key, t), shape)

    return target, grad


def run_by_hand(shape: tuple[int, int], steps: int, store_nu: Callable | None) -> jax.Array:
    """RMSProp with momentum; ``store_nu`` (None: float32 state) quantizes ``nu``."""
    _, grad = noisy_problem(shape)

    def body(t, carry):
        p, nu, b = carry
        g = grad(t, p)
        nu = DECAY * nu + (1 - DECAY) * g * g
        b = MOMENTUM * b + LR * g / (jnp.sqrt(nu) + EPS)
        p = p - b
        if store_nu is not None:
            nu, b = store_nu(nu), block_round_trip(b, _quantize.SIGNED4)
        return p, nu, b

    zeros = jnp.zeros(shape)
    return jax.jit(lambda: jax.lax.fori_loop(0, steps, body, (zeros, zeros, zeros)))()[0]


def run_library(shape: tuple[int, int], steps: int) -> jax.Array:
    """The same problem with ``optax_rmsprop.rmsprop(..., state_dtype="int4")``."""
    _, grad = noisy_problem(shape)
    tx = optax_rmsprop.rmsprop(LR, decay=DECAY, eps=EPS, momentum=MOMENTUM, state_dtype="int4")
    step = common.update_and_apply(tx)
    zeros = jnp.zeros(shape)

    def body(t, carry):
        p, state = carry
        return step(p, state, grad(t, p))

    return jax.jit(lambda: jax.lax.fori_loop(0, steps, body, (zeros, tx.init(zeros))))()[0]


def measure(shape: tuple[int, int], steps: int) -> dict:
    target, _ = noisy_problem(shape)
    float32 = run_by_hand(shape, steps, None)
    finals = {
        "block 128 (absmax)": run_by_hand(
            shape, steps, lambda x: block_round_trip(x, _quantize.NU4)
        ),
        "rank-1 (min of row and column max)": run_by_hand(
            shape, steps, lambda x: rank1_round_trip(x, _quantize.NU4)
        ),
        "library int4 (block 128)": run_library(shape, steps),
    }
    rows = {
        name: {
            "drift": float(jnp.linalg.norm(p - float32) / jnp.linalg.norm(float32)),
            "loss": float(jnp.mean((p - target) ** 2)),
        }
        for name, p in finals.items()
    }
    return {"rows": rows, "float32_loss": float(jnp.mean((float32 - target) ** 2))}


def to_markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        f"Measured {m['date']}, JAX {m['jax']}. 4-bit `nu` scaled by block absmax or by "
        f"rank-1 normalization; {payload['steps']} steps of the noisy least-squares problem "
        f"({' x '.join(map(str, payload['shape']))}, lr {LR}, decay {DECAY}, momentum "
        f"{MOMENTUM}). Drift: relative norm of the difference from the float32-state run, "
        f"whose final loss is {payload['float32_loss']:.6f}.",
        "",
        *common.markdown_table(
            ["nu scaled by", "drift", "final loss"],
            [
                [name, f"{100 * r['drift']:.2f}%", f"{r['loss']:.6f}"]
                for name, r in payload["rows"].items()
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--small", action="store_true", help="a small problem, 50 steps (a check)")
    ap.add_argument("--out", default=None, help="folder for the JSON and table")
    args = ap.parse_args(argv)
    shape, steps = (SMALL_SHAPE, 50) if args.small else (SHAPE, args.steps)
    payload = {"machine": common.machine(), "shape": shape, "steps": steps, "small": args.small}
    payload.update(measure(shape, steps))
    markdown = to_markdown(payload)
    print(markdown)
    common.write("rank1_normalization", payload, markdown, args.out)


if __name__ == "__main__":
    main()
