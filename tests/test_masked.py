"""Masked diffusion: schedules, forward process, ELBO, reweighted losses (issue #6; samplers: test_masked_sampling)."""

import math

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
import vdmpp as vd
from hypothesis import given

from helpers import tree_allclose


M = vd.masked
ALL_SCHEDULES = [
    M.LinearSchedule(),
    M.CosineSchedule(),
    M.PolynomialSchedule(k=2.0),
    M.PolynomialSchedule(k=0.5),
    M.GeometricSchedule(),
]
_ids = lambda s: f"{type(s).__name__}{getattr(s, 'k', '')}"


# --- 1. schedules ---------------------------------------------------------------------------


def test_md4_values():
    # MD4's numbers (eps = 1e-4); closed forms in THEORY §8: alpha = (1 - 2 eps) alpha_bar + eps
    lin = M.LinearSchedule()
    assert abs(float(lin.alpha(0.1)) - 0.899920) < 1e-6
    assert abs(float(lin.dalpha(0.5) / lin.one_minus_alpha(0.5)) - (-1.999600)) < 1e-5
    assert abs(float(M.CosineSchedule().alpha(0.5)) - 0.292935) < 1e-6
    assert abs(float(M.PolynomialSchedule(k=2.0).alpha(0.5)) - 0.749950) < 1e-6


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=_ids)
@given(t=st.floats(0.0, 1.0), dt=st.floats(1e-3, 0.5))
def test_schedule_properties(schedule, t, dt):
    t2 = min(t + dt, 1.0)
    a1, a2 = float(schedule.alpha(t)), float(schedule.alpha(t2))
    assert 0.0 <= a2 <= a1 <= 1.0
    # 1 - alpha computed directly agrees with 1 - alpha
    assert abs(float(schedule.one_minus_alpha(t)) - (1 - a1)) < 1e-6
    # closed-form derivative against autodiff (interior points only: poly k<1 is singular at 0)
    ti = jnp.asarray(min(max(t, 1e-3), 1 - 1e-3))
    assert tree_allclose(schedule.dalpha(ti), jax.grad(schedule.alpha)(ti), rtol=1e-4, atol=1e-6)
    # lambda finite at the endpoints with clipping, and t(lam(t)) = t
    assert np.isfinite(float(schedule.lam(0.0))) and np.isfinite(float(schedule.lam(1.0)))
    if 0.01 < t < 0.99:
        assert abs(float(schedule.t(schedule.lam(t))) - t) < 2e-3


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=_ids)
def test_schedule_endpoints_and_density(schedule):
    eps = schedule.eps
    assert abs(float(schedule.alpha(0.0)) - (1 - eps)) < 1e-5 or isinstance(schedule, M.GeometricSchedule)
    assert float(schedule.alpha(1.0)) < 1e-3
    # p(lambda) = -dt/dlambda: density(lam(t)) * |d lam/dt| = 1 (autodiff) at interior times
    t = jnp.linspace(0.05, 0.95, 19)
    prod = eqx.filter_jit(lambda s, t: s.density(s.lam(t)) * -jax.vmap(jax.grad(s.lam))(t))(schedule, t)
    assert tree_allclose(prod, jnp.ones_like(t), rtol=2e-3)
    assert float(schedule.density(jnp.asarray(schedule.lam(1.0) - 1.0))) == 0.0  # outside the range


