"""The accelerator check: tests, the optimizer step against the roofline, and the trainer.

    python -m benchmarks.accelerator [--small] [--out DIR] [--mnist-dir DIR] [--budget-s 540]

One command for whatever backend JAX sees (GPU, TPU or CPU), in these parts
(run in this order; ``--skip`` leaves any out):

1. **Tests.** The library's fast correctness tests (reference, dtypes,
   composition, sharding; ``--test-files`` names others) run on this backend
   in a child pytest; pass, fail and skip counts are recorded.
2. **The trainer.** The MNIST cnn for 3 epochs (real MNIST from
   ``--mnist-dir`` when given, else the bundled sample): accuracy, seconds per
   epoch, examples per second.
3. **The step's memory.** XLA's buffer assignment for one jitted, donated
   step over 4 leaves of 2048 x 2048 with float32, bfloat16, int8 and int4 state,
   plain, with momentum, centered with momentum: temporaries and peak in bytes
   per parameter (``benchmarks.state_precision.peak_memory``).
4. **State precision and kernel path** (``precision``). The library's step
   on one leaf of 1e7, 1e8 and 1e9 parameters, without and with momentum, for
   float32, bfloat16 and int8 state (and int4 when the library accepts it),
   each traced once with ``OPTAX_RMSPROP_KERNEL=xla`` and once with
   ``=pallas`` (the library reads the variable at trace time; a path that
   fails to build is recorded and left out). Per group, interleaved: the step
   time over the float32-state XLA step's, ``compiled.memory_analysis()``'s
   temporaries and peak in bytes per parameter, whether the Pallas path
   compiled to a program other than the XLA path's, and (at the smallest
   size) the two paths' results after 3 steps from the same buffers. Every
   program is compiled from abstract shapes first: a step whose buffers would
   not fit in the device's memory is skipped, not run.
5. **The jitted loop** (``loop``). ``benchmarks.jitted_loop`` on this device
   for 1e7 parameters in 1 and in 1,000 leaves: K steps in one jitted
   ``lax.fori_loop`` against K dispatched steps, so the step's work and the
   host's dispatch appear apart (``optax.rmsprop``, the library with float32,
   int8 and int4 state, no momentum).
6. **The step** (``steps``). One RMSProp step (update + apply, jitted,
   donated) for N float32 parameters in 1 leaf and in 1,000 leaves, for
   ``optax_rmsprop.rmsprop`` with float32 and bfloat16 state (and int8 state
   when the library has it), ``optax.rmsprop`` with the same settings, and a
   one-pass Pallas kernel of the plain step written here (1 leaf). Beside
   them, in the same process and on the same leaves, the device's streaming
   roofline: a jitted, donated ``x * 2`` that reads and writes each element
   once, the traffic of a device-to-device copy. Each step's time is compared
   with the time the roofline needs for the bytes that step must move (20
   bytes per parameter for float32 state: read p, g, nu; write p, nu). Also
   recorded: the bytes XLA's cost analysis counts and the fusions in the
   optimised HLO's entry computation (one fusion for a one-leaf step means XLA
   made a single pass).

The whole run keeps to ``--budget-s`` seconds (default 540, for a 10-minute
device run): a timed part that would not finish in what is left is skipped
and recorded as skipped. It writes ``accelerator.json`` and ``accelerator.md``
to ``--out`` (default: ``$OUT`` when set, else
``benchmarks/results/accelerator-<backend>``) after every part, so a time-out
still leaves results, and prints the table. ``--small`` runs tiny sizes and a
few trainer steps: CI runs it on the CPU so that the command cannot rot
between the sessions that have an accelerator.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common, jitted_loop, state_precision

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
def run_tests(out_dir: str, timeout_s: float, files: list[str] = TEST_FILES) -> dict:
    """Runs the fast correctness tests (``files``) in a child pytest; returns its counts."""
    junit = os.path.join(out_dir, "accelerator_tests.xml")
    flags = ["-q", *"-p no:cacheprovider -o addopts=".split(), f"--junitxml={junit}"]
    cmd = [sys.executable, "-m", "pytest", *flags, *files]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    except subprocess.TimeoutExpired:
        tail = [f"pytest did not finish in {timeout_s:.0f} s"]
    result = {"seconds": round(time.perf_counter() - t0, 1), "files": files, "tail": tail}
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


# -- 6. the step -------------------------------------------------------------
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
    """A jitted, donated step over its own buffers, stepped in place by ``run(k)``.

    ``compiled``: the step already compiled for these shapes (for instance from
    abstract arguments, to read its memory before allocating anything).
    """

    def __init__(self, step, carry, *extra, compiled=None):
        self.compiled = compiled or compile_carry_step(step, carry, *extra)
        self.facts = compiled_facts(self.compiled)
        self.carry, self.extra = carry, extra
        self.run(1)

    def run(self, k: int) -> None:
        for _ in range(k):
            self.carry = self.compiled(self.carry, *self.extra)
        jax.block_until_ready(self.carry)

    def result(self):
        return self.carry


def compile_carry_step(step, carry, *extra):
    """``step(carry, *extra) -> carry`` jitted with ``carry`` donated, compiled.

    The arguments may be arrays or ``jax.ShapeDtypeStruct``s.
    """
    return jax.jit(step, donate_argnums=0).lower(carry, *extra).compile()


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


# -- 4. state precision and kernel path----------------------------------
KERNEL_ENV = "OPTAX_RMSPROP_KERNEL"  # read by the library at trace time; default "xla"
KERNELS = ("xla", "pallas")
STATES = {"f32": None, "bf16": jnp.bfloat16, "int8": "int8", "int4": "int4"}
BASELINE = ("f32", "xla")
CHECK_STEPS = 3  # steps both kernel paths take from the same buffers, then compared
MEMORY_MARGIN = 0.85  # of the device's memory limit that the buffers of a group may take


class Budget:
    """Seconds left before a deadline: parts that would not finish are skipped, not cut."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s


