"""The accelerator check: tests, the optimizer step against the roofline, and the trainer.

    python -m benchmarks.accelerator [--small] [--out DIR] [--mnist-dir DIR]

One command for whatever backend JAX sees (GPU, TPU or CPU), in three parts:

1. **Tests.** The library's fast correctness tests (reference, dtypes,
   composition, sharding) run on this backend in a child pytest; pass, fail
   and skip counts are recorded.
2. **The step.** One RMSProp step (update + apply, jitted, donated) for N
   float32 parameters in 1 leaf and in 1,000 leaves, for
   ``optax_rmsprop.rmsprop`` with float32 and bfloat16 state (and int8 state
   when the library has it), ``optax.rmsprop`` with the same settings, and a
   one-pass Pallas kernel of the plain step (1 leaf). Beside them, in the same
   process and on the same leaves, the device's streaming roofline: a jitted,
   donated ``x * 2`` that reads and writes each element once, the traffic of a
   device-to-device copy. Each step's time is compared with the time the
   roofline needs for the bytes that step must move (20 bytes per parameter
   for float32 state: read p, g, nu; write p, nu). Also recorded: the bytes
   XLA's cost analysis counts and the fusions in the optimised HLO's entry
   computation (one fusion for a one-leaf step means XLA made a single pass).
3. **The step's memory.** XLA's buffer assignment for one jitted, donated
   step over 4 leaves of 2048 x 2048 with float32, bfloat16 and int8 state,
   plain, with momentum, centered with momentum: temporaries and peak in bytes
   per parameter (``benchmarks.state_precision.peak_memory``).
4. **The trainer.** The MNIST cnn for 3 epochs (real MNIST from
   ``--mnist-dir`` when given, else the bundled sample): accuracy, seconds per
   epoch, examples per second.

It writes ``accelerator.json`` and ``accelerator.md`` to ``--out`` (default:
``$OUT`` when set, else ``benchmarks/results/accelerator-<backend>``) and
prints the table. ``--small`` runs tiny sizes and a few trainer steps: CI runs
it on the CPU so that the command cannot rot between the sessions that have
an accelerator.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common, state_precision

LR, DECAY, EPS = 1e-3, 0.9, 1e-8
TEST_FILES = [
    "tests/test_reference.py",
    "tests/test_dtypes.py",
    "tests/test_composition.py",
    "tests/test_sharding.py",
]
STREAM_BYTES = 8  # x * 2, donated: read 4 bytes, write 4 bytes per element
PALLAS_BLOCK = 8192


# -- 1. tests ----------------------------------------------------------------
def run_tests(out_dir: str, timeout_s: float) -> dict:
    """Runs the fast correctness tests in a child pytest; returns its counts."""
    junit = os.path.join(out_dir, "accelerator_tests.xml")
    flags = ["-q", *"-p no:cacheprovider -o addopts=".split(), f"--junitxml={junit}"]
    cmd = [sys.executable, "-m", "pytest", *flags, *TEST_FILES]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    except subprocess.TimeoutExpired:
        tail = [f"pytest did not finish in {timeout_s:.0f} s"]
    result = {"seconds": round(time.perf_counter() - t0, 1), "files": TEST_FILES, "tail": tail}
    if os.path.exists(junit):
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = (
            counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        )
        result.update(counts)
    print(
        f"tests: {result.get('passed', '?')} passed, {result.get('failures', '?')} failed, "
        f"{result.get('errors', '?')} errors, {result.get('skipped', '?')} skipped "
        f"in {result['seconds']} s",
        flush=True,
    )
    return result


# -- 2. the step -------------------------------------------------------------
def optimizer_contenders(
    int8: bool, many_leaves: bool
) -> dict[str, tuple[optax.GradientTransformation, int]]:
    """name -> (transformation, bytes per parameter the step must move)."""
    contenders = {
        "optax_rmsprop f32 state": (optax_rmsprop.rmsprop(LR, DECAY, EPS), 20),
        "optax_rmsprop bf16 state": (
            optax_rmsprop.rmsprop(LR, DECAY, EPS, state_dtype=jnp.bfloat16),
            16,
        ),
        "optax.rmsprop": (optax.rmsprop(LR, DECAY, EPS, eps_in_sqrt=False), 20),
    }
    if many_leaves:
        # One concatenated vector: one kernel instead of one per leaf, at the
        # price of the concatenation and the split (more bytes moved).
        contenders["optax_rmsprop f32, optax.flatten"] = (
            optax.flatten(optax_rmsprop.rmsprop(LR, DECAY, EPS)),
            20,
        )
    if int8:
        # 12 bytes of p and g, 2 of uint8 nu codes (read, write), scales negligible.
        contenders["optax_rmsprop int8 state"] = (
            optax_rmsprop.rmsprop(LR, DECAY, EPS, state_dtype="int8"),
            14,
        )
    return contenders


def has_int8_state() -> bool:
    try:
        optax_rmsprop.rmsprop(LR, state_dtype="int8")
    except (ValueError, TypeError):
        return False
    return True


def random_leaves(sizes: list[int], seed: int, scale: float = 1.0) -> list[jax.Array]:
    key = jax.random.key(seed)
    return [
        scale * jax.random.normal(jax.random.fold_in(key, i), (s,), jnp.float32)
        for i, s in enumerate(sizes)
    ]


def compiled_facts(compiled) -> dict:
    """Bytes XLA's cost analysis counts and the kernels of the optimised entry computation."""
    ops = common.entry_ops(compiled)
    return {
        "xla_bytes": common.bytes_accessed(compiled),
        "fusions": ops.count("fusion"),
        "custom_calls": ops.count("custom-call"),
    }