def test_schedule_bad_parameters():
    with pytest.raises(ValueError, match="eps"):
        M.LinearSchedule(eps=-0.1)  # alpha would exceed 1
    with pytest.raises(ValueError, match="eps"):
        M.CosineSchedule(eps=0.7)
    with pytest.raises(ValueError, match="k"):
        M.PolynomialSchedule(k=-1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        M.GeometricSchedule(sigma_min=2.0, sigma_max=1.0)


# --- 2. forward process -----------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0.05, 0.95))
def test_forward_never_unmasks_and_rate(seed, t):
    sched = M.CosineSchedule()
    key = jr.key(seed)
    tokens = jr.randint(jr.fold_in(key, 0), (50, 8, 8), 0, 17)
    z = M.forward(tokens, t, key=jr.fold_in(key, 1), schedule=sched, mask_id=17)
    zn = np.asarray(z)
    kept = zn != 17
    # never changes a kept token, never produces another id
    assert np.all(zn[kept] == np.asarray(tokens)[kept])
    assert set(np.unique(zn)) <= set(range(18))
    # masking rate is 1 - alpha_t: binomial test at 1e-4 level
    n, k = zn.size, int((~kept).sum())
    p = 1 - float(sched.alpha(t))
    assert scipy.stats.binomtest(k, n, p).pvalue > 1e-4


def test_coupled_masks_are_nested(getkey):
    u = jr.uniform(getkey(), (1000,))
    sched = M.LinearSchedule()
    m1 = M.masks_from_uniforms(u, sched.alpha(0.3))
    m2 = M.masks_from_uniforms(u, sched.alpha(0.6))
    assert bool(jnp.all(m2 | ~m1))  # masked at 0.3 => masked at 0.6: the process never unmasks


# --- 3. exactness with the oracle --------------------------------------------------------------

V3, L3 = 3, 4


def _distinct_rows(seed: int, n: int, length: int, vocab: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = set()
    while len(rows) < n:
        rows.add(tuple(int(v) for v in rng.integers(0, vocab, length)))
    return np.array(sorted(rows), dtype=np.int32)


DATA = _distinct_rows(0, 7, L3, V3)
ORACLE = vd.oracle.EmpiricalMaskedDenoiser(DATA, vocab_size=V3, mask_id=V3)


def _clip_bound(eps: float, n: int, length: int, vocab: int) -> float:
    # |E[-ELBO] - ln N| <= eps L (2 ln N / (1 - eps) + ln V): the two truncated alpha-intervals of
    # width eps each contribute at most L ln N/(1 - eps) (every oracle log-loss is <= ln N), and the
    # reconstruction term adds L eps ln V.
    return eps * length * (2 * math.log(n) / (1 - eps) + math.log(vocab))


def test_oracle_posterior_matches_counting():
    z = jnp.array([V3, DATA[2, 1], V3, DATA[2, 3]])
    probs = np.asarray(jax.nn.softmax(ORACLE(z, jnp.asarray(0.0)), axis=-1))
    cons = [r for r in DATA if r[1] == DATA[2, 1] and r[3] == DATA[2, 3]]
    for pos in range(L3):
        expect = np.bincount([r[pos] for r in cons], minlength=V3) / len(cons)
        np.testing.assert_allclose(probs[pos], expect, atol=1e-6)


_elbo_jit = eqx.filter_jit(M.elbo)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=_ids)
def test_oracle_elbo_is_log_n(schedule, getkey):
    reps = 300
    tokens = jnp.asarray(np.tile(DATA, (reps, 1)))
    vals = np.asarray(_elbo_jit(ORACLE, tokens, key=getkey(), schedule=schedule, mask_id=V3))
    mean, se = vals.mean(), vals.std(ddof=1) / math.sqrt(vals.size)
    target = math.log(len(DATA))
    assert abs(mean - target) <= 3 * se + _clip_bound(schedule.eps, len(DATA), L3, V3), (mean, se, target)


def _all_masks(length: int) -> np.ndarray:
    return np.array([[(p >> k) & 1 for k in range(length)] for p in range(2**length)], dtype=bool)


_MAX_T = 16
_elbo_at_jit = eqx.filter_jit(M.elbo_at)


def _exact_discrete_elbo(schedule, num_steps: int) -> float:
    # E_x E_i E_mask of elbo_at, by enumerating every x, step i and mask pattern (no Monte Carlo);
    # rows padded (with weight 0) to one size so each T costs one small compile.
    masks = _all_masks(L3)
    rows, ts, ms, ws = [], [], [], []
    for i in range(1, _MAX_T + 1):
        t = min(i, num_steps) / num_steps
        a = float(schedule.alpha(t))
        for m in masks:
            w = (1 - a) ** m.sum() * a ** (L3 - m.sum()) / num_steps / len(DATA) if i <= num_steps else 0.0
            for x in DATA:
                rows.append(x), ts.append(t), ms.append(m), ws.append(w)
    vals = _elbo_at_jit(
        ORACLE,
        jnp.asarray(np.array(rows)),
        jnp.asarray(ts, jnp.float32),
        jnp.asarray(np.array(ms)),
        schedule=schedule,
        mask_id=V3,
        num_steps=num_steps,
    )
    return float(np.sum(np.asarray(vals, np.float64) * np.array(ws)))


@pytest.mark.parametrize("schedule", [M.LinearSchedule(), M.CosineSchedule()], ids=_ids)
def test_discrete_time_oracle_elbo_decreases_to_log_n(schedule):
    vals = [_exact_discrete_elbo(schedule, T) for T in (1, 2, 4, 8, 16)]
    target = math.log(len(DATA))
    tol = _clip_bound(schedule.eps, len(DATA), L3, V3)
    assert all(v >= target - tol for v in vals), vals
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] - target < 0.1 * (vals[0] - target)


