r"""A bidirectional transformer denoiser for masked diffusion over token grids (pixels or characters)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._embed import _dropout_key, check_tokens, LamEmbedding, sinusoidal
from ._layers import Embedding, init_rng, LayerNorm, Linear, SelfAttention, sub_key
from ._precision import AbstractNetwork, call_block, Precision, to_float32


def _sinusoidal_positions(length: int, dim: int) -> Float[Array, "L dim"]:
    return jax.vmap(lambda p: sinusoidal(p, dim))(jnp.arange(length, dtype=jnp.float32))


class _Block(eqx.Module):
    norm1: LayerNorm
    attn: SelfAttention
    norm2: LayerNorm
    fc1: Linear
    fc2: Linear
    modulation: Linear | None
    dropout: eqx.nn.Dropout

    def __init__(self, dim, num_heads, mlp_ratio, cond_dim, dropout, *, key):
        rng = init_rng(key)
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, zero_init_output=False, key=sub_key(rng))
        self.norm2 = LayerNorm(dim)
        self.fc1 = Linear(dim, mlp_ratio * dim, key=sub_key(rng))
        self.fc2 = Linear(mlp_ratio * dim, dim, key=sub_key(rng))
        # adaLN: shift and scale of both norms from the λ embedding
        self.modulation = None if cond_dim is None else Linear(cond_dim, 4 * dim, key=sub_key(rng))
        self.dropout = eqx.nn.Dropout(dropout)

    def __call__(self, x, emb, key, inference):
        k1, k2 = (None, None) if key is None else jr.split(key)
        if self.modulation is None:
            shift1 = scale1 = shift2 = scale2 = jnp.zeros((x.shape[-1],), x.dtype)
        else:
            shift1, scale1, shift2, scale2 = jnp.split(self.modulation(jax.nn.silu(emb)), 4)
        h1 = self.norm1(x) * (1 + scale1[None, :]) + shift1[None, :]
        x = x + self.dropout(self.attn(h1), key=k1, inference=inference)
        h2 = self.norm2(x) * (1 + scale2[None, :]) + shift2[None, :]
        h2 = self.fc2(self.dropout(jax.nn.gelu(self.fc1(h2)), key=k2, inference=inference))
        return x + h2


class Transformer(AbstractNetwork):
    r"""Bidirectional transformer on one token array: `model(tokens, lam, *, key=None, inference=False)`.

    `tokens` is an integer array of any shape (a sequence, or an H×W×C pixel grid), flattened to a sequence
    of length L; entries are real tokens `0..V-1` or the mask `mask_id = V`. Returns logits over the V real
    tokens with shape `(*tokens.shape, V)` (the masked-diffusion denoiser signature of `vdmpp.masked`).
    Token embedding of V + 1 symbols (mask included), learned or sinusoidal positions, pre-norm blocks,
    optional conditioning on the normalised $\lambda = \log(\alpha/(1-\alpha))$ through adaLN (MD4 finds it
    unnecessary for masked diffusion; `lam` is then ignored), and a zero-initialised output layer (an
    untrained model predicts the uniform distribution).

    Args:
        vocab_size: V, the number of real tokens (the mask id is V).
        seq_len: L for learned positions; None with sinusoidal positions accepts any length.
        dim: model width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLPs as a multiple of `dim`.
        learned_positions: learned position embeddings (needs `seq_len`), else fixed sinusoidal ones.
        lam_conditioning: condition on $\lambda$.
        lam_min, lam_max: $\lambda$ range for the normalised embedding (±inf is clipped to the ends).
        dropout: dropout rate (needs `key` when `inference=False`).
        key: initialisation key.
        precision: compute dtype policy ([`vdmpp.nn.Precision`][]); the logits are float32.
        remat: rematerialise each block in the backward pass (`jax.checkpoint`).
    """

    precision: Precision
    remat: bool = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)
    seq_len: int | None = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    token_embed: Embedding
    pos_embed: Embedding | None
    lam_embed: LamEmbedding | None
    blocks: tuple[_Block, ...]
    norm_out: LayerNorm
    out_modulation: Linear | None
    out: Linear

    def __init__(
        self,
        vocab_size: int,
        seq_len: int | None = None,
        *,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        learned_positions: bool = True,
        lam_conditioning: bool = True,
        lam_min: float = -12.0,
        lam_max: float = 12.0,
        dropout: float = 0.0,
        key: PRNGKeyArray,
        precision: Precision = Precision(),
        remat: bool = False,
    ):
        for name, value in (
            ("vocab_size", vocab_size),
            ("dim", dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("mlp_ratio", mlp_ratio),
        ):
            check_positive_int(value, name)
        if seq_len is not None:
            check_positive_int(seq_len, "seq_len")
        if dim % num_heads:
            raise ValueError(f"`dim`={dim} must be divisible by `num_heads`={num_heads}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        rng = init_rng(key)
        self.precision, self.remat = precision, bool(remat)
        self.vocab_size, self.seq_len, self.dim, self.dropout_rate = vocab_size, seq_len, dim, float(dropout)
        self.token_embed = Embedding(vocab_size + 1, dim, scale=0.02, key=sub_key(rng))
        if not learned_positions:
            self.pos_embed = None
        elif seq_len is None:
            raise ValueError("`learned_positions=True` needs `seq_len`; pass it or use `learned_positions=False`.")
        else:
            self.pos_embed = Embedding(seq_len, dim, scale=0.02, key=sub_key(rng))
        self.lam_embed = LamEmbedding(dim, lam_min, lam_max, key=sub_key(rng)) if lam_conditioning else None
        cond_dim = dim if lam_conditioning else None
        self.blocks = tuple(
            _Block(dim, num_heads, mlp_ratio, cond_dim, dropout, key=sub_key(rng)) for _ in range(depth)
        )
        self.norm_out = LayerNorm(dim)
        self.out_modulation = Linear(dim, 2 * dim, key=sub_key(rng)) if lam_conditioning else None
        self.out = Linear(dim, vocab_size, zero_init=True, key=sub_key(rng))

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
        shape, length = jnp.shape(tokens), flat.shape[0]
        key = _dropout_key(self.dropout_rate, key, inference)
        x = self.token_embed(flat)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight
        else:
            x = x + _sinusoidal_positions(length, self.dim)
        x = self.precision.cast(x)
        emb = None if self.lam_embed is None else self.lam_embed(lam, self.precision)
        keys = [None] * len(self.blocks) if key is None else list(jr.split(key, len(self.blocks)))
        for block, k in zip(self.blocks, keys):
            x = call_block(self.remat, block, x, emb, k, inference)
        x = self.norm_out(x)
        if self.out_modulation is not None and emb is not None:
            shift, scale = jnp.split(self.out_modulation(jax.nn.silu(emb)), 2)
            x = x * (1 + scale[None, :]) + shift[None, :]
        return to_float32(self.out(x)).reshape(*shape, self.vocab_size)
