"""Compile time of the jitted RMSProp step (against optax, and per state precision); init time.

    python -m benchmarks.compile_time [--leaves 10 100 1000 2000 5000] [--repeats 4]
                                      [--small] [--out DIR]

1. **Leaves.** One step over 10 ... 5,000 leaves of 64 float32 parameters,
   ``optax_rmsprop.rmsprop`` against ``optax.rmsprop`` with the same settings,
   plain and with momentum.
2. **State precision.** One step with momentum 0.9 over 200 leaves of
   64 x 1024, with float32, bfloat16, int8 and int4 state.
3. **Init.** ``tx.init`` of one 4096 x 4096 parameter per state precision:
   jitted (``jax.jit(tx.init)(params)``: trace, compile and run) and eager.

A measurement traces, lowers and compiles a fresh function (a fresh
transformation each time: no cache hits on the step itself), from shapes alone
(``jax.eval_shape`` gives the state's; nothing is initialised). One discarded
round first warms JAX's own caches (jitted ``jnp`` helpers, keyed by shape) so
that whoever runs first does not pay for everyone, and the order of the
contenders rotates from repeat to repeat. ``--small`` shrinks every size (the
check that the command runs). Writes benchmarks/results/compile_time.{json,md}
(or to ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common

PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "int8": "int8", "int4": "int4"}
LEAF_MAKERS = {
    "optax_rmsprop": lambda: optax_rmsprop.rmsprop(1e-3),
    "optax": lambda: optax.rmsprop(1e-3, eps_in_sqrt=False),
    "optax_rmsprop momentum": lambda: optax_rmsprop.rmsprop(1e-3, momentum=0.9),
    "optax momentum": lambda: optax.rmsprop(1e-3, eps_in_sqrt=False, momentum=0.9),
}
SIZES = {  # (step: leaves, leaf shape; init: shape), full and --small
    False: {"step": (200, (64, 1024)), "init": (4096, 4096)},
    True: {"step": (10, (64, 1024)), "init": (512, 512)},
}


def precision_maker(state_dtype, **options) -> Callable[[], optax.GradientTransformation]:
    return functools.partial(optax_rmsprop.rmsprop, 1e-3, state_dtype=state_dtype, **options)


def compile_seconds(make_tx, leaves: int, shape: tuple[int, ...] = (64,)) -> float:
    """Seconds to trace, lower and compile one donated step over ``leaves`` leaves of ``shape``."""
    params = {f"p{i}": jax.ShapeDtypeStruct(shape, jnp.float32) for i in range(leaves)}
    t0 = time.perf_counter()
    common.compile_step(make_tx(), params)
    return time.perf_counter() - t0


def init_seconds(make_tx, shape: tuple[int, ...], jitted: bool) -> float:
    """Seconds of ``tx.init`` for one float32 leaf of ``shape`` (jitted: with its compile)."""
    params = jnp.ones(shape, jnp.float32)
    tx = make_tx()
    init = jax.jit(tx.init) if jitted else tx.init
    t0 = time.perf_counter()
    jax.block_until_ready(init(params))
    return time.perf_counter() - t0


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list]:
    """Each contender's samples (each call returns one), interleaved, who goes first rotating."""
    samples = {name: [] for name in contenders}
    for r in range(repeats):
        for name in common.rotated(list(contenders), r):
            samples[name].append(contenders[name]())
    return samples


