"""What the benchmarks share: the compiled step and what XLA says of it, timing, output.

A step here is ``(params, state), grads -> (params, state)``, jitted with params
and state donated, as a training loop runs it. Timing helpers give medians and
paired ratios; ``write`` puts a benchmark's JSON and Markdown table in
``benchmarks/results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PLUMBING = frozenset({"parameter", "tuple", "get-tuple-element", "bitcast", "constant"})


# -- the step and what XLA makes of it ---------------------------------------
def carry_step(tx: optax.GradientTransformation) -> Callable:
    """``(params, state), grads -> (params, state)``: one update of ``tx``, applied."""

    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def compile_step(tx: optax.GradientTransformation, params, grads=None):
    """The donated step of ``tx`` compiled for ``params``' shapes (arrays or ShapeDtypeStructs).

    Nothing is initialised: the state's shapes come from ``jax.eval_shape``.
    """
    carry = (params, jax.eval_shape(tx.init, params))
    grads = params if grads is None else grads
    return jax.jit(carry_step(tx), donate_argnums=0).lower(carry, grads).compile()


def facts(compiled) -> dict:
    """XLA's figures for a compiled function, deterministic: bytes accessed, kernels, memory.

    ``kernels`` counts the entry computation's ops that launch work (fusions,
    custom calls, lone ops). ``peak`` is what the function holds at once:
    arguments, outputs and temporaries, less the outputs that reuse a donated
    argument's buffer.
    """
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # jax < 0.4.36
    text = compiled.as_text()
    entry = text[text.index("ENTRY") :].split("\n}", 1)[0]
    ops = re.findall(r"^\s*(?:ROOT )?\S+ = .*? ([\w-]+)\(", entry, flags=re.M)
    m = compiled.memory_analysis()
    held = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return {
        "xla_bytes": float(cost.get("bytes accessed", float("nan"))),
        "kernels": sum(op not in PLUMBING for op in ops),
        "arguments": m.argument_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "peak": held - m.alias_size_in_bytes,
    }


class Stepper:
    """The compiled, donated step of ``tx`` over its own params; each call dispatches one step.

    ``params`` are consumed (donated); ``grads`` may be shared between steppers.
    """

    def __init__(self, tx: optax.GradientTransformation, params, grads):
        self.compiled = compile_step(tx, params, grads)
        self.facts = facts(self.compiled)
        self.carry, self.grads = (params, tx.init(params)), grads
        jax.block_until_ready(self())

    def __call__(self):
        self.carry = self.compiled(self.carry, self.grads)
        return self.carry

    def state_bytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self.carry[1]))


def random_leaves(sizes: list[int], seed: int, scale: float = 1.0) -> list[jax.Array]:
    """Float32 leaves of ``sizes``, normal with standard deviation ``scale``."""
    key = jax.random.key(seed)
    return [
        scale * jax.random.normal(jax.random.fold_in(key, i), (s,), jnp.float32)
        for i, s in enumerate(sizes)
    ]


def leaves_for(n: int, count: int) -> list[int]:
    """Sizes of ``count`` leaves (at most ``n``) that hold ``n`` parameters together."""
    count = min(count, n)
    sizes = [n // count] * count
    sizes[0] += n - sum(sizes)
    return sizes


def roofline(sizes: list[int]) -> Callable[[], object]:
    """The memory roofline over float32 leaves of ``sizes``: a jitted, donated ``p + g``.

    It reads 8 and writes 4 bytes per element, a streaming pass that no
    optimizer step can beat per byte. Returns a function that dispatches it once.
    """
    add = jax.jit(lambda p, g: [a + b for a, b in zip(p, g, strict=True)], donate_argnums=0)
    box = {"p": random_leaves(sizes, 2)}
    grads = random_leaves(sizes, 3)

    def run():
        box["p"] = add(box["p"], grads)
        return box["p"]

    jax.block_until_ready(run())
    return run


# -- timing ------------------------------------------------------------------
def time_call(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def interleaved(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list]:
    """Each contender's samples (one per call and round), who goes first rotating.

    No contender always runs first: the first warms JAX's caches for the others, and
    PyTorch's OpenMP threads spin after a step and slow whatever runs next.
    """
    samples, names = {name: [] for name in contenders}, list(contenders)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(contenders[name]())
    return samples


def paired(contenders: dict[str, Callable[[], object]], rounds: int, per_round: int = 3) -> dict:
    """Interleaved timing: per contender, the median seconds per call and the per-round samples.

    A sample is the best of ``per_round`` runs of ``k`` back-to-back calls and one
    wait for the last result, ``k`` chosen so that a run lasts about 20 ms: launch
    latency is amortised as in a training loop, and timer jitter does not drown
    microsecond steps.
    """

    def sampler(fn: Callable[[], object]) -> Callable[[], float]:
        once = min(time_call(lambda: _repeat(fn, 1), 3))
        k = max(1, min(2000, round(0.02 / max(once, 1e-7))))
        return lambda: min(time_call(lambda: _repeat(fn, k), per_round)) / k

    samples = interleaved({name: sampler(fn) for name, fn in contenders.items()}, rounds)
    return {name: {"median_s": statistics.median(s), "samples": s} for name, s in samples.items()}


def _repeat(fn: Callable[[], object], k: int) -> None:
    for _ in range(k):
        out = fn()
    jax.block_until_ready(out)


def ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of ``a / b``, round by round (paired: machine drift cancels)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def guarded(x: float, limit: float | None) -> str:
    """A ratio's table cell; beside a guard's ``limit``, the limit (in bold when broken)."""
    if limit is None:
        return f"{x:.2f}"
    return f"{x:.2f} (≤ {limit:g}x)" if x <= limit else f"**{x:.2f} (> {limit:g}x)**"


def check(broken: list[str]) -> None:
    """``--check``: exits with status 1 naming every broken guard, else says they hold."""
    if broken:
        sys.exit("guard broken: " + "; ".join(broken))
    print("every guard holds", flush=True)


# -- command line and output --------------------------------------------------
def parser(doc: str, small: str) -> argparse.ArgumentParser:
    """A benchmark's command line: ``--small`` (what it shrinks: ``small``) and ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--small", action="store_true", help=f"{small} (a check that it runs)")
    ap.add_argument("--out", default=None, help="folder for the results (else benchmarks/results)")
    return ap


def measured(m: dict) -> str:
    """The sentence that opens a table: when, on what, with which versions."""
    torch = f", torch {m['torch']}" if "torch" in m else ""
    device = (
        m["backend"] if m["device_kind"] == m["backend"] else f"{m['device_kind']} ({m['backend']})"
    )
    return (
        f"Measured {m['date']} on {m['cpus']} CPU cores ({m['processor']}), {device}, "
        f"JAX {m['jax']}, optax {m['optax']}{torch}."
    )


def machine() -> dict:
    """The date, host, versions and devices a result was measured with."""
    device = jax.devices()[0]
    info = {
        "date": datetime.date.today().isoformat(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": device.device_kind,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def has_torch() -> bool:
    """Whether PyTorch is installed (set to use every CPU core)."""
    try:
        import torch
    except ImportError:
        return False
    torch.set_num_threads(os.cpu_count() or 1)
    return True


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), e.g. 'AMD EPYC'."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        return None


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown table: ``header``, then one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def write(name: str, payload: dict, markdown: str, out: str | None = None) -> None:
    """Writes ``name``.json and ``name``.md to ``out`` (default: benchmarks/results)."""
    out = out or RESULTS
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(markdown)
