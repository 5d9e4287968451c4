"""The README and the docs/ pages: Python blocks compile (those marked ``<!-- snippet: run -->`` run), every
``python -m ablations.run`` command is accepted by the parser, every ``python -m`` module exists, every relative
link resolves, and the README keeps exactly its two commands, which CI runs."""

from __future__ import annotations

import importlib.util
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from ablations.run import build_parser
from ablations.suite import available_suites
from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?P<mark><!-- snippet: run -->\n)?^(?P<indent> *)```(?P<lang>[a-z]*)\n"
    r"(?P<body>.*?)\n(?P=indent)```",
    re.S | re.M,
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def blocks(page: Path, lang: str) -> list[tuple[bool, str]]:
    """(marked to run, text) of every fenced block of `lang` in `page`."""
    return [
        (bool(m["mark"]), textwrap.dedent(m["body"])) for m in FENCE.finditer(page.read_text()) if m["lang"] == lang
    ]


def commands(page: Path) -> list[str]:
    """Every command line of the page's bash blocks and inline code (continuations joined, comments dropped)."""
    text = "\n".join(body for _, body in blocks(page, "bash")).replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    lines += re.findall(r"`(python -m [^`]+)`", page.read_text())
    return [line for line in lines if line and not line.startswith("#")]


def ablations_run_args(line: str) -> list[list[str]]:
    """The arguments of every ``python -m ablations.run`` in a command line (`` && ``/`` / `` separated)."""
    found = []
    for part in re.split(r"&&|;|\|| / ", line):
        words = shlex.split(part.replace("${SLURM_ARRAY_TASK_ID}", "1").replace('"$head:6379"', "HEAD:6379"))
        words = [w for w in words if "=" not in w or w.startswith("-")] if words and "=" in words[0] else words
        if words[:3] == ["python", "-m", "ablations.run"]:
            found.append(words[3:])
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile_and_the_marked_ones_run(page: Path) -> None:
    for run, body in blocks(page, "python"):
        code = compile(body, f"{page.name} snippet", "exec")
        if run:
            exec(code, {"__name__": "snippet"})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_ablations_run_command_parses(page: Path) -> None:
    parser = build_parser()
    for line in commands(page):
        for args in ablations_run_args(line):
            if "..." in args:  # a placeholder for more flags
                continue
            try:
                parsed = parser.parse_args(args)
            except SystemExit as error:  # argparse's exit: 0 after --help, 2 on a bad argument
                assert error.code == 0, f"{page.name}: `{line}` is refused by the parser"
                continue
            suite = parsed.suite
            assert suite in available_suites() or suite.endswith(".yaml"), f"{page.name}: no suite {suite!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_m_module_exists(page: Path) -> None:
    for module in set(re.findall(r"python -m ([a-z_][a-z_.]*[a-z_])", page.read_text())):
        if module.split(".")[0] in ("lit_cifar", "ablations"):
            assert importlib.util.find_spec(module) is not None, f"{page.name}: no module {module}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: the link {target} leads nowhere"


def test_the_readme_has_the_quick_check_first_then_the_study_and_ci_runs_the_tests() -> None:
    readme = REPO / "README.md"
    shown = [body.strip() for _, body in blocks(readme, "bash")]
    assert len(shown) == 3, shown
    quick, main_job, tests = shown
    install, check = quick.splitlines()
    assert install.startswith("pip install -e ") and install.split()[-1].strip('"').startswith(".["), install
    assert ablations_run_args(check) == [["--suite", "quick"]], "the first command is the one-minute check"
    assert ablations_run_args(main_job) == [[]], "the main job runs the shipped default"
    install, test_command = (part.strip() for part in tests.split("&&"))
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert f"python -m {install}" in ci and test_command in ci, "CI installs and tests as the README says"


def test_mkdocs_nav_lists_every_page() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, re.M))
    assert listed == {p.name for p in (REPO / "docs").glob("*.md")}
