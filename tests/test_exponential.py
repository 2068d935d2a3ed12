"""Exponential integrators (DDIM, DPM-Solver++ 1/2/3M, SDE variants) against closed forms (issue #16, acc. 1-3)."""

from decimal import Decimal, localcontext

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd


S = vd.samplers
MIX = vd.oracle.GaussianMixture(
    jnp.array([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]]), jnp.array([0.3, 0.5, 0.2]), jnp.array([0.2, 0.5, 0.3])
)


# --- phi functions: float32 against 50-digit arithmetic ------------------------------------------


def _phis_exact(h: float) -> tuple[float, float]:
    with localcontext() as ctx:
        ctx.prec = 50
        hd = Decimal(h)
        phi2 = ((-hd).exp() - 1) / hd + 1
        return float(phi2), float(phi2 / hd - Decimal("0.5"))


def test_phi_functions_float32_accurate():
    hs = np.logspace(-8, 2, 61).astype(np.float32)
    exact = np.array([_phis_exact(float(h)) for h in hs])
    phi2 = np.asarray(S.phi_2(jnp.asarray(hs)), np.float64)
    phi3 = np.asarray(S.phi_3(jnp.asarray(hs)), np.float64)
    assert phi2.dtype == np.float64 and np.all(np.isfinite(phi3))
    # relative: a few float32 ulps everywhere (the naive phi_3 loses ~1e-7/h^2, i.e. everything below h ~ 3e-4)
    assert np.max(np.abs(phi2 / exact[:, 0] - 1)) < 1e-6
    assert np.max(np.abs(phi3 / exact[:, 1] - 1)) < 1e-6


# --- acceptance 1: convergence order, float64, one-component Gaussian -------------------------------

MU, SCALE = np.array([0.7, -1.3]), 0.5


def _ab(lam):
    return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))


def _exact_flow(z, lam0, lam1):
    """The probability-flow map of N(mu, s^2 I) data: affine, z_1 = a_1 mu + sqrt(v_1/v_0)(z_0 - a_0 mu)."""
    (a0, s0), (a1, s1) = _ab(lam0), _ab(lam1)
    v0, v1 = a0**2 * SCALE**2 + s0**2, a1**2 * SCALE**2 + s1**2
    return a1 * MU + np.sqrt(v1 / v0) * (z - a0 * MU)


def _x_hat(z, lam):
    a, s = _ab(lam)
    return MU + a * SCALE**2 * (z - a * MU) / (a**2 * SCALE**2 + s**2)


def _reference_3m(z, lams, c):
    """DPM-Solver++(3M), THEORY §11, in NumPy float64 with the phi_3 coefficient c (1: published code; 2: Taylor)."""
    ds, hs = [], []
    for k in range(len(lams) - 1):
        (_, st), (as_, ss) = _ab(lams[k]), _ab(lams[k + 1])
        h = (lams[k + 1] - lams[k]) / 2
        d = _x_hat(z, lams[k])
        phi1, phi2 = -np.expm1(-h), np.expm1(-h) / h + 1
        phi3 = phi2 / h - 0.5
        if k == 0:
            x = phi1 * d
        elif k == 1:
            x = phi1 * (d + (d - ds[-1]) * h / (2 * hs[-1]))
        else:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d10, d11 = (d - ds[-1]) / r0, (ds[-1] - ds[-2]) / r1
            d1, d2 = d10 + (d10 - d11) * r0 / (r0 + r1), (d10 - d11) / (r0 + r1)
            x = phi1 * d + phi2 * d1 - c * phi3 * d2
        z = (ss / st) * z + as_ * x
        ds.append(d)
        hs.append(h)
    return z


