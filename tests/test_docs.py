"""The documentation's examples run, and its links lead somewhere.

Every ```python block of README.md and docs/*.md is executed, so that a
documented example cannot fail for a user while the suite passes. The blocks
of one page build on each other, so each page runs in order in one fresh
Python process, from the repository root, on 4 CPU devices (multi-device
examples run there as written). The one exception is a block that needs
several processes (`jax.distributed.initialize()`): it is marked in the
markdown with `MULTI_PROCESS_MARK` on the line directly above its fence, and
the number of marked blocks is pinned, so nothing else can opt out unseen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MULTI_PROCESS_MARK = "<!-- docs-test: multi-process -->"
# The multi-host example of docs/scaling.md.
KNOWN_MULTI_PROCESS_BLOCKS = 1
ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
       "JAX_PLATFORMS": "cpu"}
TIMEOUT_S = 900
STDERR_TAIL = 4000

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")


@dataclasses.dataclass(frozen=True)
class Block:
  """One fenced code block of a page."""
  page: pathlib.Path
  line: int  # 1-based line of the block's first line of code
  end: int  # 1-based line of its closing fence
  language: str
  source: str
  multi_process: bool  # marked with MULTI_PROCESS_MARK

  @property
  def where(self) -> str:
    return f"{_rel(self.page)}:{self.line}"


def _rel(path: pathlib.Path) -> str:
  return path.relative_to(ROOT).as_posix()


def _blocks(page: pathlib.Path) -> list[Block]:
  """The fenced code blocks of a markdown page, in order."""
  lines = page.read_text(encoding="utf-8").splitlines()
  blocks, i = [], 0
  while i < len(lines):
    opening = _FENCE.match(lines[i])
    if not opening:
      i += 1
      continue
    fence, language = opening.group(1), opening.group(2).lower()
    end = i + 1
    while end < len(lines) and not re.match(
        rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]):
      end += 1
    blocks.append(Block(
        page=page, line=i + 2, end=end + 1, language=language,
        source="\n".join(lines[i + 1:end]) + "\n",
        multi_process=i > 0 and lines[i - 1].strip() == MULTI_PROCESS_MARK))
    i = end + 1
  return blocks


def _outside_code(page: pathlib.Path) -> list[tuple[int, str]]:
  """`(line number, text)` of the page's lines outside fenced code blocks."""
  lines = page.read_text(encoding="utf-8").splitlines()
  inside = set()
  for block in _blocks(page):  # the fences and the code between them
    inside.update(range(block.line - 1, block.end + 1))
  return [(n, text) for n, text in enumerate(lines, start=1)
          if n not in inside]


# Runs the blocks sent on stdin in one namespace. Each block is compiled with
# the page as its file name and padded to its line in the page, so a
# traceback points at the markdown source.
_DRIVER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
  print("docs-test: running " + block["where"], file=sys.stderr, flush=True)
  code = compile("\n" * (block["line"] - 1) + block["source"], block["page"],
                 "exec")
  try:
    exec(code, namespace)
  except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    sys.exit(1)
print("docs-test: done", file=sys.stderr, flush=True)
"""


def _python_pages() -> list[pathlib.Path]:
  return [page for page in PAGES
          if any(b.language == "python" for b in _blocks(page))]


def _last_started(stderr: str) -> str:
  started = re.findall(r"^docs-test: running (\S+)$", stderr, re.MULTILINE)
  return started[-1] if started else "before the first block"


@pytest.mark.parametrize("page", _python_pages(), ids=_rel)
def test_python_blocks_run(page):
  runnable = [b for b in _blocks(page)
              if b.language == "python" and not b.multi_process]
  payload = json.dumps([{"page": _rel(b.page), "line": b.line,
                         "source": b.source, "where": b.where}
                        for b in runnable])
  try:
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER], input=payload, cwd=ROOT,
        env={**os.environ, **ENV}, capture_output=True, text=True,
        timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired as error:
    stderr = error.stderr or ""
    stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    pytest.fail(
        f"{_rel(page)}: no end after {TIMEOUT_S} s; the block at "
        f"{_last_started(stderr)} was running. stderr tail:\n"
        f"{stderr[-STDERR_TAIL:]}")
  if proc.returncode != 0 or "docs-test: done" not in proc.stderr:
    pytest.fail(
        f"the python block at {_last_started(proc.stderr)} failed (exit "
        f"{proc.returncode}; blocks of {_rel(page)} run in order in one "
        f"process). stderr tail:\n{proc.stderr[-STDERR_TAIL:]}")


def test_only_known_blocks_skip():
  marked, stray = [], []
  for page in PAGES:
    marked += [b.where for b in _blocks(page) if b.multi_process]
    fences = {b.line - 1 for b in _blocks(page) if b.language == "python"}
    lines = page.read_text(encoding="utf-8").splitlines()
    stray += [f"{_rel(page)}:{n}" for n, text in enumerate(lines, start=1)
              if "docs-test:" in text and (
                  text.strip() != MULTI_PROCESS_MARK or n + 1 not in fences)]
  assert not stray, (
      f"docs-test marks that are not `{MULTI_PROCESS_MARK}` directly above a "
      f"```python fence: {stray}")
  assert len(marked) == KNOWN_MULTI_PROCESS_BLOCKS, (
      f"{len(marked)} blocks are marked multi-process and skipped ({marked}); "
      f"expected {KNOWN_MULTI_PROCESS_BLOCKS}. Only an example that needs "
      "several processes may skip; make any other example run.")


def _slug(heading: str) -> str:
  """The anchor GitHub gives a heading."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: text
  text = re.sub(r"<[^>]+>", "", text).strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
  anchors, seen = set(), {}
  for _, text in _outside_code(page):
    heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", text)
    if heading:
      slug = _slug(heading.group(1))
      count = seen.get(slug, 0)
      seen[slug] = count + 1
      anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", text))
  return anchors


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")


def _links(page: pathlib.Path) -> list[tuple[int, str]]:
  """`(line, target)` of the page's markdown links, code excluded."""
  found = []
  for n, text in _outside_code(page):
    text = re.sub(r"(`+).*?\1", "", text)  # inline code spans
    found += [(n, target) for target in _LINK.findall(text)]
    found += [(n, target) for target in _REFERENCE.findall(text)]
  return found


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
  broken = []
  for n, target in _links(page):
    if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
      continue  # external (https:, mailto:) or empty
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    where = f"{_rel(page)}:{n}: ({target})"
    if not dest.is_relative_to(ROOT):
      broken.append(f"{where} leaves the repository")
    elif not dest.exists():
      broken.append(f"{where} names no file")
    elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
      broken.append(f"{where} names no heading of {_rel(dest)}")
  assert not broken, "broken links:\n" + "\n".join(broken)