class Contender:
    """A jitted, donated step over its own buffers, stepped in place by ``run(k)``."""

    def __init__(self, step, carry, *extra):
        self.compiled = jax.jit(step, donate_argnums=0).lower(carry, *extra).compile()
        self.facts = compiled_facts(self.compiled)
        self.carry, self.extra = carry, extra
        self.run(1)

    def run(self, k: int) -> None:
        for _ in range(k):
            self.carry = self.compiled(self.carry, *self.extra)
        jax.block_until_ready(self.carry)

    def result(self):
        return self.carry


def optimizer_contender(tx, sizes: list[int]) -> Contender:
    params, grads = random_leaves(sizes, 0), random_leaves(sizes, 1, 0.01)
    step = common.update_and_apply(tx)
    return Contender(lambda carry, grads: step(*carry, grads), (params, tx.init(params)), grads)


def stream_contender(sizes: list[int]) -> Contender:
    return Contender(lambda xs: [2.0 * x for x in xs], random_leaves(sizes, 2))


def pallas_contender(n: int, interpret: bool) -> Contender:
    """The plain step (p, g, nu -> p, nu) as one Pallas kernel: a single pass by construction."""
    from jax.experimental import pallas as pl

    padded = -(-n // PALLAS_BLOCK) * PALLAS_BLOCK  # the last block pads by < 8192 elements

    def kernel(p_ref, g_ref, nu_ref, p_out, nu_out):
        g = g_ref[...]
        nu = DECAY * nu_ref[...] + (1 - DECAY) * g * g
        nu_out[...] = nu
        p_out[...] = p_ref[...] - LR * g / (jnp.sqrt(nu) + EPS)

    spec = pl.BlockSpec((PALLAS_BLOCK,), lambda i: (i,))
    shape = jax.ShapeDtypeStruct((padded,), jnp.float32)
    call = pl.pallas_call(
        kernel,
        out_shape=(shape, shape),
        grid=(padded // PALLAS_BLOCK,),
        in_specs=[spec, spec, spec],
        out_specs=(spec, spec),
        input_output_aliases={0: 0, 2: 1},
        interpret=interpret,
    )

    def step(carry, g):
        p, nu = carry
        return call(p, g, nu)

    (p,), (g,) = random_leaves([padded], 0), random_leaves([padded], 1, 0.01)
    return Contender(step, (p, jnp.zeros_like(p)), g)


def pallas_matches_library(interpret: bool) -> bool:
    """The Pallas kernel computes what ``optax_rmsprop.rmsprop`` computes (3 steps)."""
    n = 3 * PALLAS_BLOCK
    kernel = pallas_contender(n, interpret)  # one step taken at construction
    kernel.run(2)
    library = optimizer_contender(optax_rmsprop.rmsprop(LR, DECAY, EPS), [n])
    library.run(2)
    (p_kernel, nu_kernel), (p_lib, state) = kernel.result(), library.result()
    return bool(
        jnp.allclose(p_kernel, p_lib[0], rtol=1e-5, atol=1e-7)
        and jnp.allclose(nu_kernel, state.rms.nu[0], rtol=1e-5, atol=1e-12)
    )


def time_per_step(contender: Contender, samples: int) -> list[float]:
    """Seconds per step: each sample is ``k`` back-to-back async steps and one sync.

    ``k`` makes a sample last about 20 ms, so launch latency is amortised as in
    a training loop, where the host runs ahead of the device.
    """
    once = min(common.time_call(functools.partial(contender.run, 1), 2))
    k = max(1, min(2000, round(0.02 / max(once, 1e-7))))
    return [
        min(common.time_call(functools.partial(contender.run, k), 2)) / k for _ in range(samples)
    ]


def measure_steps(n: int, count: int, rounds: int, pallas: bool) -> list[dict]:
    """Every contender on ``n`` parameters in ``count`` leaves, timed in interleaved rounds."""
    layout = common.leaves_for(n, count)
    built = {"stream": (stream_contender(layout), STREAM_BYTES)}
    for name, (tx, nbytes) in optimizer_contenders(has_int8_state(), count > 1).items():
        built[name] = (optimizer_contender(tx, layout), nbytes)
    if pallas and count == 1:
        interpret = jax.default_backend() == "cpu"
        try:
            built["pallas one-pass kernel"] = (pallas_contender(n, interpret), 20)
        except Exception as err:  # noqa: BLE001 - reported, the others still run
            print(f"pallas kernel at N={n:.0e}: {type(err).__name__}: {err}"[:300], flush=True)
    samples: dict[str, list[float]] = {name: [] for name in built}
    for r in range(rounds):  # interleaved, the order rotating
        for name in common.rotated(list(built), r):
            samples[name] += time_per_step(built[name][0], 1)
    bandwidth = STREAM_BYTES * n / statistics.median(samples["stream"])
    rows = []
    for name, (contender, nbytes) in built.items():
        t = statistics.median(samples[name])
        rows.append(
            {
                "n": n,
                "leaves": count,
                "contender": name,
                "median_s": t,
                "spread_s": [min(samples[name]), max(samples[name])],
                "bytes_per_param": nbytes,
                "achieved_gb_s": nbytes * n / t / 1e9,
                "roofline_fraction": (nbytes * n / bandwidth) / t,
                **contender.facts,
            }
        )
        print(_row_line(rows[-1]), flush=True)
    return rows


def _row_line(r: dict) -> str:
    return (
        f"N={r['n']:.0e} leaves={r['leaves']:>4} {r['contender']:<26} "
        f"{1e6 * r['median_s']:>10.1f} us {r['achieved_gb_s']:>8.1f} GB/s "
        f"roofline {r['roofline_fraction']:.2f} fusions {r['fusions']} "
        f"xla_bytes/param {r['xla_bytes'] / r['n']:.1f}"
    )


# -- 3. the trainer ----------------------------------------------------------
def run_trainer(epochs: int, max_steps: int | None, mnist_dir: str | None, timeout_s: float):
    """Trains the cnn in a child process (the CLI, as a user runs it); returns its summary."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            sys.executable,
            "-m",
            "examples.mnist",
            "--epochs",
            str(epochs),
            "--workdir",
            workdir,
            "--no-progress",
        ]
        if max_steps:
            cmd += ["--max-steps", str(max_steps)]
        if mnist_dir:
            cmd += ["--data-dir", mnist_dir]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {timeout_s:.0f} s"}
        summary_path = os.path.join(workdir, "summary.json")
        if proc.returncode or not os.path.exists(summary_path):
            return {"error": f"exit {proc.returncode}", "tail": proc.stderr.splitlines()[-15:]}
        with open(summary_path) as f:
            summary = json.load(f)
    result = {
        k: summary[k]
        for k in (
            "test_accuracy",
            "epochs",
            "steps",
            "train_time_s",
            "compile_time_s",
            "examples_per_sec",
            "dataset",
        )
    }
    result["seconds_per_epoch"] = summary["train_time_s"] / max(summary["epochs"], 1e-9)
    print(
        f"trainer: {result['test_accuracy']:.4f} test accuracy, "
        f"{result['seconds_per_epoch']:.2f} s/epoch, {result['examples_per_sec']:,.0f} ex/s "
        f"({result['dataset']})",
        flush=True,
    )
    return result


# -- output ------------------------------------------------------------------
def device_info() -> dict:
    info = common.machine()
    device = jax.devices()[0]
    info["device_kind"] = device.device_kind
    with contextlib.suppress(Exception):
        info["memory_bytes"] = device.memory_stats().get("bytes_limit")
    return info


def to_markdown(payload: dict) -> str:
    m, t, tr = payload["machine"], payload["tests"], payload["trainer"]
    streams = [r["achieved_gb_s"] for r in payload["steps"] if r["contender"] == "stream"]
    peak = max(streams, default=float("nan"))
    lines = [
        f"Measured {m['date']} on {m['device_kind']} ({m['backend']}, {len(m['devices'])} "
        f"device(s)), JAX {m['jax']}, optax {m.get('optax')}, Python {m['python']}"
        f"{' (small mode)' if payload['small'] else ''}.",
        "",
        f"**Tests** ({', '.join(os.path.basename(f) for f in t['files'])}): "
        f"{t.get('passed', '?')} passed, {t.get('failures', '?')} failed, "
        f"{t.get('errors', '?')} errors, {t.get('skipped', '?')} skipped ({t['seconds']} s).",
        "",
        "**One step** (update + apply, jitted, donated; median of interleaved rounds). "
        "GB/s counts the bytes the step must move (20 per parameter for float32 state). "
        "*Same leaves*: that time against a donated `x * 2` over the same leaves (a "
        "launch-bound yardstick when leaves are small). *Peak*: against the fastest "
        f"streaming bandwidth of this run, {peak:,.0f} GB/s.",
        "",
        "| N | leaves | contender | time (us) | GB/s | of roofline, same leaves | of peak "
        "| XLA bytes / param | kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["steps"]:
        custom = r["custom_calls"] > 0  # XLA cannot see inside a custom call's traffic
        xla_bytes = "n/a" if custom else f"{r['xla_bytes'] / r['n']:.1f}"
        lines.append(
            f"| {r['n']:.0e} | {r['leaves']} | {r['contender']} | {1e6 * r['median_s']:,.1f} "
            f"| {r['achieved_gb_s']:,.0f} | {r['roofline_fraction']:.2f} "
            f"| {r['achieved_gb_s'] / peak:.2f} | {xla_bytes} "
            f"| {r['fusions'] + r['custom_calls']} |"
        )
    lines += ["", f"Pallas kernel matches the library: {payload.get('pallas_matches')}", ""]
    if "peak_memory" in payload:
        peak = state_precision.peak_memory_markdown(payload["peak_memory"], payload["peak_shape"])
        lines += ["**The step's memory.** " + peak[0], *peak[1:], ""]
    if tr.get("error") == "skipped":
        lines.append("**Trainer**: skipped.")
    elif "error" in tr:
        lines.append(f"**Trainer**: failed ({tr['error']}).")
    else:
        lines.append(
            f"**Trainer** (MNIST cnn, {tr['epochs']:.2f} epochs, {tr['dataset']}): "
            f"test accuracy {100 * tr['test_accuracy']:.2f}%, {tr['seconds_per_epoch']:.2f} s "
            f"per epoch, {tr['examples_per_sec']:,.0f} examples/s, compile "
            f"{tr['compile_time_s']:.1f} s."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes, a few trainer steps (CI)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON and table")
    ap.add_argument("--mnist-dir", default=None, help="real MNIST IDX files for the trainer")
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="parameter counts")
    ap.add_argument("--leaves", type=int, nargs="+", default=[1, 1000], help="leaf counts")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["tests", "steps", "memory", "trainer"]
    )
    args = ap.parse_args(argv)
    out = args.out or os.path.join(common.RESULTS, f"accelerator-{jax.default_backend()}")
    os.makedirs(out, exist_ok=True)
    sizes = [int(s) for s in (args.sizes or ([1e4, 1e5] if args.small else [1e6, 1e7, 1e8, 1e9]))]
    leaves = [min(c, 10) for c in args.leaves] if args.small else args.leaves
    rounds = args.rounds or (2 if args.small else 7)
    print(f"JAX {jax.__version__} on {jax.devices()}", flush=True)

    t0 = time.perf_counter()
    payload: dict = {
        "machine": device_info(),
        "small": args.small,
        "steps": [],
        "tests": {"seconds": 0, "files": []},
        "trainer": {"error": "skipped"},
        "settings": {"lr": LR, "decay": DECAY, "eps": EPS},
    }
    save = functools.partial(_save, out, payload, t0)
    if "tests" not in args.skip:
        payload["tests"] = run_tests(out, timeout_s=600)
        save()
    if "trainer" not in args.skip:
        epochs, max_steps = (1, 16) if args.small else (3, None)
        payload["trainer"] = run_trainer(epochs, max_steps, args.mnist_dir, timeout_s=900)
        save()
    if "steps" not in args.skip:
        interpret = jax.default_backend() == "cpu"
        try:
            payload["pallas_matches"] = pallas_matches_library(interpret)
        except Exception as err:  # noqa: BLE001 - recorded; the rest still runs
            payload["pallas_matches"] = f"unavailable: {type(err).__name__}: {err}"[:300]
        pallas = payload["pallas_matches"] is True
        for count in leaves:  # one leaf first: the most telling rows survive a time-out
            for n in sizes:
                payload["steps"] += measure_steps(n, count, rounds, pallas)
                save()
    if "memory" not in args.skip:
        payload["peak_shape"] = (256, 256) if args.small else state_precision.PEAK_SHAPE
        payload["peak_memory"] = state_precision.peak_memory(shape=payload["peak_shape"])
        save()
    print(to_markdown(payload))
    tests, trainer = payload["tests"], payload["trainer"]
    failed = tests.get("failures", 0) or tests.get("errors", 0)
    return 1 if failed or trainer.get("error", "skipped") != "skipped" else 0


def _save(out: str, payload: dict, t0: float) -> None:
    """Writes what has been measured so far (a time-out still leaves results)."""
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(out, "accelerator.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    with open(os.path.join(out, "accelerator.md"), "w") as f:
        f.write(to_markdown(payload))


if __name__ == "__main__":
    sys.exit(main())