def paired_ratio(samples: dict[str, list], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def measure_leaves(leaf_counts: list[int], repeats: int) -> list[dict]:
    rows = []
    for leaves in leaf_counts:
        r = repeats if leaves < 2000 else max(1, repeats // 2)  # minutes each
        contenders = {
            name: functools.partial(compile_seconds, make, leaves)
            for name, make in LEAF_MAKERS.items()
        }
        samples = interleaved(contenders, r)
        row = {"leaves": leaves, **{name: statistics.median(s) for name, s in samples.items()}}
        row["ratio"] = paired_ratio(samples, "optax_rmsprop", "optax")
        row["ratio_momentum"] = paired_ratio(samples, "optax_rmsprop momentum", "optax momentum")
        rows.append(row)
        print(row, flush=True)
    return rows


def measure_precisions(
    leaves: int, shape: tuple[int, ...], init_shape: tuple[int, ...], repeats: int
) -> dict:
    """Per state precision: the step's compile (with momentum) and init, interleaved."""
    compiles = interleaved(
        {
            name: functools.partial(
                compile_seconds, precision_maker(dtype, momentum=0.9), leaves, shape
            )
            for name, dtype in PRECISIONS.items()
        },
        repeats,
    )
    inits = interleaved(
        {
            f"{name} {how}": functools.partial(
                init_seconds, precision_maker(dtype), init_shape, how == "jit"
            )
            for name, dtype in PRECISIONS.items()
            for how in ("jit", "eager")
        },
        repeats,
    )
    rows = [
        {
            "state": name,
            "compile_s": statistics.median(compiles[name]),
            "compile_over_float32": paired_ratio(compiles, name, "float32"),
            "jit_init_s": statistics.median(inits[f"{name} jit"]),
            "eager_init_s": statistics.median(inits[f"{name} eager"]),
        }
        for name in PRECISIONS
    ]
    for row in rows:
        print(row, flush=True)
    return {"step_leaves": leaves, "step_shape": shape, "init_shape": init_shape, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--leaves",
        type=int,
        nargs="+",
        default=None,
        help="leaf counts for part 1 (default 10 100 1000 2000 5000; small: 10 100)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="per measurement (default 4, halved from 2,000 leaves up; small: 1)",
    )
    ap.add_argument("--small", action="store_true", help="small sizes, one repeat (a check)")
    ap.add_argument("--out", default=None, help="folder for the JSON and table")
    args = ap.parse_args(argv)
    leaf_counts = args.leaves or ([10, 100] if args.small else [10, 100, 1000, 2000, 5000])
    repeats = args.repeats or (1 if args.small else 4)
    for make in [*LEAF_MAKERS.values(), *map(precision_maker, PRECISIONS.values())]:
        compile_seconds(make, 10)  # warm JAX's shape-keyed caches for everyone alike
    payload = {
        "machine": common.machine(),
        "small": args.small,
        "rows": measure_leaves(leaf_counts, repeats),
        "precisions": measure_precisions(
            *SIZES[args.small]["step"], SIZES[args.small]["init"], repeats
        ),
    }
    markdown = to_markdown(payload)
    print(markdown)
    common.write("compile_time", payload, markdown, args.out)


def to_markdown(payload: dict) -> str:
    m, p = payload["machine"], payload["precisions"]
    md = [
        f"Measured {m['date']}, JAX {m['jax']}, optax {m.get('optax')}, {m['cpus']} CPU cores"
        f"{' (small mode)' if payload['small'] else ''}. "
        "Median seconds to trace, lower and compile one step.",
        "",
        "| leaves | optax_rmsprop (s) | optax (s) | ratio | with momentum: ours (s) | optax (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        md.append(
            f"| {r['leaves']} | {r['optax_rmsprop']:.3f} | {r['optax']:.3f} | {r['ratio']:.2f} "
            f"| {r['optax_rmsprop momentum']:.3f} | {r['optax momentum']:.3f} "
            f"| {r['ratio_momentum']:.2f} |"
        )
    md += ["", *precisions_markdown(p)]
    return "\n".join(md) + "\n"


def precisions_markdown(p: dict) -> list[str]:
    """The lines of the by-precision table (:func:`measure_precisions`' result)."""
    step = " x ".join(map(str, p["step_shape"]))
    init = " x ".join(map(str, p["init_shape"]))
    return [
        f"By state precision: compiling the step with momentum 0.9 over {p['step_leaves']} "
        f"leaves of {step}; `tx.init` of one {init} parameter, jitted (trace, compile, run) "
        "and eager.",
        "",
        *common.markdown_table(
            ["state", "step compile (s)", "/ float32", "jitted init (s)", "eager init (s)"],
            [
                [r["state"], f"{r['compile_s']:.3f}", f"{r['compile_over_float32']:.2f}"]
                + [f"{r['jit_init_s']:.3f}", f"{r['eager_init_s']:.3f}"]
                for r in p["rows"]
            ],
        ),
    ]


if __name__ == "__main__":
    main()
