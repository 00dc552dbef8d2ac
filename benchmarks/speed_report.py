"""init_speed's results: the markdown tables, the JSON and the plot."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from benchmarks import memory as memory_lib
from benchmarks import reports
from benchmarks import speed_cases
from benchmarks import timing

COLUMNS = ("shape", "m", "N", "chunk", "plain ms", "chunked ms",
           "floor spread", "campaign ms", "campaign median ms", "ratio",
           "median ratio", "target", "verdict", "compile s", "peak MB",
           "NumPy port ms", "speed-up")


ELECTION_COLUMNS = ("fan_in", "fan_out", "N", "groups", "election ms",
                    "floor ms", "election / floor")


RESULT_FILES = ("init_speed.md", "init_speed.json", "init_speed.png")


def _cell(value: Any) -> str:
  if value is None:
    return "–"
  return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                 columns: Sequence[str] = COLUMNS) -> str:
  """Formats rows as a markdown table under one line per `info` entry."""
  return "\n".join([
      *(f"{k}: {v}  " for k, v in info.items()), "",
      reports.markdown_table(columns, ([_cell(r[c]) for c in columns]
                                       for r in rows))]) + "\n"


def plot_times(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Log-log plot of warm time against m, campaign and floor, per shape."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for i, shape in enumerate(dict.fromkeys(r["shape"] for r in rows)):
    mine = sorted((r for r in rows if r["shape"] == shape),
                  key=lambda r: r["m"])
    m = [r["m"] for r in mine]
    color = f"C{i}"
    ax.plot(m, [r["campaign ms"] for r in mine], "o-", color=color,
            label=f"{shape} campaign")
    ax.plot(m, [min(r["plain ms"], r["chunked ms"]) for r in mine], "s--",
            color=color,
            label=f"{shape} floor")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("rows m")
  ax.set_ylabel("warm time, ms")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


METHOD = (
    "Method: in one process, after a first call of each, {repeats} rounds "
    "interleave the plain floor (one jitted `relu(responses).sum`, over the "
    "rows, or for a conv over each image's positions), the "
    "chunked floor (the same over the campaign's row chunks, a `lax.scan`) "
    "and the campaign as a user calls it, `campaign_init(x, y)(key, shape)` "
    "with a new key each round. ms columns are mins; ratio = campaign min / "
    "the faster floor's min; median ratio = the medians'; floor spread = the "
    "faster floor's max / min; a row with a target is judged only when that "
    "spread is at most {noisy} (else \"noisy\"); compile s = the first call "
    "minus the campaign's min.")


def write_results(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                  out: str | os.PathLike[str],
                  election: Sequence[dict[str, Any]] = (),
                  memory: Sequence[dict[str, Any]] = (),
                  chunks: Sequence[dict[str, Any]] = (),
                  repeats: int = 7) -> str:
  """Writes `init_speed.md`, `.json` and `.png` (time against m) into `out`.

  Args:
    rows: the speed table's rows.
    info: the machine info.
    out: the output directory, created if missing.
    election: the election table's rows, if measured.
    memory: the memory-scaling table's rows, if measured.
    chunks: the chunk-size table's rows, if measured.
    repeats: the rounds each row was measured with, for the method line.

  Returns:
    The markdown.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  text = (format_table(rows, info) + "\n"
          + METHOD.format(repeats=repeats, noisy=timing.NOISY_SPREAD) + "\n")
  if chunks:
    text += ("\nThe campaign's chunk size (rows scored at a time; m: the "
             "whole batch at once), same method:\n\n"
             + format_table(chunks, {}).lstrip("\n"))
  if election:
    text += ("\nThe election alone (Steps 3-4) against the floor at "
             f"m = {speed_cases.ELECTION_FLOOR_ROWS:,}:\n\n"
             + format_table(election, {}, ELECTION_COLUMNS).lstrip("\n"))
  if memory:
    text += ("\nPeak working memory (batch excluded), each in a fresh "
             "process: default chunks against the whole batch at once:\n\n"
             + format_table(memory, {}, memory_lib.MEMORY_COLUMNS).lstrip("\n"))
  md, js, png = (out / name for name in RESULT_FILES)
  md.write_text(text)
  js.write_text(json.dumps(
      {"machine": info, "method": METHOD.format(repeats=repeats,
                                                noisy=timing.NOISY_SPREAD),
       "columns": COLUMNS, "rows": list(rows), "chunks": list(chunks),
       "election_columns": ELECTION_COLUMNS, "election": list(election),
       "memory_columns": memory_lib.MEMORY_COLUMNS, "memory": list(memory)},
      indent=2) + "\n")
  plot_times(rows, png)
  return text
