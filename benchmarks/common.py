"""What the benchmarks (and the tests) share: the step, its compiled facts, timing, output.

The step (update + apply), the leaf layouts, and what XLA says about a compiled
step (bytes accessed, the entry computation's ops, buffer sizes) live here once;
``tests/`` imports them too. Timing helpers give medians and paired ratios.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def time_call(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def paired(contenders: dict[str, Callable[[], object]], rounds: int, per_round: int = 3) -> dict:
    """Interleaved timing: each round times every contender once (best of ``per_round``).

    A sample is the mean of enough back-to-back calls to last about 20 ms, so
    that microsecond steps are not drowned in timer and scheduler jitter.

    The order rotates from round to round, so no contender always runs right
    after the same neighbour (PyTorch's OpenMP threads keep spinning for a while
    after a step and slow down whatever runs next). Returns per contender the
    median seconds, and the per-round samples so that ratios can be taken round
    by round (drift on a shared machine cancels).
    """
    samples = {name: [] for name in contenders}
    names = list(contenders)
    calls = {name: _calls_per_sample(fn) for name, fn in contenders.items()}
    for r in range(rounds):
        for name in rotated(names, r):
            fn, k = contenders[name], calls[name]
            samples[name].append(min(time_call(functools.partial(_repeat, fn, k), per_round)) / k)
    return {name: {"median_s": statistics.median(s), "samples": s} for name, s in samples.items()}


def rotated(names: list[str], r: int) -> list[str]:
    """``names`` starting from the ``r``-th (mod len): who goes first changes every round."""
    r %= len(names)
    return names[r:] + names[:r]


def _calls_per_sample(fn: Callable[[], object], target_s: float = 0.02) -> int:
    """How many back-to-back calls make one sample of about ``target_s`` (timer jitter)."""
    once = min(time_call(fn, 3))
    return max(1, min(1000, round(target_s / max(once, 1e-7))))


def _repeat(fn: Callable[[], object], k: int) -> None:
    for _ in range(k):
        fn()


def ratio(result: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b)."""
    return statistics.median(
        x / y for x, y in zip(result[a]["samples"], result[b]["samples"], strict=True)
    )


def machine() -> dict:
    import jax

    info = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    try:
        import optax

        info["optax"] = optax.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), e.g. 'AMD EPYC'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
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


def roofline(sizes: list[int]) -> Callable[[], None]:
    """The memory roofline over float32 leaves of ``sizes``: a jitted, donated ``p + g``.

    It reads 8 and writes 4 bytes per element, a streaming pass that no
    optimizer step can beat per byte. Returns a function that runs it once.
    """
    import jax
    import jax.numpy as jnp

    params = [jnp.ones((s,), jnp.float32) for s in sizes]
    grads = [jnp.full((s,), 0.5, jnp.float32) for s in sizes]
    add = jax.jit(lambda p, g: [a + b for a, b in zip(p, g, strict=True)], donate_argnums=0)
    box = {"p": params}

    def run():
        box["p"] = add(box["p"], grads)
        jax.block_until_ready(box["p"])

    run()
    return run


# -- the step and what XLA makes of it ---------------------------------------
def update_and_apply(tx) -> Callable:
    """``(params, state, grads) -> (params, state)``: one update of ``tx``, applied."""
    import optax

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def jitted_step(tx, *, donate: bool = False) -> Callable:
    """The step of ``tx``, jitted; with ``donate``, params and state are donated."""
    import jax

    return jax.jit(update_and_apply(tx), donate_argnums=(0, 1) if donate else ())


def compile_step(tx, params, grads=None, *, donate: bool = True):
    """The jitted step of ``tx`` for ``params``' shapes and dtypes, compiled.

    ``params`` may be arrays or ``jax.ShapeDtypeStruct``s: nothing is allocated
    or initialised (the state's shapes come from ``jax.eval_shape``). ``grads``
    defaults to ``params``.
    """
    import jax

    state = jax.eval_shape(tx.init, params)
    grads = params if grads is None else grads
    return jitted_step(tx, donate=donate).lower(params, state, grads).compile()


