"""Shared argument checks and small helpers (one copy each; private to the library)."""

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, FloatLike


def as_float(x: FloatLike) -> Array:
    """`x` as a JAX array, cast to the default float dtype when it is not floating already."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def concrete(x: Any) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known, `None` while it is being traced (inside jit)."""
    if isinstance(x, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


_GRAPH_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("vdmpp_graph_checks", default=True)


@contextlib.contextmanager
def in_graph_checks(enabled: bool) -> Iterator[None]:
    """Trace with (the default) or without the library's in-graph value checks (`error_if`)."""
    token = _GRAPH_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _GRAPH_CHECKS.reset(token)


def error_if(x: Any, pred: Any, msg: str) -> Any:
    """`eqx.error_if(x, pred, msg)`, or `x` unchanged when traced inside `in_graph_checks(False)`.

    The check is a host callback, and XLA's persistent compilation cache does not store a program that holds
    one: a caller that checks its inputs on the host instead (`vd.train.fit` checks every batch) traces without.
    """
    return eqx.error_if(x, pred, msg) if _GRAPH_CHECKS.get() else x


def is_int(value: Any) -> bool:
    """A Python or NumPy integer that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_positive_int(value: Any, name: str, hint: str = "") -> int:
    """`value` must be an integer >= 1; returns it as a Python int."""
    if not is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{hint}; got {value!r}.")
    return int(value)


def check_nonnegative_int(value: Any, name: str, hint: str = "") -> int:
    """`value` must be an integer >= 0; returns it as a Python int."""
    if not is_int(value) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer{hint}; got {value!r}.")
    return int(value)


def check_finite(value: Any, name: str, owner: str = "") -> None:
    """A Python/NumPy number must be finite (traced values are not checked here)."""
    try:
        ok = math.isfinite(float(value))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    if not ok:
        where = f" of {owner}" if owner else ""
        raise ValueError(f"`{name}`{where} must be finite; got {value}.")


def check_data(data: Any, name: str = "data", *, min_rows: int = 1, floating: bool = False) -> Array:
    """A data set shaped `(N, *example)` with at least `min_rows` rows, finite where its values are known."""
    data = jnp.asarray(data)
    if data.ndim < 2:
        raise ValueError(f"`{name}` must be shaped (N, *data) with N rows; got shape {data.shape}.")
    if data.shape[0] < min_rows:
        raise ValueError(f"`{name}` must have at least {min_rows} row(s); got shape {data.shape}.")
    if any(s == 0 for s in data.shape[1:]):
        raise ValueError(f"`{name}` examples must have no empty axis; got shape {data.shape}.")
    if floating and not jnp.issubdtype(data.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be float (in model space); got dtype {data.dtype}.")
    values = concrete(data)
    if values is not None and jnp.issubdtype(data.dtype, jnp.floating) and not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` must be finite; it holds {int(np.sum(~np.isfinite(values)))} NaN/inf value(s).")
    return data


def check_instance(value: Any, cls: type, name: str, example: str = "") -> None:
    """`value` must be an instance of the strategy interface `cls` (a clear `TypeError` for strings and the like)."""
    if not isinstance(value, cls):
        hint = f", e.g. {example}" if example else ""
        raise TypeError(f"`{name}` must be a {cls.__module__}.{cls.__qualname__}{hint}; got {value!r}.")


def check_batch_shape(x: Any, name: str) -> None:
    """`x` must be a non-empty batch shaped `(batch, *example)` (at least 2-d, no empty axis)."""
    shape = jnp.shape(x)
    if len(shape) < 2 or 0 in shape:
        raise ValueError(f"`{name}` must be a non-empty batch shaped (batch, *data); got shape {shape}.")
