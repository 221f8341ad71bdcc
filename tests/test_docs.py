"""The documentation site builds with warnings as errors, and its internal links resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
DOCS = os.path.join(ROOT, "docs")


@pytest.mark.slow
def test_sphinx_build_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", DOCS, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    html = (out / "api.html").read_text()
    for name in (
        "rmsprop",
        "scale_by_rms",
        "effective_step_size",
        "dequantize_state",
        "compat.pytorch",
        "recipes.dqn_nature",
    ):
        assert name in html, name
    # internal links: every relative href in the built site points at a file that exists
    broken = []
    for page in out.glob("*.html"):
        for href in re.findall(r'href="([^"#:]+\.html)(?:#[^"]*)?"', page.read_text()):
            if not (page.parent / href).exists():
                broken.append(f"{page.name} -> {href}")
    assert not broken, broken


def test_markdown_links_between_repository_files_resolve():
    """README and docs Markdown links to files of this repository point at real files."""
    broken = []
    for md in [
        "README.md",
        "examples/mnist/README.md",
        *[os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md")],
    ]:
        text = open(os.path.join(ROOT, md)).read()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            if not os.path.exists(
                os.path.normpath(os.path.join(ROOT, os.path.dirname(md), target))
            ):
                broken.append(f"{md} -> {target}")
    assert not broken, broken
