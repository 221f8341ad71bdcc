"""Compile time of the jitted RMSProp step (against optax, and per state precision); init time.

    python -m benchmarks.compile_time [--leaves 10 100 1000 2000 5000] [--repeats 4]
                                      [--check] [--small] [--out DIR]

1. **Leaves.** One step over 10 ... 5,000 leaves of 64 float32 parameters,
   ``optax_rmsprop.rmsprop`` against ``optax.rmsprop`` with the same settings,
   plain and with momentum.
2. **State precision.** One step with momentum 0.9 over 200 leaves of 64 x 1024,
   with float32, bfloat16, int8 and int4 state; the guards: bfloat16 within 5x
   float32's, int8 within 20x, int4 within 25x.
3. **Init.** ``tx.init`` of one 4096 x 4096 parameter per state precision,
   jitted (trace, compile and run) and eager.

Each measurement compiles a fresh transformation's step from shapes alone (no cache
hits, nothing initialised), after one discarded round that warms JAX's shape-keyed
caches for every contender alike; the order rotates from repeat to repeat.
``--check`` (full sizes only) exits non-zero when a guard is broken.
"""

from __future__ import annotations

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
# The most a state's step compile may take over float32 state's (jax 0.12.1, 2 CPU cores:
# bfloat16 about 4x, int8 14x to 16x, int4 19x to 21x; see benchmarks/results).
GUARDS = {"bfloat16": 5.0, "int8": 20.0, "int4": 25.0}
LEAF_MAKERS = {
    "optax_rmsprop": lambda: optax_rmsprop.rmsprop(1e-3),
    "optax": lambda: optax.rmsprop(1e-3, eps_in_sqrt=False),
    "optax_rmsprop momentum": lambda: optax_rmsprop.rmsprop(1e-3, momentum=0.9),
    "optax momentum": lambda: optax.rmsprop(1e-3, eps_in_sqrt=False, momentum=0.9),
}
SIZES = {  # step: (leaves, leaf shape), init: shape; full and --small
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


def measure_leaves(leaf_counts: list[int], repeats: int) -> list[dict]:
    rows = []
    for leaves in leaf_counts:
        r = repeats if leaves < 2000 else max(1, repeats // 2)  # minutes each
        contenders = {
            name: functools.partial(compile_seconds, make, leaves)
            for name, make in LEAF_MAKERS.items()
        }
        s = common.interleaved(contenders, r)
        row = {"leaves": leaves, **{name: statistics.median(x) for name, x in s.items()}}
        row["ratio"] = common.ratio(s["optax_rmsprop"], s["optax"])
        row["ratio_momentum"] = common.ratio(s["optax_rmsprop momentum"], s["optax momentum"])
        rows.append(row)
        print(row, flush=True)
    return rows


def measure_precisions(
    leaves: int, shape: tuple[int, ...], init_shape: tuple[int, ...], repeats: int
) -> dict:
    """Per state precision: the step's compile (with momentum) and init, interleaved."""
    steps, inits = {}, {}
    for name, dtype in PRECISIONS.items():
        make = precision_maker(dtype, momentum=0.9)
        steps[name] = functools.partial(compile_seconds, make, leaves, shape)
        for how in ("jit", "eager"):
            make = precision_maker(dtype)
            inits[f"{name} {how}"] = functools.partial(init_seconds, make, init_shape, how == "jit")
    compiles, inits = common.interleaved(steps, repeats), common.interleaved(inits, repeats)
    rows = [
        {
            "state": name,
            "compile_s": statistics.median(compiles[name]),
            "compile_over_float32": common.ratio(compiles[name], compiles["float32"]),
            "jit_init_s": statistics.median(inits[f"{name} jit"]),
            "eager_init_s": statistics.median(inits[f"{name} eager"]),
        }
        for name in PRECISIONS
    ]
    for row in rows:
        print(row, flush=True)
    return {"step_leaves": leaves, "step_shape": shape, "init_shape": init_shape, "rows": rows}


def broken(precisions: dict) -> list[str]:
    """The guards :func:`measure_precisions`' result breaks, each as a sentence."""
    return [
        f"{r['state']} state's step compiles in {r['compile_over_float32']:.1f}x float32's "
        f"(guard: at most {GUARDS[r['state']]:g}x; {precisions['step_leaves']} leaves)"
        for r in precisions["rows"]
        if r["compile_over_float32"] > GUARDS.get(r["state"], float("inf"))
    ]


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, "10 and 100 leaves, a 10-leaf precision step, one repeat")
    ap.add_argument("--leaves", type=int, nargs="+", help="part 1 (default 10 ... 5000)")
    ap.add_argument("--repeats", type=int, help="per measurement (default 4, 2 from 2000 leaves)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a guard is broken")
    args = ap.parse_args(argv)
    if args.check and args.small:  # a guard bounds the full sizes' ratio, not --small's
        ap.error("--check: the guards are set for the full sizes; leave out --small")
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
    if args.check:
        common.check(broken(payload["precisions"]))


def to_markdown(payload: dict) -> str:
    small = " Small mode." if payload["small"] else ""
    rows = [
        [r["leaves"], *(f"{r[k]:.3f}" for k in ("optax_rmsprop", "optax")), f"{r['ratio']:.2f}"]
        + [f"{r[k]:.3f}" for k in ("optax_rmsprop momentum", "optax momentum")]
        + [f"{r['ratio_momentum']:.2f}"]
        for r in payload["rows"]
    ]
    header = ["leaves", "optax_rmsprop (s)", "optax (s)", "ratio"]
    header += ["with momentum: ours (s)", "optax (s)", "ratio"]
    md = [
        f"{common.measured(payload['machine'])}{small} Median seconds to trace, lower and "
        "compile one step; ratios: medians of per-repeat ratios.",
        "",
        *common.markdown_table(header, rows),
        "",
        *precisions_markdown(payload["precisions"], None if payload["small"] else GUARDS),
    ]
    return "\n".join(md) + "\n"


def precisions_markdown(p: dict, guards: dict | None = None) -> list[str]:
    """The by-precision table's lines (:func:`measure_precisions`' result), with ``guards``."""
    step = " x ".join(map(str, p["step_shape"]))
    init = " x ".join(map(str, p["init_shape"]))
    return [
        f"By state precision: compiling the step with momentum 0.9 over {p['step_leaves']} "
        f"leaves of {step}; `tx.init` of one {init} parameter, jitted (trace, compile, run) "
        "and eager." + (" `/ float32` shows a guard beside the ratio it bounds." if guards else ""),
        "",
        *common.markdown_table(
            ["state", "step compile (s)", "/ float32", "jitted init (s)", "eager init (s)"],
            [
                [r["state"], f"{r['compile_s']:.3f}"]
                + [common.guarded(r["compile_over_float32"], (guards or {}).get(r["state"]))]
                + [f"{r['jit_init_s']:.3f}", f"{r['eager_init_s']:.3f}"]
                for r in p["rows"]
            ],
        ),
    ]


if __name__ == "__main__":
    main()
