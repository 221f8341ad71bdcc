"""Can pure JAX make XLA:CPU run the RMSProp step in one pass over memory?

    python -m benchmarks.single_pass [--sizes 1e7 3e7] [--block 65536] [--rounds 9]

XLA:CPU compiles the step (``nu = d*nu + (1-d)*g**2; p -= lr*g/(sqrt(nu)+eps)``)
to two loop fusions: one writes ``nu``, the next reads it back. That is 28
bytes per float32 parameter where one pass needs 20. This script measures the
only pure-JAX way to get one pass: a ``lax.fori_loop`` over cache-sized blocks,
updating ``nu`` and ``p`` in place with ``dynamic_update_slice`` so that each
block is read from memory once. It is timed against the two-pass step and the
memory roofline (a donated ``p + g``, 12 bytes, scaled to 20), interleaved.
Writes benchmarks/results/single_pass.{json,md}.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import common

LR, DECAY, EPS = 1e-3, 0.9, 1e-8


def two_pass(p, nu, g):
    nu = DECAY * nu + (1 - DECAY) * g * g
    return p - LR * g / (jnp.sqrt(nu) + EPS), nu


def blocked(p, nu, g, block: int):
    """The same step, one cache-sized block at a time (``p.size`` a multiple of ``block``)."""

    def body(i, carry):
        p, nu = carry
        at = (i * block,)
        g_blk = lax.dynamic_slice(g, at, (block,))
        nu_blk = DECAY * lax.dynamic_slice(nu, at, (block,)) + (1 - DECAY) * g_blk * g_blk
        # The barrier makes the p update read the new nu from the (cached) buffer;
        # without it XLA recomputes nu from the old buffer and must copy all of nu
        # on every iteration to update it in place.
        nu = lax.optimization_barrier(lax.dynamic_update_slice(nu, nu_blk, at))
        nu_blk = lax.dynamic_slice(nu, at, (block,))
        p_blk = lax.dynamic_slice(p, at, (block,)) - LR * g_blk / (jnp.sqrt(nu_blk) + EPS)
        return lax.dynamic_update_slice(p, p_blk, at), nu

    return lax.fori_loop(0, p.size // block, body, (p, nu))


def runner(fn, n: int):
    key = jax.random.key(0)
    g = 1e-3 * jax.random.normal(key, (n,), jnp.float32)
    box = {"p": jax.random.normal(jax.random.fold_in(key, 1), (n,)), "nu": jnp.ones((n,))}
    step = jax.jit(fn, donate_argnums=(0, 1))

    def run():
        box["p"], box["nu"] = step(box["p"], box["nu"], g)
        jax.block_until_ready(box["p"])

    run()
    return run, g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e7, 3e7])
    ap.add_argument("--block", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rows = []
    for n in (int(x) // args.block * args.block for x in args.sizes):
        plain_run, _ = runner(two_pass, n)
        blocked_run, g = runner(functools.partial(blocked, block=args.block), n)
        p0, nu0 = jnp.linspace(-1, 1, n), jnp.full((n,), 0.5)
        same = all(
            bool(jnp.array_equal(a, b))
            for a, b in zip(
                jax.jit(two_pass)(p0, nu0, g),
                jax.jit(functools.partial(blocked, block=args.block))(p0, nu0, g),
                strict=True,
            )
        )
        res = common.paired(
            {"two_pass": plain_run, "blocked": blocked_run, "roofline_add": common.roofline([n])},
            args.rounds,
        )
        rows.append(
            {
                "n": n,
                "bitwise_equal": same,
                "median_s": {k: v["median_s"] for k, v in res.items()},
                "two_pass_fraction": 20 / 12 / common.ratio(res, "two_pass", "roofline_add"),
                "blocked_fraction": 20 / 12 / common.ratio(res, "blocked", "roofline_add"),
                "blocked_over_two_pass": common.ratio(res, "blocked", "two_pass"),
            }
        )
        print(rows[-1], flush=True)
    m = common.machine()
    md = [
        f"Measured {m['date']} on {m['cpus']} CPU cores, JAX {m['jax']} ({m['backend']}); "
        f"block {args.block} parameters; medians of {args.rounds} interleaved rounds.",
        "",
        "| N | two-pass (ms) | blocked one-pass (ms) | blocked / two-pass "
        "| two-pass, fraction of roofline | blocked, fraction of roofline | same result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = r["median_s"]
        md.append(
            f"| {r['n']:.1e} | {1e3 * ms['two_pass']:.2f} | {1e3 * ms['blocked']:.2f} "
            f"| {r['blocked_over_two_pass']:.2f} | {r['two_pass_fraction']:.2f} "
            f"| {r['blocked_fraction']:.2f} | {'bitwise' if r['bitwise_equal'] else 'NO'} |"
        )
    common.write(
        "single_pass", {"machine": m, "block": args.block, "rows": rows}, "\n".join(md) + "\n"
    )


if __name__ == "__main__":
    main()
