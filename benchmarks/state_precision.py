"""State precision: memory, bytes moved, step time and accuracy of float32/bfloat16/int8/int4 state.

    python -m benchmarks.state_precision [--rounds 7] [--mnist-dir DIR] [--check] [--small]
                                         [--out DIR]

Per state precision, for ``optax_rmsprop.rmsprop`` plain and with momentum 0.9 on one
4096 x 4096 float32 parameter: the state's bytes per parameter, the bytes XLA counts
for one compiled, donated step, and the step's time in interleaved rounds, over float32
state's (the guards, on CPU: int8 within 3x plain, 4.5x with momentum) and as a
fraction of the memory roofline. The step's peak memory from XLA's buffer assignment
(deterministic) over 4 leaves of 2048 x 2048, plain, with momentum and centered with
momentum. Beside them, each in its own process: ``torch.optim.RMSprop`` and
bitsandbytes' ``RMSprop32bit`` / ``RMSprop8bit`` (when installed). Accuracy of the
quantized states against float32 state on the same gradients: the per-step error with
the reference re-synced (bitsandbytes' measure), and the drift after 1,000 noisy steps.
``--mnist-dir`` also trains the MNIST cnn 3 epochs per precision; ``--check`` (full
sizes, CPU) exits non-zero when a guard is broken.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import optax_rmsprop
from benchmarks import common, trainer_throughput

SHAPE = (4096, 4096)
PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "int8": "int8", "int4": "int4"}
QUANTIZED = ("int8", "int4")
PEAK_LEAVES, PEAK_SHAPE = 4, (2048, 2048)
PEAK_FIGURES = ("arguments", "temporaries", "peak")
STEP_OPTIONS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "centered + momentum": {"centered": True, "momentum": 0.9},
}
TORCH_KINDS = ["torch", "bitsandbytes 32-bit", "bitsandbytes 8-bit"]
SMALL = {"shape": (256, 512), "peak_shape": (256, 256), "per_step": (64, 4097), "drift": (16, 4096)}
# CPU: the most a state's step may take over float32 state's (int8 measured: 2.3x to 2.7x
# plain, 3.4x to 4.3x with momentum).
GUARDS = {"plain": {"int8": 3.0}, "momentum 0.9": {"int8": 4.5}}


def measure_jax(rounds: int, momentum: float | None, shape: tuple[int, int] = SHAPE) -> dict:
    """Per state precision: state bytes, XLA's bytes, step time against float32 and the roofline.

    The roofline is a donated ``p + g`` (12 bytes per parameter) scaled to the
    bytes the step must move: params and gradients (12) and the state, read and
    written.
    """
    n = shape[0] * shape[1]
    grads = 0.01 * jax.random.normal(jax.random.key(0), shape)
    steppers = {
        name: common.Stepper(
            optax_rmsprop.rmsprop(1e-3, momentum=momentum, state_dtype=state_dtype),
            jax.random.normal(jax.random.key(1), shape),
            grads,
        )
        for name, state_dtype in PRECISIONS.items()
    }
    timing = common.paired({**steppers, "roofline": common.roofline([n])}, rounds)
    roofline_s = timing["roofline"]["median_s"] / 12  # per byte and parameter
    rows = {}
    for name, stepper in steppers.items():
        state = stepper.carry[1]
        need = 12 + 2 * stepper.state_bytes() / n
        rows[name] = {
            "rms_bytes_per_param": sum(x.nbytes for x in jax.tree.leaves(state.rms)) / n,
            "state_bytes_per_param": stepper.state_bytes() / n,
            "xla_bytes_per_param": stepper.facts["xla_bytes"] / n,
            "step_ms": 1e3 * timing[name]["median_s"],
            "time_over_float32": common.ratio(
                timing[name]["samples"], timing["float32"]["samples"]
            ),
            "roofline_fraction": need * roofline_s / timing[name]["median_s"],
        }
    return rows


def peak_memory(
    leaves: int = PEAK_LEAVES, shape: tuple[int, int] = PEAK_SHAPE, states: dict = PRECISIONS
) -> list[dict]:
    """XLA's buffer sizes for one jitted, donated step, in bytes per parameter.

    Per state precision and option set: ``temporaries`` and ``peak`` (what the
    step holds at once), and ``arguments`` (params, grads and state at rest).
    Deterministic: nothing runs, and nothing is initialised.
    """
    params = [jax.ShapeDtypeStruct(shape, jnp.float32) for _ in range(leaves)]
    n = leaves * shape[0] * shape[1]
    rows = []
    for label, options in STEP_OPTIONS.items():
        for name, state_dtype in states.items():
            tx = optax_rmsprop.rmsprop(1e-3, state_dtype=state_dtype, **options)
            sizes = common.facts(common.compile_step(tx, params))
            rows.append({"step": label, "state": name} | {k: sizes[k] / n for k in PEAK_FIGURES})
            print(rows[-1], flush=True)
    return rows


TORCH_CHILD = """
import json, sys, time, torch
torch.set_num_threads({threads})
kind, momentum = sys.argv[1], float(sys.argv[2])
p = torch.nn.Parameter(0.1 * torch.randn({shape}))
if kind == "torch":
    opt = torch.optim.RMSprop([p], lr=1e-3, alpha=0.9, eps=1e-8, momentum=momentum)