def test_convergence_order_float64(capsys):
    z0 = np.random.default_rng(0).normal(size=(16, 2))
    exact = _exact_flow(z0, -10.0, 10.0)
    errors: dict = {}
    with jax.enable_x64(True):
        g = vd.oracle.GaussianMixture(jnp.asarray(MU[None]), jnp.asarray([SCALE]))
        sched = vd.schedules.LinearLogSNR(-10.0, 10.0)
        grid = S.UniformLogSNR()
        samplers = {"DDIM": S.DDIM(grid=grid), "2M": S.DPMSolverPP(2, grid=grid), "3M": S.DPMSolverPP(3, grid=grid)}
        for n in (64, 128):
            for name, sampler in samplers.items():
                x, nfe = S.sample(sampler, g.denoiser, z0.shape, key=jr.key(0), schedule=sched, num_steps=n, z_init=z0)
                assert x.dtype == jnp.float64 and nfe == n
                errors[name, n] = np.max(np.abs(np.asarray(x) - exact))
            lams = np.linspace(-10.0, 10.0, n + 1)
            for c in (1, 2):
                errors[f"3M c={c}", n] = np.max(np.abs(_reference_3m(z0, lams, c) - exact))
            # the library's 3M is the reference with c = 2
            assert errors["3M", n] == pytest.approx(errors["3M c=2", n], rel=1e-6)
    factor = {name: errors[name, 64] / errors[name, 128] for name in ("DDIM", "2M", "3M", "3M c=1", "3M c=2")}
    with capsys.disabled():
        print("\nerror(64)/error(128):", {k: round(float(v), 2) for k, v in factor.items()})
    assert factor["DDIM"] >= 1.8 and factor["2M"] >= 3.5 and factor["3M"] >= 7.0, factor
    assert factor["3M c=1"] < 7.0, factor  # the published coefficient is only second order


# --- acceptance 2: 2M against DDIM at 10 calls ------------------------------------------------------


def test_2m_closer_to_the_flow_than_ddim_at_10_calls():
    n = 500
    sched = vd.schedules.LinearLogSNR(-10.0, 10.0)
    z = jr.normal(jr.key(0), (n, 2))
    ctrl = dfx.PIDController(rtol=1e-6, atol=1e-6)
    ref, _ = S.probability_flow(MIX.denoiser, (n, 2), key=jr.key(0), schedule=sched, stepsize_controller=ctrl, z_init=z)

    def rms(sampler):
        x, nfe = S.sample(sampler, MIX.denoiser, (n, 2), key=jr.key(1), schedule=sched, num_steps=10, z_init=z)
        assert nfe == 10
        return float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, axis=-1))))

    ddim, dpm2 = rms(S.DDIM(grid=S.UniformLogSNR())), rms(S.DPMSolverPP(2, grid=S.UniformLogSNR()))
    assert dpm2 <= 0.6 * ddim, (dpm2, ddim)  # measured 0.53


# --- acceptance 3: eta > 0 --------------------------------------------------------------------------


def test_eta_one_first_order_is_ancestral():
    sched = vd.schedules.Cosine(-15.0, 15.0)
    run = lambda sampler: S.sample(sampler, MIX.denoiser, (64, 2), key=jr.key(2), schedule=sched, num_steps=12)[0]
    anc = run(S.Ancestral())
    assert np.allclose(run(S.DDIM(eta=1.0)), anc, atol=1e-4)
    assert np.allclose(run(S.DPMSolverPP(order=1, eta=1.0)), anc, atol=1e-4)
    assert not np.allclose(run(S.DDIM(eta=0.5)), anc, atol=1e-2)  # the noise level matters


def _check_marginal(x, lam, n):
    z = np.asarray(x, np.float64)
    mean, cov = np.asarray(MIX.mean(lam)), np.asarray(MIX.covariance(lam))
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)  # Gaussian approximation
    assert np.all(np.abs(z.mean(0) - mean) < 4 * se_mean), (z.mean(0), mean)
    assert np.all(np.abs(np.cov(z.T) - cov) < 4 * se_cov + 0.02), (np.cov(z.T), cov)


