"""The documentation is self-contained and in step with CI and packaging.

* every relative link in README.md, docs/*.md, benchmarks/README.md and
  deploy/README.md names a file inside the repository (and, for ``#anchor``
  links to a Markdown file, one of its headings);
* README.md stays a front page: at most 160 lines, with the install and test
  commands verbatim, and its test command is the one ``.ci/run`` runs;
* the licence text is in the repository and declared for the wheel and sdist.

These read the source tree, so they are skipped (saying why) when the tests
run without it beside them.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

INSTALL_COMMAND = "pip install . && trio-asr serve"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest'
MAX_README_LINES = 160

pytestmark = pytest.mark.skipif(
    not README.is_file(), reason=f"no README.md in {ROOT}: the tests run without the source tree beside them"
)


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown pages whose links are checked."""
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    pages += [root / "benchmarks" / "README.md", root / "deploy" / "README.md"]
    return [page for page in pages if page.is_file()]


# ------------------------------------------------------------ Markdown


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside code blocks, inline code removed."""
    lines = []
    fence: str | None = None
    previous_blank = True
    in_indented = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        blank = not line.strip()
        # an indented code block starts after a blank line (not inside a list item's text)
        if line.startswith(("    ", "\t")) and (previous_blank or in_indented) and not blank:
            in_indented = True
            continue
        if not blank:
            in_indented = False
        previous_blank = blank
        lines.append((number, re.sub(r"`[^`]*`", "", line)))
    return lines


_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference link in prose.

    Link text may wrap onto the next line, so each line is also read joined
    with the one after it."""
    found: list[tuple[int, str]] = []
    lines = prose_lines(text)
    seen: set[tuple[int, int, str]] = set()
    for i, (number, line) in enumerate(lines):
        following = lines[i + 1][1] if i + 1 < len(lines) else ""
        joined = line + " " + following
        for match in _INLINE_LINK.finditer(joined):
            if match.start() >= len(line):
                continue  # belongs to the next line; found there
            key = (number, match.start(), match.group(1))
            if key not in seen:
                seen.add(key)
                found.append((number, match.group(1)))
        match = _REFERENCE_LINK.match(line)
        if match:
            found.append((number, match.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    kept = [ch for ch in text if ch in " -" or unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc"]
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown page's headings (duplicates get -1, -2, ...)."""
    result: set[str] = set()
    counts: dict[str, int] = {}
    fence: str | None = None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of ``page``, one line each."""
    problems = []
    text = page.read_text(encoding="utf-8")
    where = page.relative_to(root)
    for number, target in links(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # https:, mailto:, ...: not a file of ours
        path_part, _, anchor = target.partition("#")
        if path_part:
            resolved = (page.parent / path_part).resolve()
            if not resolved.is_relative_to(root):
                problems.append(f"{where}:{number}: {target} points outside the repository")
                continue
            if not resolved.exists():
                problems.append(f"{where}:{number}: {target} does not exist")
                continue
        else:
            resolved = page
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{where}:{number}: {target}: no heading with anchor #{anchor} in {resolved.name}")
    return problems


# ------------------------------------------------------------ the checks


@pytest.mark.parametrize("page", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_at_files_outside_the_clone(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared/" not in text, f"{page.relative_to(ROOT)} mentions ../shared/, which a clone does not have"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in links(README.read_text(encoding="utf-8"))
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and target.partition("#")[0]
    }
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert missing == [], f"docs pages the README does not link: {missing}"


def test_readme_is_a_front_page_with_both_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; reference material belongs in docs/"
    assert INSTALL_COMMAND in text
    assert TEST_COMMAND in text


def command_lines(text: str) -> list[str]:
    """The stripped lines of indented or fenced code blocks."""
    prose = {number for number, _ in prose_lines(text)}
    return [
        line.strip()
        for number, line in enumerate(text.splitlines(), 1)
        if number not in prose and line.strip() and not line.lstrip().startswith(("```", "~~~"))
    ]


def ci_test_command(script: str) -> str:
    """The last command of ``.ci/run``: the test command it runs."""
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return commands[-1]


def test_ci_runs_exactly_the_readme_test_command():
    if not CI_RUN.is_file():
        pytest.skip(f"no {CI_RUN} (not a checkout of the repository)")
    readme_tests = [line for line in command_lines(README.read_text(encoding="utf-8")) if "pytest" in line]
    assert len(readme_tests) == 1, f"README.md should give one test command, gives {readme_tests}"
    assert ci_test_command(CI_RUN.read_text(encoding="utf-8")) == readme_tests[0]


def test_the_licence_is_in_the_repository_and_shipped():
    licence = ROOT / "LICENSE"
    assert licence.is_file()
    text = licence.read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip(f"no {pyproject}")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    assert project.get("license") == "Apache-2.0"
    assert "LICENSE" in project.get("license-files", [])
    manifest = ROOT / "MANIFEST.in"
    if manifest.is_file():
        assert re.search(r"^include\s+(.*\s)?LICENSE(\s|$)", manifest.read_text(encoding="utf-8"), re.M)


# ------------------------------------------------------------ the checker itself


def test_the_link_checker_finds_broken_links(tmp_path):
    """Each kind of broken link is reported; good ones, code and URLs are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[good](other.md) [good anchor](other.md#a-code-heading) [self](#page)\n"
        "[web](https://example.com/x.md) `[code](missing.md)`\n\n"
        "    [indented code](missing.md)\n\n"
        "[missing](missing.md) [bad anchor](other.md#nope)\n"
        "[outside](../../shared/spec/protocol.md) [wrapped\ntext](gone.md)\n"
        "[ref]: also-missing.md\n"
    )
    problems = broken_links(page, tmp_path)
    assert [p.split(": ", 1)[1].split(" ", 1)[0] for p in problems] == [
        "missing.md",
        "other.md#nope:",
        "../../shared/spec/protocol.md",
        "gone.md",
        "also-missing.md",
    ], problems


def test_slugs_follow_github():
    assert slug("A second `start` while streaming") == "a-second-start-while-streaming"
    assert slug("bench_long_stream.py: an hour-long stream") == "bench_long_streampy-an-hour-long-stream"
    assert slug("`trio-asr transcribe`") == "trio-asr-transcribe"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_ci_command_is_the_last_command():
    assert ci_test_command("set -e\n# run:\npip install x && pytest\n\n# end\n") == "pip install x && pytest"