@contextlib.contextmanager
def kernel_path(kernel: str):
    """``OPTAX_RMSPROP_KERNEL=kernel`` for what is built and traced inside; restored after.

    JAX's trace caches do not key on the environment: a function jitted inside
    the library and traced under one value would be reused under the other.
    So the caches are cleared whenever the value changes.
    """
    old = os.environ.get(KERNEL_ENV)
    _set_kernel_env(kernel)
    try:
        yield
    finally:
        _set_kernel_env(old)


def _set_kernel_env(value: str | None) -> None:
    if os.environ.get(KERNEL_ENV) == value:
        return
    jax.clear_caches()
    if value is None:
        os.environ.pop(KERNEL_ENV, None)
    else:
        os.environ[KERNEL_ENV] = value


def memory_limit() -> int:
    """Bytes the default device may hold: its allocator's limit, else half the host's RAM."""
    with contextlib.suppress(Exception):
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def hlo_without_metadata(compiled) -> str:
    """The optimised HLO without source metadata: equal text, equal program."""
    return re.sub(r",? metadata=\{[^}]*\}", "", compiled.as_text())


@dataclasses.dataclass
class Planned:
    """One (state, kernel) step for one leaf of ``n``, compiled from abstract arguments."""

    state: str
    kernel: str
    tx: optax.GradientTransformation
    compiled: object
    memory: dict
    facts: dict
    warnings: list[str] = dataclasses.field(default_factory=list)  # while it was traced

    @property
    def name(self) -> str:
        return f"{self.state} state, {self.kernel}"

    @property
    def own_bytes(self) -> int:
        """Bytes of its params and state (the gradients are shared across a group)."""
        return self.memory["arguments"] - 4 * self.memory["n"]


