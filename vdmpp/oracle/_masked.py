r"""The Bayes-optimal masked denoiser for data uniform on a finite set (THEORY §8).

For $q(x)$ uniform on the rows of `data`, the absorbing process's posterior over a masked token given
$z_t$ does not depend on $t$: it is the empirical distribution of that position over the rows
consistent with the unmasked tokens of $z_t$, $\mu^*(v \mid z)_n \propto \#\{k : x_k \sim z,\ x_k^n = v\}$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._misc import check_data, check_nonnegative_int, check_positive_int, concrete
from .._types import Array, ArrayLike, Float, FloatScalarLike, Int


class EmpiricalMaskedDenoiser(eqx.Module):
    r"""Exact posterior $q(x^n \mid z)$ over each token for data uniform on the rows of `data`.

    Called on ONE example, `(z, lam) -> logits` of shape `(*shape, vocab_size)` over the real tokens
    (log counts; `-inf` for impossible tokens). `lam` is ignored: the masked posterior is time-free.
    A `z` consistent with no row gets uniform logits.

    Args:
        data: the data set, integer ids of shape `(N, *shape)`, values in `[0, vocab_size)`.
        vocab_size: $V$, the number of real tokens.
        mask_id: the mask token's id (must not occur in `data`).
    """

    data: Int[Array, " N *shape"]
    vocab_size: int = eqx.field(static=True)
    mask_id: int = eqx.field(static=True)

    def __init__(self, data: Int[ArrayLike, " N *shape"], vocab_size: int, mask_id: int):
        data = check_data(data, "data")
        if not jnp.issubdtype(data.dtype, jnp.integer):
            raise TypeError(f"`data` must hold integer token ids; got dtype {data.dtype}.")
        check_positive_int(vocab_size, "vocab_size")
        check_nonnegative_int(mask_id, "mask_id")
        arr = concrete(data)
        if arr is not None:  # traced data (inside jit) cannot be checked here
            if arr.min() < 0 or arr.max() >= vocab_size:
                raise ValueError(f"`data` ids must lie in [0, {vocab_size}); got [{arr.min()}, {arr.max()}].")
            if np.any(arr == mask_id):
                raise ValueError(f"`data` contains mask_id={mask_id}; the mask token must not be a data token.")
        self.data = data.astype(jnp.int32)
        self.vocab_size = int(vocab_size)
        self.mask_id = int(mask_id)

    def consistent(self, z: Int[Array, "*shape"]) -> Float[Array, " N"]:
        """1.0 for each row that agrees with `z` on its unmasked tokens, else 0.0."""
        if z.shape != self.data.shape[1:]:
            raise ValueError(f"`z` must have one example's shape {self.data.shape[1:]}; got {z.shape}.")
        agree = (z[None] == self.mask_id) | (self.data == z[None])
        axes = tuple(range(1, self.data.ndim))
        return jnp.all(agree, axis=axes).astype(jnp.float32)

    def __call__(self, z: Int[Array, "*shape"], lam: FloatScalarLike) -> Float[Array, "*shape V"]:
        r"""Logits $\log\#\{k: x_k \sim z, x_k^n = v\}$ over the $V$ real tokens at every position."""
        del lam
        w = self.consistent(z)
        onehot = jax.nn.one_hot(self.data, self.vocab_size, dtype=jnp.float32)
        counts = jnp.tensordot(w, onehot, axes=1)
        logits = jnp.where(counts > 0, jnp.log(jnp.maximum(counts, 1.0)), -jnp.inf)
        return jnp.where(jnp.sum(w) > 0, logits, jnp.zeros_like(logits))

    def decoder_log_prob(self, x: Int[Array, "*shape"], z: Int[Array, "*shape"]) -> Float[Array, ""]:
        r"""The ground-truth decoder $\log q(x \mid z) = \log\#\{k: x_k = x\} - \log\#\{k: x_k \sim z\}$."""
        w = self.consistent(z)
        axes = tuple(range(1, self.data.ndim))
        same = jnp.all(self.data == x[None], axis=axes).astype(jnp.float32)
        return jnp.log(jnp.sum(same * w)) - jnp.log(jnp.sum(w))
