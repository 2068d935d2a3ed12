"""A small convolutional image classifier whose penultimate layer serves as the feature space of the metrics."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._misc import check_positive_int, is_int
from .._types import Array, Float, PRNGKeyArray
from ._layers import Conv2d, GroupNorm, init_rng, Linear, sub_key


class _Stage(eqx.Module):
    conv1: Conv2d
    norm1: GroupNorm
    conv2: Conv2d
    norm2: GroupNorm

    def __init__(self, cin: int, cout: int, stride: int, groups: int, *, key: PRNGKeyArray):
        rng = init_rng(key)
        self.conv1 = Conv2d(cin, cout, 3, stride=stride, key=sub_key(rng))
        self.norm1 = GroupNorm(groups, cout)
        self.conv2 = Conv2d(cout, cout, 3, key=sub_key(rng))
        self.norm2 = GroupNorm(groups, cout)

    def __call__(self, x):
        h = jax.nn.silu(self.norm1(self.conv1(x)))
        return jax.nn.silu(self.norm2(self.conv2(h)))


class Classifier(eqx.Module):
    r"""Small CNN classifier on one channels-last image `(H, W, C)` in model space (values in $[-1, 1]$).

    Stages of two 3×3 convolutions with GroupNorm and SiLU; every stage after the first halves H and W
    (strided convolution). Global average pooling, a hidden linear layer with SiLU (the **features**,
    `feature_dim` wide: the penultimate layer, used by [`vdmpp.metrics`][] like Inception's pool3 in FID)
    and a linear head giving the logits. Any image size works (pooling is global); for 8×8 digits and
    28×28 MNIST the default `widths=(16, 32, 64)` has 77k parameters.

    Feed images scaled like the training data: integer levels $v$ map to $2(v + \tfrac12)/L - 1$
    ([`vdmpp.losses.uint8_to_float`][]). [`vdmpp.metrics.FeatureNetwork`][] does this for batches of integer images.

    Args:
        channels: image channels C.
        num_classes: number of classes.
        widths: channels per stage.
        feature_dim: width of the penultimate (feature) layer.
        num_groups: GroupNorm groups (must divide every width).
        key: initialisation key.
    """

    channels: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    feature_dim: int = eqx.field(static=True)
    stages: tuple[_Stage, ...]
    hidden: Linear
    head: Linear

    def __init__(
        self,
        channels: int,
        num_classes: int,
        *,
        widths: tuple[int, ...] = (16, 32, 64),
        feature_dim: int = 64,
        num_groups: int = 4,
        key: PRNGKeyArray,
    ):
        check_positive_int(channels, "channels")
        if not is_int(num_classes) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an integer >= 2; got {num_classes!r}.")
        check_positive_int(feature_dim, "feature_dim")
        if not widths:
            raise ValueError("`widths` must name at least one stage; got ().")
        for w in widths:
            check_positive_int(w, "widths", " (channels per stage)")
        rng = init_rng(key)
        cins = (channels,) + tuple(widths[:-1])
        self.stages = tuple(
            _Stage(cin, cout, 1 if i == 0 else 2, num_groups, key=sub_key(rng))
            for i, (cin, cout) in enumerate(zip(cins, widths))
        )
        self.hidden = Linear(widths[-1], feature_dim, key=sub_key(rng))
        self.head = Linear(feature_dim, num_classes, key=sub_key(rng))
        self.channels, self.num_classes, self.feature_dim = channels, num_classes, feature_dim

    def _check(self, x: Array) -> None:
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(
                f"`x` must be one channels-last image (H, W, {self.channels}); got shape {x.shape}. "
                "Batch with `jax.vmap`."
            )

    def features(self, x: Float[Array, "h w c"]) -> Float[Array, " feature_dim"]:
        """The penultimate layer's activations (after global pooling and the hidden layer)."""
        self._check(x)
        h = x
        for stage in self.stages:
            h = stage(h)
        return jax.nn.silu(self.hidden(jnp.mean(h, axis=(0, 1))))

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, " num_classes"]:
        """Class logits."""
        return self.head(self.features(x))
