"""The accelerator check: the fast tests, then the benchmarks, on whatever backend JAX finds.

    python -m benchmarks.accelerator [--small] [--out DIR] [--mnist-dir DIR]
                                     [--budget-s 420] [--skip PART ...]

One command for a GPU, a TPU or the CPU. Its parts, in order: ``tests`` (the fast
correctness tests in a child pytest; ``--test-files`` names others), ``memory`` (the
step's peak by state precision, :func:`state_precision.peak_memory`), ``precision``
(the step per state precision, :func:`state_precision.measure_jax`), ``steps`` (N of
1e6 to 1e9 in 1 and 1,000 leaves, :func:`optimizer_step.measure`), ``compile``
(:func:`compile_time.measure_precisions`) and ``trainer`` (the MNIST trainer's command
line, 3 epochs). A part that would not finish in what is left of ``--budget-s`` is
skipped, one that fails is recorded and the others still run; the results are written
after every part (to ``--out``, by default ``benchmarks/results/accelerator-BACKEND``),
so a time-out still leaves them. ``--small`` is the CPU mode CI runs, so that the
command cannot rot between sessions with a device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

import jax

from benchmarks import common, compile_time, optimizer_step, state_precision, trainer_throughput

TEST_FILES = [
    "tests/test_reference.py",
    "tests/test_dtypes.py",
    "tests/test_composition.py",
    "tests/test_sharding.py",
]
# part -> (seconds it needs to be started, full mode; --small)
NEEDS = {"tests": (60, 5), "memory": (30, 5), "precision": (60, 5), "steps": (120, 5)}
NEEDS |= {"compile": (60, 5), "trainer": (60, 5)}
OUTCOMES = ("failures", "errors", "skipped")  # junit's counts besides "tests"


def run_tests(out: str, files: list[str], timeout_s: float) -> dict:
    """Runs ``files`` in a child pytest on this backend; returns its counts."""
    junit = os.path.join(out, "accelerator_tests.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    cmd += [f"--junitxml={junit}", *files]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    except subprocess.TimeoutExpired:
        tail = [f"pytest did not finish in {timeout_s:.0f} s"]
    result = {"seconds": round(time.perf_counter() - t0, 1), "files": files, "tail": tail}
    if os.path.exists(junit):
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", *OUTCOMES)}
        result |= counts | {"passed": counts["tests"] - sum(counts[k] for k in OUTCOMES)}
    return result


def parts(args: argparse.Namespace, left) -> dict:
    """Each part as a function returning its section of the results."""
    small = args.small
    shape, peak = ((256, 512), (256, 256)) if small else ((16384, 16384), (2048, 2048))
    sizes = [int(s) for s in args.sizes or ([1e4, 1e5] if small else [1e6, 1e7, 1e8, 1e9])]
    leaves = [1, 10] if small else [1, 1000]
    compile_sizes = (10, (64, 1024), (512, 512)) if small else (200, (64, 1024), (4096, 4096))
    trainer = ["--epochs", "1", "--max-steps", "16"] if small else ["--epochs", "3"]
    trainer += ["--data-dir", args.mnist_dir] if args.mnist_dir else []
    return {
        "tests": lambda: run_tests(args.out, args.test_files, max(60, left() / 3)),
        "memory": lambda: {"shape": peak, "rows": state_precision.peak_memory(shape=peak)},
        "precision": lambda: {
            "shape": shape,
            **{
                label: state_precision.measure_jax(args.rounds, momentum, shape)
                for label, momentum in (("plain", None), ("momentum 0.9", 0.9))
            },
        },
        "steps": lambda: [
            row
            for count in leaves
            for n in sizes
            if left() > 20 + 60 * n / 1e9  # the rows that fit the time left
            for row in optimizer_step.measure(n, count, args.rounds)
        ],
        "compile": lambda: compile_time.measure_precisions(*compile_sizes, repeats=1),
        "trainer": lambda: trainer_throughput.run_trainer(trainer, timeout_s=max(60, left())),
    }


def to_markdown(payload: dict) -> str:
    m, done = payload["machine"], payload["parts"]
    lines = [
        f"Measured {m['date']} on {m['device_kind']} ({m['backend']}, {len(m['devices'])} "
        f"device(s)), JAX {m['jax']}, optax {m['optax']}, Python {m['python']}"
        f"{' (small mode)' if payload['small'] else ''}; {payload['wall_s']} s in all.",
    ]
    for name, section in done.items():
        lines += ["", f"**{name}** ({payload['seconds'][name]} s)", ""]
        if not isinstance(section, dict | list) or "error" in section:
            lines.append(f"Not measured: {section}")
        elif name == "tests":
            counts = ", ".join(f"{section.get(k, '?')} {k}" for k in ("passed", *OUTCOMES))
            lines.append(f"{', '.join(map(os.path.basename, section['files']))}: {counts}")
        elif name == "memory":
            lines += state_precision.peak_memory_markdown(section["rows"], section["shape"])
        elif name == "precision":
            rows = {k: v for k, v in section.items() if k != "shape"}
            lines += [f"One {' x '.join(map(str, section['shape']))} parameter.", ""]
            lines += state_precision.steps_markdown(rows)
        elif name == "steps":
            lines.append(optimizer_step.markdown(section))
        elif name == "compile":
            lines += compile_time.precisions_markdown(section)
        elif name == "trainer":
            lines.append(
                f"MNIST cnn, {section['epochs']:.2f} epochs ({section['dataset']}): test "
                f"accuracy {100 * section['test_accuracy']:.2f}%, "
                f"{section['train_time_s'] / section['epochs']:.2f} s per epoch, "
                f"{section['examples_per_sec']:,.0f} examples/s, compile "
                f"{section['compile_time_s']:.1f} s."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__, "tiny sizes, a few trainer steps")
    ap.add_argument("--mnist-dir", default=None, help="real MNIST IDX files for the trainer")
    ap.add_argument("--sizes", type=float, nargs="+", default=None, help="N for the steps part")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    ap.add_argument("--budget-s", type=float, default=420, help="seconds for the whole run")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(NEEDS))
    ap.add_argument("--test-files", nargs="+", default=TEST_FILES, help="the tests part's files")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (2 if args.small else 5)
    args.out = args.out or os.path.join(common.RESULTS, f"accelerator-{jax.default_backend()}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - t0)
    payload = {"machine": common.machine(), "small": args.small, "parts": {}, "seconds": {}}
    for name, part in parts(args, left).items():
        if name in args.skip:
            continue
        start = time.perf_counter()
        if left() < NEEDS[name][args.small]:
            section = f"skipped: {left():.0f} s left"
        else:
            try:
                section = part()
            except Exception as err:  # noqa: BLE001 - recorded; the other parts still run
                traceback.print_exc()
                section = {"error": f"{type(err).__name__}: {err}"[:400]}
        payload["parts"][name] = section
        payload["seconds"][name] = round(time.perf_counter() - start, 1)
        payload["wall_s"] = round(time.perf_counter() - t0, 1)
        markdown = to_markdown(payload)
        common.write("accelerator", payload, markdown, args.out)
        print(markdown.split(f"**{name}**")[-1], flush=True)
    tests = payload["parts"].get("tests")
    tests = tests if isinstance(tests, dict) else {}
    failed = [n for n, s in payload["parts"].items() if isinstance(s, dict) and "error" in s]
    return 1 if failed or tests.get("failures") or tests.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
