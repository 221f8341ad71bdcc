"""Every figure the pages quote in prose comes from a committed results file.

Tables of results are included from ``benchmarks/results/*.md`` (MyST's ``{include}``).
A figure quoted in a sentence is listed in FIGURES below: the page, the words around it
with ``{}`` where the figures go, and how to read each from its results file. The test
fails when a rerun changes the figure (update the page) and when the page's words change
(update the entry): a page cannot drift from its results unnoticed.

To quote a new figure: write the sentence, add a ``Figure`` here, run this file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import statistics
from collections.abc import Callable

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


@functools.cache
def results(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def fixed(digits: int) -> Callable[[float], str]:
    return lambda x: f"{x:,.{digits}f}"


def trimmed(x: float) -> str:
    """Three decimals, trailing zeros dropped: 5, 1.5, 1.016."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def percent(digits: int) -> Callable[[float], str]:
    return lambda x: f"{100 * x:.{digits}f}"


# -- readers: one per results file ----------------------------------------------
def throughput(name: str) -> float:
    """Median examples/s of one implementation in trainer_throughput.json."""
    return statistics.median(results("trainer_throughput.json")["examples_per_sec"][name])


def round_ratios() -> list[float]:
    """JAX over PyTorch throughput, round by round."""
    rate = results("trainer_throughput.json")["examples_per_sec"]
    return [j / t for j, t in zip(rate["jax"], rate["torch"], strict=True)]


def time_to_99(name: str, epoch: int) -> tuple[float, float]:
    """(training seconds, test accuracy) after ``epoch`` (1-based)."""
    _, seconds, accuracy = results("trainer_throughput.json")["time_to_99"][name][epoch - 1]
    return seconds, accuracy


def precision_step(step: str, state: str) -> dict:
    """A row of state_precision.json's JAX step table."""
    return results("state_precision.json")["jax"][step][state]


def peak(step: str, state: str) -> float:
    """Peak bytes per parameter of the jitted step (XLA's buffer assignment)."""
    rows = results("state_precision.json")["peak_memory"]
    return next(r["peak"] for r in rows if r["step"] == step and r["state"] == state)


def fidelity_cells(name: str, state: str, decay: float | None = None) -> list[dict]:
    """Every layer's last-third percentiles of ``state`` (at ``decay`` if given)."""
    return [
        layer[state]["last_third"]
        for run in results(name)["runs"]
        if decay is None or run["decay"] == decay
        for layer in run["layers"].values()
    ]


def transformer(decay: float) -> dict:
    """The char transformer's run at ``decay`` in fidelity.json."""
    runs = results("fidelity.json")["runs"]
    return next(r for r in runs if r["model"] == "char transformer" and r["decay"] == decay)


def fidelity_range(state: str) -> tuple[float, float]:
    """Lowest 5th and highest 95th percentile over every layer and decay."""
    cells = fidelity_cells("fidelity.json", state)
    return min(c["p5"] for c in cells), max(c["p95"] for c in cells)


def compile_rows() -> list[dict]:
    return results("compile_time.json")["rows"]


def compile_ratios() -> tuple:
    """Against optax: the range without momentum; with it at 10, 1,000 and 100 leaves."""
    rows = compile_rows()
    ratios = [r["ratio"] for r in rows]
    return (min(ratios), max(ratios), *(rows[i]["ratio_momentum"] for i in (0, 2, 1)))


def compile_precision(state: str) -> dict:
    rows = results("compile_time.json")["precisions"]["rows"]
    return next(r for r in rows if r["state"] == state)


def optimizer_steps() -> list[dict]:
    return results("optimizer_step.json")["steps"]


def h200_step(n: float, leaves: int, contender: str) -> dict:
    steps = results("accelerator-h200/accelerator.json")["steps"]
    return next(
        s for s in steps if s["n"] == n and s["leaves"] == leaves and s["contender"] == contender
    )


def h200() -> dict:
    return results("accelerator-h200/accelerator.json")