# --- 4. uniform predictor; MD4 identity -------------------------------------------------------


def uniform_denoiser(z, lam):
    return jnp.zeros(z.shape + (5,), jnp.float32)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=_ids)
def test_uniform_predictor_gives_ln_v(schedule, getkey):
    tokens = jr.randint(getkey(), (4096, 16), 0, 5)
    vals = np.asarray(_elbo_jit(uniform_denoiser, tokens, key=getkey(), schedule=schedule, mask_id=5)) / 16
    mean, se = vals.mean(), vals.std(ddof=1) / math.sqrt(vals.size)
    target = (1 - schedule.eps) * math.log(5)
    assert abs(mean - target) <= 3 * se + 1e-5, (mean, se, target)


@given(num_steps=st.integers(1, 1000), frac=st.floats(0.0, 1.0))
def test_md4_discrete_weight_equals_continuous_for_linear(num_steps, frac):
    sched = M.LinearSchedule()
    i = max(1, math.ceil(frac * num_steps))
    t, s = jnp.asarray(i / num_steps), jnp.asarray((i - 1) / num_steps)
    assert tree_allclose(num_steps * sched.discrete_weight(s, t), sched.elbo_weight(t), rtol=1e-3)


def test_discrete_elbo_at_equals_continuous_on_grid_for_linear(getkey):
    sched = M.LinearSchedule()
    tokens = jnp.asarray(np.tile(DATA, (4, 1)))
    t = jnp.asarray(np.arange(1, 29) / 28, jnp.float32)
    mask = jr.bernoulli(getkey(), 0.5, tokens.shape)
    a = _elbo_at_jit(ORACLE, tokens, t, mask, schedule=sched, mask_id=V3, num_steps=28)
    b = _elbo_at_jit(ORACLE, tokens, t, mask, schedule=sched, mask_id=V3)
    assert tree_allclose(a, b, rtol=1e-3)


# --- 5. weightings in lambda space ----------------------------------------------------------


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=_ids)
@given(t=st.floats(0.02, 0.98), k=st.floats(-3.0, 3.0))
def test_weight_identities(schedule, t, k):
    # alpha and 1 - alpha each in float32 from the schedule (1 - alpha is not recomputed: cancellation)
    a, c = float(schedule.alpha(t)), float(schedule.one_minus_alpha(t))
    rtol = 2e-4
    np.testing.assert_allclose(float(M.tilde_weight(vd.weighting.IDDPM(), schedule, t)), 2 * math.sqrt(a * c), rtol)
    np.testing.assert_allclose(
        float(M.tilde_weight(vd.weighting.Sigmoid(k=k), schedule, t)), c / (c + math.exp(-k) * a), rtol
    )
    np.testing.assert_allclose(float(M.tilde_weight(vd.weighting.FlowMatching(), schedule, t)), math.sqrt(c / a), rtol)
    # Simple times the ELBO weight is 1 (Simple's w(lam) = p(lam)/alpha goes through the schedule's inverse t(lam))
    simple = M.tilde_weight(M.Simple(schedule), schedule, t) * schedule.elbo_weight(t)
    np.testing.assert_allclose(float(simple), 1.0, rtol)


