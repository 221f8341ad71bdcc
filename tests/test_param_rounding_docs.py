"""docs/bfloat16.md: its Python runs, its figures are the benchmark's, and the benchmark runs.

The figures quoted in the page's prose are rebuilt here from
``benchmarks/results/bf16_params.json`` (committed) and must appear in it as
written; the tables are included from the Markdown the same run wrote.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "bfloat16.md"
RESULTS = ROOT / "benchmarks" / "results" / "bf16_params.json"
ROUNDINGS = ["nearest", "stochastic", "compensated"]


def _page() -> str:
    return " ".join(PAGE.read_text().split())  # prose wraps anywhere


def _quoted(results: dict) -> list[str]:
    """Each figure the page's prose quotes, as it quotes it, from the results."""
    reg = {(r["lr"], r["variant"]): r for r in results["regression"]}
    mem = {(r["optimizer"], r["rounding"]): r for r in results["memory"]}
    speed = {r["rounding"]: r["over_nearest"] for r in results["speed"]}
    int8, int4 = "rmsprop, int8 state + momentum", "rmsprop, int4 state + momentum"
    stochastic_4 = reg[1e-4, "stochastic"]["displacement"]
    master = [reg[lr, "compensated"]["master_displacement"] for lr in (1e-3, 1e-4)]
    worst_stochastic = max(reg[lr, "stochastic"]["loss_ratio"] for lr in (1e-3, 1e-4))
    mnist = {r["variant"]: 100 * r["test_accuracy"] for r in results["mnist"]}
    above = {
        r["variant"] + (f" {r['seed']}" if r["seed"] != 1 else ""): 100 * (r["over_float32"] - 1)
        for r in results["transformer"]
    }
    return [
        f"up to {reg[1e-3, 'nearest']['loss_ratio']:.2f}x float32's",
        f"5th to 95th percentile {stochastic_4['p5']:.2f} to {stochastic_4['p95']:.2f}",
        f"at lr 1e-3 the final loss is {reg[1e-3, 'nearest']['loss_ratio']:.2f}x",
        f"(displacement ratio {reg[1e-4, 'nearest']['displacement']['p50']:.2f})",
        f"stochastic within {worst_stochastic:.3f}x",
        f"compensated at {reg[1e-3, 'compensated']['loss_ratio']:.3f}x",
        f"{min(m['p5'] for m in master):.3f} to {max(m['p95'] for m in master):.3f} at both",
        f"median is {reg[1e-3, 'stochastic']['displacement']['p50']:.2f} at lr 1e-3",
        f"and {stochastic_4['p50']:.2f} at lr 1e-4",
        f"take {mem[int8, 'nearest']['arguments']:.2f} bytes per parameter",
        f"against {mem['rmsprop, float32 state + momentum', 'float32']['arguments']:.2f} for",
        f"int4 state, {mem[int4, 'nearest']['arguments']:.2f}",
        f"at the peak ({mem[int8, 'stochastic']['peak']:.2f}, as round to nearest)",
        f"remainder at rest ({mem[int8, 'compensated']['arguments']:.2f})",
        f"at the peak ({mem[int8, 'compensated']['peak']:.2f})",
        f"peaks at {mem['sgd', 'nearest']['peak']:.2f}",
        f"stochastic rounding costs {speed['stochastic']:.2f}x its time",
        f"compensated {speed['compensated']:.2f}x",
        f"it ends {above['nearest']:.2f}% above float32 parameters' final loss",
        f"with stochastic rounding {above['stochastic']:.2f}% above",
        f"compensated {above['compensated']:.2f}%",
        f"different batches end {abs(above['float32 2']):.2f}% apart",
        f"{mnist['float32']:.2f}% test accuracy with float32 parameters",
        f"{mnist['nearest']:.2f}% in bfloat16 rounded to nearest",
        f"{mnist['stochastic']:.2f}% with stochastic rounding",
        f"and {mnist['compensated']:.2f}% compensated",
    ]


def test_every_figure_the_page_quotes_is_the_benchmarks():
    results = json.loads(RESULTS.read_text())
    page = _page()
    missing = [figure for figure in _quoted(results) if figure not in page]
    assert not missing, missing


