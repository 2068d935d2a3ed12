r"""A residual MLP denoiser for low-dimensional (toy) data, conditioned on $\lambda$ and optionally a class."""

import equinox as eqx
import jax
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._embed import (
    _check_label,
    _dropout_key,
    ClassEmbedding,
    LamEmbedding,
)
from ._layers import init_rng, LayerNorm, Linear, sub_key
from ._precision import AbstractNetwork, call_block, Precision, to_float32


class _MLPBlock(eqx.Module):
    norm: LayerNorm
    linear1: Linear
    cond: Linear
    linear2: Linear
    dropout: eqx.nn.Dropout

    def __init__(self, width: int, emb_dim: int, dropout: float, *, key: PRNGKeyArray):
        rng = init_rng(key)
        self.norm = LayerNorm(width)
        self.linear1 = Linear(width, width, key=sub_key(rng))
        self.cond = Linear(emb_dim, width, key=sub_key(rng))
        self.linear2 = Linear(width, width, key=sub_key(rng))
        self.dropout = eqx.nn.Dropout(dropout)

    def __call__(self, h, emb, key, inference):
        y = jax.nn.silu(self.linear1(self.norm(h)) + self.cond(emb))
        y = self.dropout(y, key=key, inference=inference)
        return h + self.linear2(y)


class MLP(AbstractNetwork):
    r"""Residual MLP for data of shape `(D,)`: `model(z, lam, *, label=None, key=None, inference=False)`.

    Output has the shape of `z` and is read in whatever parameterisation the model is trained for (see
    [`vdmpp.nn.as_denoiser`][]). The output layer is zero-initialised, so an untrained model predicts 0.

    Args:
        data_dim: D.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: width of the $\lambda$ (and class) embedding.
        lam_min, lam_max: $\lambda$ range for the normalised embedding.
        num_classes: number of classes for class conditioning (an extra null class is added), or None.
        dropout: dropout rate inside the blocks (needs `key` when `inference=False`).
        key: initialisation key.
        precision: compute dtype policy ([`vdmpp.nn.Precision`][]); the output is float32.
        remat: rematerialise each block in the backward pass (`jax.checkpoint`).
    """

    precision: Precision
    remat: bool = eqx.field(static=True)
    data_dim: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    lam_embed: LamEmbedding
    class_embed: ClassEmbedding | None
    inp: Linear
    blocks: tuple[_MLPBlock, ...]
    out_norm: LayerNorm
    out: Linear

    def __init__(
        self,
        data_dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        lam_min: float = -20.0,
        lam_max: float = 20.0,
        num_classes: int | None = None,
        dropout: float = 0.0,
        key: PRNGKeyArray,
        precision: Precision = Precision(),
        remat: bool = False,
    ):
        for name, value in (("data_dim", data_dim), ("width", width), ("depth", depth), ("emb_dim", emb_dim)):
            check_positive_int(value, name)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        rng = init_rng(key)
        self.precision, self.remat = precision, bool(remat)
        self.data_dim, self.num_classes, self.dropout_rate = data_dim, num_classes, float(dropout)
        self.lam_embed = LamEmbedding(emb_dim, lam_min, lam_max, key=sub_key(rng))
        self.class_embed = None if num_classes is None else ClassEmbedding(num_classes, emb_dim, key=sub_key(rng))
        self.inp = Linear(data_dim, width, key=sub_key(rng))
        self.blocks = tuple(_MLPBlock(width, emb_dim, dropout, key=sub_key(rng)) for _ in range(depth))
        self.out_norm = LayerNorm(width)
        self.out = Linear(width, data_dim, zero_init=True, key=sub_key(rng))

    def __call__(
        self,
        z: Float[Array, " D"],
        lam: FloatScalarLike,
        *,
        label: Int[Array, ""] | int | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
    ) -> Float[Array, " D"]:
        """Apply the network to one example."""
        if z.shape != (self.data_dim,):
            raise ValueError(f"`z` must have shape ({self.data_dim},) (one example; vmap outside); got {z.shape}.")
        _check_label(self.num_classes, label)
        key = _dropout_key(self.dropout_rate, key, inference)
        emb = self.lam_embed(lam, self.precision)
        if self.class_embed is not None:
            emb = emb + self.precision.cast(self.class_embed(label))
        keys = [None] * len(self.blocks) if key is None else list(jr.split(key, len(self.blocks)))
        h = self.inp(self.precision.cast(z))
        for block, k in zip(self.blocks, keys):
            h = call_block(self.remat, block, h, emb, k, inference)
        return to_float32(self.out(jax.nn.silu(self.out_norm(h))))
