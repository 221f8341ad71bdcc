"""Print the largest deviation of optax_rmsprop.compat from each golden record.

    python -m tests.golden.report

Single steps (each started from the framework's own params and state): the
largest normwise error of a leaf, in epsilons of the dtype (the tests allow
16). Free run (the port alone over the record's steps): the largest error
relative to max(|theirs|, 1), in epsilons per step (the tests allow 4).
"""

from __future__ import annotations

import json

from tests import jax_compat
from tests.golden import parity


def main() -> None:
    worst: dict = {}
    with jax_compat.enable_x64(True):
        for framework, i, dtype in parity.golden_cases():
            case, record = parity.golden(framework, i, dtype)
            single, free = parity.check(framework, case, record, dtype)
            old = worst.get((framework, dtype), (0.0, 0.0))
            worst[(framework, dtype)] = (max(old[0], single), max(old[1], free))
    for (framework, dtype), (single, free) in sorted(worst.items()):
        meta, _ = parity.load(framework)
        print(
            f"{framework:14s} {dtype}: single step {single:.3g} eps, free run {free:.3g} "
            f"eps/step ({len(meta['cases'])} cases, {meta['steps']} steps, "
            f"{json.dumps(meta['versions'])})"
        )


if __name__ == "__main__":
    main()
