"""Samplers and the ODE likelihood against a Gaussian mixture's closed forms (issue #4; issue #16 items 1, 3, 5, 6)."""

import functools as ft
import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
import vdmpp as vd


MIX = vd.oracle.GaussianMixture(
    jnp.array([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]]), jnp.array([0.3, 0.5, 0.2]), jnp.array([0.2, 0.5, 0.3])
)
COSINE = vd.schedules.Cosine(lam_min=-15.0, lam_max=15.0)
LINEAR = vd.schedules.LinearLogSNR(lam_min=-10.0, lam_max=10.0)  # not stiff at the ends: for SDE solvers
N = 4000  # samples per distribution comparison


def sliced_w2(a, b, num_proj=256, seed=0) -> float:
    """Sliced Wasserstein-2 between two equal-size samples (exact 1-D W2 per random direction)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    theta = np.random.default_rng(seed).normal(size=(num_proj, a.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    pa, pb = np.sort(a @ theta.T, axis=0), np.sort(b @ theta.T, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


_CALLS: list = []


def _record(lam):
    _CALLS.append(float(lam))


class Recording(eqx.Module):
    """Calls the wrapped denoiser and records each call's lam (the callback runs once per batched call)."""

    fn: Callable

    def __call__(self, z, lam, **kwargs):
        jax.debug.callback(_record, lam)
        return self.fn(z, lam, **kwargs)


@pytest.fixture(scope="module")
def reference():
    """An exact sample, and the tolerance: 1.5x the largest SW2 between independent exact samples."""
    ref = MIX.sample(jr.key(100), N)
    floors = [sliced_w2(MIX.sample(jr.key(200 + i), N), ref) for i in range(4)]
    return ref, 1.5 * max(floors)


@eqx.filter_jit
def _run(sampler, key):
    return sampler(Recording(MIX.denoiser), (N, 2), key=key)


# (low-NFE config, high-NFE config): the low one must be visibly wrong, the high one within tolerance.
CONVERGENCE = {
    "ancestral": (
        ft.partial(vd.samplers.ancestral, schedule=COSINE, num_steps=4),
        ft.partial(vd.samplers.ancestral, schedule=COSINE, num_steps=256),
    ),
    "edm": (ft.partial(vd.samplers.edm, num_steps=3), ft.partial(vd.samplers.edm, num_steps=64)),
    "edm_churn": (
        ft.partial(vd.samplers.edm, num_steps=3, s_churn=40.0),
        ft.partial(vd.samplers.edm, num_steps=64, s_churn=40.0),
    ),
    "probability_flow": (
        ft.partial(
            vd.samplers.probability_flow,
            schedule=COSINE,
            solver=dfx.Euler(),
            stepsize_controller=dfx.ConstantStepSize(),
            dt0=-0.5,
        ),
        ft.partial(vd.samplers.probability_flow, schedule=COSINE),
    ),
    "reverse_sde_euler": (
        ft.partial(vd.samplers.reverse_sde, schedule=COSINE, num_steps=8),
        ft.partial(vd.samplers.reverse_sde, schedule=COSINE, num_steps=256),
    ),
}


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_converges_to_data(name, reference):
    ref, tol = reference
    low, high = CONVERGENCE[name]
    x_low, nfe_low = _run(low, jr.key(1))
    _CALLS.clear()
    x_high, nfe_high = _run(high, jr.key(1))
    jax.block_until_ready(x_high)
    jax.effects_barrier()
    assert int(nfe_high) == len(_CALLS)  # acceptance 6: NFE equals the denoiser calls
    assert int(nfe_low) < int(nfe_high)
    sw_low, sw_high = sliced_w2(x_low, ref), sliced_w2(x_high, ref)
    assert sw_high < tol, (sw_high, tol)
    assert sw_low > tol, (sw_low, tol)  # the test can fail: few steps are measurably wrong
    # first two moments against the closed form (sampling s.e. of the mean is ~0.02 at N=4000)
    assert np.allclose(np.mean(x_high, 0), MIX.mean(), atol=0.08)
    assert np.allclose(np.cov(np.asarray(x_high).T), MIX.covariance(), atol=0.15)