_rw_jit = eqx.filter_jit(M.reweighted_loss)


def test_reweighted_elbo_weighting_is_elbo_and_importance_form(getkey):
    # ELBO weighting == elbo's diffusion term (same key, same draws); importance form over lambda with a
    # Gaussian cosine schedule on [-20, 20] also gives ln N with the oracle (schedule invariance).
    sched = M.CosineSchedule()
    tokens = jnp.asarray(np.tile(DATA, (300, 1)))
    key = getkey()
    rw = _rw_jit(ORACLE, tokens, key=key, schedule=sched, weighting=vd.weighting.ELBO(), mask_id=V3)
    el = _elbo_jit(ORACLE, tokens, key=key, schedule=sched, mask_id=V3)
    recon = L3 * sched.eps * math.log(V3)
    assert tree_allclose(rw + recon, el, rtol=1e-5, atol=1e-5)
    imp = vd.schedules.Cosine(lam_min=-20.0, lam_max=20.0)
    vals, aux = _rw_jit(
        ORACLE,
        tokens,
        key=getkey(),
        schedule=sched,
        weighting=vd.weighting.ELBO(),
        mask_id=V3,
        importance=imp,
        return_aux=True,
    )
    vals = np.asarray(vals)
    mean, se = vals.mean(), vals.std(ddof=1) / math.sqrt(vals.size)
    # truncation to |lam| <= 20 drops at most 2 L e^-20 ln N nats
    assert abs(mean - math.log(len(DATA))) <= 3 * se + 1e-6
    assert isinstance(aux, vd.losses.WeightedLossAux) and aux.lam.shape == (tokens.shape[0],)
    # values = w(lam) alpha CE and loss = values / p(lam)
    assert tree_allclose(aux.values / imp.density(aux.lam), jnp.asarray(vals), rtol=1e-4)


@pytest.mark.parametrize(
    "weighting",
    [vd.weighting.Sigmoid(k=0.0), vd.weighting.EDM(), "simple"],
    ids=lambda w: w if isinstance(w, str) else type(w).__name__,
)
def test_reweighted_loss_schedule_invariant(weighting, getkey):
    # The lambda-space weightings give the same expected loss under every masking schedule (same
    # lambda range up to O(eps)); checked for the oracle between the linear and cosine schedules.
    tokens = jnp.asarray(np.tile(DATA, (400, 1)))
    means, ses = [], []
    for sched in (M.LinearSchedule(), M.CosineSchedule()):
        w = M.Simple(sched) if weighting == "simple" else weighting
        v = np.asarray(_rw_jit(ORACLE, tokens, key=getkey(), schedule=sched, weighting=w, mask_id=V3))
        means.append(v.mean()), ses.append(v.std(ddof=1) / math.sqrt(v.size))
        assert np.all(np.isfinite(v)) and np.all(v >= 0)
    if weighting != "simple":  # Simple is not schedule-invariant by design
        assert abs(means[0] - means[1]) <= 3 * math.hypot(*ses) + 1e-3, (means, ses)


# --- 9. bad input -------------------------------------------------------------------------------


class _BadSchedule(M.AbstractMaskingSchedule):
    eps: float = 0.0

    def _alpha_bar(self, t):
        return 2.0 - t, t - 1.0  # alpha > 1

    def _dalpha_bar(self, t):
        return -jnp.ones_like(t)

    def _t_of(self, abar, one_minus_abar):
        return 2.0 - abar


