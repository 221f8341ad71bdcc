"""One RMSProp step (update + apply, jitted, donated) against optax, PyTorch and the roofline.

    python -m benchmarks.optimizer_step [--sizes 1e4 1e5 1e6 1e7 1e8] [--rounds 7]

For N float32 parameters split into 1, 200 or 2,000 leaves it times:
``optax_rmsprop.rmsprop``, ``optax.rmsprop`` with the same settings,
``torch.optim.RMSprop`` (foreach on and off), and the memory roofline measured
in the same process: a jitted, donated ``p + g`` over the same arrays (12 bytes
per parameter), scaled to the 20 bytes an RMSProp step must move (read p, g,
nu; write p, nu). Rounds interleave the contenders; ratios are medians of
per-round ratios. A second, separately jitted ``optax.rmsprop`` is timed as an
A/A control: its ratio to the first shows this machine's noise. Writes
benchmarks/results/optimizer_step.{json,md,png}.

Each step here is dispatched from Python and waited for, so the many-leaf rows
are mostly the host's dispatch of thousands of jit arguments (the ``p + g``
roofline pays it too). ``benchmarks/jitted_loop.py`` separates the two: it
times K steps inside one jitted ``lax.fori_loop`` beside the dispatched step.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common

LR, DECAY, EPS = 1e-3, 0.9, 1e-8
BYTES = {"plain": 20, "momentum": 28, "centered": 28, "bf16_state": 16}


def jax_step(tx, sizes):
    key = jax.random.key(0)
    params = [
        jax.random.normal(jax.random.fold_in(key, i), (s,), jnp.float32)
        for i, s in enumerate(sizes)
    ]
    grads = [0.01 * p for p in params]
    state = tx.init(params)
    step = common.jitted_step(tx, donate=True)
    box = {"p": params, "s": state}

    def run():
        box["p"], box["s"] = step(box["p"], box["s"], grads)
        jax.block_until_ready(box["p"])

    run()
    return run, (params, state, grads)


def torch_step(sizes, foreach: bool, **kw):
    import torch

    params = [torch.randn(s, requires_grad=True) for s in sizes]
    for p in params:
        p.grad = 0.01 * p.detach().clone()
    opt = torch.optim.RMSprop(params, lr=LR, alpha=DECAY, eps=EPS, foreach=foreach, **kw)
    opt.step()
    return lambda: opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--leaves", type=int, nargs="+", default=[1, 200, 2000])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False

    rows = []
    for n in (int(x) for x in args.sizes):
        for count in args.leaves:
            if count > n:
                continue
            sizes = common.leaves_for(n, count)
            rounds = args.rounds if n < 5e7 else max(3, args.rounds // 2)
            ours, _ = jax_step(optax_rmsprop.rmsprop(LR, DECAY, EPS), sizes)
            contenders = {
                "optax_rmsprop": ours,
                "optax": jax_step(optax.rmsprop(LR, DECAY, EPS, eps_in_sqrt=False), sizes)[0],
                # A/A control: a second, separately jitted optax. Its ratio to the
                # first is pure noise, the yardstick for ours / optax.
                "optax_again": jax_step(optax.rmsprop(LR, DECAY, EPS, eps_in_sqrt=False), sizes)[0],
                "roofline_add": common.roofline(sizes),
            }
            if have_torch:
                contenders["torch_foreach"] = torch_step(sizes, True)
                contenders["torch_for_loop"] = torch_step(sizes, False)
            res = common.paired(contenders, rounds)
            row = {
                "n": n,
                "leaves": count,
                "median_s": {k: v["median_s"] for k, v in res.items()},
                "ours_over_optax": common.ratio(res, "optax_rmsprop", "optax"),
                "optax_again_over_optax": common.ratio(res, "optax_again", "optax"),
                # fraction of the roofline: (t_add * 20/12) / t_ours
                "roofline_fraction": 1
                / common.ratio(res, "optax_rmsprop", "roofline_add")
                * 20
                / 12,
            }
            if have_torch:
                row["torch_foreach_over_ours"] = common.ratio(res, "torch_foreach", "optax_rmsprop")
                row["torch_for_loop_over_ours"] = common.ratio(
                    res, "torch_for_loop", "optax_rmsprop"
                )
            rows.append(row)
            print(row, flush=True)
            del contenders, ours

    variants = []
    n = int(max(args.sizes)) if max(args.sizes) <= 1e7 else int(1e7)
    base, _ = jax_step(optax_rmsprop.rmsprop(LR, DECAY, EPS), [n])
    for name, tx in {
        "momentum": optax_rmsprop.rmsprop(LR, DECAY, EPS, momentum=0.9),
        "centered": optax_rmsprop.rmsprop(LR, DECAY, EPS, centered=True),
        "bf16_state": optax_rmsprop.rmsprop(LR, DECAY, EPS, state_dtype=jnp.bfloat16),
    }.items():
        run, (_, state, _) = jax_step(tx, [n])
        res = common.paired(
            {"variant": run, "plain": base, "roofline_add": common.roofline([n])}, args.rounds
        )
        state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
        variants.append(
            {
                "variant": name,
                "n": n,
                "median_s": res["variant"]["median_s"],
                "over_plain": common.ratio(res, "variant", "plain"),
                "roofline_fraction": 1
                / common.ratio(res, "variant", "roofline_add")
                * BYTES[name]
                / 12,
                "state_bytes_per_param": round(state_bytes / n, 2),
            }
        )
        print(variants[-1], flush=True)
    payload = {
        "machine": common.machine(),
        "steps": rows,
        "variants": variants,
        "settings": {"lr": LR, "decay": DECAY, "eps": EPS},
    }
    common.write("optimizer_step", payload, to_markdown(payload))
    plot(payload)


def to_markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpus']} CPU cores ({m['processor']}), JAX {m['jax']} "
        f"({m['backend']}), optax {m.get('optax')}, torch {m.get('torch', 'n/a')}. "
        "Median seconds per step; ratios are medians of per-round ratios. Each step is "
        "dispatched and waited for: many-leaf rows are mostly host dispatch "
        "(`benchmarks/jitted_loop.py` times the step inside one jitted loop).",
        "",
        "| N | leaves | optax_rmsprop (ms) | optax (ms) | ours / optax | optax / optax (A/A) | fraction of roofline | torch foreach / ours | torch loop / ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["steps"]:
        ms = r["median_s"]
        lines.append(
            f"| {r['n']:.0e} | {r['leaves']} | {1e3 * ms['optax_rmsprop']:.3f} | {1e3 * ms['optax']:.3f} "
            f"| {r['ours_over_optax']:.2f} | {r['optax_again_over_optax']:.2f} "
            f"| {r['roofline_fraction']:.2f} "
            f"| {r.get('torch_foreach_over_ours', float('nan')):.2f} | {r.get('torch_for_loop_over_ours', float('nan')):.2f} |"
        )
    lines += [
        "",
        "| variant (N = 1e7, one leaf) | ms | time / plain | fraction of its roofline | state bytes per param |",
        "|---|---|---|---|---|",
    ]
    for v in payload["variants"]:
        lines.append(
            f"| {v['variant']} | {1e3 * v['median_s']:.2f} | {v['over_plain']:.2f} | "
            f"{v['roofline_fraction']:.2f} | {v['state_bytes_per_param']} |"
        )
    return "\n".join(lines) + "\n"


def plot(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for count in sorted({r["leaves"] for r in payload["steps"]}):
        rows = [r for r in payload["steps"] if r["leaves"] == count]
        ax.plot(
            [r["n"] for r in rows],
            [r["roofline_fraction"] for r in rows],
            "o-",
            label=f"optax_rmsprop, {count} leaves",
        )
        ax.plot(
            [r["n"] for r in rows],
            [r["roofline_fraction"] / r["ours_over_optax"] for r in rows],
            "x--",
            label=f"optax, {count} leaves",
        )
    ax.set(
        xscale="log",
        xlabel="parameters",
        ylabel="fraction of memory roofline",
        title="RMSProp step throughput (higher is better)",
    )
    ax.axhline(1.0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(common.RESULTS, "optimizer_step.png"), dpi=100)


if __name__ == "__main__":
    main()
