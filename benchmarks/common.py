"""Timing helpers shared by the benchmarks: medians, paired ratios, machine info, output."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
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


def write(name: str, payload: dict, markdown: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
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
