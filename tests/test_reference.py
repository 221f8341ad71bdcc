"""Every option against the float64 NumPy transcription in tests/reference.py."""

from __future__ import annotations

import dataclasses

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import CASES, run_both


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_matches_reference(name):
    traj, ref_traj, state, _ = run_both(CASES[name], np.float64, mask_b=False)
    for t, (got, want) in enumerate(zip(traj, ref_traj, strict=False)):
        for k in want:
            np.testing.assert_allclose(
                np.asarray(got[k]),
                want[k],
                rtol=1e-12,
                atol=1e-13,
                err_msg=f"step {t}, leaf {k}",
            )
    chex.assert_tree_all_finite(state)


@pytest.mark.parametrize("name", ["plain", "centered", "momentum", "everything"])
def test_complex128_matches_reference(name):
    traj, ref_traj, _, _ = run_both(CASES[name], np.complex128)
    for got, want in zip(traj, ref_traj, strict=False):
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["plain", "centered", "nesterov", "everything"])
def test_float32_tracks_reference(name):
    """float32 runs track the float64 reference to float32 accuracy."""
    traj, ref_traj, state, _ = run_both(CASES[name], np.float32)
    assert state.rms.nu["a"].dtype == jnp.float32
    for got, want in zip(traj[:30], ref_traj[:30], strict=False):
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-4, atol=2e-4)


def test_reference_detects_a_wrong_optimizer():
    """The comparison can fail: a different decay gives a different trajectory."""
    cfg = CASES["plain"]
    traj, _, _, _ = run_both(cfg, np.float64)
    _, ref_traj, _, _ = run_both(dataclasses.replace(cfg, decay=0.91), np.float64)
    assert not np.allclose(np.asarray(traj[-1]["a"]), ref_traj[-1]["a"], rtol=1e-6)
