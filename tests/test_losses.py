"""Weighted loss, discrete-time loss and ELBO in bits/dim (THEORY §3, §6)."""

import math

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.special
import vdmpp as vd
from hypothesis import given, settings
from numpy.polynomial.legendre import leggauss
from vdmpp import losses as L, schedules as S, weighting as W

from helpers import finite


DIM = 4
_MLP = eqx.nn.MLP(DIM + 1, DIM, width_size=32, depth=2, activation=jnp.tanh, key=jr.key(2))


class _Net(eqx.Module):
    """A fixed random MLP eps-denoiser `(z, lam) -> eps_hat`, taking lambda as a feature."""

    mlp: eqx.nn.MLP

    def __call__(self, z, lam):
        return self.mlp(jnp.concatenate([z, jnp.reshape(lam / 10.0, (1,)).astype(z.dtype)]))


NET = _Net(_MLP)
X = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, DIM)), jnp.float32)  # fixed data
INVARIANCE_SCHEDULES = (S.LinearLogSNR, S.Cosine, S.EDMTraining, S.FlowMatchingOT)
INVARIANCE_WEIGHTINGS = (W.ELBO(), W.Sigmoid(k=2.0), W.EDM())


def _arrays(tree, dtype):
    """Float fields as arrays, so a jitted function sees them as traced values (no recompiles per example)."""
    return jtu.tree_map(lambda v: jnp.asarray(v, dtype) if isinstance(v, float) else v, tree)


def _cast(tree, dtype):
    return jtu.tree_map(lambda v: v.astype(dtype) if eqx.is_inexact_array(v) else v, tree)


# --- acceptance 4: schedule invariance ----------------------------------------------------------------


@eqx.filter_jit
def _lam_integrand(net, schedule, weightings, x, eps, lam_nodes):
    """For each weighting: weighted_loss_at at t = t(lam_j), times dt/dlam by autodiff of `schedule.t`.

    Returns shape (weightings, nodes, examples, draws): integrating over lam gives the loss per draw of eps.
    """
    t_nodes = schedule.t(lam_nodes)
    jac = -jax.vmap(jax.grad(schedule.t))(lam_nodes)  # dt/dlam, independent of `schedule.density`
    n, k = x.shape[0], eps.shape[0]
    xb = jnp.repeat(x, k, axis=0)  # (n*k, D): example i with every draw
    eb = jnp.tile(eps, (n, 1))

    def at_node(tt, jj):
        tb = jnp.full((n * k,), tt, x.dtype)
        return jnp.stack(
            [jj * L.weighted_loss_at(net, xb, tb, eb, schedule=schedule, weighting=w).reshape(n, k) for w in weightings]
        )

    return jnp.moveaxis(jax.vmap(at_node)(t_nodes, jac), 0, 1)


def _quadrature(net, schedule, x, eps, lam_min, lam_max, num_nodes=96, dtype=jnp.float64):
    nodes, weights = leggauss(num_nodes)
    lam = 0.5 * (lam_max - lam_min) * nodes + 0.5 * (lam_max + lam_min)
    vals = _lam_integrand(
        _cast(net, dtype),
        _arrays(schedule, dtype),
        _arrays(INVARIANCE_WEIGHTINGS, dtype),
        x.astype(dtype),
        eps.astype(dtype),
        jnp.asarray(lam, dtype),
    )
    per_draw = np.einsum("wjnk,j->wnk", np.asarray(vals, np.float64), 0.5 * (lam_max - lam_min) * weights)
    return per_draw  # (weightings, examples, draws)


@eqx.filter_jit
def _monte_carlo(net, schedule, weightings, xb, key):
    # i.i.d. times (so the sample s.e. is the estimator's) and the default low-discrepancy times
    return jnp.stack(
        [
            L.weighted_loss(net, xb, key=key, schedule=schedule, weighting=w, time_sampler=sampler)
            for sampler in (L.IID(), L.LowDiscrepancy())
            for w in weightings
        ]
    )


