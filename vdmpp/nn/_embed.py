r"""Conditioning on the log-SNR $\lambda$ (never on $t$) and shared helpers for the networks.

The networks see $\lambda$ only through a sinusoidal embedding of the normalised
$u = \mathrm{clip}((\lambda - \lambda_{\min})/(\lambda_{\max} - \lambda_{\min}), 0, 1)$, so a network trained
with one noise schedule can be sampled with any other (K&G §2: the loss and the optimal denoiser depend on
the schedule only through $\lambda$). Clipping keeps $\lambda = \pm\infty$ (masked diffusion at $t \in \{0, 1\}$)
finite.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._misc import check_positive_int, error_if
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._layers import Embedding, init_rng, Linear, sub_key
from ._precision import Precision


def _check_lam_range(lam_min: float, lam_max: float) -> None:
    if not (math.isfinite(lam_min) and math.isfinite(lam_max) and lam_min < lam_max):
        raise ValueError(
            f"`lam_min` and `lam_max` must be finite with lam_min < lam_max; got lam_min={lam_min}, "
            f"lam_max={lam_max}. Use the range of the noise schedule you train with, e.g. (-20.0, 20.0)."
        )


def sinusoidal(u: Float[Array, ""], dim: int, max_period: float = 10_000.0) -> Float[Array, " {dim}"]:
    """Transformer-style sinusoidal features of a scalar `u` (ADM's timestep embedding), shape `(dim,)`."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=u.dtype) / half)
    args = u * freqs
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)])
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros((1,), u.dtype)])
    return emb


class LamEmbedding(eqx.Module):
    r"""Embedding of the log-SNR: sinusoidal features of the normalised $\lambda$, then a two-layer SiLU MLP.

    The normalisation and the sinusoids are computed in float32 whatever the compute dtype (THEORY §15:
    $\sin(1000\,u\,\omega)$ in bfloat16 would lose the fine λ resolution); the MLP runs in the compute dtype.

    Args:
        dim: output width.
        lam_min, lam_max: the range mapped to $[0, 1]$ (values outside are clipped).
        key: initialisation key.
        num_features: number of sinusoidal features (default `dim`).
        scale: $u \in [0, 1]$ is multiplied by `scale` before the sinusoids (ADM uses time steps up to 1000).
        hidden_dim: width of the MLP's hidden layer (default `dim`; MD4 uses `4 * dim`).
    """

    lam_min: float = eqx.field(static=True)
    lam_max: float = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    linear1: Linear
    linear2: Linear

    def __init__(
        self,
        dim: int,
        lam_min: float,
        lam_max: float,
        *,
        key: PRNGKeyArray,
        num_features: int | None = None,
        scale: float = 1000.0,
        hidden_dim: int | None = None,
    ):
        _check_lam_range(lam_min, lam_max)
        check_positive_int(dim, "dim")
        num_features = dim if num_features is None else num_features
        hidden_dim = dim if hidden_dim is None else hidden_dim
        check_positive_int(num_features, "num_features")
        check_positive_int(hidden_dim, "hidden_dim")
        rng = init_rng(key)
        self.lam_min, self.lam_max = float(lam_min), float(lam_max)
        self.num_features, self.scale = num_features, float(scale)
        self.linear1 = Linear(num_features, hidden_dim, key=sub_key(rng))
        self.linear2 = Linear(hidden_dim, dim, key=sub_key(rng))

    def normalise(self, lam: FloatScalarLike) -> Float[Array, ""]:
        r"""$u = \mathrm{clip}((\lambda - \lambda_{\min})/(\lambda_{\max} - \lambda_{\min}), 0, 1)$."""
        lam = jnp.asarray(lam, dtype=jnp.float32)
        if lam.shape != ():
            raise ValueError(f"`lam` must be a scalar (one example; vmap outside); got shape {lam.shape}.")
        return jnp.clip((lam - self.lam_min) / (self.lam_max - self.lam_min), 0.0, 1.0)

    def __call__(self, lam: FloatScalarLike, precision: Precision = Precision()) -> Float[Array, " dim"]:
        """Return the embedding of one scalar $\\lambda$ (in the compute dtype of `precision`)."""
        feats = sinusoidal(self.normalise(lam) * self.scale, self.num_features)  # float32 island
        return self.linear2(jax.nn.silu(self.linear1(precision.cast(feats))))


