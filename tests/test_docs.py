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


# -- what the pages cite and run ----------------------------------------------
# The pages a user reads. design_notes.md is the dated history; CHANGELOG.md is the
# versions' history: both may cite old versions, issues and commits.
USER_PAGES = ["README.md", *sorted(f"docs/{f}" for f in os.listdir(DOCS) if f.endswith(".md"))]
USER_PAGES.remove("docs/design_notes.md")
# Pages whose paths must exist now. The history pages cite retired files by the commit
# that had them; their paths are checked only where they say the file is still here.
CITING_PAGES = [*USER_PAGES, "examples/mnist/README.md"]
# First path components that name this repository's files; other paths in a page are
# a user's (runs/mnist, WORKDIR) or another project's (bitsandbytes/optim/rmsprop.py).
REPOSITORY_ROOTS = {"optax_rmsprop", "tests", "benchmarks", "examples", "docs", ".ci"}
# Paths the pages cite that a command creates: not in a clone.
CREATED_PATHS = {"docs/_build/html", "docs/_build/html/index.html"}
PATH = re.compile(r"^[\w.-]+(?:/[\w.*-]+)*/?$")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
PYTHON_M = re.compile(r"python -m ((?:examples|benchmarks|tests)(?:\.\w+)+)([^`#\n]*)")


