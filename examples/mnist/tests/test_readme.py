"""The example's README, notebook and --help say what the code and the committed results say."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex

import pytest

from examples.mnist import main
from examples.mnist.tests import helpers

EXAMPLE = os.path.join(helpers.ROOT, "examples", "mnist")
RESULTS = os.path.join(helpers.ROOT, "benchmarks", "results")


def _readme() -> str:
    with open(os.path.join(EXAMPLE, "README.md")) as f:
        return f.read()


def _notebook_markdown() -> str:
    with open(os.path.join(EXAMPLE, "mnist_colab.ipynb")) as f:
        cells = json.load(f)["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _help() -> str:
    return " ".join(main.build_parser().format_help().split())


PAGES = {"README.md": _readme, "mnist_colab.ipynb": _notebook_markdown, "--help": _help}

# A measured figure: a percentage, a speed-up, or a throughput.
FIGURE = re.compile(r"\d[\d,]*(?:\.\d+)?(?:%|x\b| examples/s)")


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_is_in_a_committed_results_file(page):
    results = ""
    for path in sorted(glob.glob(os.path.join(RESULTS, "**", "*.md"), recursive=True)):
        with open(path) as f:
            results += f.read()
    missing = [figure for figure in FIGURE.findall(PAGES[page]()) if figure not in results]
    assert not missing, f"{page} quotes figures that no file in benchmarks/results holds"


@pytest.mark.parametrize("page", PAGES)
def test_every_cited_repository_path_exists(page):
    cited = re.findall(r"\b((?:benchmarks|docs|examples)/[\w./-]*(?:\.\w+|/))", PAGES[page]())
    assert cited or page == "--help"
    missing = [p for p in cited if not os.path.exists(os.path.join(helpers.ROOT, p))]
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES)
def test_no_command_names_a_path_only_the_developers_have(page):
    assert "../shared" not in PAGES[page]()


def _commands(text: str) -> list[list[str]]:
    lines = re.findall(r"^\s*(python -m examples\.mnist\b[^#\n]*)", text, flags=re.MULTILINE)
    return [shlex.split(line) for line in lines]


@pytest.mark.parametrize("page", ["README.md", "mnist_colab.ipynb"])
def test_every_command_uses_flags_that_exist(page):
    commands = [c for c in _commands(PAGES[page]()) if c[2] == "examples.mnist"]
    assert commands, page
    flags = {s for a in main.build_parser()._actions for s in a.option_strings}
    used = {word.split("=")[0] for command in commands for word in command if word[:2] == "--"}
    assert used <= flags, used - flags