@given(
    lam_min=st.floats(-12.0, -1.0),
    lam_max=st.floats(1.0, 20.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_schedule_invariance_quadrature(lam_min, lam_max, seed):
    """The loss, by deterministic quadrature (Gauss-Legendre in lambda mapped to t), is the same for every schedule.

    float64: at lam_min = -12 EDMTraining's t is within 1e-9 of 1, below float32 resolution.
    """
    eps = jr.normal(jr.key(seed), (8, DIM))
    with jax.enable_x64(True):
        results = [
            _quadrature(NET, cls(lam_min=lam_min, lam_max=lam_max), X, eps, lam_min, lam_max)
            for cls in INVARIANCE_SCHEDULES
        ]
    ref = results[0]
    assert np.all(ref > 0)
    for res in results[1:]:
        np.testing.assert_allclose(res, ref, rtol=1e-4)


def test_schedule_invariance_quadrature_float32(getkey):
    """The same in float32, where every schedule resolves [-4, 12]."""
    eps = jr.normal(getkey(), (8, DIM))
    results = [
        _quadrature(NET, cls(lam_min=-4.0, lam_max=12.0), X, eps, -4.0, 12.0, dtype=jnp.float32)
        for cls in INVARIANCE_SCHEDULES
    ]
    for res in results[1:]:
        np.testing.assert_allclose(res, results[0], rtol=1e-4)


@pytest.mark.slow  # CI time; the exact (quadrature) invariance tests below run in CI
@settings(max_examples=5)  # each example makes 24 comparisons at 4 s.e.; keeps random (dev) runs from flaking
@given(lam_min=st.floats(-6.0, -1.0), lam_max=st.floats(2.0, 10.0), seed=st.integers(0, 2**31 - 1))
def test_schedule_invariance_monte_carlo(lam_min, lam_max, seed):
    """weighted_loss (one (t, eps) per example) agrees with the quadrature within 4 standard errors.

    Compared per schedule, weighting and time sampler (i.i.d. and the default low-discrepancy), on the loss
    averaged over the fixed data. The range keeps every schedule's importance weights w/p bounded
    (EDMTraining's p is ~1e-4 at lam = -6).
    """
    key = jr.key(seed)
    ekey, mkey = jr.split(key)
    eps = jr.normal(ekey, (256, DIM))
    with jax.enable_x64(True):
        per_draw = _quadrature(NET, S.LinearLogSNR(lam_min=lam_min, lam_max=lam_max), X, eps, lam_min, lam_max)
    per_draw = per_draw.mean(1)  # average over the data: (weightings, draws)
    ref, ref_se = per_draw.mean(-1), per_draw.std(-1, ddof=1) / math.sqrt(per_draw.shape[-1])
    batch = 1024
    xb = jnp.tile(X, (batch, 1))  # interleaved, so low-discrepancy times cover [0, 1) for every example
    for i, cls in enumerate(INVARIANCE_SCHEDULES):
        sched = _arrays(cls(lam_min=lam_min, lam_max=lam_max), jnp.float32)
        mc = np.asarray(_monte_carlo(NET, sched, INVARIANCE_WEIGHTINGS, xb, jr.fold_in(mkey, i)), np.float64)
        mc = mc.reshape(2, len(INVARIANCE_WEIGHTINGS), batch, X.shape[0]).mean(-1)  # average over the data
        mean = mc.mean(-1)  # (sampler, weighting)
        se = mc[0].std(-1, ddof=1) / math.sqrt(batch)  # i.i.d. s.e. (conservative for low-discrepancy)
        tol = 4 * np.sqrt(se**2 + ref_se**2)
        assert np.all(np.abs(mean - ref) <= tol), (cls.__name__, mean, ref, se, ref_se)
        assert np.all(se < 0.2 * ref)  # the comparison has teeth (EDMTraining at [-6, 2]: 0.10)


# --- weighted loss: basics ------------------------------------------------------------------------------


def test_weighted_loss_at_formula(getkey):
    """½ w(lam) (-dlam/dt) ||eps - eps_hat||^2, written out."""
    s, w = S.Cosine(lam_min=-15.0, lam_max=15.0), W.Sigmoid(k=2.0)
    t = jnp.array([0.1, 0.5, 0.9])
    eps = jr.normal(getkey(), X.shape)
    got = L.weighted_loss_at(NET, X, t, eps, schedule=s, weighting=w)
    lam = s.lam(t)
    a, sg = jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
    err = jnp.sum((eps - jax.vmap(NET)(a[:, None] * X + sg[:, None] * eps, lam)) ** 2, axis=1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(0.5 * w(lam) * (-s.dlam_dt(t)) * err), rtol=1e-5)
    loss, aux = L.weighted_loss_at(NET, X, t, eps, schedule=s, weighting=w, return_aux=True)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(got))
    np.testing.assert_allclose(np.asarray(aux.lam), np.asarray(lam))
    np.testing.assert_allclose(np.asarray(aux.values), np.asarray(w(lam) * err), rtol=1e-5)


def test_weighted_loss_at_per_example_extras(getkey):
    """`per_example` arguments reach the denoiser one example at a time: eps_hat_i = c_i * z_i + b_i."""
    s, w = S.Cosine(lam_min=-15.0, lam_max=15.0), W.ELBO()
    t = jnp.array([0.2, 0.5, 0.7])
    eps = jr.normal(getkey(), X.shape)
    c = jnp.array([0.5, -1.0, 2.0])
    b = {"shift": jnp.arange(3 * DIM, dtype=jnp.float32).reshape(3, DIM) / 10.0}  # a pytree extra
    got = L.weighted_loss_at(
        lambda z, lam, ci, bi: ci * z + bi["shift"], X, t, eps, schedule=s, weighting=w, per_example=(c, b)
    )
    lam = np.asarray(s.lam(t), np.float64)
    a, sg = np.sqrt(scipy.special.expit(lam)), np.sqrt(scipy.special.expit(-lam))
    x, e = np.asarray(X, np.float64), np.asarray(eps, np.float64)
    z = a[:, None] * x + sg[:, None] * e
    err = np.sum((e - (np.asarray(c)[:, None] * z + np.asarray(b["shift"]))) ** 2, axis=1)
    density = np.asarray(s.density(s.lam(t)), np.float64)
    np.testing.assert_allclose(np.asarray(got), 0.5 * err / density, rtol=1e-4)


def test_weighted_loss_is_deterministic_core(getkey):
    key = getkey()
    s, w = S.Cosine(), W.ELBO()
    tkey, ekey = jr.split(key)
    t = L.LowDiscrepancy()(tkey, X.shape[0], X.dtype)
    eps = jr.normal(ekey, X.shape, X.dtype)
    np.testing.assert_allclose(
        np.asarray(L.weighted_loss(NET, X, key=key, schedule=s, weighting=w)),
        np.asarray(L.weighted_loss_at(NET, X, t, eps, schedule=s, weighting=w)),
    )
    out = jax.jit(lambda k: L.weighted_loss(NET, X, key=k, schedule=s, weighting=w))(key)
    assert out.shape == (X.shape[0],)


@pytest.mark.parametrize("sampler", [L.LowDiscrepancy(), L.Stratified(), L.IID()], ids=lambda s: type(s).__name__)
def test_time_samplers(sampler, getkey):
    n = 64
    t = sampler(getkey(), n, jnp.float32)
    assert t.shape == (n,) and t.dtype == jnp.float32
    assert bool(jnp.all((t >= 0) & (t < 1)))
    # marginals are U(0, 1): the mean over many keys is 1/2
    keys = jr.split(getkey(), 400)
    means = jax.vmap(lambda k: jnp.mean(sampler(k, 8, jnp.float32)))(keys)
    assert abs(float(jnp.mean(means)) - 0.5) < 4 * 0.29 / math.sqrt(400 * 8)
    if not isinstance(sampler, L.IID):  # one point per stratum [i/n, (i+1)/n)
        counts = np.bincount(np.floor(np.asarray(t) * n).astype(int), minlength=n)
        assert np.all(counts == 1)


# --- acceptance 7: ELBO with the oracle; discrete time ----------------------------------------------

_elbo_bpd = eqx.filter_jit(L.elbo_bpd)  # one compile per schedule/num_levels/shape


def test_elbo_bpd_with_oracle(getkey):
    """N distinct uint8 images, exact denoiser: E_x[-ELBO] = ln N nats, i.e. log2(N)/D bits per dim."""
    n, shape = 4, (3, 3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    assert len({im.tobytes() for im in images}) == n
    oracle = vd.oracle.EmpiricalDenoiser(L.uint8_to_float(jnp.asarray(images)))
    reps = 8192
    batch = jnp.asarray(np.tile(images, (reps, 1, 1)))
    schedule = S.Cosine(lam_min=-20.0, lam_max=20.0)
    bpd = np.asarray(_elbo_bpd(oracle, batch, key=getkey(), schedule=schedule))
    target = math.log2(n) / math.prod(shape)
    mean, se = bpd.mean(), bpd.std(ddof=1) / math.sqrt(bpd.size)
    assert abs(mean - target) <= 0.02 * target + 4 * se, (mean, target, se)
    assert se < 0.05 * target  # the check has teeth
    # prior and reconstruction are negligible at [-20, 20]; the diffusion term carries ln N
    terms = eqx.filter_jit(L.elbo_terms)(oracle, batch[:64], key=getkey(), schedule=schedule)
    assert float(jnp.max(terms.prior)) < 1e-6 and float(jnp.max(terms.reconstruction)) < 1e-6


def test_elbo_levels_other_than_256(getkey):
    """17 levels (scikit-learn digits): the same identity holds with num_levels=17."""
    n, shape = 8, (2, 2)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 17, (n, *shape)).astype(np.uint8)
    while len({im.tobytes() for im in images}) < n:
        images = rng.integers(0, 17, (n, *shape)).astype(np.uint8)
    oracle = vd.oracle.EmpiricalDenoiser(L.uint8_to_float(jnp.asarray(images), 17))
    batch = jnp.asarray(np.repeat(images, 256, axis=0))
    bpd = np.asarray(_elbo_bpd(oracle, batch, key=getkey(), schedule=S.Cosine(), num_levels=17))
    target = math.log2(n) / math.prod(shape)
    mean, se = bpd.mean(), bpd.std(ddof=1) / math.sqrt(bpd.size)
    assert abs(mean - target) <= 0.02 * target + 4 * se, (mean, target, se)


def _eps_grid(num=1201, half_width=9.0):
    """Quadrature over eps ~ N(0, 1): a fine uniform grid (the oracle's error has steep steps in eps at high SNR,
    which Gauss-Hermite resolves poorly; a grid with spacing 0.015 resolves them)."""
    nodes = np.linspace(-half_width, half_width, num)
    weights = np.exp(-0.5 * nodes**2) / math.sqrt(2 * math.pi) * (nodes[1] - nodes[0])
    return nodes, weights


LEVELS4 = jnp.asarray([[-0.75], [-0.25], [0.25], [0.75]])  # 1-D data, uniform on 4 points
LT_SCHEDULE = S.LinearLogSNR(lam_min=-10.0, lam_max=10.0)


@eqx.filter_jit
def _discrete_integrand(oracle, eps, num_steps):
    """discrete_loss_at for every (data point, step i, eps node), shape (4, T, K)."""
    n, k = LEVELS4.shape[0], eps.shape[0]
    i = jnp.arange(1, num_steps + 1)
    xb = jnp.broadcast_to(LEVELS4[:, None, None, :], (n, num_steps, k, 1)).reshape(-1, 1)
    ib = jnp.broadcast_to(i[None, :, None], (n, num_steps, k)).reshape(-1)
    eb = jnp.broadcast_to(eps[None, None, :, None], (n, num_steps, k, 1)).reshape(-1, 1)
    vals = L.discrete_loss_at(oracle, xb, ib, eb, schedule=LT_SCHEDULE, num_steps=num_steps)
    return vals.reshape(n, num_steps, k)


@eqx.filter_jit
def _continuous_integrand(oracle, eps, t):
    n, k = LEVELS4.shape[0], eps.shape[0]
    xb = jnp.broadcast_to(LEVELS4[:, None, None, :], (n, t.size, k, 1)).reshape(-1, 1)
    tb = jnp.broadcast_to(t[None, :, None], (n, t.size, k)).reshape(-1)
    eb = jnp.broadcast_to(eps[None, None, :, None], (n, t.size, k, 1)).reshape(-1, 1)
    vals = L.weighted_loss_at(oracle, xb, tb, eb, schedule=LT_SCHEDULE, weighting=W.ELBO())
    return vals.reshape(n, t.size, k)


def test_discrete_time_loss_decreases_to_continuous():
    """L_T with the exact denoiser: exact mean over i, a fine grid over eps; L_1 > L_2 > ... > L_inf."""
    oracle = vd.oracle.EmpiricalDenoiser(LEVELS4)
    e_nodes, e_weights = _eps_grid()
    eps = jnp.asarray(e_nodes, jnp.float32)
    nodes, weights = leggauss(200)
    t = jnp.asarray((nodes + 1) / 2, jnp.float32)
    vals = np.asarray(_continuous_integrand(oracle, eps, t), np.float64) @ e_weights
    l_inf = float(np.mean(vals @ (weights / 2)))
    assert l_inf == pytest.approx(math.log(4), rel=0.01)  # ~ln 4 nats on [-10, 10]
    steps = (1, 2, 4, 8, 32, 128)
    values = [float(np.mean(np.asarray(_discrete_integrand(oracle, eps, T), np.float64) @ e_weights)) for T in steps]
    gaps = np.array(values) - l_inf
    assert np.all(np.diff(values) < 0), values
    assert np.all(gaps > 0), (values, l_inf)
    # the gap closes like 1/T: expm1(dlam)/dlam = 1 + dlam/2 + ..., dlam = 20/T
    assert gaps[-1] < 0.1 * l_inf
    assert gaps[-1] < gaps[-2] / 3  # T x4: the gap shrinks ~x4 (measured 14.6/128 vs 17.3/32)


def test_prior_and_reconstruction_terms(getkey):
    """Prior KL and VDM's discretised decoder against THEORY §6 written out in numpy (float64)."""
    x = np.array([-0.9, 0.1, 0.7])
    for lam in (-5.0, 0.0, 3.0):
        a2, s2 = 1 / (1 + math.exp(-lam)), 1 / (1 + math.exp(lam))
        ref = 0.5 * np.sum(s2 + a2 * x**2 - 1 - math.log(s2))
        np.testing.assert_allclose(float(L.prior_kl(jnp.asarray(x, jnp.float32), lam)), ref, rtol=1e-5, atol=1e-7)
    levels = 17
    x_int = np.array([0, 5, 16])
    eps0 = np.array([0.3, -1.2, 0.8])
    centres = 2 * (np.arange(levels) + 0.5) / levels - 1
    np.testing.assert_allclose(np.asarray(L.uint8_to_float(jnp.asarray(x_int), levels)), centres[x_int], rtol=1e-6)
    for lam in (2.0, 6.0):
        a, s = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
        z0 = a * centres[x_int] + s * eps0
        logits = -0.5 * ((z0 / a)[:, None] - centres[None, :]) ** 2 / (s / a) ** 2
        logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
        ref = -np.sum(logp[np.arange(3), x_int])
        got = L.reconstruction_nll(jnp.asarray(x_int), jnp.asarray(eps0, jnp.float32), lam, levels)
        np.testing.assert_allclose(float(got), ref, rtol=1e-4)


def test_discrete_loss_key_version(getkey):
    s = S.Cosine()
    x = X
    out = L.discrete_loss(NET, x, key=getkey(), schedule=s, num_steps=10)
    assert out.shape == (3,) and finite(out)
    with pytest.raises(ValueError, match="`num_steps` must be a positive integer"):
        L.discrete_loss(NET, x, key=getkey(), schedule=s, num_steps=0)


# --- acceptance 8: finite in float32, with gradients ----------------------------------------------------

TS = jnp.array([0.0, 1e-7, 0.5, 1.0 - 1e-7, 1.0], jnp.float32)
X5 = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (5, DIM)), jnp.float32)
EPS5 = jnp.asarray(np.random.default_rng(5).standard_normal((5, DIM)), jnp.float32)
ALL_WEIGHTINGS = (
    W.ELBO(),
    W.IDDPM(),
    W.EDM(),
    W.EDMMonotonic(),
    W.FlowMatching(),
    W.InDI(),
    W.P2(gamma=1.0),
    W.MinSNR(gamma=5.0),
    W.Sigmoid(k=2.0),
    W.FiveBitLike(),
    W.Shifted(W.Sigmoid(k=2.0), shift=0.5),
)
FINITE_SCHEDULES = [
    S.LinearLogSNR(lam_min=-40.0, lam_max=40.0),
    S.Cosine(lam_min=-40.0, lam_max=40.0),
    S.ShiftedCosine(shift=math.log(2.0), lam_min=-40.0, lam_max=40.0),
    S.EDMTraining(lam_min=-20.0, lam_max=20.0),  # its density underflows float32 beyond ~|30|
    S.EDMSampling(sigma_min=math.exp(-20.0), sigma_max=math.exp(20.0)),
    S.FlowMatchingOT(lam_min=-40.0, lam_max=40.0),
]


