"""K steps in one jitted loop against K dispatched steps: the step's work and its dispatch apart.

    python -m benchmarks.jitted_loop [--small] [--n 4096000] [--leaves 1 1000]
                                     [--steps 50] [--rounds 5] [--out DIR]

A jitted step called from Python pays, besides its work, the host's dispatch:
every array argument is checked and handed over (a 1,000-leaf step with
momentum passes about 5,000 arrays), then the caller waits for the result. In
``benchmarks/optimizer_step.py`` the many-leaf rows are mostly that. Here each
transformation runs two ways over the same buffers, N float32 parameters in 1
leaf and in 1,000 leaves (same total N):

* **dispatched**: one jitted, donated step per call, waited for (as in
  ``optimizer_step``);
* **in a loop**: ``--steps`` (K) steps inside one jitted ``jax.lax.fori_loop``
  carrying params and state (``common.jitted_loop``), one dispatch per K steps;
  the time per call divided by K is the in-loop step.

The dispatch cost is the dispatched step less the in-loop step (the loop's own
single dispatch is spread over K steps, so at most 1/K of it remains in the
in-loop figure). Contenders: ``optax.rmsprop``, ``optax_rmsprop.rmsprop`` with
float32 state and with ``state_dtype="int8"`` (and ``"int4"`` when the library
accepts it), each without and with momentum 0.9, plus a donated ``x * 2`` over
the same leaves (the streaming yardstick, which pays the dispatch of its
arguments too). All of one layout run in the same process, interleaved, the
order rotating; times are medians of rounds and ratios medians of per-round
ratios. Writes benchmarks/results/jitted_loop.{json,md} (or to ``--out``).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import common

LR, DECAY, EPS, MOMENTUM = 1e-3, 0.9, 1e-8, 0.9
STREAM = "stream (x * 2)"
OPTAX = "optax.rmsprop"
F32 = "optax_rmsprop f32"
# The library's 8-bit state quantizes leaves of at least 4,096 elements: the
# default N keeps every one of the 1,000 leaves quantized.
FULL = {"n": 4_096_000, "leaves": [1, 1000], "steps": 50, "rounds": 5}
SMALL = {"n": 40_960, "leaves": [1, 10], "steps": 4, "rounds": 2}


def state_dtype_note(state_dtype: str) -> str | None:
    """None when ``optax_rmsprop.rmsprop`` accepts ``state_dtype``, else why not."""
    try:
        optax_rmsprop.rmsprop(LR, state_dtype=state_dtype)
    except (ValueError, TypeError) as err:
        return f"state_dtype={state_dtype!r} unavailable: {type(err).__name__}: {err}"[:300]
    return None


def transformations(
    momenta: tuple[bool, ...] = (False, True), quantized: tuple[str, ...] = ("int8", "int4")
) -> tuple[dict[str, optax.GradientTransformation], dict[str, str]]:
    """name -> transformation, and notes for the quantized states the library lacks."""
    notes = {q: note for q in quantized if (note := state_dtype_note(q))}
    txs = {}
    for with_momentum in momenta:
        momentum = MOMENTUM if with_momentum else None
        suffix = " + momentum" if with_momentum else ""
        txs[OPTAX + suffix] = optax.rmsprop(LR, DECAY, EPS, eps_in_sqrt=False, momentum=momentum)
        txs[F32 + suffix] = optax_rmsprop.rmsprop(LR, DECAY, EPS, momentum=momentum)
        for q in (q for q in quantized if q not in notes):
            txs[f"optax_rmsprop {q}{suffix}"] = optax_rmsprop.rmsprop(
                LR, DECAY, EPS, momentum=momentum, state_dtype=q
            )
    return txs, notes


def random_leaves(sizes: list[int], seed: int, scale: float = 1.0) -> list[jax.Array]:
    """float32 normal leaves of ``sizes`` (times ``scale``)."""
    key = jax.random.key(seed)
    return [
        scale * jax.random.normal(jax.random.fold_in(key, i), (s,), jnp.float32)
        for i, s in enumerate(sizes)
    ]


class Pair:
    """One set of buffers, stepped either by a dispatched step or by a K-step loop.

    ``step(carry, grads) -> carry`` is jitted twice, as is and inside
    ``common.fori_steps``, both with ``carry`` donated; both advance the same
    buffers, so the two runners share memory and state.
    """

    def __init__(self, step: Callable, carry, grads, steps: int):
        self.steps = steps
        self.carry, self.grads = carry, grads
        self.arguments = common.jit_arguments(carry, grads)
        self._step = jax.jit(step, donate_argnums=0)
        self._loop = jax.jit(common.fori_steps(step, steps), donate_argnums=0)
        self.dispatched()  # compile both before timing
        self.looped()

    def dispatched(self) -> None:
        """One step, dispatched and waited for."""
        self.carry = self._step(self.carry, self.grads)
        jax.block_until_ready(self.carry)

    def looped(self) -> None:
        """K steps in one dispatch, waited for."""
        self.carry = self._loop(self.carry, self.grads)
        jax.block_until_ready(self.carry)


def optimizer_pair(tx, params: list[jax.Array], grads: list[jax.Array], steps: int) -> Pair:
    """A :class:`Pair` for ``tx`` over its own copy of ``params`` (``grads`` shared)."""
    step = common.update_and_apply(tx)
    params = [jnp.copy(p) for p in params]
    return Pair(lambda carry, g: step(*carry, g), (params, tx.init(params)), grads, steps)


def stream_pair(sizes: list[int], steps: int) -> Pair:
    """The donated ``x * 2`` over leaves of ``sizes``: it reads and writes each element once."""
    return Pair(lambda xs, _: [2.0 * x for x in xs], random_leaves(sizes, 2), (), steps)


def state_bytes_per_param(pair: Pair, n: int) -> float:
    """Bytes of the optimizer state per parameter (0 for the stream)."""
    carry = pair.carry
    state = carry[1] if isinstance(carry, tuple) else []
    return sum(x.nbytes for x in jax.tree.leaves(state)) / n


def measure_layout(
    n: int, count: int, steps: int, rounds: int, txs: dict[str, optax.GradientTransformation]
) -> list[dict]:
    """Every contender dispatched and looped on ``n`` parameters in ``count`` leaves."""
    sizes = common.leaves_for(n, count)
    params, grads = random_leaves(sizes, 0), random_leaves(sizes, 1, 0.01)
    pairs = {STREAM: stream_pair(sizes, steps)}
    pairs.update({name: optimizer_pair(tx, params, grads, steps) for name, tx in txs.items()})
    runners = {}
    for name, pair in pairs.items():
        runners[f"{name}|dispatched"] = pair.dispatched
        runners[f"{name}|loop"] = pair.looped
    timing = common.paired(runners, rounds)
    rows = [summarize(name, pair, timing, n, count) for name, pair in pairs.items()]
    add_ratios(rows, timing)
    for row in rows:
        print(row_line(row), flush=True)
    return rows


def summarize(name: str, pair: Pair, timing: dict, n: int, count: int) -> dict:
    """One contender's row: its dispatched step, in-loop step and dispatch cost."""
    dispatched = timing[f"{name}|dispatched"]["samples"]
    loop = [t / pair.steps for t in timing[f"{name}|loop"]["samples"]]
    row = {
        "n": n,
        "leaves": count,
        "contender": name,
        "momentum": name.endswith("+ momentum"),
        "jit_arguments": pair.arguments,
        "state_bytes_per_param": state_bytes_per_param(pair, n),
        "steps_per_loop": pair.steps,
        "dispatched_samples": dispatched,
        "loop_per_step_samples": loop,
    }
    row.update(derived(row))
    return row


