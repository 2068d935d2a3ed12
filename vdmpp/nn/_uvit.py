r"""MD4's masked-pixel network for images: U-Net residual blocks around a DiT on 2×2 patches (U-ViT)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._adaln import AdaLNZeroBlock, FinalLayer
from ._embed import _check_label, _dropout_key, check_tokens, ClassEmbedding, LamEmbedding
from ._layers import Conv2d, Embedding, GroupNorm, init_rng, Linear, sub_key
from ._precision import AbstractNetwork, call_block, Precision, to_float32


def _sincos_2d(dim: int, grid: int) -> np.ndarray:
    """DiT's fixed 2-D sine-cosine position table `(grid * grid, dim)`: half the channels per axis."""

    def one_axis(d, pos):
        omega = 1.0 / 10_000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], axis=1).astype(np.float32)


class _CondGroupNorm(eqx.Module):
    """GroupNorm without its own parameters; scale and shift from a zero-initialised map of the conditioning."""

    norm: GroupNorm
    modulation: Linear

    def __init__(self, channels, cond_dim, groups, *, key):
        self.norm = GroupNorm(groups, channels, 1e-6, affine=False)
        self.modulation = Linear(cond_dim, 2 * channels, zero_init=True, key=key)

    def __call__(self, x, cond):
        scale, shift = jnp.split(self.modulation(cond), 2)
        return self.norm(x) * (1 + scale[None, None, :]) + shift[None, None, :]


class _ResBlock(eqx.Module):
    norm1: _CondGroupNorm
    conv1: Conv2d
    norm2: _CondGroupNorm
    dropout: eqx.nn.Dropout
    conv2: Conv2d
    skip: Linear | None

    def __init__(self, cin, cout, cond_dim, groups, dropout, *, key):
        rng = init_rng(key)
        self.norm1 = _CondGroupNorm(cin, cond_dim, groups, key=sub_key(rng))
        self.conv1 = Conv2d(cin, cout, 3, key=sub_key(rng))
        self.norm2 = _CondGroupNorm(cout, cond_dim, groups, key=sub_key(rng))
        self.dropout = eqx.nn.Dropout(dropout)
        self.conv2 = Conv2d(cout, cout, 3, zero_init=True, key=sub_key(rng))
        self.skip = None if cin == cout else Linear(cin, cout, key=sub_key(rng))

    def __call__(self, x, cond, key, inference):
        h = self.conv1(jax.nn.silu(self.norm1(x, cond)))
        h = self.dropout(jax.nn.silu(self.norm2(h, cond)), key=key, inference=inference)
        return (x if self.skip is None else self.skip(x)) + self.conv2(h)