def plan(state: str, kernel: str, n: int, momentum: bool) -> Planned:
    """Builds and compiles one step under ``kernel``'s path; nothing is allocated."""
    params = [jax.ShapeDtypeStruct((n,), jnp.float32)]
    with kernel_path(kernel), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tx = optax_rmsprop.rmsprop(
            LR, DECAY, EPS, momentum=0.9 if momentum else None, state_dtype=STATES[state]
        )
        step = common.update_and_apply(tx)
        state_shape = jax.eval_shape(tx.init, params)
        compiled = compile_carry_step(
            lambda carry, g: step(*carry, g), (params, state_shape), params
        )
    memory = {**common.memory(compiled), "n": n}
    said = list(dict.fromkeys(f"{w.category.__name__}: {w.message}"[:300] for w in caught))
    return Planned(state, kernel, tx, compiled, memory, compiled_facts(compiled), said)


def plan_group(
    n: int, momentum: bool, states: list[str], notes: dict
) -> tuple[list[Planned], list[dict]]:
    """Every (state, kernel) of a group compiled, then kept while the group fits in memory.

    A (state, kernel) that fails to build is noted in ``notes`` under
    ``"<state>, <kernel>"`` and left out. Returns the steps to run and the rows
    of those skipped for memory.
    """
    planned = []
    for kernel in KERNELS:  # one kernel path after the other: the caches are cleared once
        with kernel_path(kernel):
            for state in states:
                try:
                    planned.append(plan(state, kernel, n, momentum))
                except Exception as err:  # noqa: BLE001 - recorded; the others still run
                    note = f"{type(err).__name__}: {err}"[:400]
                    notes.setdefault(f"{state}, {kernel}", note)
    budget = MEMORY_MARGIN * memory_limit() - 4 * n  # the shared gradients
    budget -= max((p.memory["temporaries"] for p in planned), default=0)
    kept, skipped = [], []
    for p in planned:  # in order: the float32 XLA baseline first
        if p.own_bytes <= budget:
            kept.append(p)
            budget -= p.own_bytes
        else:
            skipped.append(
                {**_key(n, momentum, p), "skipped": f"memory: needs {p.own_bytes / 1e9:.1f} GB"}
            )
    return kept, skipped


def _key(n: int, momentum: bool, p: Planned) -> dict:
    return {"n": n, "momentum": momentum, "state": p.state, "kernel": p.kernel, "contender": p.name}


def under_their_kernels(planned: list[Planned]):
    """Each planned step, yielded while ``OPTAX_RMSPROP_KERNEL`` names its kernel path."""
    for kernel in KERNELS:
        with kernel_path(kernel):
            yield from (p for p in planned if p.kernel == kernel)


def build(planned: list[Planned], n: int) -> tuple[dict[str, Contender], dict[str, float]]:
    """Buffers for every planned step (gradients shared); name -> contender, state bytes/param."""
    (params,), (grads,) = random_leaves([n], 0), random_leaves([n], 1, 0.01)
    contenders, state_bytes = {}, {}
    for p in under_their_kernels(planned):
        step = common.update_and_apply(p.tx)
        mine = [jnp.copy(params)]
        state = p.tx.init(mine)
        state_bytes[p.name] = sum(x.nbytes for x in jax.tree.leaves(state)) / n
        contenders[p.name] = Contender(
            lambda carry, g, step=step: step(*carry, g), (mine, state), [grads], compiled=p.compiled
        )
    return contenders, state_bytes


