"""The improved-ELBO cascade (Shi & Titsias 2025, Theorems 1 and 2) for masked and Gaussian diffusion."""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd

from helpers import tree_allclose


M = vd.masked

# --- masked: tiny vocabulary and length, every mask pattern enumerated --------------------------

V, L, T = 3, 3, 4
DATA = np.array([[0, 1, 2], [1, 1, 0], [2, 0, 1], [0, 0, 0], [2, 2, 1]], np.int32)
ORACLE = vd.oracle.EmpiricalMaskedDenoiser(DATA, vocab_size=V, mask_id=V)
SCHED = M.CosineSchedule()


class MixedDenoiser(eqx.Module):
    """Oracle mixed with the uniform distribution: an imperfect denoiser."""

    mix: float

    def __call__(self, z, lam):
        p = jax.nn.softmax(ORACLE(z, lam), axis=-1)
        return jnp.log((1 - self.mix) * p + self.mix / V)


class RandomNet(eqx.Module):
    """A random MLP on the one-hot masked sequence and lambda."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(L * (V + 1) + 1, L * V, 16, 2, key=key)

    def __call__(self, z, lam):
        h = jnp.concatenate([jax.nn.one_hot(z, V + 1).reshape(-1), jnp.reshape(lam, (1,)) / 10.0])
        return self.mlp(h).reshape(L, V)


DENOISERS = [ORACLE, MixedDenoiser(0.3), RandomNet(jr.key(1))]
_ids = ["oracle", "mixed", "random_net"]


def _exact_uniforms(schedule, num_steps):
    # Token n's mask pattern over the grid only depends on which interval between the thresholds
    # alpha_{t_T} < ... < alpha_{t_0} its uniform falls in; enumerate the midpoints with their lengths.
    alphas = np.asarray(schedule.alpha(jnp.arange(num_steps + 1) / num_steps), np.float64)
    edges = np.concatenate([[0.0], alphas[::-1], [1.0]])
    mids, lens = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    us, ws = [], []
    for combo in itertools.product(range(len(mids)), repeat=L):
        us.append(mids[list(combo)]), ws.append(np.prod(lens[list(combo)]))
    return np.array(us, np.float32), np.array(ws)


def _exact_expected_terms(denoiser, schedule=SCHED, num_steps=T):
    us, ws = _exact_uniforms(schedule, num_steps)
    tokens = np.repeat(DATA, len(us), axis=0)
    u = np.tile(us, (len(DATA), 1))
    w = np.tile(ws, len(DATA)) / len(DATA)
    terms = eqx.filter_jit(M.cascade_terms_at)(
        denoiser, jnp.asarray(tokens), DATA, jnp.asarray(u), schedule=schedule, num_steps=num_steps, mask_id=V
    )
    return terms, w


@pytest.mark.parametrize("denoiser", DENOISERS, ids=_ids)
def test_theorem1_masked_monotone(denoiser):
    terms, w = _exact_expected_terms(denoiser)
    bounds = np.asarray(terms.bounds, np.float64).T @ w  # E_x L^(i), i = 1..T, exact
    assert np.all(np.diff(bounds) >= -1e-5), bounds
    # the last bound uses the ground-truth decoder from s = (T-1)/T: strictly better than L^(1) here
    assert bounds[-1] > bounds[0]


def test_masked_terms_match_independent_numpy():
    # Independent check of one example: decoder term by counting rows, K_j by the closed form.
    x, u = DATA[0], np.array([0.2, 0.7, 0.95], np.float32)
    terms = M.cascade_terms_at(
        ORACLE, jnp.asarray(x[None]), DATA, jnp.asarray(u[None]), schedule=SCHED, num_steps=T, mask_id=V
    )
    times = np.arange(T + 1) / T
    alphas = np.asarray(SCHED.alpha(jnp.asarray(times, jnp.float32)), np.float64)
    for i in range(T):
        masked = u >= alphas[i]
        cons = [r for r in DATA if np.all((r == x) | masked)]
        assert abs(float(terms.decoder[0, i]) - math.log(1 / len(cons))) < 1e-5
        masked_t = u >= alphas[i + 1]
        cons_t = [r for r in DATA if np.all((r == x) | masked_t)]
        ce = sum(-math.log(sum(r[n] == x[n] for r in cons_t) / len(cons_t)) for n in range(L) if masked_t[n])
        r = (alphas[i] - alphas[i + 1]) / (1 - alphas[i + 1])
        assert abs(float(terms.kl[0, i]) - r * ce) < 1e-4


_terms_jit = eqx.filter_jit(M.cascade_terms)


def test_theorem2_masked_denoiser_independent(getkey):
    weights = jnp.asarray([0.5, 0.0, 1.0, 2.0])
    cum = jnp.cumsum(weights)
    key = getkey()
    tokens = jnp.asarray(np.tile(DATA, (8, 1)))
    totals, scales = [], []
    for d in DENOISERS:
        terms = _terms_jit(d, tokens, DATA, key=key, schedule=SCHED, num_steps=T, mask_id=V)
        totals.append(terms.weighted(weights) + terms.kl @ cum)
        scales.append(np.asarray(jnp.abs(terms.kl) @ cum + jnp.abs(terms.decoder) @ weights))
    # weighted_cascade is the same weighted sum
    wc = M.weighted_cascade(ORACLE, tokens, DATA, key=key, schedule=SCHED, num_steps=T, mask_id=V, weights=weights)
    assert tree_allclose(wc + terms_kl_oracle(tokens, key) @ cum, totals[0], rtol=1e-5, atol=1e-5)
    tol = 1e-6 * np.maximum.reduce(scales) + 1e-5  # float32 round-off of the cancelling sums
    assert np.all(np.abs(np.asarray(totals[0]) - np.asarray(totals[1])) <= tol)
    assert np.all(np.abs(np.asarray(totals[0]) - np.asarray(totals[2])) <= tol)


def terms_kl_oracle(tokens, key):
    return _terms_jit(ORACLE, tokens, DATA, key=key, schedule=SCHED, num_steps=T, mask_id=V).kl


def test_theorem2_masked_large_t_is_reweighted_loss(getkey):
    # theta-dependent part sum_j W_j K_j with W_j = w~(t_j) (sigmoid k=0, increasing in t) matches the
    # reweighted loss for T large; both Monte Carlo, compared within 3 s.e. plus an O(1/T) allowance.
    num_steps = 64
    weighting = vd.weighting.Sigmoid(k=0.0)
    times = jnp.arange(1, num_steps + 1) / num_steps
    cum = M.tilde_weight(weighting, SCHED, times)
    weights = jnp.diff(cum, prepend=0.0)
    assert bool(jnp.all(weights >= 0))
    net = DENOISERS[2]
    tokens = jnp.asarray(np.tile(DATA, (300, 1)))
    terms = eqx.filter_jit(M.cascade_terms)(
        net, tokens, DATA, key=getkey(), schedule=SCHED, num_steps=num_steps, mask_id=V
    )
    a = np.asarray(terms.kl @ cum)
    b = np.asarray(
        eqx.filter_jit(M.reweighted_loss)(net, tokens, key=getkey(), schedule=SCHED, weighting=weighting, mask_id=V)
    )
    se = math.hypot(a.std() / math.sqrt(a.size), b.std() / math.sqrt(b.size))
    assert abs(a.mean() - b.mean()) <= 3 * se + 0.02 * b.mean(), (a.mean(), b.mean(), se)


# --- Gaussian: 1-D data, exact expectations over eps by Gauss-Hermite quadrature -----------------

GDATA = np.array([[-0.8], [0.1], [0.9]], np.float32)
GSCHED = vd.schedules.Cosine(lam_min=-10.0, lam_max=10.0)
GORACLE = vd.oracle.EmpiricalDenoiser(jnp.asarray(GDATA))


class GMixed(eqx.Module):
    def __call__(self, z, lam):
        return 0.7 * GORACLE(z, lam) + 0.3 * jnp.tanh(z)


class GRandomNet(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(2, 1, 16, 2, key=key)

    def __call__(self, z, lam):
        return self.mlp(jnp.concatenate([z, jnp.reshape(lam, (1,)) / 10.0]))


@pytest.mark.parametrize("denoiser", [GORACLE, GMixed(), GRandomNet(jr.key(2))], ids=_ids)
def test_theorem1_gaussian_monotone(denoiser):
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    x = np.repeat(GDATA, len(nodes), axis=0)
    eps = np.tile(nodes, len(GDATA))[:, None].astype(np.float32)
    w = np.tile(weights, len(GDATA)) / len(GDATA)
    terms = eqx.filter_jit(vd.losses.gaussian_cascade_terms_at)(
        denoiser, jnp.asarray(x), jnp.asarray(GDATA), jnp.asarray(eps), schedule=GSCHED, num_steps=8
    )
    bounds = np.asarray(terms.bounds, np.float64).T @ w
    assert np.all(np.isfinite(bounds))
    assert np.all(np.diff(bounds) >= -1e-5), bounds
    assert bounds[-1] > bounds[0]


def test_theorem2_gaussian_denoiser_independent(getkey):
    weights = jnp.asarray([1.0, 0.0, 0.5, 2.0])
    x = jnp.asarray(np.tile(GDATA, (5, 1)))
    eps = jr.normal(getkey(), x.shape)
    totals, scales = [], []
    for d in (GORACLE, GMixed(), GRandomNet(jr.key(3))):
        terms = eqx.filter_jit(vd.losses.gaussian_cascade_terms_at)(
            d, x, jnp.asarray(GDATA), eps, schedule=GSCHED, num_steps=4
        )
        totals.append(terms.weighted(weights) + terms.kl @ jnp.cumsum(weights))
        scales.append(np.asarray(jnp.abs(terms.kl) @ jnp.cumsum(weights) + jnp.abs(terms.decoder) @ weights))
    # equal up to float32 round-off of the cancelling sums (relative 1e-6 of their magnitude)
    tol = 1e-6 * np.maximum.reduce(scales) + 1e-5
    assert np.all(np.abs(np.asarray(totals[0]) - np.asarray(totals[1])) <= tol)
    assert np.all(np.abs(np.asarray(totals[0]) - np.asarray(totals[2])) <= tol)


def test_theorem2_gaussian_large_t_is_weighted_loss(getkey):
    # theta-dependent part sum_j W_j K_j with W_j = w(lam_{t_j}) (Sigmoid(2): non-increasing in lambda, so W
    # non-decreasing in t) matches K&G's weighted loss for T large; Monte Carlo, 3 s.e. + an O(1/T) allowance.
    num_steps, weighting, d = 128, vd.weighting.Sigmoid(k=2.0), GMixed()
    cum = weighting(GSCHED.lam(jnp.arange(1, num_steps + 1) / num_steps))
    x = jnp.asarray(np.tile(GDATA, (400, 1)))
    terms = eqx.filter_jit(vd.losses.gaussian_cascade_terms_at)(
        d, x, jnp.asarray(GDATA), jr.normal(getkey(), x.shape), schedule=GSCHED, num_steps=num_steps
    )
    a = np.asarray(terms.kl @ cum)
    b = np.asarray(eqx.filter_jit(vd.losses.weighted_loss)(d, x, key=getkey(), schedule=GSCHED, weighting=weighting))
    se = math.hypot(a.std() / math.sqrt(a.size), b.std() / math.sqrt(b.size))
    assert abs(a.mean() - b.mean()) <= 3 * se + 0.03 * b.mean(), (a.mean(), b.mean(), se)


def test_cascade_bad_input(getkey):
    tokens = jnp.asarray(DATA)
    with pytest.raises(ValueError, match="num_steps"):
        M.cascade(ORACLE, tokens, DATA, key=getkey(), schedule=SCHED, num_steps=0, mask_id=V)
    with pytest.raises(ValueError, match="weights"):
        M.weighted_cascade(
            ORACLE, tokens, DATA, key=getkey(), schedule=SCHED, num_steps=2, mask_id=V, weights=jnp.ones(3)
        )