class UViT(AbstractNetwork):
    r"""Masked-pixel U-ViT on one `(H, W, C)` grid of integer pixels: `model(tokens, lam, *, label=None,
    key=None, inference=False)` → float32 logits `(H, W, C, V)` over the V real levels (mask id `V`).

    MD4's image network (`md4/networks/uvit.py` behind `md4/models/backward.py`): each sub-pixel is
    embedded in `features` channels (the C embeddings of a pixel concatenated), a 3×3 convolution, then
    `num_res_blocks` residual blocks at full resolution (no downsampling; GroupNorms whose scale and shift
    come from the conditioning), a DiT on `patch_size`² patches (learned positions initialised to 2-D
    sine-cosine, `dit_depth` adaLN-zero blocks of width `dit_dim` with GELU MLPs), `num_res_blocks + 1`
    residual blocks taking the skip connections, and a zero-initialised 3×3 convolution to `C * V` logits.
    The conditioning is a [`LamEmbedding`][vdmpp.nn.LamEmbedding] of the normalised $\lambda$ of width
    `features` (plus a class embedding with a null class when `num_classes` is set).

    MD4's ImageNet-64 configuration (`md4/configs/md4/imagenet64.py`), Shi & Titsias' 204M model, is
    `features=256, num_res_blocks=8, dit_depth=20, dit_dim=768, dit_heads=12, dropout=0.1` (preset
    `md4_imagenet64`).

    Args:
        vocab_size: V, the number of levels per sub-pixel (256 for 8-bit images).
        image_shape: `(H, W, C)`; H and W divisible by `patch_size`.
        features: embedding width per sub-pixel and the U-Net's channels.
        num_res_blocks: residual blocks before the DiT (one more after it).
        dit_depth, dit_dim, dit_heads: the DiT's depth, width and attention heads.
        patch_size: DiT patch size.
        mlp_ratio: DiT MLP hidden width as a multiple of `dit_dim`.
        num_groups: GroupNorm groups (must divide `features`).
        lam_min, lam_max: $\lambda$ range for the normalised embedding (±inf is clipped to the ends).
        num_classes: classes for class conditioning (plus a null class), or None.
        dropout: dropout rate in the residual blocks and on the DiT's branches.
        key: initialisation key.
        precision: compute dtype policy ([`vdmpp.nn.Precision`][]); the logits are float32.
        remat: rematerialise each residual and DiT block in the backward pass (`jax.checkpoint`).
    """

    precision: Precision
    remat: bool = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    patch_size: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    token_embed: Embedding
    lam_embed: LamEmbedding
    class_embed: ClassEmbedding | None
    conv_in: Conv2d
    down: tuple[_ResBlock, ...]
    patch_embed: Conv2d
    pos_embed: Float[Array, "N D"]
    dit: tuple[AdaLNZeroBlock, ...]
    dit_final: FinalLayer
    up: tuple[_ResBlock, ...]
    norm_out: _CondGroupNorm
    conv_out: Conv2d

    def __init__(
        self,
        vocab_size: int,
        image_shape: tuple[int, int, int],
        *,
        features: int = 32,
        num_res_blocks: int = 2,
        dit_depth: int = 2,
        dit_dim: int = 64,
        dit_heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: int = 4,
        num_groups: int = 32,
        lam_min: float = -12.0,
        lam_max: float = 12.0,
        num_classes: int | None = None,
        dropout: float = 0.1,
        key: PRNGKeyArray,
        precision: Precision = Precision(),
        remat: bool = False,
    ):
        for name, value in (
            ("vocab_size", vocab_size),
            ("features", features),
            ("num_res_blocks", num_res_blocks),
            ("dit_depth", dit_depth),
            ("dit_dim", dit_dim),
            ("dit_heads", dit_heads),
            ("patch_size", patch_size),
            ("mlp_ratio", mlp_ratio),
            ("num_groups", num_groups),
        ):
            check_positive_int(value, name)
        if len(image_shape) != 3 or any(not isinstance(n, int) or n < 1 for n in image_shape):
            raise ValueError(f"`image_shape` must be (H, W, C) positive ints; got {image_shape!r}.")
        height, width, chans = image_shape
        if height % patch_size or width % patch_size or height != width:
            raise ValueError(
                f"`image_shape` must be square with H, W divisible by `patch_size`={patch_size}; got {image_shape}."
            )
        if dit_dim % dit_heads or (dit_dim // dit_heads) % 2 or dit_dim % 4:
            raise ValueError(f"`dit_dim`={dit_dim} must be divisible by 4 and by `dit_heads`={dit_heads}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        rng = init_rng(key)
        keys = iter(lambda: sub_key(rng), None)  # endless
        self.precision, self.remat = precision, bool(remat)
        self.vocab_size, self.image_shape, self.patch_size = vocab_size, (height, width, chans), patch_size
        self.num_classes, self.dropout_rate = num_classes, float(dropout)
        self.token_embed = Embedding(vocab_size + 1, features, scale=1.0 / math.sqrt(features), key=next(keys))
        self.lam_embed = LamEmbedding(features, lam_min, lam_max, hidden_dim=4 * features, key=next(keys))
        self.class_embed = None if num_classes is None else ClassEmbedding(num_classes, features, key=next(keys))
        self.conv_in = Conv2d(chans * features, features, 3, key=next(keys))
        self.down = tuple(
            _ResBlock(features, features, features, num_groups, dropout, key=next(keys)) for _ in range(num_res_blocks)
        )
        self.patch_embed = Conv2d(features, dit_dim, patch_size, stride=patch_size, key=next(keys))
        self.pos_embed = jnp.asarray(_sincos_2d(dit_dim, height // patch_size))
        self.dit = tuple(
            AdaLNZeroBlock(
                dit_dim,
                dit_heads,
                features,
                glu=False,
                hidden=mlp_ratio * dit_dim,
                qkv_bias=True,
                rope=False,
                init_scale=1.0,
                dropout=dropout,
                eps=1e-6,
                key=next(keys),
            )
            for _ in range(dit_depth)
        )
        self.dit_final = FinalLayer(dit_dim, features, patch_size**2 * features, bias=True, eps=1e-6, key=next(keys))
        self.up = tuple(
            _ResBlock(2 * features, features, features, num_groups, dropout, key=next(keys))
            for _ in range(num_res_blocks + 1)
        )
        self.norm_out = _CondGroupNorm(features, features, num_groups, key=next(keys))
        self.conv_out = Conv2d(features, chans * vocab_size, 3, zero_init=True, key=next(keys))

    @property
    def mask_id(self) -> int:
        """The mask token id, V."""
        return self.vocab_size

    def _dit(self, h, cond, keys, inference):
        height, width, chans = h.shape
        p, grid = self.patch_size, h.shape[0] // self.patch_size
        x = self.patch_embed(h).reshape(grid * grid, -1) + self.pos_embed.astype(h.dtype)
        for block in self.dit:
            x = call_block(self.remat, block, x, cond, next(keys), inference)
        x = self.dit_final(x, cond).reshape(grid, grid, p, p, chans)
        return x.transpose(0, 2, 1, 3, 4).reshape(height, width, chans)  # unpatchify

    def __call__(
        self,
        tokens: Int[Array, "H W C"],
        lam: FloatScalarLike,
        *,
        label: Int[Array, ""] | int | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
    ) -> Float[Array, "H W C V"]:
        """Logits over the V real levels at every sub-pixel of one image."""
        tokens = check_tokens(tokens, self.vocab_size, shape=self.image_shape, what="levels")
        _check_label(self.num_classes, label)
        key = _dropout_key(self.dropout_rate, key, inference)
        num_keys = len(self.down) + len(self.dit) + len(self.up)
        keys = iter([None] * num_keys if key is None else list(jr.split(key, num_keys)))
        height, width, chans = self.image_shape
        cond = self.lam_embed(lam, self.precision)
        if self.class_embed is not None:
            cond = cond + self.precision.cast(self.class_embed(label))
        h = self.precision.cast(self.token_embed(tokens)).reshape(height, width, -1)
        h = self.conv_in(h)
        hs = [h]
        for block in self.down:
            h = call_block(self.remat, block, h, cond, next(keys), inference)
            hs.append(h)
        h = self._dit(h, cond, keys, inference)
        for block in self.up:
            h = call_block(self.remat, block, jnp.concatenate([h, hs.pop()], axis=-1), cond, next(keys), inference)
        logits = self.conv_out(jax.nn.silu(self.norm_out(h, cond)))
        return to_float32(logits).reshape(height, width, chans, self.vocab_size)
