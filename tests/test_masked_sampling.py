"""Masked-diffusion samplers against exact enumeration with the oracle denoiser (issues #6 and #16)."""

import collections
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
import vdmpp as vd

from helpers import tree_allclose


M = vd.masked
V3, L3 = 3, 4


def _distinct_rows(seed: int, n: int, length: int, vocab: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = set()
    while len(rows) < n:
        rows.add(tuple(int(v) for v in rng.integers(0, vocab, length)))
    return np.array(sorted(rows), dtype=np.int32)


DATA = _distinct_rows(0, 7, L3, V3)
ORACLE = vd.oracle.EmpiricalMaskedDenoiser(DATA, vocab_size=V3, mask_id=V3)
LINEAR = M.LinearSchedule()

_anc = eqx.filter_jit(M.ancestral)
_sample = eqx.filter_jit(M.sample)


def _non_data_fraction(samples) -> float:
    s = np.asarray(samples)
    return float(1 - (s[:, None, :] == DATA[None]).all(-1).any(-1).mean())


def _row_counts(samples, rows) -> np.ndarray:
    s = np.asarray(samples)
    return (s[:, None, :] == rows[None]).all(-1).sum(0)


def _tv_within_3se(counts: np.ndarray, p: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """TV of the sample frequencies to `p`, and mean + 3 std of the TV of exact multinomial samples of the same n."""
    n = int(counts.sum())
    tv = 0.5 * np.abs(counts / n - p).sum()
    null = 0.5 * np.abs(np.random.default_rng(seed).multinomial(n, p, size=4000) / n - p).sum(1)
    return float(tv), float(null.mean() + 3 * null.std())


# --- moved from test_masked.py (issue #6) -------------------------------------------------------


def test_any_order_ar_sampler_is_exact(getkey):
    n = 4000
    s, nfe, order = eqx.filter_jit(M.any_order_autoregressive)(  # pyright: ignore[reportAssignmentType]
        ORACLE, (n, L3), key=getkey(), mask_id=V3, return_order=True
    )
    assert nfe == L3
    assert _non_data_fraction(s) == 0.0
    assert scipy.stats.chisquare(_row_counts(s, DATA)).pvalue > 1e-3
    assert np.all(np.sort(np.asarray(order), axis=1) == np.arange(L3))  # each sample's order is a permutation


def test_ancestral_sampler_approaches_data(getkey):
    key = getkey()
    fracs = [
        _non_data_fraction(_anc(ORACLE, (2000, L3), key=key, schedule=LINEAR, num_steps=T, mask_id=V3)[0])
        for T in (1, 4, 64)
    ]
    assert fracs[0] > fracs[1] > fracs[2] and fracs[2] < 0.05, fracs
    s, nfe = _anc(ORACLE, (4000, L3), key=getkey(), schedule=M.CosineSchedule(), num_steps=256, mask_id=V3)
    assert nfe == 256
    assert scipy.stats.chisquare(_row_counts(s, DATA)).pvalue > 1e-3  # frequency 1/N among data rows


def test_cached_sampler_same_samples_fewer_nfe(getkey):
    key = getkey()
    for grid in (M.UniformGrid(), M.CosineGridFineAtData()):
        a, nfe_a = _anc(ORACLE, (4, L3), key=key, schedule=LINEAR, num_steps=64, mask_id=V3, grid=grid)
        b, nfe_b = _anc(ORACLE, (4, L3), key=key, schedule=LINEAR, num_steps=64, mask_id=V3, grid=grid, cache=True)
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert nfe_a == 64 and int(nfe_b) < 32, (nfe_a, int(nfe_b))


def test_grids():
    g = M.ExplicitGrid([0.0, 0.1, 0.5, 1.0])
    assert tree_allclose(g(3), jnp.asarray([0.0, 0.1, 0.5, 1.0]))
    with pytest.raises(ValueError, match="num_steps"):
        g(4)
    with pytest.raises(ValueError, match="times"):
        M.ExplicitGrid([0.0, 0.6, 0.5, 1.0])
    k = np.arange(9) / 8
    data_end, noise_end = np.asarray(M.CosineGridFineAtData()(8)), np.asarray(M.CosineGridFineAtNoise()(8))
    assert np.allclose(data_end, 1 - np.cos(np.pi * k / 2), atol=1e-6)
    assert np.allclose(noise_end, np.sin(np.pi * k / 2), atol=1e-6)  # MD4's sampling_grid="cosine"
    assert np.diff(data_end)[0] < np.diff(data_end)[-1] and np.diff(noise_end)[0] > np.diff(noise_end)[-1]


def test_top_p_filter_and_sampler(getkey):
    logp = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    out = np.exp(np.asarray(M.top_p_filter(logp, 0.7)))
    np.testing.assert_allclose(out, [0.625, 0.375, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(M.top_p_filter(logp, 1.0))), [0.5, 0.3, 0.15, 0.05], atol=1e-6)
    s, _ = _anc(ORACLE, (50, L3), key=getkey(), schedule=LINEAR, num_steps=8, mask_id=V3, top_p=0.9)
    assert np.all((np.asarray(s) >= 0) & (np.asarray(s) < V3))


def test_gumbel_max_draws_in_log_space_do_not_underflow(getkey):
    # a token with probability e^-120 (0 in float32 probabilities) is never drawn, and the dominant one
    # always is; no nan from exp underflow.
    def peaked(z, lam):
        return jnp.broadcast_to(jnp.array([0.0, -120.0, -120.0]), z.shape + (3,))

    s, _ = _anc(peaked, (500, 6), key=getkey(), schedule=LINEAR, num_steps=4, mask_id=3)
    assert np.all(np.asarray(s) == 0)


def test_float64_draws(getkey):
    with pytest.raises(ValueError, match="x64"):
        M.ancestral(ORACLE, (8, L3), key=getkey(), schedule=LINEAR, num_steps=4, mask_id=V3, dtype=jnp.float64)
    with jax.enable_x64(True):
        s, nfe = M.ancestral(ORACLE, (8, L3), key=getkey(), schedule=LINEAR, num_steps=4, mask_id=V3, dtype=jnp.float64)
        assert nfe == 4 and np.all((np.asarray(s) >= 0) & (np.asarray(s) < V3))


# --- issue #16: the sampling suite ----------------------------------------------------------------

_CALLS: list = []


class Counting(eqx.Module):
    """Records each call (use batch 1: under vmap a callback runs once per example)."""

    fn: Callable

    def __call__(self, z, lam, **kwargs):
        jax.debug.callback(lambda: _CALLS.append(1))
        return self.fn(z, lam, **kwargs)


ALL_MASKED = [
    M.Ancestral(grid=M.CosineGridFineAtNoise(), top_p=0.9),
    M.ReMDM(M.RemaskCap(0.1)),
    M.ReMDM(M.RemaskConfidence(), grid=M.CosineGridFineAtData()),
    M.ReMDM(M.RemaskLoop()),
    M.FirstHitting(),
    M.MaskGIT(temperature=1.0),
    M.SemiAutoregressive(M.Ancestral(), 2),
    M.SemiAutoregressive(M.FirstHitting(), 3),
]


@pytest.mark.parametrize("sampler", ALL_MASKED, ids=lambda s: type(s).__name__)
def test_masked_sample_counts_calls_exactly_and_compiles_once(sampler):
    """Acceptance 5: a Python-int call count equal to the calls a counting callback sees; one trace per shape."""
    steps = (
        None
        if isinstance(sampler, M.FirstHitting) or isinstance(getattr(sampler, "inner", None), M.FirstHitting)
        else 6
    )
    cond = M.Condition(jnp.asarray(DATA[0]), jnp.array([True, False, False, False]))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(key):
        den = Counting(ORACLE)
        return M.sample(sampler, den, (1, L3), key=key, schedule=LINEAR, num_steps=steps, mask_id=V3, condition=cond)

    run(jr.key(0))
    _CALLS.clear()
    s, nfe = run(jr.key(1))
    jax.block_until_ready(s)
    jax.effects_barrier()
    assert type(nfe) is int and nfe == len(_CALLS) > 0
    s = np.asarray(s)
    assert np.all((s >= 0) & (s < V3)) and s[0, 0] == DATA[0, 0]  # all revealed; the given token kept


def test_remdm_sigma_zero_is_ancestral_bit_for_bit(getkey):
    key = getkey()
    run = lambda sampler: _sample(
        sampler, ORACLE, (500, L3), key=key, schedule=M.CosineSchedule(), num_steps=8, mask_id=V3
    )[0]
    anc = run(M.Ancestral())
    assert np.array_equal(run(M.ReMDM(M.RemaskCap(0.0))), anc)
    assert np.array_equal(run(M.ReMDM(M.RemaskRescale(0.0))), anc)
    assert not np.array_equal(run(M.ReMDM(M.RemaskRescale(1.0))), anc)


def test_semi_ar_one_block_is_ancestral(getkey):
    key = getkey()
    run = lambda sampler: _sample(sampler, ORACLE, (500, L3), key=key, schedule=LINEAR, num_steps=6, mask_id=V3)
    a, nfe_a = run(M.Ancestral())
    b, nfe_b = run(M.SemiAutoregressive(M.Ancestral(), 1))
    assert np.array_equal(a, b) and nfe_a == nfe_b == 6
    c, nfe_c = run(M.SemiAutoregressive(M.Ancestral(), 2))
    assert nfe_c == 12 and np.all(np.asarray(c) < V3)


class _Uniform(eqx.Module):
    """Uniform logits; records the masked fraction of each example at each call, with its lam."""

    def __call__(self, z, lam):
        jax.debug.callback(lambda l, f: _CALLS.append((float(l), float(f))), lam, jnp.mean(z == V3))
        return jnp.zeros(z.shape + (V3,))


@pytest.mark.parametrize(
    "remasking",
    [M.RemaskCap(0.3), pytest.param(M.RemaskRescale(1.0), marks=pytest.mark.slow), M.RemaskLoop(eta=0.2)],
    ids=repr,
)
def test_remdm_keeps_the_masking_marginal(remasking):
    # a denoiser that ignores z makes the tokens independent: at a call with log-SNR lam, the masked fraction
    # of B*L tokens is Binomial(B L, 1 - alpha) with alpha = sigmoid(lam) (THEORY §14: sigma keeps the marginal)
    batch, length = 32, 64
    _CALLS.clear()
    M.sample(M.ReMDM(remasking), _Uniform(), (batch, length), key=jr.key(0), schedule=LINEAR, num_steps=20, mask_id=V3)
    jax.effects_barrier()
    by_lam = collections.defaultdict(list)
    for lam, frac in _CALLS:
        by_lam[lam].append(frac)
    assert len(by_lam) >= 5
    for lam, fracs in by_lam.items():
        masked = 1 / (1 + np.exp(lam))
        n = len(fracs) * length
        se = np.sqrt(masked * (1 - masked) / n) + 1e-6
        assert abs(np.mean(fracs) - masked) < 4.5 * se, (lam, np.mean(fracs), masked)


def test_first_hitting_is_exact_in_L_calls(getkey):
    s, nfe = _sample(M.FirstHitting(), ORACLE, (4000, L3), key=getkey(), schedule=M.CosineSchedule(), mask_id=V3)
    assert nfe == L3
    assert _non_data_fraction(s) == 0.0
    assert scipy.stats.chisquare(_row_counts(s, DATA)).pvalue > 1e-3


@pytest.mark.parametrize(
    "sampler",
    [
        M.FirstHitting(),
        pytest.param(M.SemiAutoregressive(M.FirstHitting(), 2), marks=pytest.mark.slow),
        pytest.param(M.Ancestral(), marks=pytest.mark.slow),
    ],
    ids=lambda s: type(s).__name__,
)
def test_conditioned_samples_match_the_exact_conditional(sampler, getkey):
    # infill position 2 and prefix position 0: the exact conditional is uniform over the consistent rows
    # under jit the condition is traced: FirstHitting is told the tokens to generate (3), else it makes L calls
    steps = {M.Ancestral: 512, M.FirstHitting: L3 - 1}.get(type(sampler))
    n = 4000
    for given in (np.array([False, False, True, False]), np.array([True, False, False, False])):
        col = int(np.argmax(given))
        value = int(np.bincount(DATA[:, col]).argmax())
        rows = DATA[DATA[:, col] == value]
        assert len(rows) >= 2
        cond = M.Condition(jnp.full(L3, value, jnp.int32), jnp.asarray(given))
        s, nfe = _sample(
            sampler, ORACLE, (n, L3), key=getkey(), schedule=LINEAR, num_steps=steps, mask_id=V3, condition=cond
        )
        assert nfe == (4 if steps is None else steps)  # semi-AR: 2 blocks of 2 tokens
        s = np.asarray(s)
        assert np.all(s[:, col] == value)
        counts = _row_counts(s, rows)
        exact = steps is None or steps < L3  # first hitting; ancestral reveals a few tokens together (~0.2%)
        assert counts.sum() == n if exact else counts.sum() > 0.99 * n  # consistent data rows
        tv, bound = _tv_within_3se(counts, np.full(len(rows), 1 / len(rows)))
        assert tv <= bound, (tv, bound, counts)


def test_condition_per_example_and_shape_errors(getkey):
    tokens = jnp.asarray(DATA[:2])
    given = jnp.array([[True, True, False, False], [False, False, True, True]])
    cond = M.Condition(tokens, given)
    s, nfe = M.sample(M.FirstHitting(), ORACLE, (2, L3), key=getkey(), schedule=LINEAR, mask_id=V3, condition=cond)
    assert np.array_equal(np.asarray(s)[given], np.asarray(tokens)[given])
    assert nfe == 2  # a concrete condition: one call per free token of the fullest sequence
    with pytest.raises((ValueError, RuntimeError), match="below the tokens to generate"):
        _sample(
            M.FirstHitting(), ORACLE, (2, L3), key=getkey(), schedule=LINEAR, num_steps=1, mask_id=V3, condition=cond
        )
    with pytest.raises(ValueError, match="differs from the samples' shape"):
        M.sample(
            M.Ancestral(),
            ORACLE,
            (3, L3),
            key=getkey(),
            schedule=LINEAR,
            num_steps=2,
            mask_id=V3,
            condition=M.Condition(tokens, given),
        )
    with pytest.raises(ValueError, match="`given` of Condition must have the shape"):
        M.Condition(tokens, given[0])
    with pytest.raises(TypeError, match="boolean"):
        M.Condition(tokens, given.astype(jnp.int32))
    with pytest.raises(ValueError, match="given positions must be token ids"):
        M.sample(
            M.Ancestral(),
            ORACLE,
            (2, L3),
            key=getkey(),
            schedule=LINEAR,
            num_steps=2,
            mask_id=V3,
            condition=M.Condition(tokens.at[0, 0].set(V3), given),
        )


def test_maskgit_is_a_heuristic_that_reveals_all(getkey):
    # one token per step with the exact posterior: every sample is a data row, but the confidence order
    # over-samples the rows whose tokens are most predictable (not the data distribution)
    s, nfe = _sample(M.MaskGIT(), ORACLE, (2000, L3), key=getkey(), schedule=LINEAR, num_steps=L3, mask_id=V3)
    assert nfe == L3 and _non_data_fraction(s) == 0.0
    assert scipy.stats.chisquare(_row_counts(s, DATA)).pvalue < 1e-6


class _CondOracle(eqx.Module):
    """Label 0/1: the oracle of the data rows whose first token is 0 / is not 0; label 2: all rows."""

    def __call__(self, z, lam, *, label):
        first = DATA[:, 0] == 0
        parts = [
            vd.oracle.EmpiricalMaskedDenoiser(d, vocab_size=V3, mask_id=V3)(z, lam)
            for d in (DATA[first], DATA[~first], DATA)
        ]
        return jnp.select([label == 0, label == 1], parts[:2], parts[2])


def test_masked_guidance(getkey):
    key = getkey()
    run = lambda den: _sample(M.FirstHitting(), den, (1000, L3), key=key, schedule=LINEAR, mask_id=V3)
    s0, nfe0 = run(M.guided(_CondOracle(), 0, 2, 0.0))
    s1, nfe1 = run(M.guided(_CondOracle(), 0, 2, 1.0))
    s3, _ = run(M.guided(_CondOracle(), 0, 2, 3.0))
    assert nfe0 == nfe1 == 2 * L3  # two calls per evaluation
    assert 0.1 < np.mean(np.asarray(s0)[:, 0] == 0) < 0.9  # w = 0: unconditional
    assert np.all(np.asarray(s1)[:, 0] == 0) and np.all(np.asarray(s3)[:, 0] == 0)  # w >= 1: the condition holds
    assert _non_data_fraction(s1) == 0.0
    plain, _ = run(_with_label(_CondOracle(), 2))
    assert np.mean(np.all(np.asarray(plain) == np.asarray(s0), axis=1)) > 0.99


def _with_label(den, label):
    return lambda z, lam: den(z, lam, label=jnp.asarray(label))


def test_masked_bad_input(getkey):
    """Acceptance 6 (masked part), and mask_id checked against the denoiser's vocabulary (as masked.elbo does)."""
    five = lambda z, lam: jnp.zeros(z.shape + (5,))
    kw: dict = dict(key=getkey(), schedule=LINEAR)
    for sampler, steps in (
        (M.Ancestral(), 4),
        (M.ReMDM(), 4),
        (M.FirstHitting(), None),
        (M.MaskGIT(), 4),
        (M.SemiAutoregressive(M.Ancestral(), 2), 4),
    ):
        with pytest.raises(ValueError, match="`mask_id`=2 is one of the denoiser's 5 token ids"):
            M.sample(sampler, five, (2, 6), num_steps=steps, mask_id=2, **kw)
    with pytest.raises(ValueError, match="`mask_id`=2 is one of"):
        M.ancestral(five, (2, 6), num_steps=4, mask_id=2, **kw)
    with pytest.raises(ValueError, match="`mask_id`=2 is one of"):
        M.ancestral(five, (2, 6), num_steps=4, mask_id=2, cache=True, **kw)
    with pytest.raises(ValueError, match="`mask_id`=2 is one of"):
        M.any_order_autoregressive(five, (2, 6), key=getkey(), mask_id=2)
    with pytest.raises(ValueError, match="num_steps"):
        M.sample(M.Ancestral(), ORACLE, (2, L3), num_steps=0, mask_id=V3, **kw)
    with pytest.raises(ValueError, match="`num_steps`=2 is below the 4 tokens"):
        M.sample(M.FirstHitting(), ORACLE, (2, L3), num_steps=2, mask_id=V3, **kw)
    with pytest.raises(ValueError, match="`eta` of RemaskCap"):
        M.RemaskCap(-0.1)
    with pytest.raises(ValueError, match="`t_off` < `t_on`"):
        M.RemaskLoop(t_on=0.3, t_off=0.5)
    with pytest.raises(ValueError, match="`num_blocks` must be a positive integer"):
        M.SemiAutoregressive(M.Ancestral(), 0)
    with pytest.raises(ValueError, match="`top_p` of ReMDM"):
        M.ReMDM(top_p=1.5)
    with pytest.raises(TypeError, match="sampler"):
        M.sample("ancestral", ORACLE, (2, L3), num_steps=4, mask_id=V3, **kw)  # pyright: ignore[reportArgumentType]
