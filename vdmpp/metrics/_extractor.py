"""Feature extractors: `images -> features (n, d)` on the host, optionally with class probabilities."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import ArrayLike, Float, Shaped

from .._misc import check_positive_int
from ..losses import uint8_to_float
from ..nn import Classifier


class AbstractFeatureExtractor(eqx.Module):
    """Maps a batch of samples to feature vectors `(n, d)` (NumPy); `extractor(x)` is `extractor.features(x)`."""

    @abc.abstractmethod
    def features(self, samples: Shaped[ArrayLike, "n ..."]) -> Float[np.ndarray, "n d"]:
        """Feature vectors of the samples, one row each."""

    @abc.abstractmethod
    def class_probabilities(self, samples: Shaped[ArrayLike, "n ..."]) -> Float[np.ndarray, "n k"] | None:
        """Class probabilities `(n, num_classes)`, or `None` if the extractor has no classifier head."""

    def __call__(self, samples: Shaped[ArrayLike, "n ..."]) -> Float[np.ndarray, "n d"]:
        """Same as `features`."""
        return self.features(samples)


class FeatureFunction(AbstractFeatureExtractor):
    """Any `samples -> features` callable as an extractor (without class probabilities).

    Args:
        fn: maps a batch `(n, ...)` to features `(n, d)` (e.g. an Inception network you have locally).
    """

    fn: Callable[[Any], Any] = eqx.field(static=True)

    def features(self, samples: Shaped[ArrayLike, "n ..."]) -> Float[np.ndarray, "n d"]:
        """`fn(samples)` as a float NumPy array."""
        out = np.asarray(self.fn(samples))
        n = np.shape(samples)[0]
        if out.ndim != 2 or out.shape[0] != n:
            raise ValueError(f"The feature function must return an array (n, d) with n={n} rows; got {out.shape}.")
        return out

    def class_probabilities(self, samples: Shaped[ArrayLike, "n ..."]) -> None:
        """No classifier head: `None`."""
        return None


def as_extractor(extractor: Any) -> AbstractFeatureExtractor:
    """`extractor` itself if it is an `AbstractFeatureExtractor`, else a callable wrapped in `FeatureFunction`."""
    if isinstance(extractor, AbstractFeatureExtractor):
        return extractor
    if not callable(extractor):
        raise TypeError(
            f"`extractor` must be a vdmpp.metrics feature extractor or a callable `samples -> features (n, d)`; "
            f"got {type(extractor).__name__}."
        )
    return FeatureFunction(extractor)


@eqx.filter_jit
def _features(classifier: Classifier, x: jax.Array, num_levels: int) -> jax.Array:
    return jax.vmap(classifier.features)(uint8_to_float(x, num_levels))


@eqx.filter_jit
def _probabilities(classifier: Classifier, x: jax.Array, num_levels: int) -> jax.Array:
    return jax.nn.softmax(jax.vmap(classifier)(uint8_to_float(x, num_levels)), axis=-1)


class FeatureNetwork(AbstractFeatureExtractor):
    """A trained [`vdmpp.nn.Classifier`][] as a feature extractor for integer images of one data set.

    `features` is the classifier's penultimate layer; `class_probabilities` its softmax. Images are
    integer levels `(n, H, W, C)` in `0..num_levels-1`, exactly like the data set's arrays (and discretised
    samples); they are scaled to model space as in training and run in jitted batches of `batch_size`
    (the last batch padded, so one compilation serves every n). Build with
    [`vdmpp.metrics.feature_network`][] (cached per data set) or `vdmpp.metrics.train_feature_network`.

    Attributes:
        classifier: the network.
        num_levels: integer levels of the data.
        example_shape: `(H, W, C)`.
        data_name: the data set it was trained on.
        fingerprint: hash of that data set (see `vdmpp.metrics.data_fingerprint`).
        batch_size: images per jitted call.
    """

    classifier: Classifier
    num_levels: int = eqx.field(static=True)
    example_shape: tuple[int, ...] = eqx.field(static=True)
    data_name: str = eqx.field(static=True, default="")
    fingerprint: str = eqx.field(static=True, default="")
    batch_size: int = eqx.field(static=True, default=256)

    def __check_init__(self):
        check_positive_int(self.batch_size, "batch_size")
        if len(self.example_shape) != 3 or self.example_shape[-1] != self.classifier.channels:
            raise ValueError(
                f"`example_shape` must be (H, W, {self.classifier.channels}) for this classifier; "
                f"got {self.example_shape}."
            )

    def _check_images(self, images: Any) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.example_shape) or x.shape[0] < 1:
            raise ValueError(
                f"`images` must be shaped (n, {', '.join(map(str, self.example_shape))}) for this feature network "
                f"(trained on {self.data_name or 'a data set'} of that shape); got {x.shape}."
            )
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(
                f"`images` must be integer levels 0..{self.num_levels - 1} (like the data set); got dtype "
                f"{x.dtype}. Discretise float samples first, e.g. with `np.rint`, `np.clip` and `.astype(np.int32)`."
            )
        if x.min() < 0 or x.max() >= self.num_levels:
            raise ValueError(
                f"`images` values must lie in 0..{self.num_levels - 1} (num_levels={self.num_levels}); got the "
                f"range {int(x.min())}..{int(x.max())}. Was the network trained on another data set?"
            )
        return x.astype(np.int32)

    def _batched(self, fn: Any, images: Any) -> np.ndarray:
        x = self._check_images(images)
        n, b = x.shape[0], self.batch_size
        out = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(fn(self.classifier, chunk, self.num_levels))[: b - pad])
        return np.concatenate(out).astype(np.float64)

    def features(self, samples: Shaped[ArrayLike, "n h w c"]) -> Float[np.ndarray, "n d"]:
        """Penultimate-layer features `(n, feature_dim)` of integer images `(n, H, W, C)`."""
        return self._batched(_features, samples)

    def class_probabilities(self, samples: Shaped[ArrayLike, "n h w c"]) -> Float[np.ndarray, "n k"]:
        """Softmax class probabilities `(n, num_classes)` of integer images."""
        return self._batched(_probabilities, samples)