def golden_report() -> dict[tuple[str, str], tuple[str, str]]:
    """(port, dtype) -> (single step, free run) as `python -m tests.golden.report` prints."""
    with open(os.path.join(ROOT, "tests", "golden", "report.txt")) as f:
        lines = re.findall(
            r"^(\w+)\s+(float\d+): single step (\S+) eps, free run (\S+) eps", f.read(), re.M
        )
    return {(port, dtype): (single, free) for port, dtype, single, free in lines}


def golden_row(port: str) -> tuple[str, str, str]:
    """float64 single step, float32 single step, the larger free run."""
    report = golden_report()
    (s64, f64), (s32, f32) = report[(port, "float64")], report[(port, "float32")]
    free = max((f64, f32), key=float)
    return s64, s32, free


# -- the figures ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Figure:
    """``text`` with each ``{}`` filled by ``values()``, formatted, must appear in ``page``."""

    page: str
    text: str
    values: Callable[[], tuple]
    formats: tuple[Callable[[float], str], ...] = (fixed(2),)

    def expected(self) -> str:
        values = self.values()
        assert self.text.count("{}") == len(values), (self.text, values)
        formats = self.formats * len(values) if len(self.formats) == 1 else self.formats
        return self.text.format(
            *(f(v) if callable(f) else v for f, v in zip(formats, values, strict=True))
        )


def ratio(a: float, b: float) -> float:
    return a / b