def interleaved(contenders: dict[str, Contender], rounds: int) -> dict:
    """``common.paired``'s result shape, from :func:`time_per_step` in rotating order."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name in common.rotated(list(contenders), r):
            samples[name] += time_per_step(contenders[name], 1)
    return {name: {"median_s": statistics.median(s), "samples": s} for name, s in samples.items()}


def measure_precisions(
    n: int, momentum: bool, rounds: int, states: list[str], notes: dict, check: list | None = None
) -> list[dict]:
    """One group: every state and kernel path on one leaf of ``n``, timed interleaved.

    With ``check`` (a list), the kernel paths are also compared on fresh
    buffers (:func:`kernel_paths_agree`) and the result appended to it.
    """
    planned, rows = plan_group(n, momentum, states, notes)
    if not any((p.state, p.kernel) == BASELINE for p in planned):
        return rows + [{"n": n, "momentum": momentum, "skipped": "no float32 XLA baseline"}]
    if check is not None:
        check += kernel_paths_agree(planned, n, momentum)
    contenders, state_bytes = build(planned, n)
    timing = interleaved(contenders, rounds)
    xla_text = {p.state: hlo_without_metadata(p.compiled) for p in planned if p.kernel == "xla"}
    base = "{} state, {}".format(*BASELINE)
    for p in planned:
        t = timing[p.name]
        row = {
            **_key(n, momentum, p),
            "median_s": t["median_s"],
            "samples": t["samples"],
            "over_f32": common.ratio(timing, p.name, base),
            "state_bytes_per_param": state_bytes[p.name],
            **{f"{k}_per_param": p.memory[k] / n for k in ("arguments", "temporaries", "peak")},
            "xla_bytes_per_param": p.facts["xla_bytes"] / n,
            **p.facts,
        }
        if p.warnings:  # e.g. a kernel path that falls back to XLA says so
            row["warnings"] = p.warnings
        if p.kernel != "xla" and p.state in xla_text:
            row["same_program_as_xla"] = hlo_without_metadata(p.compiled) == xla_text[p.state]
        rows.append(row)
        print(_precision_line(row), flush=True)
    return rows


def _precision_line(r: dict) -> str:
    return (
        f"N={r['n']:.0e} {'momentum ' if r['momentum'] else 'plain    '}{r['contender']:<20} "
        f"{1e6 * r['median_s']:>10.1f} us  / f32 {r['over_f32']:.2f}  "
        f"temporaries {r['temporaries_per_param']:.2f} B/param  kernels "
        f"{r['fusions'] + r['custom_calls']}"
    )


def kernel_paths_agree(planned: list[Planned], n: int, momentum: bool) -> list[dict]:
    """Per state: the Pallas path against the XLA path, a few steps from the same buffers."""
    (params,), (grads,) = random_leaves([n], 0), random_leaves([n], 1, 0.01)
    results: dict[tuple[str, str], list[jax.Array]] = {}
    for p in under_their_kernels(planned):
        mine = [jnp.copy(params)]
        carry = (mine, p.tx.init(mine))
        for _ in range(CHECK_STEPS):
            carry = p.compiled(carry, [grads])
        results[p.state, p.kernel] = jax.tree.leaves(carry)
    rows = []
    for state in dict.fromkeys(p.state for p in planned):
        if (state, "xla") not in results or (state, "pallas") not in results:
            continue
        xla, pallas = results[state, "xla"], results[state, "pallas"]
        diffs = [
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
            for a, b in zip(xla, pallas, strict=True)
        ]
        rows.append(
            {
                "n": n,
                "momentum": momentum,
                "state": state,
                "steps": CHECK_STEPS,
                "max_abs_diff": max(diffs),
                "params_allclose": bool(jnp.allclose(xla[0], pallas[0], rtol=1e-5, atol=1e-7)),
            }
        )
    return rows


def precision_section(sizes: list[int], rounds: int, budget: Budget, payload: dict, save) -> None:
    """Every state (int4 when the library has it) and kernel path, at each size, one leaf.

    Into ``payload["precision"]``, saved after each group.
    """
    notes: dict[str, str] = {}
    states = [s for s in STATES if s != "int4"]
    int4 = jitted_loop.state_dtype_note("int4")
    if int4:
        notes["int4"] = int4
    else:
        states.append("int4")
    section = {"sizes": sizes, "states": states, "notes": notes, "rows": [], "kernel_check": []}
    payload["precision"] = section
    for n in sizes:
        for momentum in (False, True):
            need = 20 + 60 * n / 1e9  # compile every path, fill and time 1e9 in about a minute
            if not budget.allows(need):
                section["rows"].append(
                    {"n": n, "momentum": momentum, "skipped": f"time: {budget.left():.0f} s left"}
                )
                continue
            check = section["kernel_check"] if n == min(sizes) else None
            section["rows"] += measure_precisions(n, momentum, rounds, states, notes, check)
            save()


# -- 2. the trainer ----------------------------------------------------------
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


def precision_markdown(section: dict) -> list[str]:
    """The lines of part 2b: state precision and kernel path, one leaf."""
    lines = [
        "**State precision and kernel path** (one leaf; the library's step, jitted and "
        f"donated, with `{KERNEL_ENV}=xla` or `=pallas` while it is traced). Time over the "
        "float32-state XLA step of the same group (median of per-round ratios); temporaries "
        "and peak from `compiled.memory_analysis()`, in bytes per parameter.",
        "",
    ]
    rows = []
    for r in section["rows"]:
        head = [f"{r['n']:.0e}", "yes" if r["momentum"] else "no"]
        head += [r.get("state", ""), r.get("kernel", "")]
        if "skipped" in r:
            rows.append([*head, f"skipped: {r['skipped']}", "", "", "", "", "", "", ""])
            continue
        same = r.get("same_program_as_xla")
        rows.append(
            [
                *head,
                f"{1e6 * r['median_s']:,.1f}",
                f"{r['over_f32']:.2f}",
                f"{r['temporaries_per_param']:.2f}",
                f"{r['peak_per_param']:.2f}",
                f"{r['state_bytes_per_param']:.2f}",
                "n/a" if r["custom_calls"] else f"{r['xla_bytes_per_param']:.1f}",
                r["fusions"] + r["custom_calls"],
                "" if same is None else ("yes" if same else "no"),
            ]
        )
    header = ["N", "momentum", "state", "kernel", "time (us)", "/ f32 state", "temporaries"]
    header += ["peak", "state bytes", "XLA bytes", "kernels", "same program as XLA"]
    lines += common.markdown_table(header, rows)
    pallas = [r for r in section["rows"] if r.get("kernel") == "pallas" and "median_s" in r]
    if pallas and all(r.get("same_program_as_xla") for r in pallas):
        lines += [
            "",
            f"With `{KERNEL_ENV}=pallas` every step compiled to the same program as with "
            "`=xla`: no Pallas kernel was used.",
        ]
    for key, note in section["notes"].items():
        lines += ["", f"Not measured ({key}): {note}"]
    said = {w: r["contender"] for r in section["rows"] for w in r.get("warnings", [])}
    lines += [line for w, name in said.items() for line in ("", f"Warned ({name}, ...): {w}")]
    for c in section["kernel_check"]:
        lines += [
            "",
            f"Pallas path against XLA path, {c['state']} state"
            f"{' with momentum' if c['momentum'] else ''}, {c['steps']} steps from the same "
            f"buffers: max abs difference {c['max_abs_diff']:.3g}, params allclose "
            f"{c['params_allclose']}.",
        ]
    return lines + [""]


def loop_markdown(section: dict) -> list[str]:
    """The lines of the jitted-loop part: K steps in one dispatch against K dispatches."""
    lines = [
        f"**Jitted loop** ({section['steps']} steps in one jitted `lax.fori_loop` against "
        "one dispatched, waited-for step per call; dispatch = the difference; "
        "`python -m benchmarks.jitted_loop` measures the same on its own).",
        "",
        *jitted_loop.markdown_lines(section["rows"]),
    ]
    for a in section.get("per_argument", []):
        lines += [
            "",
            f"{a['contender']}: {1e6 * a['per_argument_s']:.2f} us of dispatch per extra jit "
            f"argument ({' -> '.join(map(str, a['jit_arguments']))} arguments).",
        ]
    for key, note in section["notes"].items():
        lines += ["", f"Not measured ({key}): {note}"]
    return lines + [""]


def steps_markdown(payload: dict) -> list[str]:
    """The lines of the one-step table against the roofline (part 6)."""
    streams = [r["achieved_gb_s"] for r in payload["steps"] if r["contender"] == "stream"]
    peak = max(streams, default=float("nan"))
    lines = [
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
    if payload.get("steps_skipped"):
        skipped = ", ".join(f"{s['n']:.0e} x {s['leaves']}" for s in payload["steps_skipped"])
        lines += [f"One-step rows skipped for time: {skipped}.", ""]
    return lines


def trainer_markdown(tr: dict) -> str:
    """The trainer's line."""
    if tr.get("error") == "skipped":
        return "**Trainer**: skipped."
    if "error" in tr:
        return f"**Trainer**: failed ({tr['error']})."
    return (
        f"**Trainer** (MNIST cnn, {tr['epochs']:.2f} epochs, {tr['dataset']}): "
        f"test accuracy {100 * tr['test_accuracy']:.2f}%, {tr['seconds_per_epoch']:.2f} s "
        f"per epoch, {tr['examples_per_sec']:,.0f} examples/s, compile "
        f"{tr['compile_time_s']:.1f} s."
    )


