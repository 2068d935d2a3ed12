"""Train the feature classifier on a labelled image data set (optax; deterministic given the seed)."""

import dataclasses
import functools
import hashlib
import math
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import scipy.ndimage
from tqdm.auto import tqdm

from .._misc import check_nonnegative_int, check_positive_int
from ..losses import uint8_to_float
from ..nn import Classifier
from ._extractor import FeatureNetwork


_NONNEGATIVE = ("max_rotation", "max_scale", "max_shift", "lr", "weight_decay", "label_smoothing", "ema_decay", "mixup")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    r"""Hyperparameters of the feature classifier and its training (part of the cache key).

    Attributes:
        widths: channels per stage of [`vdmpp.nn.Classifier`][].
        feature_dim: width of the feature (penultimate) layer.
        steps: Adam steps; `None`: 20 epochs, clipped to 1000..2000.
        batch_size: examples per step.
        lr: peak learning rate (cosine decay to 0 after min(50, steps // 5) warm-up steps).
        weight_decay: AdamW weight decay.
        max_rotation: random rotations of up to this many degrees (augmentation).
        max_scale: random zooms by a factor in $[e^{-s}, e^{s}]$.
        max_shift: random translations of up to this many pixels; `None`: H / 8.
        label_smoothing: weight of the uniform distribution mixed into the one-hot targets.
        ema_decay: the returned network is the exponential moving average of the weights with this decay
            (0: the last iterate).
        mixup: mixup (Zhang et al. 2018, arXiv:1710.09412): each batch is mixed with a shuffled copy of
            itself, $\tilde x = \lambda x_i + (1 - \lambda) x_j$ and $\tilde y = \lambda y_i + (1 - \lambda) y_j$
            (one-hot targets) with $\lambda \sim \mathrm{Beta}(\alpha, \alpha)$ per example; this is $\alpha$
            (0: off).
    """

    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    steps: int | None = None
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_rotation: float = 15.0
    max_scale: float = 0.15
    max_shift: float | None = None
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    mixup: float = 0.2

    def resolved(self, num_train: int, height: int) -> "ClassifierConfig":
        """With `steps` and `max_shift` filled in for a training set of `num_train` images of height `height`."""
        steps = self.steps
        if steps is None:
            steps = int(np.clip(math.ceil(20 * num_train / self.batch_size), 1000, 2000))
        shift = height / 8 if self.max_shift is None else self.max_shift
        return dataclasses.replace(self, steps=steps, max_shift=shift)


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """What identifies a labelled image data set: name, shapes, levels, classes and a SHA-256 of its arrays."""
    from ..data import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a vdmpp.data.Dataset (from `vd.data.load`); got {type(dataset).__name__}.")
    if dataset.kind != "image" or dataset.train_labels is None or dataset.test_labels is None:
        raise ValueError(
            f"The feature classifier needs labelled images; {dataset.name!r} is kind={dataset.kind!r} with "
            f"{'no ' if dataset.train_labels is None else ''}labels. Pass your own `images -> features` callable."
        )
    if dataset.train.ndim != 4:
        raise ValueError(f"Images must be shaped (N, H, W, C); got {dataset.train.shape}.")
    h = hashlib.sha256()
    for a in (dataset.train, dataset.train_labels, dataset.test, dataset.test_labels):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return {
        "name": dataset.name,
        "example_shape": list(dataset.example_shape),
        "num_levels": int(dataset.num_levels or 0),
        "num_classes": int(dataset.num_classes or int(np.asarray(dataset.train_labels).max()) + 1),
        "num_train": int(dataset.train.shape[0]),
        "num_test": int(dataset.test.shape[0]),
        "sha256": h.hexdigest(),
    }


def _augment(rng: np.random.Generator, x: np.ndarray, cfg: "ClassifierConfig", num_levels: int) -> np.ndarray:
    """Random small affine maps per image (rotation, scale, translation; bilinear, edges extended), re-quantised."""
    b, h, w, c = x.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    angle = np.deg2rad(rng.uniform(-cfg.max_rotation, cfg.max_rotation, size=b))
    zoom = np.exp(rng.uniform(-cfg.max_scale, cfg.max_scale, size=b))
    shift = rng.uniform(-1.0, 1.0, size=(b, 2)) * (cfg.max_shift or 0.0)
    out = np.empty(x.shape, np.float32)
    for i in range(b):
        m = np.array([[np.cos(angle[i]), -np.sin(angle[i])], [np.sin(angle[i]), np.cos(angle[i])]]) / zoom[i]
        offset = centre - m @ centre + shift[i]
        for ch in range(c):
            out[i, :, :, ch] = scipy.ndimage.affine_transform(
                x[i, :, :, ch].astype(np.float32), m, offset, order=1, mode="nearest"
            )
    return np.clip(np.rint(out), 0, num_levels - 1).astype(np.int32)


def _loss(
    classifier: Classifier, x: jax.Array, y: jax.Array, key: jax.Array, smoothing: float, mixup: float
) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(y, classifier.num_classes, dtype=x.dtype), smoothing)
    if mixup > 0:
        key_lam, key_perm = jr.split(key)
        lam = jr.beta(key_lam, mixup, mixup, (x.shape[0],), dtype=x.dtype)
        perm = jr.permutation(key_perm, x.shape[0])
        x = lam[:, None, None, None] * x + (1.0 - lam[:, None, None, None]) * x[perm]
        targets = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[perm]
    logits = jax.vmap(classifier)(x)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