ETA_SAMPLERS = [
    S.DPMSolverPP(order=2, eta=1.0, grid=S.UniformLogSNR()),
    pytest.param(S.DDIM(eta=0.5, grid=S.UniformLogSNR()), marks=pytest.mark.slow),
    pytest.param(S.DPMSolverPP(order=3, eta=0.5, grid=S.UniformLogSNR()), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("sampler", ETA_SAMPLERS, ids=lambda s: f"{type(s).__name__}{getattr(s, 'order', 1)}")
def test_eta_variants_have_the_exact_marginals(sampler):
    n = 8000
    # t = 0.5 of LinearLogSNR(-10, 10) is lam = 0: sample on [-10, 0]; the end is lam = 10
    for lam_hi, steps in ((0.0, 32), (10.0, 64)):
        sched = vd.schedules.LinearLogSNR(-10.0, lam_hi)
        x, _ = S.sample(sampler, MIX.denoiser, (n, 2), key=jr.key(3), schedule=sched, num_steps=steps)
        _check_marginal(x, lam_hi, n)


def test_multistep_orders_warm_up_and_drop(getkey):
    # warm-up: 3M's first steps are orders 1 and 2 (the NumPy reference of THEORY §11); below 15 steps,
    # lower_order_final makes the last step first order: 2M for two steps, then one DDIM step.
    lams = np.linspace(-6.0, 6.0, 4)
    z0 = np.asarray(jr.normal(getkey(), (8, 2)), np.float64)
    with jax.enable_x64(True):
        g = vd.oracle.GaussianMixture(jnp.asarray(MU[None]), jnp.asarray([SCALE]))
        sched = vd.schedules.LinearLogSNR(-6.0, 6.0)
        no_drop = S.DPMSolverPP(3, lower_order_final=False, grid=S.UniformLogSNR())
        x, _ = S.sample(no_drop, g.denoiser, z0.shape, key=getkey(), schedule=sched, num_steps=3, z_init=z0)
        assert np.allclose(np.asarray(x), _reference_3m(z0, lams, 2), rtol=0, atol=1e-12)
        drop = S.DPMSolverPP(3, grid=S.UniformLogSNR())  # the last step drops to first order below 15 steps
        y, _ = S.sample(drop, g.denoiser, z0.shape, key=getkey(), schedule=sched, num_steps=3, z_init=z0)
        two = S.DPMSolverPP(2, lower_order_final=False, grid=S.ExplicitGrid(lams[:3]))
        z2, _ = S.sample(two, g.denoiser, z0.shape, key=getkey(), schedule=sched, num_steps=2, z_init=z0)
        last, _ = S.sample(
            S.DDIM(grid=S.ExplicitGrid(lams[2:])),
            g.denoiser,
            z0.shape,
            key=getkey(),
            schedule=sched,
            num_steps=1,
            z_init=z2,
        )
        assert np.allclose(np.asarray(y), np.asarray(last), rtol=0, atol=1e-12)


class _BiasedDenoiser:
    """eps_hat = z / sqrt(1 + e^lam) + 0.1: the exact score of N(0, I) data, off by 0.1 everywhere."""

    def __call__(self, z, lam):
        return z * jax.nn.sigmoid(-lam) ** 0.5 + 0.1


def test_clip_denoised_bounds_x_hat_and_is_the_identity_when_loose():
    """x-clipping (DDPM's clip_sample): a constant eps error blows x_hat up at low SNR (by sigma/alpha); with
    `clip_denoised=1` the final x_hat lies in [-1, 1]; a bound no x_hat reaches changes nothing, bit for bit."""
    sched, z0 = vd.schedules.Cosine(-10.0, 10.0), jnp.zeros((64, 3))
    den = _BiasedDenoiser()
    run = lambda s: S.sample(s, den, z0.shape, key=jr.key(0), schedule=sched, num_steps=8, z_init=z0)[0]  # noqa: E731
    for make in (lambda c: S.DPMSolverPP(order=2, final_denoise=True, clip_denoised=c),
                 lambda c: S.DDIM(final_denoise=True, clip_denoised=c)):  # fmt: skip
        free, loose, tight = run(make(None)), run(make(1e30)), run(make(1.0))
        assert float(jnp.max(jnp.abs(free))) > 2.0  # the bias, amplified at the noisy end, leaves [-1, 1]
        assert np.array_equal(np.asarray(free), np.asarray(loose))
        assert float(jnp.max(jnp.abs(tight))) <= 1.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="clip_denoised"):
            S.DPMSolverPP(clip_denoised=bad)