def read(page: str) -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def fenced(page: str, language: str) -> list[tuple[int, str]]:
    """(line, code) of each fenced block of ``language`` in ``page``."""
    text = read(page)
    return [
        (text[: m.start()].count("\n") + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


def code_tokens(page: str) -> list[str]:
    """Every whitespace-separated token of the page's inline code and shell blocks."""
    text = read(page)
    shell = [code for lang in ("bash", "sh", "") for _, code in fenced(page, lang)]
    prose = FENCE.sub("", text)
    spans = re.findall(r"`([^`\n]+)`", prose) + shell
    return [token.strip("()[],;:'\"") for span in spans for token in span.split()]


def cited_paths(page: str) -> list[str]:
    """Repository paths the page cites, from its root (or the page's folder)."""
    here = os.path.dirname(page)
    cited = []
    for token in code_tokens(page):
        token = token.split("::")[0]
        if "/" not in token or not PATH.match(token) or token.startswith(("/", "..")):
            continue
        first = token.split("/")[0]
        if first in REPOSITORY_ROOTS:
            cited.append(token.rstrip("/"))
        elif here and os.path.exists(os.path.join(ROOT, here, first)):
            cited.append(os.path.join(here, token).rstrip("/"))
    return cited


def test_every_cited_repository_path_exists():
    import glob

    missing = [
        f"{page}: {path}"
        for page in CITING_PAGES
        for path in cited_paths(page)
        if path not in CREATED_PATHS and not glob.glob(os.path.join(ROOT, path))
    ]
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


def module_file(module: str) -> str | None:
    base = os.path.join(ROOT, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__main__.py")):
        if os.path.exists(candidate):
            return candidate
    return None


def commands(page: str) -> list[tuple[str, list[str]]]:
    """(module, --flags) of each `python -m` command of this repository the page shows."""
    text = read(page)
    return [
        (m.group(1), re.findall(r"(?<![\w-])--[a-z][\w-]*", m.group(2)))
        for m in PYTHON_M.finditer(text)
    ]


def help_text(module: str) -> str:
    """What `python -m module --help` prints: from its main(argv) in this process if it
    has one (no second JAX start-up), else from a subprocess."""
    import contextlib
    import importlib
    import io

    target = importlib.import_module(module)
    main = getattr(target, "main", None)
    if not callable(main) and module_file(module).endswith("__main__.py"):
        main = importlib.import_module(f"{module}.main").main
    if not callable(main):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert result.returncode == 0, f"python -m {module} --help: {result.stderr[-2000:]}"
        return result.stdout
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0, module
    return out.getvalue()


@pytest.mark.parametrize("page", CITING_PAGES)
def test_commands_name_modules_and_flags_that_exist(page):
    """Training and benchmark commands are not run; each module exists and takes each flag."""
    found = commands(page)
    bad = [m for m, _ in found if module_file(m) is None]
    assert not bad, f"{page}: no such module: {bad}"
    flagged = {}
    for module, flags in found:
        flagged.setdefault(module, set()).update(flags)
    for module, flags in flagged.items():
        if not flags:
            continue
        if module.startswith("examples"):
            pytest.importorskip("flax")
        text = help_text(module)
        unknown = sorted(f for f in flags if not re.search(rf"(?<![\w-]){f}(?![\w-])", text))
        assert not unknown, f"{page}: python -m {module} has no {unknown}"


# A user page says what is true now; history goes to docs/design_notes.md, dated, and
# versions' changes to CHANGELOG.md. Each pattern, and why it has no place there.
HISTORY = [
    (r"\.\./shared", "a path on the development machine only: name one the user has (DIR)"),
    (r"`[0-9a-f]{7,40}`", "a commit: the design notes say which commit measured what"),
    (r"[Ii]ssue #\d+", "an issue number: say the target itself"),
    (r"\b0\.[0-2]'s\b|\(0\.[0-2]:", "an old version's figure: CHANGELOG.md or the design notes"),
    (r"\b(?:earlier|faster|slower|previous) (?:20\d\d-\d\d-\d\d )?machine", "another machine"),
]


@pytest.mark.parametrize("page", USER_PAGES)
def test_user_pages_hold_no_history(page):
    text = read(page)
    found = [
        f"line {text[: m.start()].count(chr(10)) + 1}: {m.group(0)!r} ({why})"
        for pattern, why in HISTORY
        for m in re.finditer(pattern, text)
    ]
    assert not found, f"{page}:\n" + "\n".join(found)


# Names the pages' Python blocks use without defining them (placeholders), defined here.
HIDDEN_SETUP = """
import jax, jax.numpy as jnp, optax
import optax_rmsprop
from optax_rmsprop import compat, recipes

params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros((3,))}
learning_rate = lr = 1e-3
sched = optax.exponential_decay(0.1, transition_steps=10, decay_rate=0.5)
not_bias = {"kernel": True, "bias": False}
"""
PYTHON_BLOCKS = [(page, line, code) for page in USER_PAGES for line, code in fenced(page, "python")]


@pytest.fixture
def restored_jax_config():
    """A block may set JAX's compilation cache; the rest of the session must not see it."""
    import jax

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.mark.parametrize(
    "page,line,code", PYTHON_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in PYTHON_BLOCKS]
)
def test_python_blocks_run(page, line, code, restored_jax_config):
    """Each block runs after the hidden setup; each optimizer it builds takes a step."""
    if "flax" in code:  # the minimum CI set has no Flax
        pytest.importorskip("flax")
    import jax
    import jax.numpy as jnp
    import optax

    namespace: dict = {}
    exec(compile(HIDDEN_SETUP, "<hidden setup>", "exec"), namespace)
    before = dict(namespace)
    exec(compile(code, f"{page}:{line}", "exec"), namespace)
    built = [
        name
        for name, value in namespace.items()
        if isinstance(value, optax.GradientTransformation) and value is not before.get(name)
    ]
    params = namespace["params"] if namespace["params"] is before["params"] else before["params"]
    for name in built:
        tx = namespace[name]
        grads = jax.tree.map(jnp.ones_like, params)
        updates, _ = tx.update(grads, tx.init(params), params)
        finite = all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
        assert finite, f"{page}:{line}: {name}'s first update is not finite"


def test_readme_version_table_names_the_python_each_ci_set_runs():
    """The README's CI table and `.ci/run` agree on each set's Python."""
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    ran = dict(
        re.findall(r'echo "=== ([\w-]+) \(Python [\d.]+.*\n\S+ \S+ "\$\(python_of ([\d.]+)', ci)
    )
    with open(os.path.join(ROOT, "README.md")) as f:
        table = dict(re.findall(r"^\| ([\w-]+) \| (3\.\d+) \|", f.read(), flags=re.M))
    assert set(ran) == {"newest", "colab-tpu", "minimum"}, ran
    assert table == ran