def derived(row: dict) -> dict:
    """The medians and the dispatch cost, from a row's recorded samples (tests recompute them)."""
    dispatched = statistics.median(row["dispatched_samples"])
    loop = statistics.median(row["loop_per_step_samples"])
    return {
        "dispatched_s": dispatched,
        "loop_per_step_s": loop,
        "dispatch_s": dispatched - loop,
    }


def per_argument(rows: list[dict]) -> list[dict]:
    """Per contender, the dispatch cost each extra jit argument adds, fewest to most leaves.

    ``(dispatch(most leaves) - dispatch(fewest)) / (their difference in arguments)``:
    the fixed cost of a call (the launch, the wait) cancels, what grows with
    the leaves remains.
    """
    out = []
    for name in dict.fromkeys(r["contender"] for r in rows):
        mine = sorted((r for r in rows if r["contender"] == name), key=lambda r: r["leaves"])
        few, many = mine[0], mine[-1]
        extra = many["jit_arguments"] - few["jit_arguments"]
        if extra <= 0:
            continue
        out.append(
            {
                "contender": name,
                "leaves": [few["leaves"], many["leaves"]],
                "jit_arguments": [few["jit_arguments"], many["jit_arguments"]],
                "dispatch_s": [few["dispatch_s"], many["dispatch_s"]],
                "per_argument_s": (many["dispatch_s"] - few["dispatch_s"]) / extra,
            }
        )
    return out


def peer_of(name: str) -> str | None:
    """The ``optax.rmsprop`` row a contender is compared with (same momentum)."""
    if name == STREAM:
        return None
    return OPTAX + (" + momentum" if name.endswith("+ momentum") else "")


def add_ratios(rows: list[dict], timing: dict) -> None:
    """Per row: in-loop and dispatched time over its ``optax.rmsprop`` peer's (per-round medians)."""
    for row in rows:
        peer = peer_of(row["contender"])
        if peer is None:
            continue
        for kind in ("loop", "dispatched"):
            row[f"{kind}_over_optax"] = common.ratio(
                timing, f"{row['contender']}|{kind}", f"{peer}|{kind}"
            )