TRAINER = [
    lambda: (
        throughput("jax") / throughput("jax-xla-defaults"),
        throughput("jax"),
        throughput("jax-xla-defaults"),
    ),
    (fixed(2), fixed(0), fixed(0)),
]
FIGURES = [
    # README.md
    Figure(
        "README.md",
        "int8 step stays within {}x to {}x of float32 state's (5th to 95th percentile, every "
        "layer; median {})",
        lambda: (
            *fidelity_range("int8"),
            statistics.median(c["p50"] for c in fidelity_cells("fidelity.json", "int8")),
        ),
    ),
    Figure(
        "README.md",
        "runs at {} and {} of the memory roofline ({} GB/s measured) for 1e8 and 1e9 parameters",
        lambda: (
            h200_step(1e8, 1, "optax_rmsprop f32 state")["roofline_fraction"],
            h200_step(1e9, 1, "optax_rmsprop f32 state")["roofline_fraction"],
            h200_step(1e9, 1, "stream")["achieved_gb_s"],
        ),
        (fixed(2), fixed(2), fixed(0)),
    ),
    Figure(
        "README.md",
        "at {} s per epoch to {}%",
        lambda: (h200()["trainer"]["seconds_per_epoch"], h200()["trainer"]["test_accuracy"]),
        (fixed(2), percent(2)),
    ),
    Figure(
        "README.md",
        "the trainer runs at {}x PyTorch's throughput for the same model and optimizer (median of "
        "5 process-isolated rounds, {}x to {}x)",
        lambda: (
            results("trainer_throughput.json")["jax_over_torch"],
            min(round_ratios()),
            max(round_ratios()),
        ),
    ),
    Figure(
        "README.md",
        "int8 state's step at most {}x float32 state's ({}x with momentum), and its step over 200 "
        "leaves compiles within {}x float32's",
        lambda: (
            __import__("benchmarks.state_precision").state_precision.GUARDS["plain"]["int8"],
            __import__("benchmarks.state_precision").state_precision.GUARDS["momentum 0.9"]["int8"],
            __import__("benchmarks.compile_time").compile_time.GUARDS["int8"],
        ),
        (lambda x: f"{x:g}",),
    ),
    # docs/index.md
    Figure(
        "docs/index.md",
        "({}% test accuracy after 3 epochs, {} s of training on 2 CPU cores)",
        lambda: (time_to_99("JAX", 3)[1], time_to_99("JAX", 3)[0]),
        (percent(2), fixed(1)),
    ),
    # docs/faq.md
    Figure(
        "docs/faq.md",
        "each coordinate's step stays within {}x to {}x of float32 state's",
        lambda: fidelity_range("bfloat16"),
    ),
    Figure(
        "docs/faq.md",
        "its step takes {}x float32 state's time plain and {}x with momentum",
        lambda: (
            precision_step("plain", "bfloat16")["time_over_float32"],
            precision_step("momentum 0.9", "bfloat16")["time_over_float32"],
        ),
    ),
    # docs/porting.md: the golden report
    *[
        Figure(
            "docs/porting.md",
            f"| {prefix} | {{}} eps | {{}} eps | {{}} eps/step |"
            if port == "pytorch"
            else f"| {prefix} | {{}} | {{}} | {{}} |",
            functools.partial(golden_row, port),
            (str,),
        )
        for port, prefix in [
            ("pytorch", "`torch.optim.RMSprop` (torch 2.13)"),
            ("keras", "`keras.optimizers.RMSprop` (Keras 3.15, JAX backend)"),
            ("keras_legacy", "`tf_keras.optimizers.legacy.RMSprop` (TF 2.21)"),
            ("tensorflow_v1", "`tf.compat.v1.train.RMSPropOptimizer` (TF 2.21)"),
            ("timm", "`timm.optim.RMSpropTF` (timm 1.0.31)"),
        ]
    ],
    # docs/state_precision.md
    Figure(
        "docs/state_precision.md",
        "(the closest: int4's `unembed/kernel` at 0.999, median {} and 5th percentile {})",
        lambda: (
            (c := transformer(0.999)["layers"]["unembed/kernel"]["int4"]["last_third"])["p50"],
            c["p5"],
        ),
    ),
    Figure(
        "docs/state_precision.md",
        "int8 on the MNIST cnn's dense layer, 5th percentile {}",
        lambda: (
            results("fidelity_0.9999.json")["runs"][0]["layers"]["dense1/kernel"]["int8"][
                "last_third"
            ]["p5"],
        ),
    ),
    Figure(
        "docs/state_precision.md",
        "bfloat16 {}x float32's {} s, int8 {}x, guarded at {}x, int4 {}x",
        lambda: (
            compile_precision("bfloat16")["compile_over_float32"],
            compile_precision("float32")["compile_s"],
            compile_precision("int8")["compile_over_float32"],
            __import__("benchmarks.compile_time").compile_time.GUARDS["int8"],
            compile_precision("int4")["compile_over_float32"],
        ),
        (fixed(0), fixed(2), fixed(0), fixed(0), fixed(0)),
    ),
    Figure(
        "docs/state_precision.md",
        "mean absolute error at most **{}** (int8 and int4), mean relative error {} (int8) and {} "
        "(int4)",
        lambda: (
            max(
                results("state_precision.json")["accuracy"][s]["per_step_mean_abs_error_max"]
                for s in ("int8", "int4")
            ),
            results("state_precision.json")["accuracy"]["int8"]["per_step_mean_rel_error_max"],
            results("state_precision.json")["accuracy"]["int4"]["per_step_mean_rel_error_max"],
        ),
        (lambda x: f"{x:.2g}",),
    ),
    Figure(
        "docs/state_precision.md",
        "float32 runs end **{}%** apart (bound 0.5%), final loss {}x float32's; int4 **{}%** "
        "(bound 4%), final loss {}x",
        lambda: (
            (a := results("state_precision.json")["accuracy"])["int8"]["drift"],
            ratio(a["int8"]["final_loss"]["int8"], a["int8"]["final_loss"]["float32"]),
            a["int4"]["drift"],
            ratio(a["int4"]["final_loss"]["int4"], a["int4"]["final_loss"]["float32"]),
        ),
        (percent(2), fixed(3), percent(2), fixed(3)),
    ),
    Figure(
        "docs/state_precision.md",
        "halves the state and the peak ({} against {} bytes per parameter without momentum, {} "
        "against {} with)",
        lambda: (
            peak("plain", "bfloat16"),
            peak("plain", "float32"),
            peak("momentum", "bfloat16"),
            peak("momentum", "float32"),
        ),
        (lambda x: f"{x:g}",),
    ),
    Figure(
        "docs/state_precision.md",
        "each coordinate's step within {}x to {}x of float32's on real gradients (stochastic "
        "rounding), {}x float32's step time on this CPU plain and {}x with momentum",
        lambda: (
            *fidelity_range("bfloat16"),
            precision_step("plain", "bfloat16")["time_over_float32"],
            precision_step("momentum 0.9", "bfloat16")["time_over_float32"],
        ),
    ),
    Figure(
        "docs/state_precision.md",
        "(with momentum {} against {} bytes per parameter), each coordinate's step within {}x to "
        "{}x of float32's on real gradients (median {}), {}x (plain) to {}x (momentum) float32's "
        "step time",
        lambda: (
            peak("momentum", "int8"),
            peak("momentum", "float32"),
            *fidelity_range("int8"),
            statistics.median(c["p50"] for c in fidelity_cells("fidelity.json", "int8")),
            precision_step("plain", "int8")["time_over_float32"],
            precision_step("momentum 0.9", "int8")["time_over_float32"],
        ),
        (fixed(2), lambda x: f"{x:g}", fixed(2), fixed(2), fixed(2), fixed(2), fixed(2)),
    ),
    Figure(
        "docs/state_precision.md",
        "each step within {}x to {}x of float32's on real gradients (median {} to {}), which "
        "showed on the drift problem ({}%)",
        lambda: (
            *fidelity_range("int4"),
            min(c["p50"] for c in fidelity_cells("fidelity.json", "int4")),
            max(c["p50"] for c in fidelity_cells("fidelity.json", "int4")),
            results("state_precision.json")["accuracy"]["int4"]["drift"],
        ),
        (fixed(2), fixed(2), fixed(2), fixed(2), percent(2)),
    ),
    # docs/benchmarks.md
    Figure(
        "docs/benchmarks.md",
        "timed ratios {} to {}, while optax timed against a second copy of itself reads {} to {}",
        lambda: (
            min(s["ours_over_optax"] for s in optimizer_steps()),
            max(s["ours_over_optax"] for s in optimizer_steps()),
            min(s["optax_again_over_optax"] for s in optimizer_steps()),
            max(s["optax_again_over_optax"] for s in optimizer_steps()),
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "not met: {} to {} for one and 200 leaves in the run below",
        lambda: (
            min(
                s["roofline_fraction"]
                for s in optimizer_steps()
                if s["n"] >= 1e7 and s["leaves"] <= 200
            ),
            max(
                s["roofline_fraction"]
                for s in optimizer_steps()
                if s["n"] >= 1e7 and s["leaves"] <= 200
            ),
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "its step takes {}x float32 state's time plain and {}x with momentum",
        lambda: (
            precision_step("plain", "bfloat16")["time_over_float32"],
            precision_step("momentum 0.9", "bfloat16")["time_over_float32"],
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "ratios {} to {} without momentum from 10 to 1,000 leaves; with momentum {} at 10 and {} "
        "at 1,000 leaves, and {} at 100",
        compile_ratios,
    ),
    Figure(
        "docs/benchmarks.md",
        "Without momentum the two are even ({} to {}); with momentum {} at 10 and {} at 1,000 "
        "leaves, and {} at 100 leaves",
        compile_ratios,
    ),
    Figure(
        "docs/benchmarks.md",
        "**{} s against {} s per 60k epoch, {}x PyTorch's throughput** (median of 5 "
        "process-isolated rounds, {}x to {}x), 99% test accuracy after {} s of training; PyTorch "
        "reaches {}% in 3 epochs",
        lambda: (
            60_000 / throughput("jax"),
            60_000 / throughput("torch"),
            results("trainer_throughput.json")["jax_over_torch"],
            min(round_ratios()),
            max(round_ratios()),
            time_to_99("JAX", 3)[0],
            time_to_99("PyTorch", 3)[1],
        ),
        (fixed(1), fixed(1), fixed(2), fixed(2), fixed(2), fixed(1), percent(2)),
    ),
    Figure(
        "docs/benchmarks.md",
        "at {} to {} of the memory roofline for 1e8 and 1e9 parameters; the trainer runs an epoch "
        "of MNIST in {} s",
        lambda: (
            min(
                h200_step(n, 1, "optax_rmsprop f32 state")["roofline_fraction"] for n in (1e8, 1e9)
            ),
            max(
                h200_step(n, 1, "optax_rmsprop f32 state")["roofline_fraction"] for n in (1e8, 1e9)
            ),
            h200()["trainer"]["seconds_per_epoch"],
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "{} tests passed, {} failed",
        lambda: (h200()["tests"]["passed"], h200()["tests"]["failures"]),
        (str,),
    ),
    Figure(
        "docs/benchmarks.md",
        "the step moves {} and {} GB/s, {} and {} of the streaming roofline ({} GB/s); 1e9 "
        "parameters take {} ms",
        lambda: (
            h200_step(1e8, 1, "optax_rmsprop f32 state")["achieved_gb_s"],
            h200_step(1e9, 1, "optax_rmsprop f32 state")["achieved_gb_s"],
            h200_step(1e8, 1, "optax_rmsprop f32 state")["roofline_fraction"],
            h200_step(1e9, 1, "optax_rmsprop f32 state")["roofline_fraction"],
            h200_step(1e9, 1, "stream")["achieved_gb_s"],
            h200_step(1e9, 1, "optax_rmsprop f32 state")["median_s"] * 1e3,
        ),
        (fixed(0), fixed(0), fixed(2), fixed(2), fixed(0), fixed(2)),
    ),
    Figure(
        "docs/benchmarks.md",
        "takes {}x the time of float32 state at 1e9 ({} ms against {} ms)",
        lambda: (
            (b := h200_step(1e9, 1, "optax_rmsprop bf16 state")["median_s"])
            / (f := h200_step(1e9, 1, "optax_rmsprop f32 state")["median_s"]),
            b * 1e3,
            f * 1e3,
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "reaches {} and {} of the roofline at 1e8 and 1e9",
        lambda: tuple(
            h200_step(n, 1, "pallas one-pass kernel")["roofline_fraction"] for n in (1e8, 1e9)
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "at 1e6 parameters a step takes {} us, the streaming copy {} us",
        lambda: tuple(
            h200_step(1e6, 1, c)["median_s"] * 1e6 for c in ("optax_rmsprop f32 state", "stream")
        ),
        (fixed(0),),
    ),
    Figure(
        "docs/benchmarks.md",
        "a step costs {} to {} ms whatever N",
        lambda: (
            min(
                h200_step(n, 1000, "optax_rmsprop f32 state")["median_s"]
                for n in (1e6, 1e7, 1e8, 1e9)
            )
            * 1e3,
            max(
                h200_step(n, 1000, "optax_rmsprop f32 state")["median_s"]
                for n in (1e6, 1e7, 1e8, 1e9)
            )
            * 1e3,
        ),
        (fixed(0),),
    ),
    Figure(
        "docs/benchmarks.md",
        "was {}x to {}x faster despite",
        lambda: (
            min(
                r := [
                    h200_step(n, 1000, "optax_rmsprop f32 state")["median_s"]
                    / h200_step(n, 1000, "optax_rmsprop f32, optax.flatten")["median_s"]
                    for n in (1e6, 1e7, 1e8, 1e9)
                ]
            ),
            max(r),
        ),
        (fixed(1),),
    ),
    Figure(
        "docs/benchmarks.md",
        "at {} s per epoch ({} examples/s, compile {} s), {}% test accuracy",
        lambda: (
            (t := h200()["trainer"])["seconds_per_epoch"],
            t["examples_per_sec"],
            t["compile_time_s"],
            t["test_accuracy"],
        ),
        (fixed(2), fixed(0), fixed(1), percent(2)),
    ),
    Figure(
        "docs/benchmarks.md",
        "PyTorch's `RMSprop` takes {}x to {}x this library's time with `foreach`, and {}x to {}x "
        "with its for-loop",
        lambda: (
            min(s["torch_foreach_over_ours"] for s in optimizer_steps()),
            max(s["torch_foreach_over_ours"] for s in optimizer_steps()),
            min(s["torch_for_loop_over_ours"] for s in optimizer_steps()),
            max(s["torch_for_loop_over_ours"] for s in optimizer_steps()),
        ),
    ),
    Figure(
        "docs/benchmarks.md",
        "2,000 leaves of up to 1e6 parameters in all cost {} to {} ms per step",
        lambda: (
            min(
                s["median_s"]["optax_rmsprop"]
                for s in optimizer_steps()
                if s["leaves"] == 2000 and s["n"] <= 1e6
            )
            * 1e3,
            max(
                s["median_s"]["optax_rmsprop"]
                for s in optimizer_steps()
                if s["leaves"] == 2000 and s["n"] <= 1e6
            )
            * 1e3,
        ),
        (fixed(0),),
    ),
    Figure(
        "docs/benchmarks.md",
        "the optimizer step is about {} ms (the table above at N = 1e6) of a {} ms training step "
        "(the trainer's {} examples/s at batch 128, below)",
        lambda: (
            next(s for s in optimizer_steps() if s["n"] == 1e6 and s["leaves"] == 1)["median_s"][
                "optax_rmsprop"
            ]
            * 1e3,
            128 / throughput("jax") * 1e3,
            throughput("jax"),
        ),
        (fixed(2), fixed(1), fixed(0)),
    ),
    Figure(
        "docs/benchmarks.md",
        "the rounds give **{}x to {}x, median {}x** PyTorch's throughput, and JAX reaches 99% "
        "test accuracy in {} s of training",
        lambda: (
            min(round_ratios()),
            max(round_ratios()),
            results("trainer_throughput.json")["jax_over_torch"],
            time_to_99("JAX", 3)[0],
        ),
        (fixed(2), fixed(2), fixed(2), fixed(1)),
    ),
    Figure("docs/benchmarks.md", "the flag is worth {}x ({} against {} examples/s)", *TRAINER),
    # docs/mnist.md
    Figure(
        "docs/mnist.md", "the CNN trains {}x faster ({} against {} examples per second", *TRAINER
    ),
    Figure(
        "docs/mnist.md",
        "**{}%** test accuracy after 3 epochs (epoch 1: {}%, epoch 2: {}%), {} s of training",
        lambda: (
            time_to_99("JAX", 3)[1],
            time_to_99("JAX", 1)[1],
            time_to_99("JAX", 2)[1],
            time_to_99("JAX", 3)[0],
        ),
        (percent(2), percent(2), percent(2), fixed(1)),
    ),
]


def normalized(text: str) -> str:
    """Prose with its line breaks and indentation folded into single spaces."""
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("figure", FIGURES, ids=[f"{f.page}:{f.text[:40]}" for f in FIGURES])
def test_quoted_figures_match_their_results(figure):
    with open(os.path.join(ROOT, figure.page)) as f:
        page = normalized(f.read())
    expected = normalized(figure.expected())
    assert expected in page, (
        f"{figure.page} should say {expected!r} (from its results file). Update the page, or "
        f"this entry in tests/test_docs_figures.py if the sentence changed."
    )


def test_figures_read_from_results_files_are_finite():
    for figure in FIGURES:
        for value in figure.values():
            assert not isinstance(value, float) or math.isfinite(value), figure


# -- figures the library itself produces: checked against the library -------------------
def section(page: str, heading: str) -> str:
    """The text of ``page`` from ``heading`` to the next heading of any level."""
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    start = text.index(heading)
    end = re.search(r"^#", text[start + len(heading) :], re.M)
    return text[start : start + len(heading) + (end.start() if end else len(text))]


def state_bytes_per_param(state_dtype: str, last_axis: int) -> float:
    """Bytes of ``nu`` and its block maxima per parameter, for a leaf of 8,192 or more."""
    import jax.numpy as jnp

    import optax_rmsprop

    params = jnp.zeros((max(1, -(-8192 // last_axis)), last_axis), jnp.float32)
    rms = optax_rmsprop.rmsprop(0.1, state_dtype=state_dtype).init(params).rms
    return (rms.nu.nbytes + rms.nu_absmax.nbytes) / params.size


def test_bytes_per_parameter_table_is_what_init_allocates():
    """docs/state_precision.md's table by last axis, against the state `init` builds."""
    table = section("docs/state_precision.md", "## Bytes per parameter by last axis")
    rows = re.findall(r"^\| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", table, re.M)
    assert len(rows) >= 6, table
    for last_axis, int8, int4 in rows:
        n = int(last_axis.replace(",", ""))
        got = (trimmed(state_bytes_per_param("int8", n)), trimmed(state_bytes_per_param("int4", n)))
        assert (int8, int4) == got, f"last axis {n}: the page says {(int8, int4)}, init gives {got}"
    assert (
        trimmed(state_bytes_per_param("int8", 1))
        == trimmed(state_bytes_per_param("int4", 1))
        == "4"
    )
    assert "`(N, 1)` would take 5), the leaf keeps float32 state" in normalized(table)
    assert f"`(N, 8)` costs {trimmed(state_bytes_per_param('int8', 8))} in int8" in normalized(
        table
    )


def test_bfloat16_average_does_not_stall():
    """docs/algorithm.md: bfloat16 `nu` at decay 0.999 and g = 1 after 3,000 steps."""
    import jax
    import jax.numpy as jnp

    import optax_rmsprop

    def nu_after(state_dtype, steps=3000):
        tx = optax_rmsprop.scale_by_rms(decay=0.999, state_dtype=state_dtype)
        g = jnp.ones(64)
        state = jax.lax.fori_loop(0, steps, lambda _, s: tx.update(g, s)[1], tx.init(g))
        return float(jnp.mean(state.nu.astype(jnp.float32)))

    bf16, f32 = nu_after(jnp.bfloat16), nu_after(None)
    np_f32 = 1 - 0.999**3000  # the exact average of g**2 = 1 from nu = 0
    assert abs(f32 - np_f32) < 1e-4
    with open(os.path.join(ROOT, "docs", "algorithm.md")) as f:
        page = normalized(f.read())
    claim = f"its $\\nu$ reaches {bf16:.2f} after 3,000 steps, as float32's does"
    assert claim in page and f"{bf16:.2f}" == f"{f32:.2f}", (claim, bf16, f32)


def test_notebook_state_sizes_in_the_mnist_page():
    """docs/mnist.md quotes the CNN's optimizer state in float32, bfloat16 and 8 bits."""
    pytest.importorskip("flax")
    import jax
    from flax import nnx

    import optax_rmsprop
    from examples.mnist import models

    params = nnx.state(models.CNN(rngs=nnx.Rngs(0)), nnx.Param)
    n = sum(x.size for x in jax.tree.leaves(params))

    def mib(state_dtype):
        state = optax_rmsprop.rmsprop(1e-3, state_dtype=state_dtype).init(params)
        return sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20

    expected = (
        f"({mib(None):.2f} MiB of float32 state for this CNN's {n:,} parameters, "
        f"{mib('bfloat16'):.2f} MiB in bfloat16, {mib('int8'):.2f} MiB in 8 bits)"
    )
    with open(os.path.join(ROOT, "docs", "mnist.md")) as f:
        assert expected in normalized(f.read()), expected


def test_rmsprop_state_against_adams_in_the_faq():
    """docs/faq.md: with momentum off, RMSProp's state is half of Adam's (one buffer of two)."""
    import jax
    import jax.numpy as jnp
    import optax

    import optax_rmsprop

    params = {"w": jnp.zeros((64, 64)), "b": jnp.zeros(64)}

    def nbytes(tx):
        state = tx.init(params)
        return sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim)  # step counts aside

    share = nbytes(optax_rmsprop.rmsprop(1e-3)) / nbytes(optax.adam(1e-3))
    words = {0.5: "half", 2 / 3: "two thirds"}
    with open(os.path.join(ROOT, "docs", "faq.md")) as f:
        page = normalized(f.read())
    assert f"with momentum off, {words[share]} of Adam's optimizer memory" in page, share
