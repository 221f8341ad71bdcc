"""The benchmarks run end to end in their small modes, and their deterministic figures hold.

Times are never asserted (they move with the machine); XLA's cost and memory
analyses are deterministic, so those figures are.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

from benchmarks import accelerator, base10_map, state_precision

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A donated float32 step, bytes per parameter at its peak (its arguments: params,
# grads and state; no temporaries): 12 plain, +4 a momentum buffer, +4 a mean.
FLOAT32_PEAK = {"plain": 12, "momentum": 16, "centered + momentum": 20}


def _run(module: str, out: pathlib.Path, *args: str) -> dict:
    """Runs ``python -m benchmarks.<module> --out out *args``; returns its JSON."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--out", str(out), *args]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return json.loads((out / f"{module}.json").read_text())


def _assert_float32_peak(rows: list[dict]) -> None:
    for r in (r for r in rows if r["state"] == "float32"):
        assert r["temporaries"] == 0, r
        assert round(r["peak"], 2) == round(r["arguments"], 2) == FLOAT32_PEAK[r["step"]], r


def test_float32_step_peak_is_its_arguments():
    rows = state_precision.peak_memory(2, (256, 256), {"float32": None})
    assert [r["step"] for r in rows] == list(FLOAT32_PEAK)
    _assert_float32_peak(rows)


@pytest.mark.slow
def test_accelerator_check_small_mode(tmp_path):
    pytest.importorskip("flax")  # the trainer part
    payload = _run(
        "accelerator",
        tmp_path,
        *("--small", "--sizes", "1e4", "--leaves", "1", "3", "--rounds", "1"),
        *("--skip", "precision", "loop"),  # their own test below
        # one of its test files: the suite runs them all already
        *("--test-files", "tests/test_reference.py"),
    )
    tests = payload["tests"]
    assert tests["failures"] == tests["errors"] == 0 and tests["passed"] >= 20, tests
    assert tests["files"] == ["tests/test_reference.py"]
    assert payload["pallas_matches"] is True  # the kernel computes the library's step
    steps = {(r["leaves"], r["contender"]): r for r in payload["steps"]}
    assert {
        (1, "stream"),
        (1, "optax_rmsprop f32 state"),
        (1, "optax.rmsprop"),
        (1, "pallas one-pass kernel"),
        (3, "optax_rmsprop f32, optax.flatten"),
    } <= set(steps)
    for (leaves, name), row in steps.items():
        assert row["median_s"] > 0, row
        if name == "stream":  # x * 2: reads and writes each float32 once (and a constant)
            assert 8 * row["n"] <= row["xla_bytes"] <= 8 * (row["n"] + leaves), row
        elif name != "pallas one-pass kernel":  # (a custom call's traffic is not counted)
            # No step moves less than it must read and write, nor more than optax's.
            assert row["bytes_per_param"] * row["n"] <= row["xla_bytes"], row
        if name == "optax_rmsprop f32 state":
            assert row["xla_bytes"] <= steps[leaves, "optax.rmsprop"]["xla_bytes"], row
    assert len(payload["peak_memory"]) == 3 * len(state_precision.PRECISIONS)
    _assert_float32_peak(payload["peak_memory"])
    assert 0.1 < payload["trainer"]["test_accuracy"] <= 1.0
    table = (tmp_path / "accelerator.md").read_text()
    assert "| 1e+04 | 3 | optax.rmsprop |" in table and "**Trainer**" in table
    assert "| centered + momentum | int8 |" in table


@pytest.mark.slow
def test_compile_time_small_mode(tmp_path):
    payload = _run("compile_time", tmp_path, "--small", "--leaves", "3")
    assert [r["leaves"] for r in payload["rows"]] == [3]
    rows = payload["precisions"]["rows"]
    assert [r["state"] for r in rows] == ["float32", "bfloat16", "int8", "int4"]
    assert all(r["compile_s"] > 0 and r["jit_init_s"] > 0 and r["eager_init_s"] > 0 for r in rows)
    assert "| int8 |" in (tmp_path / "compile_time.md").read_text()