def test_odelikelihood_exact_trace_matches_closed_form():
    s = vd.schedules.Cosine(lam_min=-16.0, lam_max=8.0)
    z = MIX.sample(jr.key(2), 8, lam=8.0)
    ctrl = dfx.PIDController(rtol=1e-6, atol=1e-6)
    logp = vd.samplers.log_likelihood(MIX.denoiser, z, key=jr.key(3), schedule=s, stepsize_controller=ctrl)
    exact = MIX.log_prob(z, 8.0)
    assert float(jnp.max(jnp.abs(logp - exact))) / 2 < 1e-3  # nats per dimension  # pyright: ignore[reportOperatorIssue]
    # Hutchinson: unbiased, and its reported standard error is honest
    est, aux = vd.samplers.log_likelihood(
        MIX.denoiser, z, key=jr.key(4), schedule=s, hutchinson_probes=16, stepsize_controller=ctrl, return_aux=True
    )
    zscore = np.asarray((est - exact) / aux.stderr)
    assert np.all(aux.stderr > 0)
    assert np.all(np.abs(zscore) < 4), zscore
    assert np.sum(zscore**2) < scipy.stats.chi2.ppf(0.999, df=8), zscore
    assert np.allclose(aux.bits_per_dim, -est / (2 * math.log(2)), rtol=1e-6)


def test_odelikelihood_integer_data_change_of_scale():
    # Broad mixture on [-1, 1]^2, 16 levels: P(bin) from the exact CDF (scipy) vs the dequantised bound.
    g = vd.oracle.GaussianMixture(jnp.array([[-0.3, 0.2], [0.4, -0.1]]), jnp.array([0.5, 0.6]))
    levels = 16
    x_int = jnp.array([[3, 9], [8, 8], [12, 5], [1, 14]], jnp.int32)
    s = vd.schedules.Cosine(lam_min=-16.0, lam_max=12.0)
    ll, aux = vd.samplers.log_likelihood(
        g.denoiser, x_int, key=jr.key(5), schedule=s, num_levels=levels, return_aux=True
    )
    lo = 2 * np.asarray(x_int) / levels - 1
    hi = lo + 2 / levels
    exact = []
    for a, b in zip(lo, hi):
        p = 0.0
        for k in range(2):
            m, sd = np.asarray(g.means[k]), float(g.scales[k, 0])
            p += 0.5 * np.prod(scipy.stats.norm.cdf(b, m, sd) - scipy.stats.norm.cdf(a, m, sd))
        exact.append(math.log(p))
    # one dequantisation sample of a lower bound; the density is nearly flat within a bin here
    assert np.allclose(np.asarray(ll), exact, atol=0.05)
    assert np.allclose(aux.bits_per_dim, -np.asarray(ll) / (2 * math.log(2)), rtol=1e-6)


SCHEDULE_RANGE = (-2 * math.log(80.0), -2 * math.log(0.002))


def test_schedule_independence():
    lo, hi = SCHEDULE_RANGE
    scheds = [
        vd.schedules.Cosine(lam_min=lo, lam_max=hi),
        vd.schedules.EDMSampling(),
        vd.schedules.LinearLogSNR(lo, hi),
    ]
    n = 512
    ode = [vd.samplers.probability_flow(MIX.denoiser, (n, 2), key=jr.key(6), schedule=s)[0] for s in scheds]
    # the probability-flow map from lam_min to lam_max does not depend on how t parametrises lam
    for other in ode[1:]:
        assert float(jnp.max(jnp.abs(other - ode[0]))) < 2e-2
    # the ancestral sampler's distribution on each schedule's grid (128 steps) matches the data
    ref = MIX.sample(jr.key(7), N)
    floor = max(sliced_w2(MIX.sample(jr.key(8 + i), N), ref) for i in range(3))
    for sched in scheds:
        x, _ = _run(ft.partial(vd.samplers.ancestral, schedule=sched, num_steps=128), jr.key(9))
        assert sliced_w2(x, ref) < 1.5 * floor


@pytest.mark.parametrize("solver", [dfx.Euler(), dfx.Heun(), dfx.ShARK()], ids=lambda s: type(s).__name__)
def test_reverse_sde_marginal_at_half(solver):
    n = 8000
    ts = jnp.array([0.5])
    x, _ = vd.samplers.reverse_sde(
        MIX.denoiser, (n, 2), key=jr.key(10), schedule=LINEAR, solver=solver, num_steps=64, ts=ts
    )
    z = np.asarray(x[:, 0], np.float64)
    lam = float(LINEAR.lam(0.5))
    mean, cov = np.asarray(MIX.mean(lam)), np.asarray(MIX.covariance(lam))
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # Gaussian approximation
    assert np.all(np.abs(z.mean(0) - mean) < 4 * se_mean), (z.mean(0), mean)
    assert np.all(np.abs(np.cov(z.T) - cov) < 4 * se_cov + 0.02), (np.cov(z.T), cov)


