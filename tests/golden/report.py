"""Print the largest deviation of optax_rmsprop.compat from each golden trajectory.

    python -m tests.golden.report

float64: max |ours - theirs| / max(|theirs|, 1) over all steps, leaves and cases.
float32: the same in float32 epsilons per step (the tests allow 4).
"""

from __future__ import annotations

import json

from optax_rmsprop import _jax_versions
from tests import test_compat


def main() -> None:
    worst: dict = {}
    with _jax_versions.enable_x64(True):
        for framework, i, dtype in test_compat.GOLDEN_CASES:
            meta, data = test_compat._golden(framework)
            record = test_compat._record(data, i, dtype)
            ours = test_compat._replay(framework, meta["cases"][i], record, dtype)
            dev = test_compat._compare(ours, record, dtype)
            key = (framework, dtype)
            worst[key] = max(worst.get(key, 0.0), dev)
    for (framework, dtype), dev in sorted(worst.items()):
        unit = "relative" if dtype == "float64" else "f32 eps per step"
        meta, _ = test_compat._golden(framework)
        print(
            f"{framework:14s} {dtype}: {dev:.3g} {unit}  "
            f"({len(meta['cases'])} cases, {json.dumps(meta['versions'])})"
        )


if __name__ == "__main__":
    main()
