"""One RMSProp step (update + apply, jitted, donated) against optax, PyTorch and the roofline.

    python -m benchmarks.optimizer_step [--sizes 1e4 1e5 1e6 1e7] [--leaves 1 200 2000]
                                        [--rounds 7] [--no-torch] [--small] [--out DIR]

For N float32 parameters in 1, 200 or 2,000 leaves, in interleaved rounds:
``optax_rmsprop.rmsprop`` with float32 and bfloat16 state, ``optax.rmsprop`` with
the same settings, a second, separately jitted ``optax.rmsprop`` (the A/A control:
its ratio to the first is this machine's noise), ``torch.optim.RMSprop`` (foreach
and for-loop; CPU, when installed), and the memory roofline: a donated ``p + g``
(12 bytes per parameter) scaled to the bytes the step must move (20 for float32
state: read p, g, nu; write p, nu). Beside each time, XLA's deterministic figures
for the compiled step: bytes accessed and kernels. Also plots the roofline fractions.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common

LR, DECAY, EPS = 1e-3, 0.9, 1e-8
CONTENDERS = {  # name -> (transformation, bytes per parameter a step must move)
    "optax_rmsprop": (lambda: optax_rmsprop.rmsprop(LR, DECAY, EPS), 20),
    "optax_rmsprop bf16 state": (
        lambda: optax_rmsprop.rmsprop(LR, DECAY, EPS, state_dtype=jnp.bfloat16),
        16,
    ),
    "optax": (lambda: optax.rmsprop(LR, DECAY, EPS, eps_in_sqrt=False), 20),
    "optax again": (lambda: optax.rmsprop(LR, DECAY, EPS, eps_in_sqrt=False), 20),
}


def torch_step(sizes: list[int], foreach: bool):
    import torch

    params = [torch.randn(s, requires_grad=True) for s in sizes]
    for p in params:
        p.grad = 0.01 * p.detach().clone()
    opt = torch.optim.RMSprop(params, lr=LR, alpha=DECAY, eps=EPS, foreach=foreach)
    opt.step()
    return opt.step


def measure(n: int, count: int, rounds: int, torch: bool = False) -> list[dict]:
    """Every contender on ``n`` parameters in ``count`` leaves, one row each."""
    sizes = common.leaves_for(n, count)
    grads = common.random_leaves(sizes, 1, 0.01)  # shared: not donated
    steppers = {
        name: common.Stepper(make(), common.random_leaves(sizes, 0), grads)
        for name, (make, _) in CONTENDERS.items()
    }
    contenders = {**steppers, "roofline (p + g)": common.roofline(sizes)}
    if torch:
        contenders["torch foreach"] = torch_step(sizes, True)
        contenders["torch for-loop"] = torch_step(sizes, False)
    timing = common.paired(contenders, rounds)
    roofline_s = timing["roofline (p + g)"]["median_s"] / 12  # per byte and parameter
    rows = []
    for name in contenders:
        row = {"n": n, "leaves": count, "contender": name, **timing[name]}
        row["over_optax"] = common.ratio(timing[name]["samples"], timing["optax"]["samples"])
        if name in steppers:
            need = CONTENDERS[name][1]
            row["bytes_per_param"] = need
            row["roofline_fraction"] = need * roofline_s / row["median_s"]
            row.update({k: v / n for k, v in steppers[name].facts.items() if k != "kernels"})
            row["kernels"] = steppers[name].facts["kernels"]
        rows.append(row)
    print(markdown(rows, header=False), flush=True)
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    """The table of :func:`measure`'s rows: one line per contender."""
    blank = lambda r, key, spec: "" if key not in r else format(r[key], spec)
    cells = [
        [f"{r['n']:.0e}", r["leaves"], r["contender"], f"{1e6 * r['median_s']:,.1f}"]
        + [f"{r['over_optax']:.2f}", blank(r, "roofline_fraction", ".2f")]
        + [blank(r, "xla_bytes", ".1f"), r.get("kernels", "")]
        for r in rows
    ]
    head = ["N", "leaves", "contender", "time (us)", "/ optax", "of roofline"]
    lines = common.markdown_table([*head, "XLA bytes / param", "kernels"], cells)
    return "\n".join(lines if header else lines[2:])


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, "N of 1e4 and 1e5 in 1 and 10 leaves, 2 rounds")
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="parameter counts")
    ap.add_argument("--leaves", type=int, nargs="+", default=None, help="leaf counts")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([1e4, 1e5] if args.small else [1e4, 1e5, 1e6, 1e7])
    leaves = args.leaves or ([1, 10] if args.small else [1, 200, 2000])
    rounds = args.rounds or (2 if args.small else 7)
    torch = not args.no_torch and jax.default_backend() == "cpu" and common.has_torch()
    rows = [
        row
        for count in leaves
        for n in map(int, sizes)
        if count <= n
        for row in measure(n, count, rounds if n < 5e7 else max(3, rounds // 2), torch)
    ]
    m = common.machine()
    md = (
        f"{common.measured(m)} Median time per step; `/ optax`: median of per-round ratios "
        "(`optax again` is the A/A control); roofline: a donated `p + g` over the same leaves, "
        "scaled to the bytes the step must move; XLA bytes and kernels: the compiled step's "
        "cost analysis and entry computation.\n\n" + markdown(rows) + "\n"
    )
    common.write("optimizer_step", {"machine": m, "rows": rows}, md, args.out)
    plot(rows, os.path.join(args.out or common.RESULTS, "optimizer_step.png"))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for count in sorted({r["leaves"] for r in rows}):
        for name, style in (("optax_rmsprop", "o-"), ("optax", "x--")):
            mine = [r for r in rows if r["leaves"] == count and r["contender"] == name]
            x, y = [r["n"] for r in mine], [r["roofline_fraction"] for r in mine]
            ax.plot(x, y, style, label=f"{name}, {count} leaves")
    ax.set(xscale="log", xlabel="parameters", ylabel="fraction of memory roofline")
    ax.set_title("RMSProp step throughput (higher is better)")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