def leaves_for(n: int, count: int) -> list[int]:
    """Sizes of ``count`` leaves (at most ``n``) that hold ``n`` parameters together."""
    count = min(count, n)
    sizes = [n // count] * count
    sizes[0] += n - sum(sizes)
    return sizes


def bytes_accessed(compiled) -> float:
    """The bytes XLA's cost analysis counts for a compiled function."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis  # jax < 0.4.36
    return float(analysis.get("bytes accessed", float("nan")))


def entry_ops(compiled) -> list[str]:
    """The op of each instruction of the optimised HLO's entry computation, in order.

    ``%fusion.3 = (f32[64]{0}, f32[64]{0}) fusion(%p0, ...), kind=kLoop`` gives
    ``fusion``: the first ``name(`` after the ``=`` (a tuple shape has none).
    """
    text = compiled.as_text()
    entry = text[text.index("ENTRY") :].split("\n}", 1)[0]
    return re.findall(r"^\s*(?:ROOT )?\S+ = .*? ([\w-]+)\(", entry, flags=re.M)


NOT_KERNELS = frozenset({"parameter", "tuple", "get-tuple-element", "bitcast", "constant"})


def kernels(ops: list[str]) -> int:
    """Entry ops that launch work: fusions, custom calls and lone ops (not plumbing)."""
    return sum(op not in NOT_KERNELS for op in ops)


def memory(compiled) -> dict[str, int]:
    """XLA's buffer assignment of a compiled function, in bytes.

    ``peak`` is what the step holds at once: arguments, outputs and temporaries,
    less the outputs that reuse a donated argument's buffer (with every output
    aliased, arguments plus temporaries).
    """
    m = compiled.memory_analysis()
    sizes = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
    }
    sizes["peak"] = (
        sum(sizes[k] for k in ("arguments", "outputs", "temporaries")) - sizes["aliased"]
    )
    return sizes


# -- many steps in one dispatch ----------------------------------------------
# A factor that is exactly 1.0 in float32 for loop counters below about 5e4
# (1 + 1e-12 * i rounds to 1), yet depends on the counter, so that XLA cannot
# hoist work on the gradients (``g * g``) out of the loop as loop-invariant.
_NUDGE = 1e-12


def nudged(grads, i):
    """``grads`` times ``1 + 1e-12 * i``: the same values, but not loop-invariant."""
    import jax

    return jax.tree.map(lambda g: g * (1 + _NUDGE * i).astype(g.dtype), grads)


def fori_steps(step: Callable, steps: int) -> Callable:
    """``(carry, grads) -> carry``: ``steps`` calls of ``step(carry, grads)`` in one loop.

    A ``jax.lax.fori_loop`` carries ``carry`` (params and state) from call to
    call; the gradients are the same each time (see :func:`nudged`). Jitted, the
    whole loop is one dispatch: the host pays for its arguments once, not
    ``steps`` times.
    """
    import jax

    def loop(carry, grads):
        return jax.lax.fori_loop(0, steps, lambda i, c: step(c, nudged(grads, i)), carry)

    return loop


def jitted_loop(tx, steps: int, *, donate: bool = False) -> Callable:
    """``(params, state, grads) -> (params, state)``: ``steps`` steps of ``tx``, one jit.

    The counterpart of :func:`jitted_step`; with ``donate``, params and state
    are donated.
    """
    import jax

    step = update_and_apply(tx)
    loop = fori_steps(lambda carry, grads: step(*carry, grads), steps)
    return jax.jit(
        lambda params, state, grads: loop((params, state), grads),
        donate_argnums=(0, 1) if donate else (),
    )


def jit_arguments(*trees) -> int:
    """How many arrays a jitted call of ``trees`` passes: the host handles each one."""
    import jax

    return len(jax.tree.leaves(trees))