else:
    import bitsandbytes as bnb
    cls = bnb.optim.RMSprop8bit if kind == "bitsandbytes 8-bit" else bnb.optim.RMSprop32bit
    opt = cls([p], lr=1e-3, alpha=0.9, eps=1e-8, momentum=momentum)
p.grad = 0.01 * torch.randn_like(p)
opt.step()
times = []
for _ in range({rounds}):
    t = time.perf_counter(); opt.step(); times.append(time.perf_counter() - t)
state = opt.state[p]
nbytes = sum(v.numel() * v.element_size() for k, v in state.items()
             if torch.is_tensor(v) and k not in ("step", "qmap1", "qmap2"))
print(json.dumps({{"step_ms": 1e3 * sorted(times)[len(times) // 2],
                  "state_bytes_per_param": nbytes / p.numel()}}))
"""


def measure_torch(kind: str, rounds: int, momentum: float) -> dict:
    """One PyTorch optimizer, alone in a child process (thread pools do not mix)."""
    code = TORCH_CHILD.format(threads=os.cpu_count() or 1, shape=SHAPE, rounds=rounds)
    cmd = [sys.executable, "-c", code, kind, str(momentum)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if run.returncode:
        return {"error": (run.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(run.stdout.splitlines()[-1])


def accuracy(
    per_step_shape: tuple[int, int] = (1024, 4097),
    drift_shape: tuple[int, int] = (64, 4096),
    steps: int = 1000,
) -> dict:
    """Per quantized state: the per-step error (re-synced: bitsandbytes' measure) and the drift."""
    return {
        name: {
            "per_step_shape": per_step_shape,
            "drift_steps": steps,
            **per_step_error(name, per_step_shape),
            **drift(name, drift_shape, steps),
        }
        for name in QUANTIZED
    }


def per_step_error(state_dtype: str, shape: tuple[int, int]) -> dict:
    """50 steps, the float32 reference re-synced each step to the quantized run."""
    key = jax.random.key(0)
    quantized = optax_rmsprop.rmsprop(0.01, decay=0.9, state_dtype=state_dtype)
    reference = optax_rmsprop.rmsprop(0.01, decay=0.9)
    params = 0.1 * jax.random.normal(key, shape)
    state = quantized.init(params)
    quantized_step = jax.jit(common.carry_step(quantized))
    reference_step = jax.jit(common.carry_step(reference))
    abs_err, rel_err = [], []
    for t in range(50):
        grads = 0.01 * jax.random.normal(jax.random.fold_in(key, t + 1), params.shape)
        want, _ = reference_step((params, optax_rmsprop.dequantize_state(state, params)), grads)
        params, state = quantized_step((params, state), grads)
        err = jnp.abs(params - want)
        abs_err.append(float(jnp.mean(err)))
        rel_err.append(float(jnp.mean(err / (jnp.abs(want) + 1e-9))))
    return {
        "per_step_mean_abs_error_max": max(abs_err),
        "per_step_mean_rel_error_max": max(rel_err),
    }


def drift(state_dtype: str, shape: tuple[int, int], steps: int = 1000) -> dict:
    """Noisy least-squares steps with momentum, never re-synced to float32 state."""
    key = jax.random.key(0)
    target = jax.random.normal(key, shape)
    finals = {}
    for name, precision in ((state_dtype, state_dtype), ("float32", None)):
        tx = optax_rmsprop.rmsprop(1e-3, decay=0.99, momentum=0.9, state_dtype=precision)
        step = common.carry_step(tx)

        @functools.partial(jax.jit, donate_argnums=0)
        def noisy_step(carry, t, step=step):
            p = carry[0]
            g = (p - target) + 0.5 * jax.random.normal(jax.random.fold_in(key, t), p.shape)
            return step(carry, g)

        start = jnp.zeros_like(target)
        carry = (start + 0, tx.init(start))
        for t in range(steps):
            carry = noisy_step(carry, np.int32(t))
        finals[name] = carry[0]
    apart = jnp.linalg.norm(finals[state_dtype] - finals["float32"])
    return {
        "drift": float(apart / jnp.linalg.norm(finals["float32"])),
        "final_loss": {k: float(jnp.mean((p - target) ** 2)) for k, p in finals.items()},
    }


def train_mnist(mnist_dir: str, state_dtype: str) -> dict:
    """The trainer's command line, 3 epochs of real MNIST with ``state_dtype`` state."""
    flags = ["--data-dir", mnist_dir, "--epochs", "3", "--state-dtype", state_dtype]
    summary = trainer_throughput.run_trainer(flags)
    return {k: summary.get(k) for k in ("test_accuracy", "train_time_s", "examples_per_sec")}


def broken(payload: dict) -> list[str]:
    """The guards the step times break, each as a sentence."""
    return [
        f"{name} state's step ({label}) takes {r['time_over_float32']:.2f}x float32's "
        f"(guard: at most {GUARDS[label][name]:g}x)"
        for label, by_state in payload["jax"].items()
        for name, r in by_state.items()
        if r["time_over_float32"] > GUARDS[label].get(name, float("inf"))
    ]


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, "small shapes, no PyTorch")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mnist-dir", default=None, help="also train the cnn 3 epochs per precision")
    ap.add_argument("--check", action="store_true", help="exit 1 if a guard is broken")
    args = ap.parse_args(argv)
    if args.check and (args.small or jax.default_backend() != "cpu"):  # what the guards bound
        ap.error("--check: the guards are set for the full sizes on CPU; leave out --small")
    shape = SMALL["shape"] if args.small else SHAPE
    payload = {"machine": common.machine(), "shape": shape, "small": args.small}
    payload |= {"jax": {}, "torch": {}}
    for label, momentum in (("plain", None), ("momentum 0.9", 0.9)):
        payload["jax"][label] = measure_jax(args.rounds, momentum, shape)
        payload["torch"][label] = {
            kind: measure_torch(kind, args.rounds, momentum or 0.0)
            for kind in ([] if args.small or jax.default_backend() != "cpu" else TORCH_KINDS)
        }
        print(label, payload["jax"][label], payload["torch"][label], flush=True)
    payload["peak_shape"] = SMALL["peak_shape"] if args.small else PEAK_SHAPE
    payload["peak_memory"] = peak_memory(PEAK_LEAVES, payload["peak_shape"])
    sizes = (SMALL["per_step"], SMALL["drift"], 200) if args.small else ()
    payload["accuracy"] = accuracy(*sizes)
    print(payload["accuracy"], flush=True)
    if args.mnist_dir:
        payload["mnist"] = {name: train_mnist(args.mnist_dir, name) for name in PRECISIONS}
        print(payload["mnist"], flush=True)
    markdown = to_markdown(payload)
    print(markdown)
    common.write("state_precision", payload, markdown, args.out)
    if args.check:
        common.check(broken(payload))


def peak_memory_markdown(rows: list[dict], shape: tuple[int, int]) -> list[str]:
    """The lines of the table of ``peak_memory``'s rows (for leaves of ``shape``)."""
    return [
        f"The step's memory (XLA's buffer assignment, `compiled.memory_analysis()`): one "
        f"jitted, donated step over {PEAK_LEAVES} float32 leaves of "
        f"{' x '.join(map(str, shape))}, in bytes per parameter. Peak: arguments, outputs "
        "and temporaries, less the outputs that reuse donated buffers.",
        "",
        *common.markdown_table(
            ["step", "state", "at rest: arguments", "temporaries", "peak"],
            [[r["step"], r["state"], *(f"{r[k]:.2f}" for k in PEAK_FIGURES)] for r in rows],
        ),
    ]


def steps_markdown(
    jax_rows: dict, torch_rows: dict | None = None, guards: dict | None = None
) -> list[str]:
    """The lines of the step table: per option set and state, bytes, time and roofline.

    ``guards`` (:data:`GUARDS`' layout) puts each guard beside the ratio it bounds.
    """
    cells = []
    for label, by_state in jax_rows.items():
        for name, r in by_state.items():
            limit = (guards or {}).get(label, {}).get(name)
            cells.append(
                [label, f"optax_rmsprop, {name}", f"{r['rms_bytes_per_param']:.3f}"]
                + [f"{r['state_bytes_per_param']:.3f}", f"{r['xla_bytes_per_param']:.1f}"]
                + [f"{r['step_ms']:.2f}", common.guarded(r["time_over_float32"], limit)]
                + [f"{r['roofline_fraction']:.2f}"]
            )
        for kind, r in (torch_rows or {}).get(label, {}).items():
            bytes_ = "n/a" if "error" in r else f"{r['state_bytes_per_param']:.3f}"
            time_ = r["error"] if "error" in r else f"{r['step_ms']:.2f}"
            cells.append([label, kind, "", bytes_, "n/a", time_, "", ""])
    header = ["step", "state", "RMS state bytes / param", "state bytes / param"]
    header += ["XLA bytes / param", "step (ms)", "time / float32", "of roofline"]
    return common.markdown_table(header, cells)


def to_markdown(payload: dict) -> str:
    guards = GUARDS if payload["machine"]["backend"] == "cpu" and not payload["small"] else None
    lines = [
        f"{common.measured(payload['machine'])} One {' x '.join(map(str, payload['shape']))} "
        "float32 parameter; step times are medians (JAX: interleaved rounds; PyTorch and "
        "bitsandbytes: their own processes). Roofline: a donated `p + g` (12 bytes per "
        "parameter) scaled to the bytes the step must move (params, gradients, and the "
        "state read and written)."
        + (" `time / float32` shows a guard beside the ratio it bounds." if guards else ""),
        "",
        *steps_markdown(payload["jax"], payload["torch"], guards),
    ]
    lines += ["", *peak_memory_markdown(payload["peak_memory"], payload["peak_shape"])]
    first = next(iter(payload["accuracy"].values()))
    shape, steps = first["per_step_shape"], first["drift_steps"]
    lines += [
        "",
        "Quantized state against float32 state on the same gradients: per step, re-synced "
        f"({' x '.join(map(str, shape))}, lr 0.01, 50 steps, the largest of the per-step "
        f"means), and after {steps:,} noisy least-squares steps without re-syncing (momentum 0.9; "
        "drift: the relative norm of the parameters' difference).",
        "",
        *common.markdown_table(
            ["state", "per step: mean abs error", "mean rel error", "drift", "final loss"],
            [
                [
                    name,
                    f"{a['per_step_mean_abs_error_max']:.2g}",
                    f"{a['per_step_mean_rel_error_max']:.2g}",
                    f"{100 * a['drift']:.2f}%",
                    f"{a['final_loss'][name]:.5f} (float32: {a['final_loss']['float32']:.5f})",
                ]
                for name, a in payload["accuracy"].items()
            ],
        ),
    ]
    if "mnist" in payload:
        rows = [
            [f"{name} state", f"{100 * r['test_accuracy']:.2f}%", f"{r['train_time_s']:.1f}"]
            for name, r in payload["mnist"].items()
        ]
        head = ["MNIST cnn, 3 epochs of real MNIST", "test accuracy", "training s"]
        lines += ["", *common.markdown_table(head, rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