def test_edm_grid_and_churn():
    sig = vd.samplers.edm_sigmas(18, 0.002, 80.0, 7.0)
    expected = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)] + [0.0]
    assert np.allclose(sig, expected, rtol=1e-12)
    assert sig[0] == pytest.approx(80.0) and sig[17] == pytest.approx(0.002) and sig[18] == 0.0
    assert vd.samplers.edm_gamma(18, 0.0) == 0.0
    assert vd.samplers.edm_gamma(18, 3.6) == pytest.approx(0.2)
    assert vd.samplers.edm_gamma(18, 40.0) == pytest.approx(math.sqrt(2) - 1)
    assert vd.samplers.edm_gamma(18, 18 * (math.sqrt(2) - 1) * 0.999) < math.sqrt(2) - 1
    # the sampler evaluates the denoiser exactly at these noise levels (lam = -2 log sigma)
    for churn, s_min, s_max in ((0.0, 0.0, float("inf")), (7.2, 0.05, 50.0)):
        rec = Recording(MIX.denoiser)
        _CALLS.clear()
        vd.samplers.edm(rec, (1, 2), key=jr.key(11), num_steps=6, s_churn=churn, s_min=s_min, s_max=s_max)
        got = np.sort(np.asarray(_CALLS, np.float64))
        s6 = vd.samplers.edm_sigmas(6)
        gam = np.where((s6[:-1] >= s_min) & (s6[:-1] <= s_max), min(churn / 6, math.sqrt(2) - 1), 0.0)
        hat = s6[:-1] * (1 + gam)  # Euler evaluations at sigma_hat_i
        heun = s6[1:-1]  # Heun corrections at sigma_{i+1}, none on the last step
        want = np.sort(-2 * np.log(np.concatenate([hat, heun])))
        assert got.shape == want.shape
        assert np.allclose(got, want, atol=2e-4)


# --- NFE: counted against a denoiser that counts its calls -------------------------------------

NFE_CASES = {
    "ancestral_no_denoise": ft.partial(vd.samplers.ancestral, schedule=COSINE, num_steps=5, final_denoise=False),
    "pf_dopri5_pid_dt0": ft.partial(
        vd.samplers.probability_flow,
        schedule=COSINE,
        solver=dfx.Dopri5(),
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        dt0=-0.05,
    ),
    "pf_heun_const": ft.partial(
        vd.samplers.probability_flow,
        schedule=COSINE,
        solver=dfx.Heun(),
        stepsize_controller=dfx.ConstantStepSize(),
        dt0=-0.1,
        final_denoise=True,
    ),
}


@pytest.mark.parametrize("name", list(NFE_CASES))
def test_nfe_equals_denoiser_calls(name):
    n = 3
    _CALLS.clear()
    x, nfe = NFE_CASES[name](Recording(MIX.denoiser), (n, 2), key=jr.key(12))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == len(_CALLS)


# --- bad input ---------------------------------------------------------------------------------


def test_trained_range_warns():
    # traced only (eqx.filter_eval_shape): the checks run at trace time, nothing is compiled
    run = eqx.filter_eval_shape
    with pytest.warns(UserWarning, match="trained_range"):
        run(
            lambda: vd.samplers.ancestral(
                MIX.denoiser, (2, 2), key=jr.key(0), schedule=COSINE, num_steps=2, trained_range=(-10, 10)
            )
        )
    with pytest.warns(UserWarning, match="beyond the range"):
        run(lambda: vd.samplers.edm(MIX.denoiser, (2, 2), key=jr.key(0), num_steps=2, trained_range=(-5.0, 20.0)))
    with pytest.warns(UserWarning, match="trained_range"):
        run(
            lambda: vd.samplers.reverse_sde(
                MIX.denoiser, (2, 2), key=jr.key(0), schedule=COSINE, num_steps=2, trained_range=(-15, 14)
            )
        )
    with pytest.warns(UserWarning, match="trained_range"):
        run(
            lambda: vd.samplers.probability_flow(
                MIX.denoiser, (2, 2), key=jr.key(0), schedule=COSINE, trained_range=(-14, 15)
            )
        )
    # inside the trained range: no warning (pytest turns warnings into errors)
    run(
        lambda: vd.samplers.ancestral(
            MIX.denoiser, (2, 2), key=jr.key(0), schedule=COSINE, num_steps=2, trained_range=(-20, 20)
        )
    )


