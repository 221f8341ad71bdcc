"""Compile time of one jitted RMSProp step for trees of 10 ... 5,000 leaves, against optax.

    python -m benchmarks.compile_time [--leaves 10 100 1000 2000 5000] [--repeats 4]

Each measurement traces, lowers and compiles a fresh function (no cache hits on
the step itself). One discarded round first warms JAX's own caches (jitted
``jnp`` helpers, keyed by shape) so that whoever runs first does not pay for
everyone, and the order of the contenders rotates from repeat to repeat.
Writes benchmarks/results/compile_time.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common


def compile_seconds(make_tx, leaves: int) -> float:
    params = {f"p{i}": jnp.ones((64,), jnp.float32) for i in range(leaves)}
    tx = make_tx()
    state = tx.init(params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    t0 = time.perf_counter()
    jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaves", type=int, nargs="+", default=[10, 100, 1000, 2000, 5000])
    ap.add_argument(
        "--repeats", type=int, default=4, help="per tree size (halved from 2,000 leaves up)"
    )
    args = ap.parse_args()
    makers = {
        "optax_rmsprop": lambda: optax_rmsprop.rmsprop(1e-3),
        "optax": lambda: optax.rmsprop(1e-3, eps_in_sqrt=False),
        "optax_rmsprop momentum": lambda: optax_rmsprop.rmsprop(1e-3, momentum=0.9),
        "optax momentum": lambda: optax.rmsprop(1e-3, eps_in_sqrt=False, momentum=0.9),
    }
    for make in makers.values():  # warm JAX's shape-keyed caches for everyone alike
        compile_seconds(make, 10)
    rows = []
    for leaves in args.leaves:
        samples = {name: [] for name in makers}
        order = list(makers)
        repeats = args.repeats if leaves < 2000 else max(1, args.repeats // 2)  # minutes each
        for r in range(repeats):  # interleaved, and who goes first rotates
            for name in common.rotated(order, r):
                samples[name].append(compile_seconds(makers[name], leaves))
        row = {"leaves": leaves, **{name: statistics.median(s) for name, s in samples.items()}}
        row["ratio"] = statistics.median(
            a / b for a, b in zip(samples["optax_rmsprop"], samples["optax"], strict=True)
        )
        row["ratio_momentum"] = statistics.median(
            a / b
            for a, b in zip(
                samples["optax_rmsprop momentum"], samples["optax momentum"], strict=True
            )
        )
        rows.append(row)
        print(row, flush=True)
    m = common.machine()
    md = [
        f"Measured {m['date']}, JAX {m['jax']}, optax {m.get('optax')}, {m['cpus']} CPU cores. "
        "Median seconds to trace, lower and compile one step.",
        "",
        "| leaves | optax_rmsprop (s) | optax (s) | ratio | with momentum: ours (s) | optax (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['leaves']} | {r['optax_rmsprop']:.3f} | {r['optax']:.3f} | {r['ratio']:.2f} "
            f"| {r['optax_rmsprop momentum']:.3f} | {r['optax momentum']:.3f} "
            f"| {r['ratio_momentum']:.2f} |"
        )
    common.write("compile_time", {"machine": m, "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
