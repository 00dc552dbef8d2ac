"""The campaign as the published code computes it, ported to NumPy: the baseline.

The published PyTorch code vectorizes over samples and candidates but loops in
Python over classes and over elected neurons, one projection of the group's
residuals per pick. This port keeps that structure (and the fixes of
docs/algorithm.md, so it elects what `nc_jax.campaign_select` elects) and runs
in float32 on NumPy's BLAS; `benchmarks/init_speed.py` times it beside nc_jax.
"""

from __future__ import annotations

import numpy as np

# A norm this small counts as zero: docs/algorithm.md#step-2-scores.
_ZERO_RTOL = 1e-5
# An exhausted residual: docs/algorithm.md#step-4-greedy-null-space-election.
_RESIDUAL_RTOL = 1e-4


def _unit(v: np.ndarray, atol: float) -> np.ndarray:
  norm = np.linalg.norm(v)
  return np.zeros_like(v) if norm <= atol else v / norm


def scores(z: np.ndarray, labels: np.ndarray, alpha: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Step 2 with a loop over classes; returns scores, class means, classes."""
  atol = _ZERO_RTOL * np.linalg.norm(np.sqrt((z * z).mean(0)))
  div = _unit(z.std(0, ddof=1), atol)
  classes = np.unique(labels)
  members = [z[labels == c] for c in classes]
  mu = np.stack([zc.mean(0) for zc in members])
  if len(classes) < 2:
    return div, mu, classes
  sd = np.stack([zc.std(0, ddof=1) if len(zc) > 1 else np.zeros(z.shape[1],
                                                                 z.dtype)
                 for zc in members])
  acc = _unit(_unit(mu.std(0, ddof=1), atol) - _unit(sd.mean(0), atol),
              _ZERO_RTOL)
  return alpha * div + (1 - alpha) * acc, mu, classes


def quotas(sizes: list[int], k: int) -> list[int]:
  """Step 3, the published water filling (`get_split_strategy_`)."""
  out, remaining, left = [0] * len(sizes), k, len(sizes)
  for g in sorted(range(len(sizes)), key=lambda g: (sizes[g], g)):
    out[g] = min(sizes[g], remaining // left)
    remaining, left = remaining - out[g], left - 1
  return out


def elect(w: np.ndarray, s: np.ndarray, groups: np.ndarray, k: int,
          num_groups: int) -> list[int]:
  """Step 4: per group, a Python loop over picks, projecting all residuals."""
  shifted = s - min(s.min(), 0)
  out = []
  for g, q in enumerate(quotas(np.bincount(groups, minlength=num_groups)
                               .tolist(), k)):
    index = np.flatnonzero(groups == g)
    wg = w[:, index]
    norm = np.linalg.norm(wg, axis=0)
    residual = wg.copy()
    eligible = np.ones(len(index), bool)
    for _ in range(q):
      r_norm = np.linalg.norm(residual, axis=0)
      value = np.where(r_norm <= _RESIDUAL_RTOL * norm, 0.0,
                       shifted[index] * r_norm / np.where(norm > 0, norm, 1))
      value = np.where(eligible, value, -np.inf)
      best = int(np.argmax(value))
      if value[best] > 0:
        u = residual[:, best] / r_norm[best]
        residual -= np.outer(u, u @ residual)
      else:  # exhausted: best unshifted score, no projection
        best = int(np.argmax(np.where(eligible, s[index], -np.inf)))
      eligible[best] = False
      out.append(int(index[best]))
  return out


def campaign_select(x: np.ndarray, labels: np.ndarray, w: np.ndarray, k: int,
                    alpha: float, num_classes: int) -> list[int]:
  """Steps 1-4, class-balanced, ReLU, zero bias; the elected indices.

  Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 20), np.float32)
    >>> w = rng.standard_normal((20, 50), np.float32)
    >>> len(set(campaign_select(x, np.arange(64) % 4, w, 10, 0.5, 4)))
    10
  """
  z = np.maximum(x @ w, 0)
  s, mu, classes = scores(z, labels, alpha)
  groups = classes[np.argmax(mu, axis=0)]
  return elect(w, s, groups, k, num_classes)
