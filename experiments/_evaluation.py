"""Sample quality for the training scripts (not a script): what `vd.train.fit` scores the EMA model's samples with.

Images with labels: Fréchet distance, KID, precision/recall and classifier confidence in the feature space of
the data set's classifier (`vd.metrics.feature_network`: trained on first use, cached per data set) against
the test set's features, computed once. Text: generative perplexity under a character 4-gram model fitted on
the training text, beside the samples' unigram entropy (and the same two numbers for the test text, for scale).
"""

import os
from typing import Any

import numpy as np
import vdmpp as vd


# the character n-gram scorer is fitted on at most this many training tokens (text8 has 90M: seconds, not minutes)
MAX_NGRAM_TOKENS = 5_000_000


def image_scores(quality: dict[str, Any]) -> dict[str, float]:
    """`vd.metrics.sample_quality`'s numbers under the names a run's summary uses."""
    names = {
        "fd": "test_fd",
        "kid": "test_kid",
        "kid_std": "test_kid_std",
        "precision": "precision",
        "recall": "recall",
        "classifier_confidence": "classifier_confidence",
        "n": "eval_samples",
    }
    return {new: float(quality[old]) for old, new in names.items() if old in quality}


def image_evaluation(
    data: vd.data.Dataset,
    *,
    num_samples: int,
    num_steps: int | None = None,
    progress: bool = True,
    classifier: vd.metrics.ClassifierConfig = vd.metrics.ClassifierConfig(),
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
) -> vd.train.SampleEvaluation:
    """FD, KID, precision, recall and classifier confidence of samples against the test set (labelled images).

    The feature network is loaded (or trained, once per data set) at the first evaluation, not here: a run that
    stops before it (a refused resume, a run that already finished) does no such work.
    """
    found: dict[str, Any] = {}

    def features() -> tuple[Any, np.ndarray]:
        if not found:
            path = vd.metrics.feature_network_path(data, config=classifier, cache_dir=cache_dir)
            if not (path / "feature_network.json").is_file():
                print(f"Training the feature classifier of {data.name} once (cached in {path}).")
            net = vd.metrics.feature_network(data, config=classifier, cache_dir=cache_dir, progress=progress)
            found.update(net=net, reference=net(np.asarray(data.test)))  # reused at every evaluation
        return found["net"], found["reference"]

    def score(samples: np.ndarray) -> dict[str, float]:
        net, reference = features()
        return image_scores(vd.metrics.sample_quality(samples, reference, extractor=net))

    return vd.train.SampleEvaluation(score, num_samples, num_steps, batch_size)


def text_evaluation(
    data: vd.data.Dataset, *, num_samples: int, num_steps: int | None = None, order: int = 4, batch_size: int = 256
) -> vd.train.SampleEvaluation:
    """Generative perplexity under a character n-gram fitted on the training text, with unigram entropies."""
    vocab = int(data.num_levels or 0)
    # int32: text tokens are stored as uint8, which the metrics' integer annotations (signed) refuse
    train = np.asarray(data.train[: max(1, MAX_NGRAM_TOKENS // int(np.prod(data.example_shape)))], np.int32)
    ngram = vd.metrics.CharNGram.fit(train.reshape(train.shape[0], -1), vocab, order=order)
    test = np.asarray(data.test[:1000], np.int32)
    ref = vd.metrics.generative_perplexity(test.reshape(test.shape[0], -1), ngram.log_prob)

    def score(samples: np.ndarray) -> dict[str, float]:
        q = vd.metrics.generative_perplexity(samples.reshape(samples.shape[0], -1), ngram.log_prob)
        return {
            "generative_perplexity": q.perplexity,
            "unigram_entropy": q.entropy,
            "test_generative_perplexity": ref.perplexity,
            "test_unigram_entropy": ref.entropy,
            "eval_samples": float(q.n),
        }

    return vd.train.SampleEvaluation(score, num_samples, num_steps, batch_size)


def sample_evaluation(
    data: vd.data.Dataset,
    *,
    num_samples: int,
    num_steps: int | None = None,
    progress: bool = True,
    batch_size: int = 256,
) -> vd.train.SampleEvaluation | None:
    """The evaluation that suits `data` (`None` when `num_samples` is 0 or the images have no labels).

    `batch_size`: samples per jitted sampler call; the scripts pass their sample grid's size, so the grid and
    the evaluation share one compilation.
    """
    if not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(
            f"`--eval-samples` must be an integer >= 0 (0: no sample-quality metrics); got {num_samples!r}."
        )
    if num_samples == 0:
        return None
    if data.kind == "text":
        return text_evaluation(data, num_samples=num_samples, num_steps=num_steps, batch_size=batch_size)
    if data.kind == "image" and data.train_labels is not None and data.test_labels is not None:
        return image_evaluation(
            data, num_samples=num_samples, num_steps=num_steps, progress=progress, batch_size=batch_size
        )
    print(f"{data.name}: no class labels, so no feature classifier; sample-quality metrics are skipped.")
    return None


def describe(summary: dict) -> str:
    """The sample-quality part of a run's closing line ("" when it was not measured)."""
    if "test_fd" in summary:
        return (
            f"\nsamples (n={int(summary['eval_samples'])}): FD {summary['test_fd']:.3g}, "
            f"KID {summary['test_kid']:.3g} ± {summary['test_kid_std']:.2g}, precision {summary['precision']:.3f}, "
            f"recall {summary['recall']:.3f}, classifier confidence {summary['classifier_confidence']:.3f}"
        )
    if "generative_perplexity" in summary:
        return (
            f"\nsamples (n={int(summary['eval_samples'])}): "
            f"generative perplexity {summary['generative_perplexity']:.3f} "
            f"(unigram entropy {summary['unigram_entropy']:.3f} nats; test text: "
            f"{summary['test_generative_perplexity']:.3f}, {summary['test_unigram_entropy']:.3f})"
        )
    return ""