@eqx.filter_jit
def _loss_and_grads(net, x, schedule):
    def total(net, x):
        losses = jnp.stack(
            [L.weighted_loss_at(net, x, TS, EPS5, schedule=schedule, weighting=w) for w in ALL_WEIGHTINGS]
        )
        return jnp.sum(losses), losses

    (_, losses), grads = eqx.filter_value_and_grad(total, has_aux=True)(net, x)
    x_grad = jax.grad(lambda xx: total(net, xx)[0])(x)
    return losses, grads, x_grad


@pytest.mark.parametrize("s", FINITE_SCHEDULES, ids=lambda s: type(s).__name__)
def test_loss_finite_float32(s):
    losses, grads, x_grad = _loss_and_grads(NET, X5, s)
    assert losses.dtype == jnp.float32
    assert finite(losses) and finite(x_grad)
    assert finite(eqx.filter(grads, eqx.is_inexact_array))
    assert bool(jnp.all(losses >= 0))


def test_oracle_elbo_finite_float32(getkey):
    images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 2, 2)), jnp.uint8)
    oracle = vd.oracle.EmpiricalDenoiser(L.uint8_to_float(images))
    for s in (S.Cosine(lam_min=-40.0, lam_max=40.0), S.LinearLogSNR(lam_min=-40.0, lam_max=40.0)):
        assert finite(_elbo_bpd(oracle, images, key=getkey(), schedule=s))