def fourier_features(z: Float[Array, "*shape c"], start: int, stop: int) -> Float[Array, "*shape f"]:
    r"""VDM's base-2 Fourier features of the input: $\sin$ and $\cos$ of $2^k \cdot 2\pi z$, $k$ in
    `range(start, stop)`, for every channel; `2 * C * (stop - start)` features, channel-major.

    Computed in float32 (THEORY §15: at $2^7 \cdot 2\pi$ a bfloat16 `z` would give random phases); the
    high frequencies let the network see the fine, low-bit structure of nearly clean data (VDM §3.4).
    """
    z32 = jnp.asarray(z, jnp.float32)
    freqs = 2.0 * math.pi * 2.0 ** jnp.arange(start, stop, dtype=jnp.float32)
    h = (z32[..., :, None] * freqs.reshape((1,) * z32.ndim + (-1,))).reshape(
        *z.shape[:-1], z.shape[-1] * (stop - start)
    )
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


class ClassEmbedding(eqx.Module):
    """Embedding of a class label with an extra null class (index `num_classes`) for classifier-free guidance.

    `label=None` means the null class (unconditional). Labels outside `[0, num_classes]` are an error
    (`eqx.error_if`, so also inside `jit`).
    """

    num_classes: int = eqx.field(static=True)
    table: Embedding

    def __init__(self, num_classes: int, dim: int, *, key: PRNGKeyArray):
        check_positive_int(num_classes, "num_classes")
        self.num_classes = num_classes
        self.table = Embedding(num_classes + 1, dim, key=key)

    def __call__(self, label: Int[Array, ""] | int | None) -> Float[Array, " dim"]:
        """Embed one label (`None` or `num_classes`: the null class)."""
        index = jnp.asarray(self.num_classes if label is None else label)
        if index.shape != () or not jnp.issubdtype(index.dtype, jnp.integer):
            raise TypeError(f"`label` must be an integer scalar (one example); got {index.dtype}{list(index.shape)}.")
        index = error_if(
            index,
            (index < 0) | (index > self.num_classes),
            f"`label` must be in [0, {self.num_classes}] ({self.num_classes} is the null class).",
        )
        return self.table(index)


def _check_label(num_classes: int | None, label) -> None:
    if num_classes is None and label is not None:
        raise ValueError("`label` was given but the model has no class conditioning; build it with `num_classes=...`.")


def _dropout_key(dropout: float, key: PRNGKeyArray | None, inference: bool) -> PRNGKeyArray | None:
    """Validate the dropout key: required exactly when dropout is active (rate > 0 and `inference=False`)."""
    if dropout > 0 and not inference and key is None:
        raise ValueError(
            f"This model has dropout={dropout} and was called with `inference=False` but no `key`; pass "
            "`key=...` for training, or `inference=True` for evaluation and sampling."
        )
    return key


def check_tokens(
    tokens: Int[Array, "..."],
    vocab_size: int,
    *,
    shape: tuple[int, ...] | None = None,
    seq_len: int | None = None,
    what: str = "ids",
) -> Int[Array, "..."]:
    """One example's tokens as int32, checked for the token networks: an integer dtype, the model's `shape` (or
    `seq_len` positions), and values in [0, V] (ids 0..V-1 and the mask V; checked at run time)."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"`tokens` must be an integer array of token {what}; got dtype {tokens.dtype}.")
    if shape is not None and tokens.shape != shape:
        raise ValueError(
            f"`tokens` must have shape {shape} (one example; vmap over a batch outside); got {tokens.shape}."
        )
    if seq_len is not None and math.prod(tokens.shape) != seq_len:
        raise ValueError(
            f"`tokens` has {math.prod(tokens.shape)} positions (shape {tokens.shape}) but the model was built with "
            f"seq_len={seq_len} (one example; vmap over a batch outside)."
        )
    return error_if(
        tokens.astype(jnp.int32),
        (tokens < 0) | (tokens > vocab_size),
        f"`tokens` must be in [0, {vocab_size}] ({what} 0..{vocab_size - 1}, mask {vocab_size}).",
    )
