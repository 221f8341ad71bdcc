"""The 8-bit step's floor on the XLA path: its cost with a codec that costs nothing, and with 0.1's map.

    python -m benchmarks.codec_floor [--rounds 9] [--compile-repeats 3] [--small] [--out DIR]

The int8 state's step costs two things beyond float32 state's: its codec (the
dynamic map's encoder and decoder, integer arithmetic and exact) and its structure.
The structure is what keeps the step's peak small (docs/state_precision.md):
each new buffer is computed twice, once for its block absmax and once for its
codes, and the passes that need ``g / denom`` compute it for themselves, so
that no float32 copy of any buffer is written out.

This benchmark tells the two apart. A child process per codec runs the same
step with:

* ``base10``: the dynamic maps in base 10, as optax_rmsprop 0.1 shipped them
  (:mod:`benchmarks.base10_map`: powers of ten chosen by select chains);
* ``map``: the library as it is (the dynamic maps in base 8);
* ``free``: the codec replaced by the cheapest one conceivable, a linear
  ``round(127 x)`` with no map (``optax_rmsprop._quantize.encode`` and
  ``decode`` patched before anything is traced). Every pass, the layout and
  the block maxima stay. It is not a usable optimizer: its figures are the
  floor that no 8-bit codec on the XLA path can go below, whatever its map.

Each child times float32 state's step beside the int8 step, interleaved, for
one 4096 x 4096 parameter (plain and with momentum 0.9; median of rounds and
the median of the per-round ratios), and compiles the step over 200 leaves of
64 x 1024 (trace, lower and compile) for both, interleaved, three times. ``--small`` shrinks every size
(the check that the command runs). Writes
benchmarks/results/codec_floor.{json,md} (or to ``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys

from benchmarks import base10_map, common, compile_time

CODECS = ("base10", "map", "free")
LABELS = {
    "base10": "base 10 (0.1's map)",
    "map": "base 8 (the map)",
    "free": "free (`round(127 x)`, a floor)",
}
OPTIONS = {"plain": {}, "momentum": {"momentum": 0.9}}
SIZES = {  # (step shape, compile: leaves and leaf shape), full and --small
    False: {"shape": (4096, 4096), "leaves": 200, "leaf": (64, 1024)},
    True: {"shape": (256, 512), "leaves": 4, "leaf": (8, 512)},
}


def free_codec() -> None:
    """Replaces the int8 codec by ``round(127 x)``: the same layout, no map, no cost."""
    import jax.numpy as jnp
    import numpy as np

    from optax_rmsprop import _quantize

    def encode(x, codebook):
        low = -127 if codebook.signed else 0
        return jnp.clip(jnp.round(x * 127), low, 127).astype(codebook.code_dtype)

    def decode(codes, codebook):
        return codes.astype(jnp.float32) * np.float32(1 / 127)

    _quantize.encode, _quantize.decode = encode, decode


def measure(codec: str, rounds: int, compile_repeats: int, small: bool) -> dict:
    """In this process: step times and compile times of float32 and int8 state."""
    if codec == "free":
        free_codec()
    elif codec == "base10":
        base10_map.install()
    import jax

    size = SIZES[small]
    key_p, key_g = jax.random.split(jax.random.key(0))
    params = jax.random.normal(key_p, size["shape"])
    grads = 0.01 * jax.random.normal(key_g, size["shape"])
    for state_dtype in (None, "int8"):  # warm JAX's shape-keyed caches for both alike
        compile_time.compile_seconds(
            compile_time.precision_maker(state_dtype), size["leaves"], size["leaf"]
        )
    result = {"code of 0.5": _code_of_half()}
    for step_name, options in OPTIONS.items():
        makers = {
            state: compile_time.precision_maker(None if state == "float32" else state, **options)
            for state in ("float32", "int8")
        }
        timed = common.paired(
            {state: _stepper(make(), params, grads) for state, make in makers.items()}, rounds
        )
        compiles = compile_time.interleaved(
            {
                state: functools.partial(
                    compile_time.compile_seconds, make, size["leaves"], size["leaf"]
                )
                for state, make in makers.items()
            },
            compile_repeats,
        )
        for state in makers:
            result[f"{step_name} {state} step_s"] = timed[state]["median_s"]
            result[f"{step_name} {state} compile_s"] = statistics.median(compiles[state])
        result[f"{step_name} step_ratio"] = common.ratio(timed, "int8", "float32")
        result[f"{step_name} compile_ratio"] = compile_time.paired_ratio(
            compiles, "int8", "float32"
        )
    return result


def _code_of_half() -> int:
    """The signed int8 code of 0.5 in a block of absmax 1, as this process's step writes it
    (the map: 90; base 10: 91; the free codec: 64), so that a run shows which codec it measured."""
    import jax.numpy as jnp

    from optax_rmsprop import _quantize

    codes = _quantize.encode_blocks(jnp.full((1, 256), 0.5), jnp.ones((1, 1)), _quantize.SIGNED)
    return int(codes[0, 0])


def _stepper(tx, params, grads):
    """A function that runs one jitted, donated step of ``tx`` and waits for it."""
    import jax

    step = common.jitted_step(tx, donate=True)
    box = {"p": params + 0, "s": tx.init(params)}

    def run():
        box["p"], box["s"] = step(box["p"], box["s"], grads)
        jax.block_until_ready(box["p"])

    run()
    return run


def in_child(codec: str, rounds: int, compile_repeats: int, small: bool) -> dict:
    """:func:`measure` in a fresh process (nothing traced before the codec is chosen)."""
    cmd = [sys.executable, "-m", "benchmarks.codec_floor", "--child", codec]
    cmd += ["--rounds", str(rounds), "--compile-repeats", str(compile_repeats)]
    cmd += ["--small"] if small else []
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 9; small 2)")
    ap.add_argument(
        "--compile-repeats",
        type=int,
        default=None,
        help="compiles of each step (default 3; small 1)",
    )
    ap.add_argument("--small", action="store_true", help="small sizes (a check)")
    ap.add_argument("--out", default=None, help="folder for the JSON and table")
    ap.add_argument("--child", choices=CODECS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.small else 9)
    compile_repeats = args.compile_repeats or (1 if args.small else 3)
    if args.child:
        print(json.dumps(measure(args.child, rounds, compile_repeats, args.small)))
        return
    payload = {
        "machine": common.machine(),
        "small": args.small,
        "sizes": SIZES[args.small],
        "codecs": {codec: in_child(codec, rounds, compile_repeats, args.small) for codec in CODECS},
    }
    markdown = to_markdown(payload)
    print(markdown)
    common.write("codec_floor", payload, markdown, args.out)


def to_markdown(payload: dict) -> str:
    m, size = payload["machine"], payload["sizes"]
    shape = " x ".join(map(str, size["shape"]))
    leaf = " x ".join(map(str, size["leaf"]))
    rows = []
    for codec, r in payload["codecs"].items():
        for step in OPTIONS:
            rows.append(
                [
                    LABELS[codec],
                    step,
                    f"{r[f'{step} float32 step_s'] * 1e3:.1f}",
                    f"{r[f'{step} int8 step_s'] * 1e3:.1f}",
                    f"{r[f'{step} step_ratio']:.2f}",
                    f"{r[f'{step} float32 compile_s']:.2f}",
                    f"{r[f'{step} int8 compile_s']:.2f}",
                    f"{r[f'{step} compile_ratio']:.1f}",
                ]
            )
    header = [
        "int8 codec",
        "step",
        "float32 step (ms)",
        "int8 step (ms)",
        "int8 / float32",
        "float32 compile (s)",
        "int8 compile (s)",
        "int8 / float32",
    ]
    return "\n".join(
        [
            f"Measured {m['date']}, JAX {m['jax']}, {m['cpus']} CPU cores, backend "
            f"{m.get('backend')}{' (small mode)' if payload['small'] else ''}. Step: one "
            f"{shape} parameter, median of rounds, each codec in its own process beside "
            f"float32 state. Compile: trace, lower and compile the step over "
            f"{size['leaves']} leaves of {leaf}, median of interleaved repeats.",
            "",
            *common.markdown_table(header, rows),
            "",
        ]
    )


if __name__ == "__main__":
    main()
