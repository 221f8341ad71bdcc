"""The package a user installs: its version is the changelog's newest, and it builds clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import pytest

import optax_rmsprop

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
VERSION_HEADING = re.compile(r"^## (\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2})\)$", re.MULTILINE)


def changelog_versions() -> list[str]:
    """The versions CHANGELOG.md has an entry for, newest first."""
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        return [m.group(1) for m in VERSION_HEADING.finditer(f.read())]


def test_version_is_the_changelogs_newest_entry():
    versions = changelog_versions()
    assert versions, "CHANGELOG.md has no '## X.Y.Z (YYYY-MM-DD)' entry"
    assert optax_rmsprop.__version__ == versions[0], (
        f"optax_rmsprop.__version__ is {optax_rmsprop.__version__}, the changelog's newest "
        f"entry is {versions[0]}: add an entry for the new version (or bump __version__)"
    )


def test_changelog_entries_are_newest_first_and_distinct():
    versions = [tuple(map(int, v.split("."))) for v in changelog_versions()]
    assert versions == sorted(set(versions), reverse=True), versions


def test_wheel_and_sdist_build_and_pass_twine_check(tmp_path):
    """`python -m build` (offline: the build backend from this environment) and `twine check`."""
    for module in ("build", "twine", "hatchling"):
        pytest.importorskip(module)
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    version = optax_rmsprop.__version__
    wheel = out / f"optax_rmsprop-{version}-py3-none-any.whl"
    sdist = out / f"optax_rmsprop-{version}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in out.iterdir())
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(f"optax_rmsprop-{version}.dist-info/METADATA").decode()
    assert "optax_rmsprop/__init__.py" in names and "optax_rmsprop/py.typed" in names, names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    assert f"\nVersion: {version}\n" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