@eqx.filter_jit
def _step(classifier, ema, opt_state, x, y, key, optimizer, smoothing: float, mixup: float, ema_decay: float):
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam update is not strict-promotion clean
        loss, grads = eqx.filter_value_and_grad(_loss)(classifier, x, y, key, smoothing, mixup)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(classifier, eqx.is_inexact_array))
    classifier = eqx.apply_updates(classifier, updates)
    params, static = eqx.partition(classifier, eqx.is_inexact_array)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    return classifier, ema, opt_state, loss


@functools.lru_cache(maxsize=8)
def _optimizer(lr: float, weight_decay: float, steps: int) -> optax.GradientTransformation:
    # one object per setting: it is a static argument of the jitted step, so equal settings reuse its compilation
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5), steps)
    return optax.adamw(schedule, weight_decay=weight_decay)


def accuracy(net: FeatureNetwork, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` whose most probable class is `labels`."""
    return float(np.mean(np.argmax(net.class_probabilities(images), axis=1) == np.asarray(labels)))


def train_feature_network(
    dataset: Any, *, seed: int = 0, config: ClassifierConfig = ClassifierConfig(), progress: bool = True
) -> tuple[FeatureNetwork, dict[str, Any]]:
    """Train a [`vdmpp.nn.Classifier`][] on a labelled image data set; deterministic given `seed`.

    AdamW with warm-up and cosine decay on the cross-entropy; batches drawn with a NumPy generator seeded
    with `seed` and augmented by small random rotations, zooms and translations (re-quantised to the
    data's levels), then mixed by mixup (`config.mixup`); images scaled like the diffusion models' training
    data ([`vdmpp.losses.uint8_to_float`][]).

    Args:
        dataset: a `vdmpp.data.Dataset` of labelled images.
        seed: seeds the initialisation and the batches.
        config: the classifier's hyperparameters.
        progress: show a tqdm bar.

    Returns:
        `(network, info)` with `info` holding `test_accuracy`, `train_accuracy`, `seconds`, the resolved
        `config` and the data `fingerprint`.
    """
    seed = check_nonnegative_int(seed, "seed")
    fingerprint = data_fingerprint(dataset)
    cfg = config.resolved(dataset.train.shape[0], dataset.train.shape[1])
    steps = check_positive_int(cfg.steps, "config.steps")
    batch = min(check_positive_int(cfg.batch_size, "config.batch_size"), dataset.train.shape[0])
    for name in _NONNEGATIVE:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"`config.{name}` must be a finite number >= 0; got {value!r}.")
    for name in ("label_smoothing", "ema_decay"):
        if getattr(cfg, name) >= 1:
            raise ValueError(f"`config.{name}` must be < 1; got {getattr(cfg, name)!r}.")
    num_levels = fingerprint["num_levels"]
    classifier = Classifier(
        dataset.example_shape[-1],
        fingerprint["num_classes"],
        widths=cfg.widths,
        feature_dim=cfg.feature_dim,
        key=jr.key(seed),
    )
    optimizer = _optimizer(float(cfg.lr), float(cfg.weight_decay), steps)
    opt_state = optimizer.init(eqx.filter(classifier, eqx.is_inexact_array))
    ema = eqx.filter(classifier, eqx.is_inexact_array)
    rng = np.random.default_rng(seed)
    mixup_key = jr.fold_in(jr.key(seed), 1)  # a stream apart from the initialisation's
    floats = (float(cfg.label_smoothing), float(cfg.mixup), float(cfg.ema_decay))  # static: one compilation
    train, labels = dataset.train, dataset.train_labels
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"feature classifier ({fingerprint['name']})", disable=not progress, leave=False)
    loss = jnp.zeros(())
    for i in bar:
        idx = rng.choice(train.shape[0], batch, replace=False)
        x = uint8_to_float(jnp.asarray(_augment(rng, train[idx], cfg, num_levels)), num_levels)
        y = jnp.asarray(labels[idx])
        key = jr.fold_in(mixup_key, i)
        classifier, ema, opt_state, loss = _step(classifier, ema, opt_state, x, y, key, optimizer, *floats)
        if i % 50 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{float(loss):.4f}")
    bar.close()
    if cfg.ema_decay > 0:
        classifier = eqx.combine(ema, eqx.filter(classifier, eqx.is_inexact_array, inverse=True))
    net = FeatureNetwork(
        classifier,
        num_levels=num_levels,
        example_shape=tuple(dataset.example_shape),
        data_name=fingerprint["name"],
        fingerprint=fingerprint["sha256"],
    )
    info = {
        "test_accuracy": accuracy(net, dataset.test, dataset.test_labels),
        "train_accuracy": accuracy(net, dataset.train, dataset.train_labels),
        "final_loss": float(loss),
        "seconds": time.perf_counter() - start,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "fingerprint": fingerprint,
    }
    return net, info