def test_ancestral_on_an_explicit_lambda_grid():
    sched = vd.schedules.LinearLogSNR(-12.0, 9.0)
    grid = np.linspace(-12.0, 9.0, 8)
    a, nfe_a = vd.samplers.ancestral(MIX.denoiser, (16, 2), key=jr.key(15), lams=grid)
    b, nfe_b = vd.samplers.ancestral(MIX.denoiser, (16, 2), key=jr.key(15), schedule=sched, num_steps=7)
    assert nfe_a == nfe_b == 8
    assert np.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="strictly increasing"):
        vd.samplers.ancestral(MIX.denoiser, (16, 2), key=jr.key(15), lams=grid[::-1])


def test_jit_and_vmap():
    keys = jr.split(jr.key(14), 2)
    f = ft.partial(vd.samplers.ancestral, MIX.denoiser, (3, 2), schedule=COSINE, num_steps=4)
    batched = jax.vmap(lambda k: f(key=k)[0])(keys)
    jitted = jax.jit(lambda k: f(key=k)[0])
    single = jnp.stack([jitted(k) for k in keys])
    assert np.allclose(batched, single, atol=1e-5)
    assert f(key=keys[0])[1] == 5


def test_ancestral_decodes_discrete_levels():
    # data uniform on the 4 bin centres of 4-level data (tiny spread): decoded levels are uniform on {0..3}
    levels = 4
    centres = vd.losses.uint8_to_float(jnp.arange(levels), levels)[:, None]
    g = vd.oracle.GaussianMixture(centres, 1e-3)
    x, nfe = vd.samplers.ancestral(
        g.denoiser,
        (2000, 1),
        key=jr.key(16),
        schedule=vd.schedules.Cosine(-15.0, 12.0),
        num_steps=32,
        num_levels=levels,
    )
    assert x.dtype == jnp.int32 and nfe == 32  # the decoder is not a network call
    freq = np.bincount(np.asarray(x).ravel(), minlength=levels) / x.size
    assert np.allclose(freq, 0.25, atol=0.04), freq


@pytest.mark.parametrize("steps", [0, -3])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="`num_steps` must be a positive integer"):
        vd.samplers.ancestral(MIX.denoiser, (2, 2), key=jr.key(0), schedule=COSINE, num_steps=steps)
    with pytest.raises(ValueError, match="`num_steps` must be a positive integer"):
        vd.samplers.edm(MIX.denoiser, (2, 2), key=jr.key(0), num_steps=steps)
    with pytest.raises(ValueError, match="`num_steps` must be a positive integer"):
        vd.samplers.reverse_sde(MIX.denoiser, (2, 2), key=jr.key(0), schedule=COSINE, num_steps=steps)
    with pytest.raises(ValueError, match="`hutchinson_probes` must be"):
        vd.samplers.log_likelihood(MIX.denoiser, jnp.zeros((2, 2)), key=jr.key(0), schedule=COSINE, hutchinson_probes=1)


def test_bad_shapes_and_outputs():
    with pytest.raises(ValueError, match="one example of shape"):  # data shape (3,) vs a 2-D mixture
        vd.samplers.ancestral(MIX.denoiser, (4, 3), key=jr.key(0), schedule=COSINE, num_steps=2)
    with pytest.raises(ValueError, match="`shape` must be"):
        vd.samplers.edm(MIX.denoiser, (4,), key=jr.key(0))
    bad = lambda z, lam: z[:1]
    for sampler in (
        ft.partial(vd.samplers.ancestral, schedule=COSINE, num_steps=2),
        ft.partial(vd.samplers.edm, num_steps=2),
        ft.partial(vd.samplers.probability_flow, schedule=COSINE),
        ft.partial(vd.samplers.reverse_sde, schedule=COSINE, num_steps=2),
    ):
        with pytest.raises(ValueError, match="same shape"):
            eqx.filter_eval_shape(lambda: sampler(bad, (4, 2), key=jr.key(0)))
    with pytest.raises(ValueError, match="`dt0` must be negative"):
        vd.samplers.probability_flow(MIX.denoiser, (4, 2), key=jr.key(0), schedule=COSINE, dt0=0.1)
    with pytest.raises(ValueError, match="`x` must be a batch"):
        vd.samplers.log_likelihood(MIX.denoiser, jnp.zeros(2), key=jr.key(0), schedule=COSINE)
    with pytest.raises(ValueError, match="not supported"):
        vd.samplers.probability_flow(MIX.denoiser, (4, 2), key=jr.key(0), schedule=COSINE, solver=dfx.Kvaerno5())
