"""Shared jaxtyping aliases."""

from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped


FloatScalarLike = Float[ArrayLike, ""]
"""A Python float or a 0-d float array."""

FloatLike = Float[ArrayLike, "*shape"]
"""A float scalar or array of any shape (elementwise functions)."""

Scalar = Float[Array, ""]

__all__ = [
    "Array",
    "ArrayLike",
    "Float",
    "FloatLike",
    "FloatScalarLike",
    "Int",
    "PRNGKeyArray",
    "Scalar",
    "Shaped",
]