# --- acceptance 9: bad input ---------------------------------------------------------------------------


def test_elbo_bpd_bad_input(getkey):
    s = S.Cosine()
    key = getkey()
    with pytest.raises(TypeError, match=r"`x_uint8` must hold integer levels.*float32"):
        L.elbo_bpd(NET, jnp.zeros((2, DIM), jnp.float32), key=key, schedule=s)
    with pytest.raises(
        ValueError, match=r"`x_uint8` must be a non-empty batch shaped \(batch, \*data\); got shape \(4,\)"
    ):
        L.elbo_bpd(NET, jnp.zeros((DIM,), jnp.uint8), key=key, schedule=s)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 16\] for num_levels=17; got values in \[0, 200\]"):
        L.elbo_bpd(NET, jnp.array([[0, 1, 2, 200]], jnp.uint8), key=key, schedule=s, num_levels=17)
    with pytest.raises(ValueError, match="`num_levels` must be an integer >= 2"):
        L.elbo_bpd(NET, jnp.zeros((2, DIM), jnp.uint8), key=key, schedule=s, num_levels=1)
    # inside jit the range check is an eqx.error_if
    bad = jnp.array([[0, 1, 2, 20]], jnp.int32)
    with pytest.raises(Exception, match="values outside"):
        jax.jit(lambda xx: L.elbo_bpd(NET, xx, key=key, schedule=s, num_levels=17))(bad)


