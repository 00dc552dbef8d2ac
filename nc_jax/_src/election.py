"""Steps 3-4 of the campaign: class quotas and the greedy null-space election.

docs/algorithm.md#step-3-class-quotas and
#step-4-greedy-null-space-election. The math of a round (`_choose`,
`_check_picks`, the downdate) comes first; the layout a large election uses
for speed (`_is_large`, `_tiled_layout`) is kept apart from it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
from jax.experimental import checkify
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from nc_jax._src import placement
from nc_jax._src import validation

# Candidate j's residual is exhausted when ||R_j|| <= tol * ||W_j||
# (docs/algorithm.md#tolerances).
_RESIDUAL_RTOL = 1e-4
# A downdated ||R_j||^2 further than this times ||W_j||^2 from the exact value
# triggers an exact recomputation of every residual norm.
_DRIFT_RTOL = 1e-3
# A large election (`_is_large`) projects off its directions in blocks of
# this many, up to the filled ones.
_BASIS_BLOCK = 512
# Elections whose rounds read fewer candidate entries than this in all are
# compile-bound on CPU; larger ones are run-bound (`_is_large`).
_LARGE_ELECTION = 2**30


def _quota_step(
    carry: tuple[jax.Array, jax.Array],
    size: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """One group of the water filling: its size, or its fair share if smaller."""
  remaining, groups_left = carry
  quota = jnp.minimum(size, remaining // jnp.maximum(groups_left, 1))
  return (remaining - quota, groups_left - 1), quota


@functools.partial(jax.jit, static_argnames=("k",))
def _class_quotas(group_sizes: jax.Array, k: int) -> jax.Array:
  # Visiting groups in ascending (size, id) order and giving each
  # min(size, remaining // groups_left) is the published water filling: the
  # sequential floor division hands the remainder's +1s to the last groups.
  order = jnp.argsort(group_sizes, stable=True)
  init = (jnp.asarray(k, group_sizes.dtype),
          jnp.asarray(group_sizes.shape[0], group_sizes.dtype))
  _, quotas = jax.lax.scan(_quota_step, init, group_sizes[order])
  return jnp.zeros_like(quotas).at[order].set(quotas)


def class_quotas(group_sizes: ArrayLike, k: int) -> jax.Array:
  """Splits k elected neurons over groups as evenly as their sizes allow.

  Step 3 of the Neuron Campaign (the published `get_split_strategy_`): groups
  are visited in ascending (size, group id) order; a group smaller than its
  fair share gives all its members, the rest is shared evenly among the
  others, and the remainder's +1s go to the last groups in that order.

  Args:
    group_sizes: int sizes of the groups, shape `(G,)`, summing to >= k.
    k: number of neurons to elect.

  Returns:
    int32 quotas of shape `(G,)`, each at most its group's size, summing to k.

  Raises:
    ValueError: for sizes that are not non-negative ints, a negative k, or
      groups that hold fewer than k candidates.

  Examples:
    >>> import nc_jax
    >>> nc_jax.class_quotas([10, 10, 10], 10)
    Array([3, 3, 4], dtype=int32)
    >>> nc_jax.class_quotas([1, 0, 20, 5], 12)
    Array([1, 0, 6, 5], dtype=int32)
  """
  if not isinstance(group_sizes, jax.Array):
    group_sizes = np.asarray(group_sizes)
  if group_sizes.ndim != 1 or not jnp.issubdtype(group_sizes.dtype,
                                                 jnp.integer):
    raise ValueError(
        f"`group_sizes` must be int sizes of shape (G,), got dtype "
        f"{group_sizes.dtype} and shape {group_sizes.shape}; sizes count "
        "candidates, so pass whole numbers.")
  validation.check_k(k, None)
  if placement.is_concrete(group_sizes):
    values = validation.host_values(group_sizes)
    if values.size and values.min() < 0:
      raise ValueError(
          f"`group_sizes` must be non-negative, got {values.tolist()}.")
    if int(values.sum()) < k:
      raise ValueError(
          f"the groups hold {int(values.sum())} candidates, fewer than k={k}; "
          "draw more candidates or elect fewer neurons.")
  else:
    checkify.debug_check(
        jnp.all(group_sizes >= 0), "`group_sizes` must be non-negative.")
  return _class_quotas(jnp.asarray(group_sizes, jnp.int32), k)


class _ElectionConstants(NamedTuple):
  # Per slot: per candidate, or in a large election per slot of the tiled
  # layout (`_tiled_layout`), whose padding slots hold zero candidates of
  # group G, which no group elects.
  rows: jax.Array  # (S, fan_in) the candidates W_j as rows
  scores: jax.Array  # (S,) unshifted scores, for the exhausted fallback
  shifted: jax.Array  # (S,) scores shifted so the worst is 0
  norm_sq: jax.Array  # (S,) ||W_j||^2
  groups: jax.Array  # (S,) group id of each candidate
  member: jax.Array  # (G, S) bool, groups[j] == g
  tile_group: jax.Array | None  # (T,) each tile's group; None if untiled
  block: int  # directions projected off per product in `_residuals`


class _ElectionState(NamedTuple):
  basis: jax.Array  # (B, fan_in) elected unit directions, in election order
  basis_group: jax.Array  # (B,) each direction's group; -1 for unused rows
  filled: jax.Array  # () directions so far
  residual_sq: jax.Array  # (S,) ||R_j||^2: downdated, refreshed on drift
  eligible: jax.Array  # (S,) bool, not yet elected
  owed: jax.Array  # (G,) picks each group still owes to its quota
  refreshed: jax.Array  # () bool, residual_sq was just recomputed exactly


class _PickCheck(NamedTuple):
  residual: jax.Array  # (G, fan_in) each pick's exact residual
  residual_sq: jax.Array  # (G,) its squared norm
  spent: jax.Array  # (G,) bool, the pick's residual is exhausted
  refresh: jax.Array  # () bool, the round recomputes the norms instead


# The math of a round -------------------------------------------------------


def _residuals(state: _ElectionState, vectors: jax.Array,
               vector_group: jax.Array, block: int) -> jax.Array:
  """Rows of `vectors` minus their projection on their group's directions.

  Classical Gram-Schmidt applied twice ("twice is enough"), which keeps the
  directions orthonormal to working precision. With `block` smaller than the
  basis, only the blocks of directions filled so far are read.
  """

  # The candidates or directions go in front, `(rows, fan_in) @ (fan_in,
  # few)`: the faster orientation on CPU (docs/speed.md).
  def project_off(b, projected, original):
    start = b * block
    basis = jax.lax.dynamic_slice_in_dim(state.basis, start, block)
    same = jax.lax.dynamic_slice_in_dim(state.basis_group, start,
                                        block)[:, None] == vector_group[None, :]
    coefficient = jnp.where(same, placement.exact_matmul(basis, original.T),
                            0.0)
    return projected - placement.exact_matmul(coefficient.T, basis)

  for _ in range(2):
    if block == state.basis.shape[0]:
      vectors = project_off(0, vectors, vectors)
    else:
      vectors = jax.lax.fori_loop(
          0,
          -(-state.filled // block),
          lambda b, v, o=vectors: project_off(b, v, o),
          vectors)
  return vectors


def _choose(consts: _ElectionConstants,
            state: _ElectionState) -> tuple[jax.Array, jax.Array]:
  """Each group's best open candidate by `shifted score * ||R_j|| / ||W_j||`.

  A candidate whose residual is exhausted has value 0; a group with no
  positive value left picks its best unshifted score and projects nothing
  (docs/algorithm.md#exhausted-residuals). Ties go to the lowest slot.

  Returns:
    `(pick, projects)`, each `(G,)`: the slot picked, and whether it has a
    positive value (so its direction is projected off).
  """
  spent = state.residual_sq <= _RESIDUAL_RTOL**2 * consts.norm_sq
  fraction = jnp.where(
      spent, 0.0,
      jnp.sqrt(state.residual_sq /
               jnp.where(consts.norm_sq > 0, consts.norm_sq, 1)))
  open_ = consts.member & state.eligible[None, :]  # (G, S)
  value = jnp.where(open_, (consts.shifted * fraction)[None, :], -jnp.inf)
  best = jnp.argmax(value, axis=1)
  projects = jnp.take_along_axis(value, best[:, None], axis=1)[:, 0] > 0
  fallback = jnp.argmax(
      jnp.where(open_, consts.scores[None, :], -jnp.inf), axis=1)
  return jnp.where(projects, best, fallback), projects


def _check_picks(consts: _ElectionConstants, state: _ElectionState,
                 pick: jax.Array, projects: jax.Array,
                 active: jax.Array) -> _PickCheck:
  """Computes each pick's residual exactly and decides on a refresh.

  The residual norms are downdated round by round; if a pick's downdated
  norm has drifted from its exact one, or the pick turns out spent, the
  round recomputes every norm exactly instead of electing. Right after a
  refresh the norms are trusted, so a round is redone at most once.
  """
  residual = _residuals(state, consts.rows[pick], jnp.arange(pick.shape[0]),
                        consts.block)  # (G, fan_in)
  residual_sq = jnp.sum(residual * residual, axis=1)
  spent = residual_sq <= _RESIDUAL_RTOL**2 * consts.norm_sq[pick]
  drift = jnp.abs(residual_sq - state.residual_sq[pick]) > (
      _DRIFT_RTOL * consts.norm_sq[pick])
  refresh = jnp.any(active & projects & (drift | spent)) & ~state.refreshed
  return _PickCheck(residual, residual_sq, spent, refresh)


def _exact_residual_sq(consts: _ElectionConstants,
                       state: _ElectionState) -> jax.Array:
  """Every candidate's ||R_j||^2, recomputed from W and the directions."""
  residual = _residuals(state, consts.rows, consts.groups, consts.block)
  return jnp.sum(residual * residual, axis=1)


def _downdated_residual_sq(consts: _ElectionConstants, state: _ElectionState,
                           direction: jax.Array) -> jax.Array:
  """||R_j||^2 after projecting each group's new direction off its members.

  A new direction u is orthogonal to its group's earlier directions, so
  u . R_j = u . W_j: one product with the candidates, and no `(fan_in, N)`
  residual matrix. A group that elects nothing has a zero direction.
  """
  coefficient = _own_group_coefficients(consts, direction)
  return jnp.maximum(state.residual_sq - coefficient**2, 0.0)


def _elect_round(
    consts: _ElectionConstants,
    state: _ElectionState) -> tuple[_ElectionState, jax.Array, jax.Array]:
  """Every group that still owes picks elects one candidate (Step 4).

  Returns the new state, the picks (-1 for groups that did not pick), and
  whether anyone was elected (not on a round that refreshes the norms).
  """
  active = state.owed > 0
  pick, projects = _choose(consts, state)
  check = _check_picks(consts, state, pick, projects, active)
  elects = active & ~check.refresh
  projecting = elects & projects & ~check.spent
  direction = check.residual * jnp.where(
      projecting, jax.lax.rsqrt(jnp.where(projecting, check.residual_sq, 1.0)),
      0.0)[:, None]
  num_groups = pick.shape[0]
  slots = jnp.where(projecting, state.filled + jnp.cumsum(projecting) - 1,
                    state.basis.shape[0])  # out of range: dropped
  new_state = _ElectionState(
      basis=state.basis.at[slots].set(direction, mode="drop"),
      basis_group=state.basis_group.at[slots].set(
          jnp.arange(num_groups, dtype=jnp.int32), mode="drop"),
      filled=state.filled + projecting.sum(),
      residual_sq=jax.lax.cond(
          check.refresh, lambda: _exact_residual_sq(consts, state),
          lambda: _downdated_residual_sq(consts, state, direction)),
      eligible=state.eligible
      & ~jnp.zeros_like(state.eligible).at[pick].max(elects),
      owed=state.owed - elects,
      refreshed=check.refresh)
  return new_state, jnp.where(elects, pick,
                              -1).astype(jnp.int32), ~check.refresh


# The performance layer: how candidates are laid out ------------------------
#
# A small election holds one slot per candidate and projects off its whole
# basis at once. A large one (`_is_large`) is run-bound rather than
# compile-bound, and lays the candidates out group by group in tiles, so a
# round's downdate reads each candidate once, and projects off only the
# filled blocks of its basis. Both give the same picks.


def _is_large(num_candidates: int, fan_in: int, num_groups: int,
              k: int) -> bool:
  """Whether an election is large: its rounds (about k / G, each reading the
  `(N, fan_in)` candidates) cost more than the extra compile of the tiled
  layout (figures: docs/speed.md#election-design-trade-offs)."""
  return num_candidates * fan_in * -(-k // num_groups) >= _LARGE_ELECTION


def _tiled_layout(groups: jax.Array,
                  sizes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Candidates laid out group by group, each group in whole tiles.

  Every tile of the layout then belongs to one group, so a round's downdate
  is one product per tile with that group's new direction: each candidate is
  read once, not once per group. Inside a group the candidates keep their
  order, so an argmax over a group's slots breaks ties by candidate index.
  The tile holds `N // (4 G)` slots, from 1 to 256, so padding adds at most
  a quarter to N.

  Returns:
    `(owner, tile_group)`: the candidate in each slot (N for padding), shape
    `(S,)`, and the group of each of the `S // tile` tiles (G for unused).
  """
  n, num_groups = groups.shape[0], sizes.shape[0]
  tile = max(1, min(256, n // (4 * num_groups)))
  num_tiles = -(-n // tile) + num_groups
  group_tiles = -(-sizes // tile)
  tile_end = jnp.cumsum(group_tiles)
  order = jnp.argsort(groups, stable=True)
  group = groups[order]
  slot = ((tile_end - group_tiles)[group] * tile + jnp.arange(n) -
          (jnp.cumsum(sizes) - sizes)[group])
  owner = jnp.full(num_tiles * tile, n,
                   jnp.int32).at[slot].set(order.astype(jnp.int32))
  # Tile t belongs to the first group whose tiles end after it.
  tile_group = jnp.sum(
      jnp.arange(num_tiles)[:, None] >= tile_end[None, :], axis=1)
  return owner, tile_group.astype(jnp.int32)


def _own_group_coefficients(consts: _ElectionConstants,
                            direction: jax.Array) -> jax.Array:
  """`u_g . W_j` for every slot j, with g the slot's group: `(S,)`."""
  if consts.tile_group is None:  # every candidate against every direction
    return jnp.take_along_axis(
        placement.exact_matmul(consts.rows, direction.T),
        consts.groups[:, None],
        axis=1)[:, 0]
  num_tiles = consts.tile_group.shape[0]  # one product per tile
  return placement.exact_matmul(
      consts.rows.reshape(num_tiles, -1, consts.rows.shape[1]),
      direction.at[consts.tile_group].get(mode="fill",
                                          fill_value=0)[..., None]).reshape(-1)


# The election ----------------------------------------------------------------


def elect(candidates: jax.Array, scores: jax.Array, groups: jax.Array,
          num_groups: int, k: int) -> jax.Array:
  """Steps 3-4 for traced inputs: quotas, then a loop of election rounds.

  All groups advance in parallel in each round (masking); a
  `lax.while_loop` runs rounds until every quota is met, so there are as many
  rounds as the largest quota (plus a round per exact refresh of the norms).
  """
  if k == 0:
    return jnp.zeros(0, jnp.int32)
  w = candidates.astype(placement.compute_dtype(candidates.dtype))
  scores = scores.astype(w.dtype)
  fan_in, num_candidates = w.shape
  sizes = jnp.sum(
      groups[None, :] == jnp.arange(num_groups)[:, None],
      axis=1,
      dtype=jnp.int32)
  if _is_large(num_candidates, fan_in, num_groups, k):
    owner, tile_group = _tiled_layout(groups, sizes)
    # Slot s holds candidate owner[s]; index N is a padding candidate.
    at_slots = lambda a, fill: jnp.concatenate(
        [a, jnp.full((1,) + a.shape[1:], fill, a.dtype)])[owner]
    block = _BASIS_BLOCK
  else:
    owner = tile_group = None
    at_slots = lambda a, fill: a
    block = k
  slot_groups = at_slots(groups, num_groups)
  # Summed from w rather than from the rows: the faster reduction without
  # LLVM's optimizations (docs/speed.md#election-design-trade-offs).
  norm_sq = at_slots(jnp.sum(w * w, axis=0), 0)
  consts = _ElectionConstants(
      rows=at_slots(w.T, 0),
      scores=at_slots(scores, 0),
      # Negative scores shifted so the worst is 0, over all N candidates
      # (docs/algorithm.md#defects-of-the-published-code-and-our-fixes).
      shifted=at_slots(scores - jnp.minimum(scores.min(), 0), 0),
      norm_sq=norm_sq,
      groups=slot_groups,
      member=slot_groups[None, :] == jnp.arange(num_groups)[:, None],
      tile_group=tile_group,
      block=block)

  def round_(carry):
    state, picks, done = carry
    state, pick, elected = _elect_round(consts, state)
    return state, picks.at[done].set(pick), done + elected

  len_basis = -(-k // block) * block  # whole blocks
  state = _ElectionState(
      basis=jnp.zeros((len_basis, fan_in), w.dtype),
      basis_group=jnp.full(len_basis, -1, jnp.int32),
      filled=jnp.asarray(0),
      residual_sq=norm_sq,
      eligible=jnp.ones(norm_sq.shape, bool),
      owed=_class_quotas(sizes, k),
      refreshed=jnp.asarray(False))
  _, picks, _ = jax.lax.while_loop(
      lambda carry: jnp.any(carry[0].owed > 0), round_,
      (state, jnp.full((k, num_groups), -1, jnp.int32), jnp.asarray(0)))
  # Output order (Step 5): group by group in id order, election order inside.
  flat = picks.T.reshape(-1)
  picked = flat[jnp.flatnonzero(flat >= 0, size=k)]
  return picked if owner is None else owner[picked]


# On CPU the election's time is in its matrix products, which are library
# calls at any optimization level, so a small election compiles without
# LLVM's optimizations; a large one's element-wise work needs them
# (docs/speed.md#election-design-trade-offs). Compiler options are allowed
# on a top-level jit only.
_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
_elect = jax.jit(elect, static_argnames=("num_groups", "k"))
_elect_cpu = jax.jit(
    elect,
    static_argnames=("num_groups", "k"),
    compiler_options=_CPU_COMPILER_OPTIONS)


def elect_compiled(candidates: jax.Array, scores: jax.Array, groups: jax.Array,
                   num_groups: int, k: int) -> jax.Array:
  """`elect`, compiled on its own: on CPU, outside any trace and not large,
  with `_CPU_COMPILER_OPTIONS`; inside a trace, inlined into the caller's."""
  fan_in, num_candidates = candidates.shape
  cpu = (
      placement.is_concrete(scores) and placement.platform(scores) == "cpu" and
      not _is_large(num_candidates, fan_in, num_groups, k))
  return (_elect_cpu if cpu else _elect)(
      candidates, scores, groups, num_groups=num_groups, k=k)


def select_neurons(
    candidates: ArrayLike,
    scores: ArrayLike,
    k: int,
    groups: ArrayLike | None = None,
    *,
    num_groups: int | None = None,
) -> jax.Array:
  """Elects k diverse, high-scoring candidates by greedy null-space projection.

  Step 4 of the Neuron Campaign. Inside each group, the candidate with the
  best `score * ||R_j|| / ||W_j||` is elected, where `R_j` is the part of
  candidate j outside the span of the group's already elected neurons; then
  every candidate of the group is projected off the new direction. Negative
  scores are shifted so the worst is 0; an elected candidate is never
  eligible again; once a group's residuals are exhausted, its remaining picks
  go to its best-scoring candidates. Quotas per group come from
  `class_quotas` over the group sizes.

  Args:
    candidates: candidate weight vectors as columns, shape `(fan_in, N)`.
    scores: their scores, shape `(N,)` (e.g. from `neuron_scores`).
    k: number of neurons to elect, `0 <= k <= N`.
    groups: int group id of each candidate, shape `(N,)`; None for one group.
    num_groups: G; inferred as `max(groups) + 1`. Required when `groups` are
      traced.

  Returns:
    int32 indices of the elected candidates, shape `(k,)`, distinct, ordered
    group by group in id order and by election order inside each group.

  Raises:
    ValueError: for mismatched shapes, k out of range, non-finite
      candidates or scores, or groups outside `[0, num_groups)`. Under
      `jax.jit` the values are checked by `checkify` checks that raise when
      the caller wraps it with `jax.experimental.checkify.checkify`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import nc_jax
    >>> w = jnp.array([[1., 1., 0.], [0., 0.1, 1.]])
    >>> # Column 1 scores best, but column 0 is nearly parallel to it, so the
    >>> # second pick is the orthogonal column 2.
    >>> nc_jax.select_neurons(w, jnp.array([0.9, 1.0, 0.5]), 2)
    Array([1, 2], dtype=int32)
  """
  candidates = jnp.asarray(candidates)
  scores = jnp.asarray(scores)
  if candidates.ndim != 2:
    raise ValueError(
        f"`candidates` must have shape (fan_in, N), got {candidates.shape}.")
  num_candidates = candidates.shape[1]
  if scores.shape != (num_candidates,):
    raise ValueError(
        f"`scores` must have shape (N,) = ({num_candidates},) to match "
        f"`candidates`, got {scores.shape}.")
  validation.check_k(k, num_candidates)
  validation.check_finite(candidates, "candidates")
  validation.check_finite(scores, "scores")
  if not (placement.is_concrete(candidates) and placement.is_concrete(scores)):
    checkify.debug_check(
        jnp.all(jnp.isfinite(candidates)) & jnp.all(jnp.isfinite(scores)),
        "`candidates` and `scores` must be finite.")
  if groups is None:
    groups, num_groups = jnp.zeros(num_candidates, jnp.int32), 1
  else:
    groups, num_groups = validation.as_group_ids(groups, num_candidates,
                                                 num_groups)
  return elect_compiled(candidates, scores, groups, num_groups, k)
