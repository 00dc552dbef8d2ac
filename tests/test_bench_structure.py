"""The benchmarks' layout: entry scripts over shared modules and nc_jax's
public API only."""

import ast
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
ENTRY_SCRIPTS = ("mnist_mlp", "mnist_cnn", "ablation", "init_speed",
                 "model_speed")


def imported_modules(source: str) -> set[str]:
  """Every module an import statement in `source` names, with `from a import
  b` giving both `a` and `a.b`."""
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def sources() -> dict[str, str]:
  """Each benchmark module's and notebook code cell's source, by name."""
  out = {str(p.relative_to(ROOT)): p.read_text()
         for p in sorted(BENCHMARKS.rglob("*.py"))}
  for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    cells = json.loads(notebook.read_text())["cells"]
    for i, cell in enumerate(cells):
      if cell["cell_type"] == "code":
        # Notebook magics (`%pip ...`) are not Python.
        code = "".join(cell["source"])
        out[f"{notebook.relative_to(ROOT)} cell {i}"] = "\n".join(
            line for line in code.splitlines()
            if not line.lstrip().startswith(("%", "!")))
  return out


def test_the_sources_are_found():
  names = sources()
  for script in ENTRY_SCRIPTS:
    assert f"benchmarks/{script}.py" in names
  assert any(name.startswith("notebooks/quickstart.ipynb") for name in names)
  assert "benchmarks.training" in imported_modules(
      names["benchmarks/mnist_mlp.py"])


@pytest.mark.parametrize("name", sorted(sources()))
def test_only_the_public_api_of_nc_jax(name):
  source = sources()[name]
  private = {m for m in imported_modules(source)
             if m == "nc_jax._src" or m.startswith("nc_jax._src.")}
  assert not private and "_src" not in source


@pytest.mark.parametrize("name", sorted(sources()))
def test_no_entry_script_is_imported(name):
  entries = {f"benchmarks.{script}" for script in ENTRY_SCRIPTS}
  assert not imported_modules(sources()[name]) & entries


class _Parsed(Exception):
  """Raised in place of parsing, carrying the entry script's parser."""


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_every_option_of_every_entry_script_has_help(script, monkeypatch):
  import argparse
  import importlib

  def capture(parser, *args, **kwargs):
    raise _Parsed(parser)

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
  module = importlib.import_module(f"benchmarks.{script}")
  with pytest.raises(_Parsed) as parsed:
    module.parse_args([])
  parser = parsed.value.args[0]
  silent = [action.option_strings for action in parser._actions
            if not action.help]
  assert not silent
