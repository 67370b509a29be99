"""The README and the pages under docs/: every relative link and anchor resolves, the README
fits on two screens and gives exactly the test command CI runs, and docs/layout.md names every
module and script (and nothing that does not exist). Reads text only; imports no JAX."""

from __future__ import annotations

import pathlib
import re
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LAYOUT = DOCS / "layout.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, text) of the lines outside fenced code blocks."""
  lines, fenced = [], False
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      lines.append((number, line))
  return lines


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = CODE_SPAN.sub(lambda m: m.group(2), heading)
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
  text = re.sub(r"<[^>]+>", "", text).strip().lower()
  kept = "".join(c for c in text
                 if c in " -_" or unicodedata.category(c)[0] in "LNM")
  return kept.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
  anchors, seen = set(), {}
  for _, line in _prose_lines(path):
    match = HEADING.match(line)
    if not match:
      continue
    slug = _slug(match.group(2))
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    anchors.add(slug if count == 0 else f"{slug}-{count}")
  return anchors


def _links(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, target) of every relative link outside code."""
  found = []
  for number, line in _prose_lines(path):
    line = CODE_SPAN.sub("code", line)
    for target in LINK.findall(line):
      if not SCHEME.match(target):
        found.append((number, target))
  return found


def _name(path: pathlib.Path) -> str:
  return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_and_anchor_resolves(page):
  assert page.exists()
  broken = []
  for number, target in _links(page):
    file_part, _, anchor = target.partition("#")
    destination = (page.parent / file_part).resolve() if file_part else page
    where = f"{_name(page)}:{number}: {target}"
    if not destination.exists():
      broken.append(f"{where}: no such file")
    elif anchor:
      if destination.suffix != ".md":
        broken.append(f"{where}: an anchor into a file that is not Markdown")
      elif anchor not in _anchors(destination):
        broken.append(f"{where}: no heading with the anchor #{anchor} in {_name(destination)}")
  assert not broken, "\n".join(broken)


def test_the_pages_link_to_each_other():
  """Every page under docs/ is reachable from the README, directly or through docs/README.md."""
  linked = set()
  for page in (README, DOCS / "README.md"):
    for _, target in _links(page):
      file_part = target.partition("#")[0]
      if file_part:
        linked.add((page.parent / file_part).resolve())
  missing = [_name(p) for p in DOCS.glob("*.md") if p.resolve() not in linked]
  assert not missing, f"pages no index links to: {missing}"


def test_readme_fits_on_two_screens():
  lines = README.read_text(encoding="utf-8").splitlines()
  assert len(lines) <= MAX_README_LINES, (
      f"README.md has {len(lines)} lines; at most {MAX_README_LINES}: move detail to docs/")


def _ci_test_command() -> str:
  commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
              if re.match(r"\s*(python3? -m )?pytest\b", line)]
  assert len(commands) == 1, f".ci/run should run pytest exactly once, found {commands}"
  return commands[0]


def test_readme_gives_exactly_the_test_command_ci_runs():
  command = _ci_test_command()
  assert command == "python3 -m pytest -q -n auto --dist loadfile"  # what the README promises
  text = README.read_text(encoding="utf-8")
  code_lines, fenced = [], False
  for line in text.splitlines():
    if FENCE.match(line):
      fenced = not fenced
    elif fenced:
      code_lines.append(line.strip())
  assert command in code_lines, f"README.md's code blocks lack CI's test command {command!r}"
  assert ".ci/run" in text and "CI runs" in text, "README.md should say that CI runs it"


# What docs/layout.md must map: every module and script in these folders.
MAPPED_FOLDERS = ("m3oe_jax", "benchmarks", "launch", "tests", "notebooks",
                  "reproduce")  # configs/: a link
MAPPED_SUFFIXES = (".py", ".sh", ".sbatch", ".ipynb")
SKIPPED_PARTS = {"__pycache__", "assets", "testdata", ".ipynb_checkpoints"}


def _mapped_files() -> list[pathlib.Path]:
  files = []
  for folder in MAPPED_FOLDERS:
    for path in sorted((ROOT / folder).rglob("*")):
      parts = set(path.relative_to(ROOT).parts)
      if path.is_file() and path.suffix in MAPPED_SUFFIXES and not parts & SKIPPED_PARTS:
        files.append(path)
  return files


def _layout_names() -> set[str]:
  return {m.group(2) for m in CODE_SPAN.finditer(LAYOUT.read_text(encoding="utf-8"))}


def test_layout_names_every_module_and_script():
  """A file is named by its path; a file other than `__init__.py` or `__main__.py` may also be
  named by its file name alone (the rows of tests/models/ and tests/data/)."""
  names = _layout_names()
  missing = [_name(p) for p in _mapped_files()
             if _name(p) not in names
             and (p.name in ("__init__.py", "__main__.py") or p.name not in names)]
  assert not missing, ("docs/layout.md does not mention these files; add a row (or the name to "
                       f"its folder's row): {missing}")


def test_layout_names_only_files_that_exist():
  existing = {_name(p) for p in _mapped_files()} | {p.name for p in _mapped_files()}
  stale = []
  for name in sorted(_layout_names()):
    if name.startswith(tuple(f"{f}/" for f in MAPPED_FOLDERS)):
      if not (ROOT / name.rstrip("/")).exists():
        stale.append(name)
    elif re.fullmatch(r"[\w.-]+\.(py|sh|sbatch|ipynb)", name) and name not in existing:
      stale.append(name)
  assert not stale, f"docs/layout.md names files that do not exist: {stale}"


def test_install_lines_use_the_pinned_jax():
  pinned = re.search(r"^jax==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
  pages = [README, *sorted(DOCS.glob("*.md"))]
  named = {(page.name, version) for page in pages
           for version in re.findall(r"jax\[\w+\]==([\w.]+)", page.read_text(encoding="utf-8"))}
  assert named and all(version == pinned for _, version in named), (pinned, named)
