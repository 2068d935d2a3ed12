r"""MD4's masked-diffusion transformer for token sequences (text8): adaLN-zero blocks, gated MLP, RoPE."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._adaln import AdaLNZeroBlock, FinalLayer, glu_hidden
from ._embed import _dropout_key, check_tokens, LamEmbedding
from ._layers import Embedding, init_rng, Linear, sub_key
from ._precision import AbstractNetwork, call_block, Precision, to_float32


class DiT(AbstractNetwork):
    r"""Bidirectional transformer with adaLN-zero conditioning on $\lambda$: `model(tokens, lam, *, key=None,
    inference=False)`, MD4's text network (`md4/networks/transformer.py` with `cond_type="adaln_zero"`).

    `tokens` is an integer array of any shape (flattened to a sequence of length L) with real tokens
    `0..V-1` and the mask `V`; returns float32 logits over the V real tokens, shape `(*tokens.shape, V)`.
    Tokens are embedded in `embed_dim` and projected to `dim` (MD4's `outside_embed`); positions are
    rotary (any length works); the conditioning vector of width `cond_dim` is a [`LamEmbedding`][vdmpp.nn.LamEmbedding]
    of the normalised $\lambda$ with MD4's `4 * cond_dim` hidden layer; every block is an adaLN-zero
    block (parameter-free LayerNorms, shift/scale/gate from the conditioning), and the output layer is
    zero-initialised (an untrained model predicts the uniform distribution).

    MD4's text8 model is `dim=768, depth=12, num_heads=12, embed_dim=64, cond_dim=64, glu=True,
    depth_scaled_init=True` (88.7M parameters; the preset `md4_text8` in `experiments/_presets.py`).

    Args:
        vocab_size: V, the number of real tokens (the mask id is V).
        seq_len: the sequence length to check inputs against, or None for any length.
        dim: model width.
        depth: number of blocks.
        num_heads: attention heads (`dim` must be divisible by it; head width even for RoPE).
        embed_dim: token embedding width (projected to `dim`); None embeds directly in `dim`.
        cond_dim: width of the $\lambda$ conditioning vector (default `dim`).
        glu: MD4's gated MLP (hidden `glu_hidden(dim)`); False for DiT's GELU MLP (hidden `4 * dim`).
        depth_scaled_init: MLP weight variance scaled by `2 / depth` (MD4).
        lam_min, lam_max: $\lambda$ range for the normalised embedding (±inf is clipped to the ends).
        dropout: dropout rate on the residual branches (needs `key` when `inference=False`).
        key: initialisation key.
        precision: compute dtype policy ([`vdmpp.nn.Precision`][]); the logits are float32.
        remat: rematerialise each block in the backward pass (`jax.checkpoint`).
    """

    precision: Precision
    remat: bool = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)
    seq_len: int | None = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    token_embed: Embedding
    inp: Linear | None
    lam_embed: LamEmbedding
    blocks: tuple[AdaLNZeroBlock, ...]
    final: FinalLayer

    def __init__(
        self,
        vocab_size: int,
        seq_len: int | None = None,
        *,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        embed_dim: int | None = None,
        cond_dim: int | None = None,
        glu: bool = True,
        depth_scaled_init: bool = True,
        lam_min: float = -12.0,
        lam_max: float = 12.0,
        dropout: float = 0.0,
        key: PRNGKeyArray,
        precision: Precision = Precision(),
        remat: bool = False,
    ):
        for name, value in (("vocab_size", vocab_size), ("dim", dim), ("depth", depth), ("num_heads", num_heads)):
            check_positive_int(value, name)
        embed = dim if embed_dim is None else check_positive_int(embed_dim, "embed_dim")
        cond_dim = dim if cond_dim is None else check_positive_int(cond_dim, "cond_dim")
        if seq_len is not None:
            check_positive_int(seq_len, "seq_len")
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(
                f"`dim`={dim} must be divisible by `num_heads`={num_heads} with an even head width (rotary "
                "positions rotate pairs of channels)."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        rng = init_rng(key)
        self.precision, self.remat = precision, bool(remat)
        self.vocab_size, self.seq_len, self.dropout_rate = vocab_size, seq_len, float(dropout)
        self.token_embed = Embedding(vocab_size + 1, embed, scale=1.0 / math.sqrt(embed), key=sub_key(rng))
        self.inp = None if embed_dim is None else Linear(embed, dim, std=1.0 / math.sqrt(embed), key=sub_key(rng))
        self.lam_embed = LamEmbedding(cond_dim, lam_min, lam_max, hidden_dim=4 * cond_dim, key=sub_key(rng))
        hidden = glu_hidden(dim) if glu else 4 * dim
        init_scale = 2.0 / depth if depth_scaled_init else 1.0
        self.blocks = tuple(
            AdaLNZeroBlock(
                dim,
                num_heads,
                cond_dim,
                glu=glu,
                hidden=hidden,
                qkv_bias=False,
                rope=True,
                init_scale=init_scale,
                dropout=dropout,
                eps=1e-5,
                key=sub_key(rng),
            )
            for _ in range(depth)
        )
        self.final = FinalLayer(dim, cond_dim, vocab_size, bias=False, eps=1e-5, key=sub_key(rng))

    @property
    def mask_id(self) -> int:
        """The mask token id, V."""
        return self.vocab_size

    def __call__(
        self,
        tokens: Int[Array, "*shape"],
        lam: FloatScalarLike,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
    ) -> Float[Array, "*shape V"]:
        """Logits over the V real tokens at every position of one token array."""
        flat = check_tokens(tokens, self.vocab_size, seq_len=self.seq_len).reshape(-1)
        shape = jnp.shape(tokens)
        key = _dropout_key(self.dropout_rate, key, inference)
        x = self.precision.cast(self.token_embed(flat))
        if self.inp is not None:
            x = self.inp(x)
        cond = self.lam_embed(lam, self.precision)
        keys = [None] * len(self.blocks) if key is None else list(jr.split(key, len(self.blocks)))
        for block, k in zip(self.blocks, keys):
            x = call_block(self.remat, block, x, cond, k, inference)
        return to_float32(self.final(x, cond)).reshape(*shape, self.vocab_size)
