r"""Text samples: generative perplexity under a scorer, reported with the samples' unigram entropy (THEORY §12)."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Integer

from .._misc import check_positive_int, is_int


def _check_tokens(tokens: Any, name: str, vocab_size: int | None = None) -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"`{name}` must be integer token ids shaped (n, seq_len) with n, seq_len >= 1; got {t.shape}.")
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integer token ids; got dtype {t.dtype}.")
    if t.min() < 0 or (vocab_size is not None and t.max() >= vocab_size):
        bad = int(t.min()) if t.min() < 0 else int(t.max())
        limit = "" if vocab_size is None else f" and < vocab_size={vocab_size}"
        raise ValueError(f"`{name}` holds token id {bad}; ids must be >= 0{limit} (a mask token left in a sample?).")
    return t.astype(np.int64)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


@dataclasses.dataclass(frozen=True)
class TextQuality:
    r"""Generative perplexity of text samples together with their unigram entropies (nats).

    Attributes:
        perplexity: $\exp(-\frac{1}{nL}\sum \log p(\text{tokens}))$ under the scorer.
        entropy: mean over samples of each sample's unigram entropy (the empirical distribution of its
            tokens), as reported beside generative perplexity by Zheng et al. 2024 (arXiv:2409.02908).
        pooled_entropy: unigram entropy of all samples' tokens together.
        n: number of samples.
        seq_len: tokens per sample.
    """

    perplexity: float
    entropy: float
    pooled_entropy: float
    n: int
    seq_len: int


def generative_perplexity(
    tokens: Integer[ArrayLike, "n seq_len"], log_prob_fn: Callable[[np.ndarray], Any]
) -> TextQuality:
    r"""Perplexity of samples under a scorer, always with their unigram entropies (THEORY §12).

    Low-entropy, repetitive samples get a low (good-looking) perplexity; read the two together.

    Args:
        tokens: integer samples `(n, seq_len)`.
        log_prob_fn: the scorer: maps `tokens` (an int64 NumPy array `(n, seq_len)`) to the natural-log
            probability of each sequence, shape `(n,)` (e.g. [`vdmpp.metrics.CharNGram.log_prob`][], or a
            wrapper around a larger language model).

    Returns:
        A [`vdmpp.metrics.TextQuality`][].
    """
    t = _check_tokens(tokens, "tokens")
    lp = np.asarray(log_prob_fn(t), dtype=np.float64)
    if lp.shape != (t.shape[0],):
        raise ValueError(
            f"`log_prob_fn` must return one log-probability per sequence, shape ({t.shape[0]},); got {lp.shape}."
        )
    if not np.all(np.isfinite(lp)) or np.any(lp > 1e-9 * np.maximum(1.0, np.abs(lp))):
        raise ValueError("`log_prob_fn` returned non-finite or positive log-probabilities; it must return log p <= 0.")
    entropies = [_entropy(np.bincount(row)) for row in t]
    return TextQuality(
        perplexity=float(math.exp(-lp.sum() / t.size)),
        entropy=float(np.mean(entropies)),
        pooled_entropy=_entropy(np.bincount(t.ravel())),
        n=int(t.shape[0]),
        seq_len=int(t.shape[1]),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class CharNGram:
    r"""A character n-gram language model with add-α smoothing, fitted on training text: a simple, honest scorer.

    $p(x_i \mid x_{i-n+1..i-1}) = (c(\text{context}, x_i) + \alpha) / (c(\text{context}) + \alpha V)$, with the
    context shortened to what precedes $x_i$ at the start of a sequence (counts of every context length are
    kept). It measures how much samples look like the training text *to an n-gram model*: weaker than a
    large language model's judgement, but offline and reproducible. Build with `CharNGram.fit`.

    Attributes:
        order: n (the context is n - 1 tokens).
        vocab_size: V.
        alpha: the smoothing pseudo-count.
        tables: per context length c (0..n-1), the sorted codes of the seen (context, token) pairs and of the
            seen contexts, with their counts.
    """

    order: int
    vocab_size: int
    alpha: float
    tables: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]

    @staticmethod
    def _codes(t: np.ndarray, length: int, vocab_size: int) -> np.ndarray:
        """Base-V codes of the windows `t[:, i-length : i+1]` for i >= length, shape (n, seq_len - length)."""
        width = t.shape[1] - length
        code = np.zeros((t.shape[0], width), dtype=np.int64)
        for j in range(length + 1):
            code = code * vocab_size + t[:, j : j + width]
        return code

    @classmethod
    def fit(cls, train: Integer[ArrayLike, "n seq_len"], vocab_size: int, *, order: int = 4, alpha: float = 0.1):
        """Count the n-grams of the training sequences `train` `(n, seq_len)` (ids in `0..vocab_size-1`)."""
        vocab_size = check_positive_int(vocab_size, "vocab_size")
        order = check_positive_int(order, "order")
        if vocab_size**order >= 2**62:
            raise ValueError(f"`order`={order} is too large for vocab_size={vocab_size} (codes overflow int64).")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
            raise ValueError(f"`alpha` must be a positive number; got {alpha!r}.")
        t = _check_tokens(train, "train", vocab_size)
        tables = []
        for c in range(order):
            if c >= t.shape[1]:
                empty = np.zeros(0, np.int64)
                tables.append((empty, empty, empty, empty))
                continue
            grams, gram_counts = np.unique(cls._codes(t, c, vocab_size), return_counts=True)
            ctx, inverse = np.unique(grams // vocab_size, return_inverse=True)
            ctx_counts = np.bincount(inverse, weights=gram_counts).astype(np.int64)  # occurrences followed by a token
            tables.append((grams, gram_counts.astype(np.int64), ctx, ctx_counts))
        return cls(order=order, vocab_size=vocab_size, alpha=float(alpha), tables=tuple(tables))

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        if keys.size == 0:
            return np.zeros(query.shape, np.int64)
        pos = np.clip(np.searchsorted(keys, query), 0, keys.size - 1)
        return np.where(keys[pos] == query, values[pos], 0)

    def log_prob(self, tokens: Integer[ArrayLike, "n seq_len"]) -> np.ndarray:
        """Natural-log probability of each sequence, shape `(n,)` (a scorer for `generative_perplexity`)."""
        t = _check_tokens(tokens, "tokens", self.vocab_size)
        out = np.zeros(t.shape[0])
        v, a = self.vocab_size, self.alpha
        for i in range(t.shape[1]):
            c = min(i, self.order - 1)
            grams, gram_counts, ctx, ctx_counts = self.tables[c]
            code = self._codes(t[:, i - c : i + 1], c, v)[:, 0]
            num = self._lookup(grams, gram_counts, code) + a
            den = self._lookup(ctx, ctx_counts, code // v) + a * v
            out += np.log(num / den)
        return out

    def __post_init__(self):
        if not is_int(self.order) or len(self.tables) != self.order:
            raise ValueError(f"`tables` must hold one table per context length 0..order-1 (order={self.order!r}).")
