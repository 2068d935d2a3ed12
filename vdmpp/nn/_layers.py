"""Channels-last building blocks (Equinox's own convolutions and GroupNorm are channels-first)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import concrete
from .._types import Array, Float, Int, PRNGKeyArray


class _Init:
    """Parameter initialiser seeded from a JAX key.

    With a concrete key it draws with NumPy on the host: initialising with `jax.random` compiles one XLA
    program per parameter shape (a small U-Net compiles dozens, tens of seconds on a busy CPU). With a traced
    key (construction under `jit`, `vmap` or `eqx.filter_eval_shape`) it falls back to `jax.random`. Either
    way the parameters are a deterministic function of the key (the two paths give different values).
    """

    def __init__(self, key: PRNGKeyArray):
        self._key = key
        data = concrete(jr.key_data(key))  # None for a traced key (cheap: no conversion error is built)
        self._rng = None if data is None else np.random.default_rng(data.ravel().tolist())

    def _next_key(self) -> PRNGKeyArray:
        self._key, sub = jr.split(self._key)
        return sub

    def key(self) -> PRNGKeyArray:
        """A fresh key for a sub-module's constructor."""
        if self._rng is None:
            return self._next_key()
        return jr.key(int(self._rng.integers(0, 2**31 - 1)))

    def uniform(self, shape: tuple[int, ...], lim: float) -> Array:
        """Uniform in ±lim (zeros when lim is 0), float32."""
        if lim == 0.0:
            return jnp.zeros(shape)
        if self._rng is None:
            return jr.uniform(self._next_key(), shape, minval=-lim, maxval=lim)
        return jnp.asarray(self._rng.uniform(-lim, lim, size=shape).astype(np.float32))

    def normal(self, shape: tuple[int, ...], scale: float = 1.0) -> Array:
        """Normal with standard deviation `scale`, float32."""
        if self._rng is None:
            return scale * jr.normal(self._next_key(), shape)
        return jnp.asarray((scale * self._rng.standard_normal(shape)).astype(np.float32))

    def truncated_normal(self, shape: tuple[int, ...], std: float) -> Array:
        """Normal truncated to ±2 standard deviations, rescaled to standard deviation `std` (Flax's
        `variance_scaling(..., "truncated_normal")`), float32."""
        scale = std / 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
        if self._rng is None:
            return scale * jr.truncated_normal(self._next_key(), -2.0, 2.0, shape)
        x = self._rng.standard_normal(shape)
        bad = np.abs(x) > 2.0
        while bad.any():  # redraw the tails: exactly the truncated distribution
            x[bad] = self._rng.standard_normal(int(bad.sum()))
            bad = np.abs(x) > 2.0
        return jnp.asarray((scale * x).astype(np.float32))


def init_rng(key: PRNGKeyArray) -> _Init:
    """An initialiser seeded from `key` (NumPy on the host for concrete keys, see `_Init`)."""
    return _Init(key)


def sub_key(rng: _Init) -> PRNGKeyArray:
    """A fresh JAX key drawn from `rng` (to hand a key to a sub-module's constructor)."""
    return rng.key()


class Linear(eqx.Module):
    """Affine map `x @ W.T + b` on the last axis, computed in the dtype of `x` (weights are cast to it).

    Args:
        in_features, out_features: sizes.
        bias: with a bias (zero-initialised when `std` is given).
        zero_init: start with zero weight and bias (output layers).
        std: None for PyTorch/Equinox's initialisation (uniform ±1/sqrt(in)); a float for a truncated
            normal of that standard deviation (Flax's `lecun_normal` is `std = 1/sqrt(in)`).
        key: initialisation key.
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        zero_init: bool = False,
        std: float | None = None,
        key: PRNGKeyArray,
    ):
        rng = init_rng(key)
        if zero_init or std is None:
            lim = 0.0 if zero_init else 1.0 / math.sqrt(in_features)
            self.weight = rng.uniform((out_features, in_features), lim)
            self.bias = rng.uniform((out_features,), lim) if bias else None
        else:
            self.weight = rng.truncated_normal((out_features, in_features), std)
            self.bias = jnp.zeros((out_features,)) if bias else None

    def __call__(self, x: Float[Array, "*batch in"]) -> Float[Array, "*batch out"]:
        """Apply to the last axis (any leading axes)."""
        y = x @ self.weight.astype(x.dtype).T
        if self.bias is None:
            return y
        return y + jnp.broadcast_to(self.bias.astype(x.dtype), y.shape)


def _normalise(x: Array, axes: tuple[int, ...], eps: float) -> Array:
    """`(x - mean) / sqrt(var + eps)` over `axes` with the statistics in float32 (THEORY §15); dtype of `x`."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class LayerNorm(eqx.Module):
    """Layer normalisation over the last axis (statistics in float32), with a learned scale and shift
    unless `affine=False` (DiT's adaLN norms, whose scale and shift come from the conditioning)."""

    weight: Float[Array, " c"] | None
    bias: Float[Array, " c"] | None
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, eps: float = 1e-5, *, affine: bool = True):
        self.weight = jnp.ones((channels,)) if affine else None
        self.bias = jnp.zeros((channels,)) if affine else None
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch c"]) -> Float[Array, "*batch c"]:
        """Normalise the last axis."""
        y = _normalise(x, (-1,), self.eps)
        if self.weight is None or self.bias is None:
            return y
        return y * jnp.broadcast_to(self.weight.astype(x.dtype), x.shape) + jnp.broadcast_to(
            self.bias.astype(x.dtype), x.shape
        )