def test_bad_input(getkey):
    sched = M.LinearSchedule()
    good = jnp.asarray(DATA)
    with pytest.raises(ValueError, match="tokens"):
        M.elbo(ORACLE, good.at[0, 0].set(7), key=getkey(), schedule=sched, mask_id=9)  # id >= V
    with pytest.raises(ValueError, match="tokens"):
        M.elbo(ORACLE, good.at[0, 0].set(-1), key=getkey(), schedule=sched, mask_id=V3)
    with pytest.raises(ValueError, match="mask_id"):
        M.elbo(ORACLE, good, key=getkey(), schedule=sched, mask_id=int(DATA[0, 0]))  # mask id in clean data
    with pytest.raises(TypeError, match="tokens"):
        M.elbo(ORACLE, good.astype(jnp.float32), key=getkey(), schedule=sched, mask_id=V3)
    with pytest.raises(ValueError, match="num_steps"):
        M.elbo(ORACLE, good, key=getkey(), schedule=sched, mask_id=V3, num_steps=0)
    with pytest.raises(ValueError, match="mask_id"):
        M.elbo(ORACLE, good, key=getkey(), schedule=sched, mask_id=-1)
    with pytest.raises(TypeError, match="weighting"):
        M.reweighted_loss(ORACLE, good, key=getkey(), schedule=sched, weighting="elbo", mask_id=V3)  # pyright: ignore
    with pytest.raises(TypeError, match="importance"):
        M.reweighted_loss(
            ORACLE, good, key=getkey(), schedule=sched, weighting=vd.weighting.ELBO(), mask_id=V3, importance=3.0
        )
    # a schedule whose alpha leaves [0, 1]: an error, eagerly and under jit
    with pytest.raises((ValueError, RuntimeError), match="alpha"):
        M.elbo(ORACLE, good, key=getkey(), schedule=_BadSchedule(), mask_id=V3)
    with pytest.raises((ValueError, RuntimeError), match="alpha"):
        _elbo_jit(ORACLE, good, key=getkey(), schedule=_BadSchedule(), mask_id=V3)
    # token ids out of range inside jit: eqx.error_if
    with pytest.raises((ValueError, RuntimeError), match="tokens"):
        _elbo_jit(ORACLE, good.at[0, 0].set(V3), key=getkey(), schedule=sched, mask_id=V3)


def test_simple_equals_sigmoid0_for_linear():
    # w~_sigmoid(k=0) = 1 - alpha and Simple = (1 - alpha)/(1 - 2 eps) under the linear schedule
    sched, t = M.LinearSchedule(), jnp.linspace(0.0, 1.0, 11)
    ratio = M.tilde_weight(M.Simple(sched), sched, t) / M.tilde_weight(vd.weighting.Sigmoid(k=0.0), sched, t)
    assert tree_allclose(ratio, jnp.full_like(t, 1 / (1 - 2 * sched.eps)), rtol=1e-5)


def test_reweighted_loss_with_adaptive_importance(getkey):
    # The adaptive schedule plugs in: bind(state) is the importance density, aux feeds its update, and
    # the ELBO-weighted loss stays unbiased (ln N for the oracle; truncation to |lam| <= 12 is O(e^-12)).
    a = vd.adaptive.AdaptiveSchedule(lam_min=-12.0, lam_max=12.0, num_bins=24, decay=0.5)
    state = a.init()
    tokens = jnp.asarray(np.tile(DATA, (300, 1)))
    for _ in range(3):
        vals, aux = _rw_jit(
            ORACLE,
            tokens,
            key=getkey(),
            schedule=M.LinearSchedule(),
            weighting=vd.weighting.ELBO(),
            mask_id=V3,
            importance=a.bind(state),
            return_aux=True,
        )
        state = a.update(state, aux.lam, aux.values)
    vals = np.asarray(vals)
    assert not np.allclose(np.asarray(state.ema), 1.0)
    mean, se = vals.mean(), vals.std(ddof=1) / math.sqrt(vals.size)
    assert abs(mean - math.log(len(DATA))) <= 3 * se + 1e-4, (mean, se)
