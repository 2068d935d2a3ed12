"""Counting parameters, also of an abstract network from `jax.eval_shape` (nothing allocated)."""

import math
from typing import Any

import jax
import numpy as np


def _is_param(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray)) and np.issubdtype(x.dtype, np.inexact)


def num_parameters(model: Any) -> int:
    """The number of floating-point parameters (array elements) in `model`.

    Works on a built network and on the abstract one `eqx.filter_eval_shape(Net, ..., key=key)` returns,
    whose leaves are `jax.ShapeDtypeStruct`s, so a 200M-parameter model is counted without allocating it.
    """
    leaves = jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return sum(math.prod(x.shape) for x in leaves if _is_param(x))
