"""Shared test helpers."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Whether two pytrees have equal structure and allclose leaves."""
    if not eqx.tree_equal(jtu.tree_structure(x), jtu.tree_structure(y)):
        return False
    xs, ys = jtu.tree_leaves(x), jtu.tree_leaves(y)
    for a, b in zip(xs, ys):
        if eqx.is_array_like(a) and eqx.is_array_like(b):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False):
                return False
        elif a != b:
            return False
    return True


def finite(x) -> bool:
    """Whether every leaf of a pytree is finite."""
    return all(bool(jnp.all(jnp.isfinite(jnp.asarray(leaf)))) for leaf in jtu.tree_leaves(x))
