"""Parameters in bfloat16: fidelity, memory and speed of ``param_rounding`` against float32 params.

    python -m benchmarks.bf16_params [--small] [--mnist-dir DIR [--only-mnist]] [--out DIR]

Four parts, each against float32 parameters fed the same data, with round to
nearest (plain ``optax.apply_updates``, today's behaviour) beside the two
variants of ``optax_rmsprop.param_rounding``:

- regression: 512 inputs to 64 outputs, noisy targets, weights of order 1,
  ``rmsprop`` with int8 state and a cosine decay over 3,000 steps at lr 1e-3 and
  1e-4: the final test loss, and each weight's displacement from its start as a
  ratio to float32's (for the compensated variant, of its float32 master weight
  and of the bfloat16 parameter);
- memory: XLA's buffer assignment for one jitted, donated training step
  (forward, backward, update) of an MLP of three 2048 x 2048 layers at batch 4,
  in bytes per parameter (deterministic: nothing runs);
- speed: the donated optimizer step (update and apply) with and without the
  rounding, interleaved, over the same MLP's parameters;
- the character-level transformer of ``benchmarks.fidelity``, its parameters
  stored in bfloat16 (computed in float32), 3,000 steps: the final loss;
- with ``--mnist-dir DIR``, the MNIST trainer's CNN, 3 epochs with int8 state,
  its model in bfloat16 (``--param-dtype bfloat16``): the test accuracy
  (``--only-mnist``: this part alone, added to the results already written).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop
from benchmarks import common, fidelity
from optax_rmsprop import _param_rounding

VARIANTS = ("float32", "nearest", "stochastic", "compensated")  # float32: the reference
ROUNDINGS = VARIANTS[1:]
FULL = {
    "regression": {"inputs": 512, "outputs": 64, "steps": 3000, "batch": 256},
    "mlp": {"width": 2048, "layers": 3, "batch": 4},
    "rounds": 15,
    "lm_steps": 3000,
}
SMALL = {
    "regression": {"inputs": 64, "outputs": 8, "steps": 200, "batch": 32},
    "mlp": {"width": 256, "layers": 3, "batch": 4},
    "rounds": 2,
    "lm_steps": 20,
}
LEARNING_RATES = (1e-3, 1e-4)
TARGET_SPREAD, NOISE = 0.3, 0.3  # the targets' distance from the start weights, their noise
PERCENTILES = (5, 50, 95)


def chain(tx: optax.GradientTransformation, rounding: str) -> optax.GradientTransformation:
    """``tx`` followed by ``param_rounding(rounding)``; ``tx`` alone for round to nearest."""
    if rounding in ("float32", "nearest"):
        return tx
    return optax.chain(tx, optax_rmsprop.param_rounding(rounding))


def param_dtype(variant: str) -> jnp.dtype:
    return jnp.dtype(jnp.float32 if variant == "float32" else jnp.bfloat16)


# -- regression ----------------------------------------------------------------
def regression(variant: str, lr: float, inputs: int, outputs: int, steps: int, batch: int):
    """Trains the linear regression: the test loss, start weights, final and master weights.

    Every variant starts from the same bfloat16-representable weights and sees the
    same batches; the loss is computed in float32 from the stored weights.
    """
    k = jax.random.split(jax.random.key(0), 4)
    w0 = jax.random.normal(k[0], (inputs, outputs)).astype(jnp.bfloat16).astype(jnp.float32)
    target = w0 + TARGET_SPREAD * jax.random.normal(k[1], (inputs, outputs))
    schedule = optax.cosine_decay_schedule(lr, steps)
    tx = chain(optax_rmsprop.rmsprop(schedule, state_dtype="int8"), variant)

    def loss(w, x, y):
        return jnp.mean((x @ w.astype(jnp.float32) - y) ** 2)

    def step(carry, t):
        w, state = carry
        key = jax.random.fold_in(k[2], t)
        x = jax.random.normal(key, (batch, inputs)) / np.sqrt(inputs)
        y = x @ target + NOISE * jax.random.normal(jax.random.fold_in(key, 1), (batch, outputs))
        updates, state = tx.update(jax.grad(loss)(w, x, y), state, w)
        return (optax.apply_updates(w, updates), state), None

    w = w0.astype(param_dtype(variant))
    run = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps))[0])
    w, state = run((w, tx.init(w)))
    master = w.astype(jnp.float32)
    if variant == "compensated":
        master = _param_rounding.join(w, state[1].remainder)
    x = jax.random.normal(k[3], (4096, inputs)) / np.sqrt(inputs)
    test_loss = float(jnp.mean((x @ (w.astype(jnp.float32) - target)) ** 2)) + NOISE**2
    return test_loss, np.asarray(w0), np.asarray(w, np.float32), np.asarray(master)


def spread(ratio: np.ndarray) -> dict:
    return {
        f"p{q}": float(v)
        for q, v in zip(PERCENTILES, np.percentile(ratio, PERCENTILES), strict=True)
    }


def regression_rows(size: dict) -> list[dict]:
    """Per learning rate and variant: loss over float32's, displacement ratio percentiles."""
    rows = []
    for lr in LEARNING_RATES:
        runs = {v: regression(v, lr, **size) for v in VARIANTS}
        ref_loss, w0, ref_w, _ = runs["float32"]
        ref_move = np.abs(ref_w - w0)
        moved = ref_move > 0
        for variant, (loss, _, w, master) in runs.items():
            row = {"lr": lr, "variant": variant, "test_loss": loss, "loss_ratio": loss / ref_loss}
            row["displacement"] = spread(np.abs(w - w0)[moved] / ref_move[moved])
            if variant == "compensated":
                row["master_displacement"] = spread(np.abs(master - w0)[moved] / ref_move[moved])
            row["median_float32_displacement"] = float(np.median(ref_move))
            rows.append(row)
            print(row, flush=True)
    return rows