def test_weighted_loss_bad_input(getkey):
    s, w = S.Cosine(), W.ELBO()
    with pytest.raises(ValueError, match=r"`x` must be a non-empty batch shaped \(batch, \*data\)"):
        L.weighted_loss(NET, jnp.zeros((DIM,)), key=getkey(), schedule=s, weighting=w)
    # with runtime checks on (tests), jaxtyping names the parameter first; without them, our message does
    with pytest.raises(TypeError, match="parameter 'x'|`x` must be a float array"):
        L.weighted_loss_at(
            NET, jnp.zeros((2, DIM), jnp.int32), jnp.zeros(2), jnp.zeros((2, DIM)), schedule=s, weighting=w
        )
    with pytest.raises((ValueError, TypeError), match="parameter 't'|`t` must have shape"):
        L.weighted_loss_at(NET, X, jnp.zeros(2), jnp.zeros_like(X), schedule=s, weighting=w)
    with pytest.raises((ValueError, TypeError), match="parameter 'eps'|`eps` must have the shape of `x`"):
        L.weighted_loss_at(NET, X, jnp.zeros(3), jnp.zeros((3, 2)), schedule=s, weighting=w)
    with pytest.raises(ValueError, match="shaped like its input"):
        L.weighted_loss(lambda z, lam: z[:2], X, key=getkey(), schedule=s, weighting=w)
