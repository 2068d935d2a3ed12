r"""A U-Net in the style of ADM / VDM for channels-last images, conditioned on $\lambda$ (and a class)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._embed import _check_label, _dropout_key, ClassEmbedding, fourier_features, LamEmbedding
from ._layers import Conv2d, GroupNorm, init_rng, Linear, SelfAttention, sub_key
from ._precision import AbstractNetwork, call_block, Precision, to_float32


class _ResBlock(eqx.Module):
    norm1: GroupNorm
    conv1: Conv2d
    emb_proj: Linear
    norm2: GroupNorm
    dropout: eqx.nn.Dropout
    conv2: Conv2d
    skip: Conv2d | None
    scale_shift: bool = eqx.field(static=True)

    def __init__(self, cin, cout, emb_dim, groups, dropout, scale_shift, *, key):
        rng = init_rng(key)
        k1, k2, k3, k4 = (sub_key(rng) for _ in range(4))
        self.norm1 = GroupNorm(groups, cin)
        self.conv1 = Conv2d(cin, cout, 3, key=k1)
        self.scale_shift = scale_shift
        if scale_shift:  # ADM's use_scale_shift_norm: scale and shift of the second norm
            self.emb_proj = Linear(emb_dim, 2 * cout, key=k2)
        else:  # VDM: a bias-free, zero-initialised projection added after the first convolution
            self.emb_proj = Linear(emb_dim, cout, bias=False, zero_init=True, key=k2)
        self.norm2 = GroupNorm(groups, cout)
        self.dropout = eqx.nn.Dropout(dropout)
        self.conv2 = Conv2d(cout, cout, 3, zero_init=True, key=k3)  # the block starts as the identity
        self.skip = None if cin == cout else Conv2d(cin, cout, 1, key=k4)

    def __call__(self, x, emb, key, inference):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        cond = self.emb_proj(jax.nn.silu(emb))
        if self.scale_shift:
            scale, shift = jnp.split(cond, 2)
            h = self.norm2(h) * (1 + scale[None, None, :]) + shift[None, None, :]
        else:
            h = self.norm2(h + cond[None, None, :])
        h = self.dropout(jax.nn.silu(h), key=key, inference=inference)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


class _AttnBlock(eqx.Module):
    norm: GroupNorm
    attn: SelfAttention

    def __init__(self, channels: int, groups: int, num_heads: int, *, key: PRNGKeyArray):
        self.norm = GroupNorm(groups, channels)
        self.attn = SelfAttention(channels, num_heads, key=key)

    def __call__(self, x):
        h, w, c = x.shape
        return x + self.attn(self.norm(x).reshape(h * w, c)).reshape(h, w, c)


class _Level(eqx.Module):
    res: tuple[_ResBlock, ...]
    attn: tuple[_AttnBlock | None, ...]


class UNet(AbstractNetwork):
    r"""ADM/VDM-style U-Net on one channels-last image: `model(z, lam, *, label=None, key=None, inference=False)`.

    Residual blocks with GroupNorm and scale-shift conditioning on the embedding of the normalised
    $\lambda$ (plus a class embedding with a null class when `num_classes` is set), self-attention at the
    levels listed in `attention_levels` and in the middle, dropout, strided-conv downsampling,
    nearest-neighbour upsampling, and a zero-initialised output convolution (an untrained model outputs 0).
    The output has the shape of `z` (unless `out_channels` is set); read it in the parameterisation you train
    (see [`vdmpp.nn.as_denoiser`][]).

    Sizes: tiny for tests (`base_channels=8, channel_mults=(1, 2), num_res_blocks=1`), ADM-like for
    CIFAR-10 (`base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=3, attention_levels=(1,),
    num_heads=4, num_groups=32, dropout=0.1`: 50.7M parameters, built in ~3 s). VDM's CIFAR-10 score
    network is `channel_mults=(1,)` (no downsampling), `num_res_blocks=32`, `attention_levels=()`,
    `base_channels=128`, `num_groups=32`, `fourier_features=(6, 8)`, `scale_shift=False` (the preset
    `vdm_cifar10` in `experiments/_presets.py`).
    Height and width must be divisible by `2 ** (len(channel_mults) - 1)`.

    Args:
        channels: image channels C.
        base_channels: width of level 0.
        channel_mults: width multiplier per level (one level per entry; each but the last halves H, W).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of levels with self-attention (level 0 is full resolution).
        num_heads: attention heads.
        num_groups: GroupNorm groups (must divide every width).
        dropout: dropout rate in the residual blocks.
        lam_min, lam_max: $\lambda$ range for the normalised embedding.
        num_classes: classes for class conditioning (plus a null class), or None.
        key: initialisation key.
        fourier_features: `(start, stop)` to append VDM's base-2 Fourier features of `z` (frequencies
            $2^k \cdot 2\pi$, `k` in `range(start, stop)`; VDM uses `(6, 8)`) to the input, or None.
        scale_shift: condition each residual block through the scale and shift of its second norm (ADM);
            False adds a projection of the embedding after the first convolution (VDM).
        precision: compute dtype policy ([`vdmpp.nn.Precision`][]); the output is float32.
        remat: rematerialise each residual block in the backward pass (`jax.checkpoint`).
        out_channels: channels of the output (`None`: `channels`, the shape of `z`).
    """

    precision: Precision
    remat: bool = eqx.field(static=True)
    fourier: tuple[int, int] | None = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    num_classes: int | None = eqx.field(static=True)
    dropout_rate: float = eqx.field(static=True)
    num_levels: int = eqx.field(static=True)
    lam_embed: LamEmbedding
    class_embed: ClassEmbedding | None
    conv_in: Conv2d
    down: tuple[_Level, ...]
    downsample: tuple[Conv2d, ...]
    mid_res1: _ResBlock
    mid_attn: _AttnBlock
    mid_res2: _ResBlock
    up: tuple[_Level, ...]
    upsample: tuple[Conv2d, ...]
    norm_out: GroupNorm
    conv_out: Conv2d

    def __init__(
        self,
        channels: int,
        *,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (1,),
        num_heads: int = 1,
        num_groups: int = 8,
        dropout: float = 0.1,
        lam_min: float = -20.0,
        lam_max: float = 20.0,
        num_classes: int | None = None,
        key: PRNGKeyArray,
        fourier_features: tuple[int, int] | None = None,
        scale_shift: bool = True,
        precision: Precision = Precision(),
        remat: bool = False,
        out_channels: int | None = None,
    ):
        out_channels = channels if out_channels is None else out_channels
        for name, value in (
            ("channels", channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
            ("num_heads", num_heads),
            ("num_groups", num_groups),
        ):
            check_positive_int(value, name)
        if not channel_mults or any(not isinstance(m, int) or m < 1 for m in channel_mults):
            raise ValueError(f"`channel_mults` must be a non-empty tuple of positive ints; got {channel_mults!r}.")
        if any(lvl not in range(len(channel_mults)) for lvl in attention_levels):
            raise ValueError(
                f"`attention_levels` must index levels 0..{len(channel_mults) - 1}; got {attention_levels!r}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        if fourier_features is not None:
            if len(fourier_features) != 2 or not all(isinstance(k, int) for k in fourier_features):
                raise ValueError(f"`fourier_features` must be None or (start, stop) ints; got {fourier_features!r}.")
            if fourier_features[0] >= fourier_features[1]:
                raise ValueError(f"`fourier_features` must have start < stop, e.g. (6, 8); got {fourier_features!r}.")
            fourier_features = (int(fourier_features[0]), int(fourier_features[1]))
        emb_dim = 4 * base_channels
        rng = init_rng(key)
        keys = iter(lambda: sub_key(rng), None)  # endless
        self.precision, self.remat, self.fourier = precision, bool(remat), fourier_features
        self.channels, self.num_classes, self.dropout_rate = channels, num_classes, float(dropout)
        self.num_levels = len(channel_mults)
        self.lam_embed = LamEmbedding(emb_dim, lam_min, lam_max, key=next(keys), num_features=base_channels)
        self.class_embed = None if num_classes is None else ClassEmbedding(num_classes, emb_dim, key=next(keys))
        cin = channels if fourier_features is None else channels * (1 + 2 * (fourier_features[1] - fourier_features[0]))
        self.conv_in = Conv2d(cin, base_channels, 3, key=next(keys))

        def res(cin, cout):
            return _ResBlock(cin, cout, emb_dim, num_groups, dropout, scale_shift, key=next(keys))

        def attn(c, level):
            return _AttnBlock(c, num_groups, num_heads, key=next(keys)) if level in attention_levels else None

        widths = [base_channels * m for m in channel_mults]
        skips = [base_channels]
        ch = base_channels
        down, downsample = [], []
        for level, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, width))
                attns.append(attn(width, level))
                ch = width
                skips.append(ch)
            down.append(_Level(tuple(blocks), tuple(attns)))
            if level < len(widths) - 1:
                downsample.append(Conv2d(ch, ch, 3, stride=2, key=next(keys)))
                skips.append(ch)
        self.down, self.downsample = tuple(down), tuple(downsample)
        self.mid_res1 = res(ch, ch)
        self.mid_attn = _AttnBlock(ch, num_groups, num_heads, key=next(keys))
        self.mid_res2 = res(ch, ch)
        up, upsample = [], []
        for level in reversed(range(len(widths))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(res(ch + skips.pop(), widths[level]))
                attns.append(attn(widths[level], level))
                ch = widths[level]
            up.append(_Level(tuple(blocks), tuple(attns)))
            if level > 0:
                upsample.append(Conv2d(ch, ch, 3, key=next(keys)))
        self.up, self.upsample = tuple(up), tuple(upsample)
        self.norm_out = GroupNorm(num_groups, ch)
        self.conv_out = Conv2d(ch, out_channels, 3, zero_init=True, key=next(keys))

    def __call__(
        self,
        z: Float[Array, "H W C"],
        lam: FloatScalarLike,
        *,
        label: Int[Array, ""] | int | None = None,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
    ) -> Float[Array, "H W C_out"]:
        """Apply the U-Net to one image."""
        factor = 2 ** (self.num_levels - 1)
        if z.ndim != 3 or z.shape[-1] != self.channels or z.shape[0] % factor or z.shape[1] % factor:
            raise ValueError(
                f"`z` must be one channels-last image (H, W, {self.channels}) with H and W divisible by {factor} "
                f"(vmap over a batch outside); got shape {z.shape}."
            )
        _check_label(self.num_classes, label)
        key = _dropout_key(self.dropout_rate, key, inference)
        num_res = sum(len(lvl.res) for lvl in self.down + self.up) + 2
        keys = iter([None] * num_res if key is None else list(jr.split(key, num_res)))
        emb = self.lam_embed(lam, self.precision)
        if self.class_embed is not None:
            emb = emb + self.precision.cast(self.class_embed(label))
        if self.fourier is not None:  # float32 island, then the compute dtype
            z = jnp.concatenate([z.astype(jnp.float32), fourier_features(z, *self.fourier)], axis=-1)

        def res(block, h):
            return call_block(self.remat, block, h, emb, next(keys), inference)

        h = self.conv_in(self.precision.cast(z))
        hs = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.res, level.attn):
                h = res(block, h)
                if attn is not None:
                    h = attn(h)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = res(self.mid_res2, self.mid_attn(res(self.mid_res1, h)))
        for i, level in enumerate(self.up):
            for block, attn in zip(level.res, level.attn):
                h = res(block, jnp.concatenate([h, hs.pop()], axis=-1))
                if attn is not None:
                    h = attn(h)
            if i < len(self.upsample):
                h = jnp.repeat(jnp.repeat(h, 2, axis=0), 2, axis=1)  # nearest-neighbour x2
                h = self.upsample[i](h)
        return to_float32(self.conv_out(jax.nn.silu(self.norm_out(h))))