# -- memory ----------------------------------------------------------------------
def mlp_shapes(width: int, layers: int, dtype) -> list[dict]:
    return [
        {
            "kernel": jax.ShapeDtypeStruct((width, width), dtype),
            "bias": jax.ShapeDtypeStruct((width,), dtype),
        }
        for _ in range(layers)
    ]


def mlp_loss(params: list[dict], x: jax.Array, y: jax.Array) -> jax.Array:
    for i, layer in enumerate(params):
        x = x @ layer["kernel"] + layer["bias"]
        x = jax.nn.relu(x) if i < len(params) - 1 else x
    return jnp.mean((x.astype(jnp.float32) - y) ** 2)


def training_step(tx: optax.GradientTransformation):
    """``(params, state), x, y -> (params, state)``: forward, backward and update."""

    def step(carry, x, y):
        params, state = carry
        updates, state = tx.update(jax.grad(mlp_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    return step


OPTIMIZERS = {
    "rmsprop, float32 state + momentum": lambda: optax_rmsprop.rmsprop(1e-3, momentum=0.9),
    "rmsprop, int8 state + momentum": lambda: optax_rmsprop.rmsprop(
        1e-3, momentum=0.9, state_dtype="int8"
    ),
    "rmsprop, int4 state + momentum": lambda: optax_rmsprop.rmsprop(
        1e-3, momentum=0.9, state_dtype="int4"
    ),
    "sgd": lambda: optax.sgd(1e-3),
}
MEMORY_CASES = [
    ("rmsprop, float32 state + momentum", "float32"),
    *[("rmsprop, int8 state + momentum", r) for r in ROUNDINGS],
    *[("rmsprop, int4 state + momentum", r) for r in ROUNDINGS],
    ("sgd", "float32"),
    *[("sgd", r) for r in ROUNDINGS],
]


def memory_rows(width: int, layers: int, batch: int) -> list[dict]:
    """XLA's buffer sizes of the donated training step per case, in bytes per parameter."""
    rows = []
    for optimizer, variant in MEMORY_CASES:
        tx = chain(OPTIMIZERS[optimizer](), variant)
        params = mlp_shapes(width, layers, param_dtype(variant))
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        x = jax.ShapeDtypeStruct((batch, width), param_dtype(variant))
        y = jax.ShapeDtypeStruct((batch, width), jnp.float32)
        carry = (params, jax.eval_shape(tx.init, params))
        compiled = jax.jit(training_step(tx), donate_argnums=0).lower(carry, x, y).compile()
        facts = common.facts(compiled)
        row = {"optimizer": optimizer, "params": param_dtype(variant).name, "rounding": variant}
        row |= {k: facts[k] / n for k in ("arguments", "temporaries", "peak")}
        row["parameters"] = n
        rows.append(row)
        print(row, flush=True)
    return rows


# -- speed ---------------------------------------------------------------------------
def speed_rows(width: int, layers: int, rounds: int) -> list[dict]:
    """The donated optimizer step (int8 state + momentum) per rounding, interleaved."""
    shapes = mlp_shapes(width, layers, jnp.bfloat16)
    key = jax.random.key(0)
    fill = lambda s, i: jax.random.normal(jax.random.fold_in(key, i), s.shape).astype(s.dtype)
    leaves, tree = jax.tree.flatten(shapes)
    grads = jax.tree.unflatten(tree, [1e-2 * fill(s, i) for i, s in enumerate(leaves)])
    steppers = {}
    for rounding in ROUNDINGS:
        params = jax.tree.unflatten(tree, [fill(s, 100 + i) for i, s in enumerate(leaves)])
        tx = chain(OPTIMIZERS["rmsprop, int8 state + momentum"](), rounding)
        steppers[rounding] = common.Stepper(tx, params, grads)
    timing = common.paired(steppers, rounds)
    n = sum(x.size for x in leaves)
    return [
        {
            "rounding": r,
            "median_s": timing[r]["median_s"],
            "ns_per_param": 1e9 * timing[r]["median_s"] / n,
            "over_nearest": common.ratio(timing[r]["samples"], timing["nearest"]["samples"]),
            "samples": timing[r]["samples"],
        }
        for r in ROUNDINGS
    ]


# -- the character-level transformer ------------------------------------------------
LM_RUNS = [(v, 1) for v in VARIANTS] + [("float32", 2)]  # (params, batches' seed)


def transformer_rows(steps: int) -> list[dict]:
    """``benchmarks.fidelity``'s transformer per variant: final and late training loss.

    A second float32 run on other batches (seed 2) gives the spread between two
    float32 runs, against which the variants' differences are read.
    """
    params, data, _ = fidelity.lm_setup(jax.random.key(0))
    batch = fidelity.FULL["batch"]

    def loss(p, key, batch):  # stored in any dtype, computed in float32
        return fidelity.lm_loss(jax.tree.map(lambda x: x.astype(jnp.float32), p), data, key, batch)

    evaluation = jax.random.split(jax.random.key(99), 32)
    rows = []
    for variant, seed in LM_RUNS:
        schedule = optax.cosine_decay_schedule(1e-3, steps)
        tx = chain(optax_rmsprop.rmsprop(schedule, decay=0.99, state_dtype="int8"), variant)
        dtype = param_dtype(variant)
        p = jax.tree.map(lambda x, dtype=dtype: x.astype(jnp.bfloat16).astype(dtype), params)

        @jax.jit
        def step(p, state, t, tx=tx, seed=seed):
            key = jax.random.fold_in(jax.random.key(seed), t)
            value, g = jax.value_and_grad(loss)(p, key, batch)
            updates, state = tx.update(g, state, p)
            return optax.apply_updates(p, updates), state, value

        state, losses, t0 = tx.init(p), [], time.perf_counter()
        for t in range(steps):
            p, state, value = step(p, state, t)
            losses.append(value)
        run_s = time.perf_counter() - t0
        row = {"variant": variant, "seed": seed, "run_s": run_s}
        row["eval_loss"] = float(np.mean([loss(p, k, 64) for k in evaluation]))
        row["train_loss_last"] = float(np.mean(losses[-min(200, steps) :]))
        rows.append(row)
        print(row, flush=True)
    ref = rows[0]["eval_loss"]
    for r in rows:
        r["over_float32"] = r["eval_loss"] / ref
    return rows


# -- the MNIST trainer ----------------------------------------------------------------
def mnist_rows(mnist_dir: str) -> list[dict]:
    """The trainer's CNN, 3 epochs of real MNIST, int8 state, per parameter precision."""
    from benchmarks import trainer_throughput  # imports the trainer only when asked

    rows = []
    for variant in VARIANTS:
        flags = ["--data-dir", mnist_dir, "--epochs", "3", "--state-dtype", "int8"]
        if variant != "float32":
            flags += ["--param-dtype", "bfloat16", "--param-rounding", variant]
        summary = trainer_throughput.run_trainer(flags)
        keep = ("test_accuracy", "test_loss", "train_time_s", "examples_per_sec", "error")
        rows.append({"variant": variant} | {k: summary[k] for k in keep if k in summary})
        print(rows[-1], flush=True)
    return rows


# -- output ------------------------------------------------------------------------------
def pct(d: dict) -> str:
    return f"{d['p50']:.2f} ({d['p5']:.2f}–{d['p95']:.2f})"


def to_markdown(payload: dict) -> str:
    s = payload["settings"]
    reg, mlp = s["regression"], s["mlp"]
    lines = [
        common.measured(payload["machine"]) + (" Small mode." if payload["small"] else ""),
        "",
        f"**Regression** ({reg['inputs']} inputs to {reg['outputs']} outputs, targets "
        f"{TARGET_SPREAD} from the start weights N(0, 1) plus noise {NOISE}, batch "
        f"{reg['batch']}, `rmsprop` with int8 state, cosine decay over {reg['steps']} steps): "
        "the final test loss over float32 parameters', and each weight's displacement over "
        "float32's, median (5th–95th percentile). For the compensated variant, the bfloat16 "
        "parameter's, then its float32 master weight's.",
        "",
    ]
    rows = []
    for r in payload["regression"]:
        move = pct(r["displacement"])
        if "master_displacement" in r:
            move += f"; master {pct(r['master_displacement'])}"
        rows.append([f"{r['lr']:g}", r["variant"], f"{r['loss_ratio']:.3f}", move])
    lines += common.markdown_table(
        ["lr", "params", "loss / float32", "displacement / float32"], rows
    )
    lines += [
        "",
        f"**Memory** of one jitted, donated training step (forward, backward, update) of an MLP "
        f"of {mlp['layers']} {mlp['width']} x {mlp['width']} layers at batch {mlp['batch']}, "
        "from XLA's buffer assignment (`compiled.memory_analysis()`), in bytes per parameter. "
        "At rest: the step's arguments (parameters and optimizer state); peak: arguments, "
        "outputs and temporaries, less the outputs that reuse donated buffers.",
        "",
    ]
    rows = [
        [r["optimizer"], r["params"], r["rounding"] if r["params"] != "float32" else "-"]
        + [f"{r[k]:.2f}" for k in ("arguments", "temporaries", "peak")]
        for r in payload["memory"]
    ]
    lines += common.markdown_table(
        ["optimizer", "params", "rounding", "at rest", "temporaries", "peak"], rows
    )
    lines += [
        "",
        "**Speed** of the donated optimizer step (`rmsprop`, int8 state + momentum, update and "
        "apply) over the same bfloat16 parameters: median over interleaved rounds.",
        "",
    ]
    rows = [
        [
            r["rounding"],
            f"{1e3 * r['median_s']:.2f}",
            f"{r['ns_per_param']:.2f}",
            f"{r['over_nearest']:.2f}",
        ]
        for r in payload["speed"]
    ]
    lines += common.markdown_table(["rounding", "step (ms)", "ns / param", "time / nearest"], rows)
    lines += [
        "",
        f"**Character-level transformer** of `benchmarks/fidelity.py` ({s['lm_steps']} steps, "
        "batch 16, `rmsprop(decay=0.99)` with int8 state, lr 1e-3 in a cosine decay; "
        "parameters stored in bfloat16, computed in float32): the loss on 32 fixed batches of "
        "64 windows at the end, over float32 parameters', and the mean training loss over the "
        "last 200 steps. The last row: float32 parameters again, on other batches.",
        "",
    ]
    rows = [
        [r["variant"] + (" (other batches)" if r["seed"] != 1 else "")]
        + [f"{r['eval_loss']:.4f}", f"{r['over_float32']:.4f}", f"{r['train_loss_last']:.4f}"]
        for r in payload["transformer"]
    ]
    lines += common.markdown_table(["params", "final loss", "/ float32", "training loss"], rows)
    if "mnist" in payload:
        lines += [
            "",
            "**MNIST** (`python -m examples.mnist --data-dir DIR --state-dtype int8 "
            "--param-dtype bfloat16 --param-rounding R`: the CNN, 3 epochs of the full dataset, "
            "the model stored and computed in bfloat16): test accuracy.",
            "",
        ]
        rows = [
            [r["variant"], r.get("error") or f"{100 * r['test_accuracy']:.2f}%"]
            for r in payload["mnist"]
        ]
        lines += common.markdown_table(["params", "test accuracy"], rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, "a 64 x 8 regression over 200 steps, 256-wide MLP, 20 LM steps")
    ap.add_argument("--mnist-dir", default=None, help="also train the MNIST cnn, 3 epochs each")
    ap.add_argument(
        "--only-mnist", action="store_true", help="the MNIST part alone, into the results there"
    )
    args = ap.parse_args(argv)
    if args.only_mnist and not args.mnist_dir:
        ap.error("--only-mnist needs --mnist-dir")
    jax.config.update("jax_enable_x64", False)  # float32, as users train
    if args.only_mnist:  # the other parts as they were measured
        with open(os.path.join(args.out or common.RESULTS, "bf16_params.json")) as f:
            payload = json.load(f)
    else:
        payload = measure(SMALL if args.small else FULL) | {"small": args.small}
    if args.mnist_dir:
        payload["mnist"] = mnist_rows(args.mnist_dir)
    markdown = to_markdown(payload)
    print(markdown)
    common.write("bf16_params", payload, markdown, args.out)


def measure(mode: dict) -> dict:
    """Every part but MNIST, at ``mode``'s sizes."""
    payload = {"machine": common.machine()}
    payload["settings"] = {k: mode[k] for k in ("regression", "mlp", "rounds", "lm_steps")}
    payload["settings"] |= {"target_spread": TARGET_SPREAD, "noise": NOISE}
    payload["regression"] = regression_rows(mode["regression"])
    payload["memory"] = memory_rows(**mode["mlp"])
    mlp = mode["mlp"]
    payload["speed"] = speed_rows(mlp["width"], mlp["layers"], mode["rounds"])
    payload["transformer"] = transformer_rows(mode["lm_steps"])
    return payload


if __name__ == "__main__":
    main()
