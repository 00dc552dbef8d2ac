"""A float64 NumPy reference of docs/algorithm.md, written from it with plain loops.

Deliberately independent of the package: no shared code, no vectorized
tricks, the formulas as docs/algorithm.md states them.
"""

import math

import numpy as np

ZERO_RTOL = 1e-5  # a criterion is zero at this fraction of its candidate's RMS
RESIDUAL_RTOL = 1e-4  # Step 4 fix: exhausted residuals


def unit(v, atol):
  norm = math.sqrt(sum(float(e) ** 2 for e in v))
  if norm <= atol:
    return np.zeros(len(v))
  return np.array([float(e) / norm for e in v])


def std(values):
  values = [float(v) for v in values]
  if len(values) < 2:
    return 0.0
  mean = sum(values) / len(values)
  return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def scores(z, labels, alpha):
  """Step 2. Returns (scores, class means or None, present class ids)."""
  z = np.asarray(z, np.float64)
  m, n = z.shape
  rms = [math.sqrt(sum(z[i, j] ** 2 for i in range(m)) / m) for j in range(n)]

  def resolved(v):  # zero where at most ZERO_RTOL of the candidate's own RMS
    return [v[j] if v[j] > ZERO_RTOL * rms[j] else 0.0 for j in range(n)]

  div = unit(resolved([std(z[:, j]) for j in range(n)]), 0.0)
  if labels is None:
    return div, None, []
  labels = np.asarray(labels)
  present = sorted(set(int(c) for c in labels))
  mu = {c: [float(np.mean(z[labels == c, j])) for j in range(n)] for c in present}
  if len(present) < 2:
    return div, mu, present
  between = [std([mu[c][j] for c in present]) for j in range(n)]
  within = [sum(std(z[labels == c, j]) for c in present) / len(present)
            for j in range(n)]
  b, w = unit(resolved(between), 0.0), unit(resolved(within), 0.0)
  acc = unit([b[j] - w[j] for j in range(n)], ZERO_RTOL)
  return np.array([alpha * div[j] + (1 - alpha) * acc[j] for j in range(n)]), mu, present


def quotas(sizes, k):
  """Step 3 water filling, as the published get_split_strategy_."""
  order = sorted(range(len(sizes)), key=lambda g: (sizes[g], g))
  out = [0] * len(sizes)
  remaining, left = k, len(sizes)
  for g in order:
    share = remaining // left
    out[g] = sizes[g] if sizes[g] <= share else share
    remaining -= out[g]
    left -= 1
  return out


def elect(w, s, groups, k, num_groups):
  """Step 4 inside each group, output in Step 5's order."""
  w = np.asarray(w, np.float64)
  s = np.asarray(s, np.float64)
  shifted = s - s.min() if s.min() < 0 else s.copy()
  sizes = [sum(1 for g in groups if g == c) for c in range(num_groups)]
  out = []
  for c, q in enumerate(quotas(sizes, k)):
    members = [j for j in range(len(s)) if groups[j] == c]
    r = {j: w[:, j].copy() for j in members}
    elected = []
    for _ in range(q):
      best, best_value = None, 0.0
      for j in members:
        if j in elected:
          continue
        norm_w = np.linalg.norm(w[:, j])
        norm_r = np.linalg.norm(r[j])
        value = 0.0 if norm_r <= RESIDUAL_RTOL * norm_w else shifted[j] * norm_r / norm_w
        if value > best_value:
          best, best_value = j, value
      if best is None:  # residuals exhausted: best unshifted score, no projection
        best = max((j for j in members if j not in elected), key=lambda j: (s[j], -j))
      else:
        u = r[best] / np.linalg.norm(r[best])
        for j in members:
          r[j] = r[j] - u * (u @ w[:, j])
      elected.append(best)
    out.extend(elected)
  return out


def campaign_select(x, labels, w, k, alpha, class_balanced=True,
                    activation=lambda a: np.maximum(a, 0)):
  """Steps 1-4."""
  z = activation(np.asarray(x, np.float64) @ np.asarray(w, np.float64))
  s, mu, present = scores(z, labels, alpha)
  n = z.shape[1]
  if class_balanced and labels is not None:
    num_groups = int(np.max(labels)) + 1
    groups = [max(present, key=lambda c: (mu[c][j], -c)) for j in range(n)]
  else:
    num_groups, groups = 1, [0] * n
  return elect(w, s, groups, k, num_groups)


def conv_patches(images, window, strides, padding, dilation):
  """Explicit patches of a convolution, the way the layer sees its input.

  Args: images `(m, *spatial, C)`; `window`, `strides`, `dilation` per
  spatial axis; `padding` "SAME", "VALID" or `(low, high)` pairs.
  Returns `(m * positions, prod(window) * C)` rows flattened over
  `(*window, C)` in that order (row-major, flax's HWIO), and each row's image
  index.
  """
  images = np.asarray(images, np.float64)
  m, spatial = images.shape[0], images.shape[1:-1]
  span = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
  if padding == "VALID":
    pads = [(0, 0)] * len(spatial)
  elif padding == "SAME":
    pads = []
    for size, s, e in zip(spatial, strides, span):
      out = -(-size // s)
      total = max((out - 1) * s + e - size, 0)
      pads.append((total // 2, total - total // 2))
  else:
    pads = [tuple(p) for p in padding]
  padded = np.pad(images, [(0, 0), *pads, (0, 0)])
  outs = [(size + lo + hi - e) // s + 1
          for size, (lo, hi), e, s in zip(spatial, pads, span, strides)]
  rows, owner = [], []
  for i in range(m):
    for position in np.ndindex(*outs):
      taps = []
      for offset in np.ndindex(*window):
        at = tuple(p * s + o * d for p, s, o, d in
                   zip(position, strides, offset, dilation))
        taps.append(padded[(i, *at)])
      rows.append(np.concatenate(taps))
      owner.append(i)
  return np.array(rows), np.array(owner)


def whitening(patches, features, eps, *, center=True, pairs=True,
              method="pca"):
  """The whitening kernel `(d, features)` of explicit patches `(n, d)`, as
  docs/algorithm.md#patch-whitening states it (at most d directions), and
  the eigenvalues and their eps unit."""
  p = np.asarray(patches, np.float64)
  n, d = p.shape
  if center:
    p = p - p.mean(0)
  cov = p.T @ p / n
  lam, v = np.linalg.eigh(cov)
  lam, v = np.clip(lam[::-1], 0, None), v[:, ::-1].copy()
  for i in range(d):
    peak = max(range(d), key=lambda r: abs(v[r, i]))
    if v[peak, i] < 0:
      v[:, i] = -v[:, i]
  median = float(np.median(lam))
  level = median if median > 0 else float(np.mean(lam))
  denom = lam + eps * level if level > 0 else np.ones(d)
  u = v / np.sqrt(denom)
  if method == "zca":
    u = u @ v.T
  k = -(-features // 2) if pairs else features
  assert k <= d, "the reference covers at most d directions"
  u = u[:, :k]
  if pairs:
    u = np.concatenate([u, -u], axis=1)[:, :features]
  return u, lam, level
