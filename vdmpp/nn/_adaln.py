r"""Transformer blocks with adaLN-zero conditioning (DiT, Peebles & Xie 2023), as MD4's networks use them.

Pre-norm blocks whose LayerNorms have no parameters of their own: the shift, scale and a gate of each
branch come from a zero-initialised projection of the conditioning vector, so every block starts as the
identity (https://arxiv.org/abs/2212.09748, §3.2). Two MLPs: MD4's gated "glu" MLP (sigmoid gate, no
biases; hidden width `8/3 * dim` rounded up to a multiple of 32) and DiT's GELU MLP (hidden `4 * dim`).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ._layers import attention, init_rng, LayerNorm, Linear, sub_key


def glu_hidden(dim: int, multiple_of: int = 32) -> int:
    """MD4's (LLaMA's) hidden width of the gated MLP: `int(2 * 4 * dim / 3)` rounded up to `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def rope_tables(length: int, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """Rotary position tables `(cos, sin)`, shape `(length, head_dim // 2)`, in float32 (THEORY §15)."""
    freqs = 1.0 / (10_000.0 ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32)[: head_dim // 2] / head_dim))
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the (even, odd) pairs of the last axis of `x` `(L, heads, head_dim)` by the position angles."""
    length, heads, head_dim = x.shape
    pairs = x.reshape(length, heads, head_dim // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    c, s = cos.astype(x.dtype)[:, None, :], sin.astype(x.dtype)[:, None, :]
    return jnp.stack([re * c - im * s, re * s + im * c], axis=-1).reshape(x.shape)


class Attention(eqx.Module):
    """Bidirectional multi-head self-attention on `(L, dim)`; optional rotary positions (MD4's text model).

    Logits and softmax are float32 for any compute dtype.
    """

    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    num_heads: int = eqx.field(static=True)
    rope: bool = eqx.field(static=True)

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, rope: bool, key):
        rng = init_rng(key)
        std = 1.0 / math.sqrt(dim)  # Flax's lecun_normal
        self.wq, self.wk, self.wv = (Linear(dim, dim, bias=qkv_bias, std=std, key=sub_key(rng)) for _ in range(3))
        self.wo = Linear(dim, dim, bias=False, std=std, key=sub_key(rng))
        self.num_heads, self.rope = num_heads, rope

    def __call__(self, x):
        length, dim = x.shape
        shape = (length, self.num_heads, dim // self.num_heads)
        q, k, v = (w(x).reshape(shape) for w in (self.wq, self.wk, self.wv))
        if self.rope:
            cos, sin = rope_tables(length, shape[-1])
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.wo(attention(q, k, v).reshape(length, dim))


class GatedMLP(eqx.Module):
    """MD4's "glu" MLP: `w2(sigmoid(w1 x) * w3 x)`, no biases; `init_scale` multiplies the weight variance
    (MD4's depth-scaled init uses `2 / depth`)."""

    w1: Linear
    w2: Linear
    w3: Linear

    def __init__(self, dim: int, hidden: int, *, init_scale: float, key):
        rng = init_rng(key)
        self.w1 = Linear(dim, hidden, bias=False, std=math.sqrt(init_scale / dim), key=sub_key(rng))
        self.w2 = Linear(hidden, dim, bias=False, std=math.sqrt(init_scale / hidden), key=sub_key(rng))
        self.w3 = Linear(dim, hidden, bias=False, std=math.sqrt(init_scale / dim), key=sub_key(rng))

    def __call__(self, x):
        return self.w2(jax.nn.sigmoid(self.w1(x)) * self.w3(x))


class GeluMLP(eqx.Module):
    """DiT's MLP: `fc2(gelu(fc1 x))` with biases."""

    fc1: Linear
    fc2: Linear

    def __init__(self, dim: int, hidden: int, *, init_scale: float, key):
        rng = init_rng(key)
        self.fc1 = Linear(dim, hidden, std=math.sqrt(init_scale / dim), key=sub_key(rng))
        self.fc2 = Linear(hidden, dim, std=math.sqrt(init_scale / hidden), key=sub_key(rng))

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class AdaLNZeroBlock(eqx.Module):
    """`x + g1 * attn(mod(norm(x)))`, then `x + g2 * mlp(mod(norm(x)))`; shift, scale and gate of both
    branches from `Linear(silu(cond))`, zero-initialised. Dropout on both branches' outputs."""

    norm1: LayerNorm
    attn: Attention
    norm2: LayerNorm
    mlp: GatedMLP | GeluMLP
    modulation: Linear
    dropout: eqx.nn.Dropout

    def __init__(self, dim, num_heads, cond_dim, *, glu, hidden, qkv_bias, rope, init_scale, dropout, eps, key):
        rng = init_rng(key)
        self.norm1 = LayerNorm(dim, eps, affine=False)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope, key=sub_key(rng))
        self.norm2 = LayerNorm(dim, eps, affine=False)
        mlp = GatedMLP if glu else GeluMLP
        self.mlp = mlp(dim, hidden, init_scale=init_scale, key=sub_key(rng))
        self.modulation = Linear(cond_dim, 6 * dim, zero_init=True, key=sub_key(rng))
        self.dropout = eqx.nn.Dropout(dropout)

    def __call__(self, x, cond, key, inference):
        k1, k2 = (None, None) if key is None else jr.split(key)
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(jax.nn.silu(cond)), 6)
        h = self.norm1(x) * (1 + scale1[None, :]) + shift1[None, :]
        x = x + gate1[None, :] * self.dropout(self.attn(h), key=k1, inference=inference)
        h = self.norm2(x) * (1 + scale2[None, :]) + shift2[None, :]
        return x + gate2[None, :] * self.dropout(self.mlp(h), key=k2, inference=inference)


class FinalLayer(eqx.Module):
    """Parameter-free LayerNorm, adaLN shift and scale from the conditioning, then a zero-initialised
    linear map to the outputs."""

    norm: LayerNorm
    modulation: Linear
    out: Linear

    def __init__(self, dim: int, cond_dim: int, out_dim: int, *, bias: bool, eps: float, key):
        rng = init_rng(key)
        self.norm = LayerNorm(dim, eps, affine=False)
        self.modulation = Linear(cond_dim, 2 * dim, zero_init=True, key=sub_key(rng))
        self.out = Linear(dim, out_dim, bias=bias, zero_init=True, key=sub_key(rng))

    def __call__(self, x, cond):
        shift, scale = jnp.split(self.modulation(jax.nn.silu(cond)), 2)
        return self.out(self.norm(x) * (1 + scale[None, :]) + shift[None, :])
