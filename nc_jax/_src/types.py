"""Types shared across the package."""

from __future__ import annotations

from collections.abc import Callable

import jax

# A `jax.nn.initializers` callable: `init(key, shape, dtype) -> jax.Array`.
Initializer = Callable[..., jax.Array]
# The element-wise function that follows a layer, e.g. `jax.nn.relu`.
Activation = Callable[[jax.Array], jax.Array]


class CriterionDroppedWarning(UserWarning):
  """A criterion of the campaign's score carries no information on the
  batch."""
