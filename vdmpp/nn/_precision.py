r"""Mixed precision for the networks (THEORY §15) and the base class every vdmpp network shares."""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._types import Array


_COMPUTE_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


class Precision(eqx.Module):
    r"""Precision policy of a network: float32 parameters, activations in `compute_dtype`.

    The parameters (and so the optimiser state and the EMA) stay float32; a network casts its activations
    to `compute_dtype` and every layer casts its weights to the activations' dtype, so matmuls and
    convolutions run in `compute_dtype` while gradients reach the float32 parameters. Float32 islands
    (THEORY §15): the normalised $\lambda$ and its sinusoidal features (and Fourier features of the input),
    norm statistics, attention logits and softmax, and the network's output, which is returned in float32
    for the loss. `Precision()` (float32) changes nothing.

    Args:
        compute_dtype: `jnp.float32` (default), `jnp.bfloat16` (TPUs, recent GPUs) or `jnp.float16`.

    Raises:
        ValueError: another dtype.
    """

    compute_dtype: np.dtype = eqx.field(static=True)

    def __init__(self, compute_dtype=jnp.float32):
        try:
            dtype = np.dtype(compute_dtype)
        except TypeError:
            dtype = np.dtype(object)
        if dtype not in _COMPUTE_DTYPES:
            raise ValueError(
                f"`compute_dtype` must be jnp.float32, jnp.bfloat16 or jnp.float16; got {compute_dtype!r}. "
                "Parameters always stay float32; this sets the dtype the network computes in."
            )
        self.compute_dtype = dtype

    def cast(self, x: Array) -> Array:
        """`x` in the compute dtype if it is floating (integer arrays pass unchanged)."""
        x = jnp.asarray(x)
        return x.astype(self.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


class AbstractNetwork(eqx.Module):
    """A vdmpp network: one example per call, a precision policy and optional rematerialisation.

    Every network in `vdmpp.nn` (MLP, UNet, Transformer, DiT, UViT) has the fields `precision`
    ([`vdmpp.nn.Precision`][]) and `remat` (recompute each block's activations in the backward pass,
    `jax.checkpoint`, trading compute for memory), both set when the network is built; `with_precision`
    swaps the policy of a built (or trained) network. Both are static for `jit`: changing them recompiles.
    """

    precision: eqx.AbstractVar[Precision]
    remat: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def __call__(self, *args, **kwargs) -> Array:
        """Apply the network to one example."""

    def with_precision(self, precision: Precision):
        """The same network (same parameters) computing under `precision`."""
        if not isinstance(precision, Precision):
            raise TypeError(
                f"`precision` must be a vdmpp.nn.Precision, e.g. Precision(jnp.bfloat16); got {precision!r}."
            )
        return eqx.tree_at(lambda m: m.precision, self, precision)


def call_block(remat: bool, block, *args):
    """`block(*args)`, under `eqx.filter_checkpoint` when `remat` (activations recomputed in the backward pass)."""
    if remat:
        return eqx.filter_checkpoint(_call)(block, *args)
    return block(*args)


def _call(block, *args):
    return block(*args)


def to_float32(x: Array) -> Array:
    """The network's output in float32 (the loss's precision)."""
    return x.astype(jnp.float32)
