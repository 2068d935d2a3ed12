"""One call for a training loop: all image sample-quality metrics of a batch of samples against a reference."""

from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Float, Shaped

from .._misc import check_nonnegative_int, check_positive_int
from ._checks import check_features, check_same_dim
from ._extractor import AbstractFeatureExtractor, as_extractor
from ._kid import kid
from ._prd import precision_recall
from ._stats import FeatureStats, frechet_distance


def sample_quality(
    samples: Shaped[ArrayLike, "n ..."],
    reference: FeatureStats | Float[ArrayLike, "n_ref d"],
    *,
    extractor: AbstractFeatureExtractor | Any,
    kid_subset_size: int | None = None,
    kid_num_subsets: int = 50,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float | int]:
    """Sample-quality metrics of `samples` against reference data, as a flat dict of numbers (log it directly).

    Compute the reference once (e.g. `ref = extractor(dataset.test)`, the test set's features) and reuse
    it at every evaluation. With a few hundred 8×8 or 28×28 samples this takes well under a second on a
    CPU after the first (compiling) call.

    Args:
        samples: a batch the extractor accepts (for a [`vdmpp.metrics.FeatureNetwork`][]: integer images
            `(n, H, W, C)` in `0..num_levels-1`, like the data).
        reference: the reference's features `(n_ref, d)` (all metrics), or only its
            [`vdmpp.metrics.FeatureStats`][] (e.g. loaded Inception statistics: then only `fd`).
        extractor: a [`vdmpp.metrics.AbstractFeatureExtractor`][] or any `samples -> features (n, d)` callable.
        kid_subset_size: KID subset size; `None`: `min(1000, n, n_ref)`.
        kid_num_subsets: KID subsets.
        k: the neighbour of precision/recall.
        seed: seed of the KID subsets.

    Returns:
        `n` (samples), `n_reference` (when known), `fd` ([`vdmpp.metrics.frechet_distance`][]; compare only at equal n);
        with reference features also `kid` and `kid_std` ([`vdmpp.metrics.kid`][]), `precision` and `recall`
        ([`vdmpp.metrics.precision_recall`][]); with an extractor that has class probabilities also
        `classifier_confidence`, the mean over samples of the largest class probability ("looks like some class").
    """
    extractor = as_extractor(extractor)
    check_positive_int(kid_num_subsets, "kid_num_subsets")
    check_nonnegative_int(seed, "seed")
    ref_features = None
    if isinstance(reference, FeatureStats):
        ref_stats = reference
    else:
        ref_features = check_features(reference, "reference")
        ref_stats = FeatureStats.from_features(ref_features)
    fake = check_features(extractor.features(samples), "features of `samples`")
    if fake.shape[1] != ref_stats.dim:
        raise ValueError(
            f"The extractor gives {fake.shape[1]} features per sample but `reference` has {ref_stats.dim}; "
            "compute the reference with the same extractor."
        )
    out: dict[str, float | int] = {
        "n": fake.shape[0],
        "fd": frechet_distance(FeatureStats.from_features(fake), ref_stats),
    }
    if ref_stats.n is not None:
        out["n_reference"] = ref_stats.n
    if ref_features is not None:
        check_same_dim(ref_features, fake, "reference", "features of `samples`")
        m = min(1000, fake.shape[0], ref_features.shape[0]) if kid_subset_size is None else kid_subset_size
        out["kid"], out["kid_std"] = kid(fake, ref_features, subset_size=m, num_subsets=kid_num_subsets, seed=seed)
        out["precision"], out["recall"] = precision_recall(ref_features, fake, k=k)
    probs = extractor.class_probabilities(samples)
    if probs is not None:
        out["classifier_confidence"] = float(np.mean(np.max(np.asarray(probs), axis=1)))
    return out
