"""What a whole-model walk did, layer by layer: `WalkReport`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import jax
import numpy as np

from nc_jax._src import placement
from nc_jax._src import scores as scores_lib
from nc_jax._src import validation

# Columns of the table: (key, heading), in order; a column shows when any
# row has it.
_COLUMNS = (
    ("path", "layer"),
    ("kernel_shape", "kernel"),
    ("candidates", "candidates"),
    ("elected", "elected"),
    ("whitened", "whitened"),
    ("score_elected", "median score elected"),
    ("score_all", "median score all"),
    ("std_before", "output std before"),
    ("std_after", "output std after"),
    ("dropped", "criteria dropped"),
    ("lsuv_iterations", "LSUV rescalings"),
    ("converged", "converged"),
    ("seconds", "seconds"),
)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class WalkReport:
  """One row per weight layer a whole-model walk set, in call order.

  Returned by `campaign_linen`, `campaign_nnx`, `lsuv_linen` and `lsuv_nnx`
  with `report=True`. `print(report)` shows a table; `report.rows()` gives a
  list of dicts (for notebooks and DataFrames). A report is a pytree, so it
  can leave the caller's `jax.jit`; its values are then arrays and
  `seconds` is NaN (a compiled caller's layers cannot be timed one by one).

  Row keys (a row has those its walk measures):
    path, kernel_shape: the layer and its kernel.
    candidates, elected: the campaign's N and fan_out.
    whitened: for a layer given `whitening_init` (`whiten=`), its method and
      patch dimension d.
    score_elected, score_all: the median score of the elected candidates and
      of all candidates.
    std_before, std_after: the standard deviation of the layer's output on
      the batch with its kernel before (the model's init) and after the walk.
    dropped: the campaign criteria that carried no information ("input",
      "label", or "N overflowed"), or "".
    lsuv_iterations, converged: LSUV's rescalings and whether the output
      variance ended within `tol` of 1.
    seconds: the time from the previous layer's kernel to this one's in the
      compiled walk (the first layer's counts from the call's start, so on a
      first call it includes the compilation).
  """
  static: tuple[tuple[tuple[str, Any], ...], ...]
  values: tuple[dict[str, Any], ...]

  def tree_flatten(self):
    return (self.values,), self.static

  @classmethod
  def tree_unflatten(cls, static, children):
    return cls(static, *children)

  @classmethod
  def build(cls, plan: Any, rule: Any, values: Sequence[Mapping[str, Any]],
            seconds: Sequence[float] | None) -> WalkReport:
    """The report of `rule`'s walk over `plan` (`traversal.Plan`, `Rule`)."""
    static = []
    for i, spec in enumerate(plan.layers):
      row = {
          "path":
              spec.path,
          "kernel_shape":
              spec.kernel_shape,
          **rule.describe(spec), "seconds":
              math.nan if seconds is None else float(seconds[i])
      }
      static.append(tuple(row.items()))
    return cls(tuple(static), tuple(dict(row) for row in values))

  @property
  def concrete(self) -> bool:
    return all(
        placement.is_concrete(v) for row in self.values for v in row.values())

  def rows(self) -> list[dict[str, Any]]:
    """The rows as dicts of Python values."""
    out = []
    for static, values in zip(self.static, self.values, strict=True):
      row = dict(static)
      for key, value in values.items():
        if key in ("dropped_input", "dropped_label", "overflowed"):
          continue
        row[key] = (
            value.tolist()
            if self.concrete and hasattr(value, "tolist") else value)
      if "dropped_input" in values:
        row["dropped"] = _dropped(values) if self.concrete else None
      out.append({k: row[k] for k, _ in _COLUMNS if k in row})
    return out

  def __str__(self) -> str:
    rows = self.rows()
    columns = [(k, h) for k, h in _COLUMNS if any(k in r for r in rows)]
    cells = [[h for _, h in columns]
            ] + [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w)
                  for c, w in zip(line, widths)).rstrip()
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

  def check(self) -> None:
    """Raises for a layer whose input held NaN or infinite values, or whose
    bias the campaign could not score with, and warns, naming the layer,
    about every criterion that dropped out and every layer LSUV left short of
    unit variance; silent under tracing."""
    if not self.concrete:
      return
    for static, values in zip(self.static, self.values, strict=True):
      path = dict(static)["path"]
      where = f"layer {path!r}: "
      if "input_finite" in values and not bool(values["input_finite"]):
        raise ValueError(
            f"layer {path!r} receives NaN or infinite values on this batch "
            "although `x` is finite (what the model computes before it "
            "overflowed or made NaN), so its kernel cannot be scored; scale "
            f"`x` down, or check the model's computation before {path!r}.")
      if "bias_constant" in values and not bool(values["bias_constant"]):
        raise ValueError(
            f"layer {path!r} starts with a non-constant bias; the campaign "
            "scores candidates with one bias for all neurons, so give the "
            "layer a constant `bias_init` (zeros, as published) or leave it "
            "out with `layers=`.")
      if "dropped_input" in values:
        scores_lib.warn_if_dropped(
            scores_lib.Dropped(values["dropped_input"], values["dropped_label"],
                               values["overflowed"]), where)
      if "converged" in values and not bool(values["converged"]):
        variance = float(values["variance"])
        if not math.isfinite(variance):
          why = (f"has output variance {variance} on the batch (NaN or "
                 "infinite values although `x` is finite: the model's "
                 "computation up to this layer's output overflowed or made "
                 "NaN); its kernel is kept unscaled")
        elif variance == 0.0:
          why = ("has output variance 0 on the batch (dead or constant "
                 "input); its kernel is kept unscaled")
        else:
          why = (f"ends with output variance {variance:.8g} after "
                 f"{int(values['lsuv_iterations'])} rescalings, not within "
                 "`tol` of 1; raise `max_iters` or `tol`")
        validation.warn(f"LSUV: {where}{why}.")


def _dropped(values: Mapping[str, Any]) -> str:
  parts = [
      name for name in ("input", "label") if bool(values[f"dropped_{name}"])
  ]
  if int(values["overflowed"]):
    parts.append(f"{int(values['overflowed'])} overflowed")
  return ", ".join(parts)


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, bool):
    return "yes" if value else "NO"
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.4g}"
  if isinstance(value, tuple):
    return "x".join(map(str, value))
  if isinstance(value, np.ndarray | jax.Array):
    return "traced"
  return str(value)