def test_the_claims_beside_the_figures_hold():
    """The page's words: stochastic within 1% of float32's loss, compensated at it, and so on."""
    results = json.loads(RESULTS.read_text())
    reg = {(r["lr"], r["variant"]): r for r in results["regression"]}
    mem = {(r["optimizer"], r["rounding"]): r for r in results["memory"]}
    for lr in (1e-3, 1e-4):
        assert reg[lr, "nearest"]["loss_ratio"] > 1.1
        assert reg[lr, "stochastic"]["loss_ratio"] <= 1.01  # "within 1%"
        assert 0.95 <= reg[lr, "stochastic"]["displacement"]["p50"] <= 1.05
        assert round(reg[lr, "compensated"]["loss_ratio"], 3) == 1.0  # "float32's"
        m = reg[lr, "compensated"]["master_displacement"]
        assert 0.95 <= m["p5"] and m["p95"] <= 1.05
    assert reg[1e-4, "nearest"]["displacement"]["p50"] == 0.0  # "never moves"
    int8 = "rmsprop, int8 state + momentum"
    assert mem[int8, "nearest"]["arguments"] <= 4.1
    assert mem["rmsprop, int4 state + momentum", "nearest"]["arguments"] <= 3.1
    assert abs(mem[int8, "stochastic"]["peak"] - mem[int8, "nearest"]["peak"]) < 0.1
    rest = mem[int8, "compensated"]["arguments"] - mem[int8, "nearest"]["arguments"]
    assert rest == pytest.approx(2.0, abs=1e-6)  # "adds its 2-byte remainder at rest"
    lm = {r["variant"]: r["over_float32"] for r in results["transformer"] if r["seed"] == 1}
    assert lm["nearest"] > 1.01 and lm["stochastic"] <= 1.01 and lm["compensated"] <= 1.01
    mnist = {r["variant"]: r["test_accuracy"] for r in results["mnist"]}
    for variant in ("nearest", "stochastic", "compensated"):  # within 0.2 points of float32's
        assert mnist[variant] >= mnist["float32"] - 0.002, mnist


def test_the_page_is_in_the_table_of_contents():
    toc = (ROOT / "docs" / "index.md").read_text().split("```{toctree}")[1]
    assert "\nbfloat16\n" in toc


def test_the_pages_python_runs_as_written():
    """The page's blocks, in order, as one script (the second uses the first's imports)."""
    pytest.importorskip("flax")
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 2
    run = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=ROOT,  # this checkout's optax_rmsprop, not an installed one
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "bfloat16" in run.stdout


@pytest.mark.slow
def test_benchmark_small_mode(tmp_path):
    pytest.importorskip("flax")  # benchmarks.fidelity imports the trainer's MNIST reader
    cmd = [sys.executable, "-m", "benchmarks.bf16_params", "--small", "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    payload = json.loads((tmp_path / "bf16_params.json").read_text())
    markdown = (tmp_path / "bf16_params.md").read_text()
    assert markdown.count("\n|---") == 4  # the four tables
    variants = ["float32", *ROUNDINGS]
    assert [(r["lr"], r["variant"]) for r in payload["regression"]] == [
        (lr, v) for lr in (1e-3, 1e-4) for v in variants
    ]
    for r in payload["regression"]:
        assert ("master_displacement" in r) == (r["variant"] == "compensated")
        if r["variant"] == "float32":
            assert r["loss_ratio"] == 1.0 and r["displacement"]["p50"] == 1.0
    mem = {(r["optimizer"], r["rounding"]): r for r in payload["memory"]}
    for optimizer in ("rmsprop, int8 state + momentum", "sgd"):
        nearest, stochastic = mem[optimizer, "nearest"], mem[optimizer, "stochastic"]
        compensated = mem[optimizer, "compensated"]
        assert stochastic["arguments"] - nearest["arguments"] == pytest.approx(0, abs=1e-4)
        assert compensated["arguments"] - nearest["arguments"] == pytest.approx(2.0, abs=1e-9)
    float32 = mem["rmsprop, float32 state + momentum", "float32"]
    assert float32["arguments"] == pytest.approx(12.0, abs=0.1)  # params, nu, momentum
    assert [r["rounding"] for r in payload["speed"]] == ROUNDINGS
    assert payload["speed"][0]["over_nearest"] == 1.0
    assert [(r["variant"], r["seed"]) for r in payload["transformer"]] == [
        *((v, 1) for v in variants),
        ("float32", 2),
    ]
    assert payload["transformer"][0]["over_float32"] == 1.0