class Embedding(eqx.Module):
    """Lookup table `(num, dim)` initialised from a standard normal."""

    weight: Float[Array, "num dim"]

    def __init__(self, num_embeddings: int, dim: int, *, key: PRNGKeyArray, scale: float = 1.0):
        rng = init_rng(key)
        self.weight = rng.normal((num_embeddings, dim), scale)

    def __call__(self, index: Int[Array, "*shape"]) -> Float[Array, "*shape dim"]:
        """Look up rows."""
        return self.weight[index]


class Conv2d(eqx.Module):
    """2-D convolution on one channels-last image `(H, W, C_in) -> (H', W', C_out)`, 'SAME' padding.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: square kernel size.
        stride: stride in both directions.
        zero_init: start with zero weight and bias (output layers).
        key: initialisation key (uniform in ±1/sqrt(fan_in), PyTorch's default).
    """

    weight: Float[Array, "kh kw cin cout"]
    bias: Float[Array, " cout"]
    stride: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        zero_init: bool = False,
        key: PRNGKeyArray,
    ):
        rng = init_rng(key)
        lim = 0.0 if zero_init else 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = rng.uniform((kernel_size, kernel_size, in_channels, out_channels), lim)
        self.bias = rng.uniform((out_channels,), lim)
        self.stride = stride

    def __call__(self, x: Float[Array, "h w cin"]) -> Float[Array, "h2 w2 cout"]:
        """Apply the convolution."""
        y = jax.lax.conv_general_dilated(
            x[None],
            self.weight.astype(x.dtype),
            window_strides=(self.stride, self.stride),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )[0]
        return y + self.bias.astype(x.dtype)[None, None, :]


class GroupNorm(eqx.Module):
    """Group normalisation of a channels-last image `(H, W, C)`: statistics (in float32) per group over
    H, W, C/G; a learned scale and shift unless `affine=False`."""

    weight: Float[Array, " c"] | None
    bias: Float[Array, " c"] | None
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, groups: int, channels: int, eps: float = 1e-5, *, affine: bool = True):
        if channels % groups:
            raise ValueError(
                f"GroupNorm needs `channels` divisible by the number of groups; got {channels} channels and "
                f"{groups} groups. Choose channel widths that are multiples of `num_groups`."
            )
        self.weight = jnp.ones((channels,)) if affine else None
        self.bias = jnp.zeros((channels,)) if affine else None
        self.groups, self.eps = groups, eps

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
        """Normalise."""
        h, w, c = x.shape
        y = _normalise(x.reshape(h, w, self.groups, c // self.groups), (0, 1, 3), self.eps).reshape(h, w, c)
        if self.weight is None or self.bias is None:
            return y
        return y * self.weight.astype(x.dtype)[None, None, :] + self.bias.astype(x.dtype)[None, None, :]


def attention(q: Float[Array, "L h d"], k: Float[Array, "L h d"], v: Float[Array, "L h d"]) -> Float[Array, "L h d"]:
    """Bidirectional multi-head attention: logits (accumulated in float32) and softmax in float32 for any compute
    dtype (THEORY §15), the probabilities cast back to the compute dtype for the product with the values.

    Written out (not `jax.nn.dot_product_attention`, whose gradient mixes float32 and bfloat16 implicitly).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("hqk,khd->qhd", probs.astype(v.dtype), v)


class SelfAttention(eqx.Module):
    """Multi-head self-attention over a sequence `(L, C)` with a zero-initialised output projection."""

    qkv: Linear
    proj: Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, channels: int, num_heads: int, *, key: PRNGKeyArray, zero_init_output: bool = True):
        if channels % num_heads:
            raise ValueError(f"`channels`={channels} must be divisible by `num_heads`={num_heads}.")
        rng = init_rng(key)
        self.qkv = Linear(channels, 3 * channels, key=sub_key(rng))
        self.proj = Linear(channels, channels, zero_init=zero_init_output, key=sub_key(rng))
        self.num_heads = num_heads

    def __call__(self, x: Float[Array, "L c"]) -> Float[Array, "L c"]:
        """Attend (bidirectional, no mask)."""
        length, c = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        shape = (length, self.num_heads, c // self.num_heads)
        out = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape))
        return self.proj(out.reshape(length, c))