def to_markdown(payload: dict) -> str:
    m, t = payload["machine"], payload["tests"]
    lines = [
        f"Measured {m['date']} on {m['device_kind']} ({m['backend']}, {len(m['devices'])} "
        f"device(s)), JAX {m['jax']}, optax {m.get('optax')}, Python {m['python']}"
        f"{' (small mode)' if payload['small'] else ''}.",
        "",
        f"**Tests** ({', '.join(os.path.basename(f) for f in t['files'])}): "
        f"{t.get('passed', '?')} passed, {t.get('failures', '?')} failed, "
        f"{t.get('errors', '?')} errors, {t.get('skipped', '?')} skipped ({t['seconds']} s).",
        "",
    ]
    if payload["steps"] or "pallas_matches" in payload:
        lines += steps_markdown(payload)
    if "peak_memory" in payload:
        peak = state_precision.peak_memory_markdown(payload["peak_memory"], payload["peak_shape"])
        lines += ["**The step's memory.** " + peak[0], *peak[1:], ""]
    if "precision" in payload:
        lines += precision_markdown(payload["precision"])
    if "loop" in payload:
        lines += loop_markdown(payload["loop"])
    lines.append(trainer_markdown(payload["trainer"]))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the sizes of ``--small`` or of the full run filled in."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes, a few trainer steps (CI)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON and table")
    ap.add_argument("--mnist-dir", default=None, help="real MNIST IDX files for the trainer")
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="parameter counts")
    ap.add_argument("--leaves", type=int, nargs="+", default=[1, 1000], help="leaf counts")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    ap.add_argument(
        "--precision-sizes", type=float, nargs="+", default=None, help="one-leaf sizes, part 2b"
    )
    ap.add_argument("--loop-size", type=float, default=None, help="parameters, jitted loop part")
    ap.add_argument("--loop-steps", type=int, default=None, help="steps per jitted loop (K)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=540,
        help="seconds for the whole run: timed parts that would not finish are skipped",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    ap.add_argument("--test-files", nargs="+", default=TEST_FILES, help="the tests part's files")
    args = ap.parse_args(argv)
    small = args.small
    args.sizes = [int(s) for s in (args.sizes or ([1e4, 1e5] if small else [1e6, 1e7, 1e8, 1e9]))]
    args.leaves = [min(c, 10) for c in args.leaves] if small else args.leaves
    args.rounds = args.rounds or (2 if small else 7)
    args.precision_sizes = [
        int(s) for s in (args.precision_sizes or ([1e4] if small else [1e7, 1e8, 1e9]))
    ]
    args.loop_size = int(args.loop_size or (jitted_loop.SMALL["n"] if small else 1e7))
    args.loop_steps = args.loop_steps or (jitted_loop.SMALL["steps"] if small else 50)
    return args


PARTS = ["tests", "trainer", "memory", "precision", "loop", "steps"]


def loop_section(args: argparse.Namespace, budget: Budget, payload: dict, save) -> None:
    """The jitted-loop figure (``benchmarks.jitted_loop``) without momentum, per leaf layout.

    Into ``payload["loop"]``, saved after each layout.
    """
    txs, notes = jitted_loop.transformations(momenta=(False,))
    section = {"n": args.loop_size, "steps": args.loop_steps, "notes": notes, "rows": []}
    section["per_argument"] = []
    payload["loop"] = section
    for count in args.leaves:
        need = 20 + 0.1 * count  # a many-leaf program compiles for a while
        if not budget.allows(need):
            notes[f"{count} leaves"] = f"skipped: {budget.left():.0f} s left"
            continue
        section["rows"] += jitted_loop.measure_layout(
            args.loop_size, count, args.loop_steps, min(args.rounds, 5), txs
        )
        section["per_argument"] = jitted_loop.per_argument(section["rows"])
        save()


def steps_section(args: argparse.Namespace, budget: Budget, payload: dict, save) -> None:
    """Part 2: every layout and size against the roofline, into ``payload["steps"]``."""
    interpret = jax.default_backend() == "cpu"
    try:
        payload["pallas_matches"] = pallas_matches_library(interpret)
    except Exception as err:  # noqa: BLE001 - recorded; the rest still runs
        payload["pallas_matches"] = f"unavailable: {type(err).__name__}: {err}"[:300]
    pallas = payload["pallas_matches"] is True
    for count in args.leaves:  # one leaf first: the most telling rows survive a time-out
        for n in args.sizes:
            if not budget.allows(15 + 30 * n / 1e9):
                payload["steps_skipped"].append({"n": n, "leaves": count, "left_s": budget.left()})
                continue
            payload["steps"] += measure_steps(n, count, args.rounds, pallas)
            save()


def trainer_part(args: argparse.Namespace, budget: Budget) -> dict:
    """The trainer's summary: 3 epochs (``--small``: 16 steps)."""
    epochs, max_steps = (1, 16) if args.small else (3, None)
    timeout_s = min(900, max(60, budget.left() / 2))
    return run_trainer(epochs, max_steps, args.mnist_dir, timeout_s=timeout_s)


def memory_part(args: argparse.Namespace, payload: dict) -> None:
    """XLA's buffer assignment by state precision and option set, into ``payload``."""
    payload["peak_shape"] = (256, 256) if args.small else state_precision.PEAK_SHAPE
    payload["peak_memory"] = state_precision.peak_memory(shape=payload["peak_shape"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or os.path.join(common.RESULTS, f"accelerator-{jax.default_backend()}")
    os.makedirs(out, exist_ok=True)
    print(f"JAX {jax.__version__} on {jax.devices()}", flush=True)

    t0 = time.perf_counter()
    budget = Budget(args.budget_s)
    payload: dict = {
        "machine": device_info(),
        "small": args.small,
        "steps": [],
        "steps_skipped": [],
        "tests": {"seconds": 0, "files": []},
        "trainer": {"error": "skipped"},
        "settings": {"lr": LR, "decay": DECAY, "eps": EPS, "budget_s": args.budget_s},
    }
    save = functools.partial(_save, out, payload, t0)
    parts = {
        "tests": lambda: payload.update(
            tests=run_tests(
                out, timeout_s=min(600, max(60, budget.left() / 3)), files=args.test_files
            )
        ),
        "trainer": lambda: payload.update(trainer=trainer_part(args, budget)),
        "memory": lambda: memory_part(args, payload),  # compiles only: cheap, deterministic
        "precision": lambda: precision_section(
            args.precision_sizes, args.rounds, budget, payload, save
        ),
        "loop": lambda: loop_section(args, budget, payload, save),
        "steps": lambda: steps_section(args, budget, payload, save),
    }
    payload["part_seconds"] = {}
    for name, part in parts.items():
        if name not in args.skip:
            start = time.perf_counter()
            part()
            payload["part_seconds"][name] = round(time.perf_counter() - start, 1)
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