def row_line(r: dict) -> str:
    """A row as one printed line."""
    ratios = (
        f" loop/optax {r['loop_over_optax']:.2f} dispatched/optax {r['dispatched_over_optax']:.2f}"
        if "loop_over_optax" in r
        else ""
    )
    return (
        f"N={r['n']:.0e} leaves={r['leaves']:>4} {r['contender']:<34} "
        f"dispatched {1e6 * r['dispatched_s']:>9.1f} us  in loop {1e6 * r['loop_per_step_s']:>9.1f} us"
        f"  dispatch {1e6 * r['dispatch_s']:>9.1f} us ({r['jit_arguments']} args){ratios}"
    )


def markdown_lines(rows: list[dict]) -> list[str]:
    """The table of rows from :func:`measure_layout`."""

    def us(seconds: float) -> str:
        return f"{1e6 * seconds:,.1f}"

    def num(x: float | None) -> str:
        return "" if x is None or not math.isfinite(x) else f"{x:.2f}"

    return common.markdown_table(
        [
            "N",
            "leaves",
            "contender",
            "dispatched step (us)",
            "in-loop step (us)",
            "dispatch (us)",
            "jit arguments",
            "in loop / optax",
            "dispatched / optax",
            "state bytes / param",
        ],
        [
            [
                f"{r['n']:.2e}",
                r["leaves"],
                r["contender"],
                us(r["dispatched_s"]),
                us(r["loop_per_step_s"]),
                us(r["dispatch_s"]),
                r["jit_arguments"],
                num(r.get("loop_over_optax")),
                num(r.get("dispatched_over_optax")),
                f"{r['state_bytes_per_param']:.2f}",
            ]
            for r in rows
        ],
    )


def to_markdown(payload: dict) -> str:
    """The results page: how it was measured, the table, and the notes."""
    m, s = payload["machine"], payload["settings"]
    lines = [
        f"Measured {m['date']} on {m['cpus']} CPU cores ({m['processor']}), JAX {m['jax']} "
        f"({m['backend']}), optax {m.get('optax')}{' (small mode)' if payload['small'] else ''}. "
        f"Dispatched: one jitted, donated step per call, waited for. In loop: {s['steps']} "
        "steps in one jitted `lax.fori_loop`, time per step. Dispatch: the difference. "
        f"Medians of {s['rounds']} interleaved rounds; ratios are medians of per-round ratios "
        "against `optax.rmsprop` with the same momentum.",
        "",
        *markdown_lines(payload["rows"]),
    ]
    if payload["per_argument"]:
        lines += [
            "",
            "Dispatch per jit argument: the growth of the dispatch cost from the fewest to "
            "the most leaves, over the growth of the arguments (the fixed cost of a call cancels).",
            "",
            *common.markdown_table(
                ["contender", "leaves", "jit arguments", "dispatch (us)", "per argument (us)"],
                [
                    [
                        a["contender"],
                        " -> ".join(map(str, a["leaves"])),
                        " -> ".join(map(str, a["jit_arguments"])),
                        " -> ".join(f"{1e6 * t:,.1f}" for t in a["dispatch_s"]),
                        f"{1e6 * a['per_argument_s']:.2f}",
                    ]
                    for a in payload["per_argument"]
                ],
            ),
        ]
    lines += [""] + [f"Not measured: {note}" for note in payload["notes"].values()]
    return "\n".join(lines).rstrip() + "\n"


def run(n: int, leaves: list[int], steps: int, rounds: int, momenta=(False, True)) -> dict:
    """The measurement for every layout: ``{"rows": [...], "notes": {...}}``."""
    txs, notes = transformations(momenta)
    rows = []
    for count in leaves:
        rows += measure_layout(n, count, steps, rounds, txs)
    return {"rows": rows, "per_argument": per_argument(rows), "notes": notes}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes, few rounds (tests)")
    ap.add_argument("--n", type=float, default=None, help="parameters in all (every layout)")
    ap.add_argument("--leaves", type=int, nargs="+", default=None, help="leaf counts")
    ap.add_argument("--steps", type=int, default=None, help="steps per jitted loop (K)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    ap.add_argument("--out", default=None, help="folder for the JSON and table")
    args = ap.parse_args(argv)
    preset = SMALL if args.small else FULL
    given = {"n": args.n, "leaves": args.leaves, "steps": args.steps, "rounds": args.rounds}
    settings = {key: preset[key] if value is None else value for key, value in given.items()}
    settings["n"] = int(settings["n"])
    result = run(**settings)
    payload = {
        "machine": common.machine(),
        "small": args.small,
        "settings": {**settings, "lr": LR, "decay": DECAY, "eps": EPS, "momentum": MOMENTUM},
        **result,
    }
    markdown = to_markdown(payload)
    print(markdown)
    common.write("jitted_loop", payload, markdown, args.out)


if __name__ == "__main__":
    main()