@pytest.mark.slow
def test_rank1_normalization_small_mode(tmp_path):
    payload = _run("rank1_normalization", tmp_path, "--small")
    rows = payload["rows"]
    assert len(rows) == 3 and all(0 < r["drift"] < 0.5 and r["loss"] > 0 for r in rows.values())
    # the round trip by hand is what the library's int4 state does
    by_hand, library = rows["block 128 (absmax)"], rows["library int4 (block 128)"]
    assert abs(by_hand["drift"] - library["drift"]) < 0.1 * library["drift"]
    assert (
        "| rank-1 (min of row and column max) |"
        in (tmp_path / "rank1_normalization.md").read_text()
    )


@pytest.mark.slow
def test_state_precision_small_mode(tmp_path):
    payload = _run("state_precision", tmp_path, "--small", "--rounds", "1")
    rows = payload["jax"]["plain"]
    assert rows["float32"]["state_bytes_per_param"] == 4.0
    assert rows["bfloat16"]["state_bytes_per_param"] == 2.0
    assert rows["int8"]["state_bytes_per_param"] < 1.25  # a quarter of float32's, and scales
    assert rows["int4"]["state_bytes_per_param"] < 0.75  # an eighth, and scales
    _assert_float32_peak(payload["peak_memory"])
    assert {(r["step"], r["state"]) for r in payload["peak_memory"]} == {
        (step, state) for step in FLOAT32_PEAK for state in state_precision.PRECISIONS
    }
    assert set(payload["accuracy"]) == {"int8", "int4"}
    assert all(a["drift_1000_steps"] < 0.1 for a in payload["accuracy"].values())
    assert "| centered + momentum | int8 |" in (tmp_path / "state_precision.md").read_text()


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _round_ratio(a: list[float], b: list[float]) -> float:
    """What ``common.ratio`` computes: the median of per-round ratios."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _assert_loop_rows(rows: list[dict], leaves: list[int], contenders: set[str]) -> None:
    """Rows of ``benchmarks.jitted_loop``: every layout and contender, times and ratios sane."""
    assert {(r["leaves"], r["contender"]) for r in rows} == {
        (count, name) for count in leaves for name in contenders
    }
    by_key = {(r["leaves"], r["contender"]): r for r in rows}
    for r in rows:
        assert all(_positive(t) for t in r["dispatched_samples"] + r["loop_per_step_samples"]), r
        assert r["dispatched_s"] == statistics.median(r["dispatched_samples"]), r
        assert r["loop_per_step_s"] == statistics.median(r["loop_per_step_samples"]), r
        assert r["dispatch_s"] == pytest.approx(r["dispatched_s"] - r["loop_per_step_s"]), r
        if r["contender"] == "stream (x * 2)":
            assert r["jit_arguments"] == r["leaves"] and r["state_bytes_per_param"] == 0, r
            continue
        momentum = r["contender"].endswith("+ momentum")
        assert r["momentum"] == momentum
        # params, grads, nu (and the momentum buffer); 8-bit state adds an absmax per
        # buffer, and one codebook mark for the whole state
        if "int4" not in r["contender"]:
            quantized = "int8" in r["contender"]
            per_leaf = 3 + momentum + quantized * (1 + momentum)
            assert r["jit_arguments"] == per_leaf * r["leaves"] + quantized, r
        if "int8" in r["contender"]:  # quantized: a quarter of float32, plus absmax
            assert r["state_bytes_per_param"] < 1.05 * (1 + momentum), r
        elif "int4" not in r["contender"]:
            assert r["state_bytes_per_param"] == 4 * (1 + momentum), r
        peer = by_key[r["leaves"], "optax.rmsprop" + (" + momentum" if momentum else "")]
        for kind, samples in (
            ("loop", "loop_per_step_samples"),
            ("dispatched", "dispatched_samples"),
        ):
            assert r[f"{kind}_over_optax"] == pytest.approx(
                _round_ratio(r[samples], peer[samples])
            ), r


@pytest.mark.slow
def test_jitted_loop_small_mode(tmp_path):
    payload = _run("jitted_loop", tmp_path, "--small")
    settings = payload["settings"]
    assert settings["leaves"] == [1, 10] and settings["steps"] >= 2
    names = {"optax.rmsprop", "optax_rmsprop f32", "optax_rmsprop int8"}
    if "int4" not in payload["notes"]:  # the library has int4 state: measured too
        names.add("optax_rmsprop int4")
    names |= {f"{name} + momentum" for name in names}
    _assert_loop_rows(payload["rows"], [1, 10], names | {"stream (x * 2)"})
    assert {a["contender"] for a in payload["per_argument"]} == names | {"stream (x * 2)"}
    for a in payload["per_argument"]:
        (few, many), (d_few, d_many) = a["jit_arguments"], a["dispatch_s"]
        assert a["leaves"] == [1, 10] and many > few
        assert a["per_argument_s"] == pytest.approx((d_many - d_few) / (many - few)), a
    table = (tmp_path / "jitted_loop.md").read_text()
    assert "| 4.10e+04 | 10 | optax_rmsprop int8 + momentum |" in table


@pytest.mark.slow
def test_accelerator_precision_and_loop_small_mode(tmp_path):
    payload = _run(
        "accelerator",
        tmp_path,
        *("--small", "--rounds", "2", "--skip", "tests", "trainer", "memory", "steps"),
    )
    section = payload["precision"]
    states = ["f32", "bf16", "int8"] + (["int4"] if "int4" not in section["notes"] else [])
    assert section["states"] == states
    built = [
        (s, k) for s in states for k in ("xla", "pallas") if f"{s}, {k}" not in section["notes"]
    ]
    assert ("f32", "xla") in built  # a kernel path that fails is noted, the XLA path never
    rows = {(r["momentum"], r["state"], r["kernel"]): r for r in section["rows"]}
    assert set(rows) == {(m, s, k) for m in (False, True) for s, k in built}
    for (momentum, state, kernel), r in rows.items():
        base = rows[momentum, "f32", "xla"]
        assert r["n"] == 10_000 and _positive(r["median_s"]), r
        assert r["median_s"] == statistics.median(r["samples"]), r
        assert r["over_f32"] == pytest.approx(_round_ratio(r["samples"], base["samples"])), r
        assert r["temporaries_per_param"] >= 0 and r["peak_per_param"] >= r["arguments_per_param"]
        if state == "f32":  # params, grads, nu (and the momentum buffer), nothing else
            assert r["temporaries_per_param"] == 0
            assert round(r["peak_per_param"], 2) == 12 + 4 * momentum, r
        if kernel == "pallas":
            assert isinstance(r["same_program_as_xla"], bool), r
    for check in section["kernel_check"]:  # the two paths from the same buffers
        assert math.isfinite(check["max_abs_diff"]) and check["steps"] == 3, check
    both = [s for s in states if (s, "xla") in built and (s, "pallas") in built]
    assert sorted((c["state"], c["momentum"]) for c in section["kernel_check"]) == sorted(
        (s, m) for s in both for m in (False, True)
    )
    loop = payload["loop"]
    names = {"stream (x * 2)", "optax.rmsprop", "optax_rmsprop f32", "optax_rmsprop int8"}
    if "int4" not in loop["notes"]:
        names.add("optax_rmsprop int4")
    _assert_loop_rows(loop["rows"], [1, 10], names)
    table = (tmp_path / "accelerator.md").read_text()
    assert "**State precision and kernel path**" in table and "**Jitted loop**" in table
    assert "| 1e+04 | yes | int8 | xla |" in table


def test_accelerator_skips_steps_that_do_not_fit(monkeypatch):
    """A group is compiled from shapes first; steps whose buffers would not fit are skipped."""
    n, notes = 8192, {}
    monkeypatch.setattr(accelerator, "memory_limit", lambda: 10**12)
    kept, skipped = accelerator.plan_group(n, False, ["f32", "int8"], notes)
    assert not skipped and {(p.state, p.kernel) for p in kept} >= {("f32", "xla"), ("int8", "xla")}
    # room for the shared gradients, the largest temporaries and the float32 step only
    f32 = kept[0]
    room = 4 * n + max(p.memory["temporaries"] for p in kept) + f32.own_bytes
    monkeypatch.setattr(accelerator, "memory_limit", lambda: room / accelerator.MEMORY_MARGIN)
    kept, skipped = accelerator.plan_group(n, False, ["f32", "int8"], notes)
    assert [(p.state, p.kernel) for p in kept] == [("f32", "xla")]
    assert skipped and all(s["skipped"].startswith("memory") for s in skipped)
    monkeypatch.setattr(accelerator, "memory_limit", lambda: 0)
    rows = accelerator.measure_precisions(n, False, 1, ["f32"], notes)
    assert rows[-1]["skipped"] == "no float32 XLA baseline"


def test_kernel_path_sets_and_restores_the_variable(monkeypatch):
    monkeypatch.delenv(accelerator.KERNEL_ENV, raising=False)
    with accelerator.kernel_path("pallas"):
        assert os.environ[accelerator.KERNEL_ENV] == "pallas"
    assert accelerator.KERNEL_ENV not in os.environ
    monkeypatch.setenv(accelerator.KERNEL_ENV, "xla")
    with pytest.raises(RuntimeError), accelerator.kernel_path("pallas"):
        raise RuntimeError
    assert os.environ[accelerator.KERNEL_ENV] == "xla"


@pytest.mark.slow
def test_codec_floor_small_mode(tmp_path):
    payload = _run("codec_floor", tmp_path, "--small", "--rounds", "1")
    codecs = payload["codecs"]
    # each child measured the codec it names: the map's code of 0.5, or round(127 * 0.5)
    assert [codecs[c]["code of 0.5"] for c in ("base10", "map", "free")] == [91, 90, 64]
    for result in codecs.values():
        for step in ("plain", "momentum"):
            for state in ("float32", "int8"):
                assert result[f"{step} {state} step_s"] > 0
                assert result[f"{step} {state} compile_s"] > 0
    assert (
        "| free (`round(127 x)`, a floor) | momentum |" in (tmp_path / "codec_floor.md").read_text()
    )


@pytest.mark.parametrize("name", ["nu", "signed"])
def test_base10_map_codes_are_nearest_and_decode_to_the_map(name):
    # 0.1's map, which benchmarks.codec_floor measures, against float64: a code is
    # the number of float64 midpoints (squared for nu) at or below its input,
    # checked at every boundary, one float32 either side and on a million values;
    # a code decodes to its map value within float32 rounding.
    import jax.numpy as jnp
    import numpy as np

    codebook = {"nu": base10_map.NU, "signed": base10_map.SIGNED}[name]
    bits = 8 if name == "nu" else 7
    magnitudes = base10_map.magnitudes(bits, zero_free=name == "nu")
    index = jnp.arange(2**bits).astype(codebook.code_dtype)
    values = np.asarray(base10_map.decode(index, codebook), np.float64)
    np.testing.assert_allclose(values, magnitudes**2 if name == "nu" else magnitudes, rtol=3e-7)
    middle = (magnitudes[1:] + magnitudes[:-1]) / 2
    boundaries = (middle * middle if name == "nu" else middle).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.nextafter(boundaries, np.float32(0)),
            boundaries,
            np.nextafter(boundaries, np.float32(2)),
            rng.uniform(0, 1, 500_000).astype(np.float32),
            (10.0 ** rng.uniform(-20, 0, 500_000)).astype(np.float32),
            np.array([0, 1, 1e-30, 1.5, np.inf, np.nan], np.float32),
        ]
    )
    codes = np.asarray(base10_map.encode(jnp.asarray(x), codebook)).astype(np.int64)
    clean = np.where(np.isnan(x) | (x > 1), np.float32(1), x)
    np.testing.assert_array_equal(codes, np.searchsorted(boundaries, clean, side="right"))
    if codebook.signed:
        negative = np.asarray(base10_map.encode(jnp.asarray(-x), codebook)).astype(np.int64)
        np.testing.assert_array_equal(negative, -codes)
