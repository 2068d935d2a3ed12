"""vdmpp.analysis: values against independent computations (scipy quadrature, closed forms, Parseval)."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd
from scipy import integrate
from vdmpp.analysis import inspect_objective, kl_path, low_bit_curves, mse_ratio, power_spectra, theorem1_rhs


# --- low-bit curves (K&G App. I) ----------------------------------------------------------------


def _brute_low_bit(n, lam):
    # direct quadrature over eps of log posterior and squared eps error, level by level
    levels = np.linspace(-1.0, 1.0, 2**n)
    a = math.sqrt(1.0 / (1.0 + math.exp(-lam)))
    s = math.sqrt(1.0 / (1.0 + math.exp(lam)))

    def post(e, k):
        z = a * levels[k] + s * e
        lg = -((z - a * levels) ** 2) / (2 * s * s)
        p = np.exp(lg - lg.max())
        return z, p / p.sum()

    def f_log(e, k):
        _, p = post(e, k)
        return math.log(max(p[k], 1e-300)) * math.exp(-e * e / 2) / math.sqrt(2 * math.pi)

    def f_err(e, k):
        z, p = post(e, k)
        eps_hat = np.sum(p * (z - a * levels)) / s
        return (e - eps_hat) ** 2 * math.exp(-e * e / 2) / math.sqrt(2 * math.pi)

    loss = np.mean([math.log(2**n) + integrate.quad(f_log, -12, 12, args=(k,), limit=400)[0] for k in range(2**n)])
    dloss = np.mean([0.5 * integrate.quad(f_err, -12, 12, args=(k,), limit=400)[0] for k in range(2**n)])
    return loss, dloss


@pytest.mark.parametrize("n,lam", [(1, 0.0), (2, -3.0), (3, 5.0), (4, 8.0), (6, 11.0)])
def test_low_bit_matches_direct_quadrature(n, lam):
    c = low_bit_curves(n, [lam])
    loss, dloss = _brute_low_bit(n, lam)
    assert c.loss[0] == pytest.approx(loss, rel=1e-6, abs=1e-12)
    assert c.dloss[0] == pytest.approx(dloss, rel=1e-5, abs=1e-12)


def test_low_bit_per_bit_area_is_one_bit():
    # Acceptance 2 (fast version): the area under each per-bit curve is 1 bit within 1e-3, n = 1..8.
    lams = np.arange(-14.0, 18.0 + 1e-9, 0.15)
    prev = np.zeros_like(lams)
    for n in range(1, 9):
        c = low_bit_curves(n, lams, num_nodes=121)
        area_bits = np.trapezoid(c.dloss - prev, lams) / math.log(2)
        assert abs(area_bits - 1.0) < 1e-3, (n, area_bits)
        prev = c.dloss
        # E_x L reaches the entropy n bits at high SNR, and is ~0 at low SNR
        assert c.loss[-1] / math.log(2) == pytest.approx(n, abs=1e-6)
        assert c.loss[0] < 1e-5


def test_low_bit_derivative_of_loss_is_dloss():
    # I-MMSE: d/dlam E_x L = E_x dL/dlam, checked by central differences of the (separately computed) loss
    lams = np.linspace(-6.0, 12.0, 37)
    h = 1e-3
    up = low_bit_curves(5, lams + h).loss
    down = low_bit_curves(5, lams - h).loss
    mid = low_bit_curves(5, lams).dloss
    np.testing.assert_allclose((up - down) / (2 * h), mid, rtol=1e-5, atol=1e-9)


def test_low_bit_low_snr_limit():
    # at low SNR, 1/2 mmse_eps ~ 1/2 e^lam Var(x), Var(x) = (N+1)/(3(N-1)) for N levels on [-1, 1]
    lam = -16.0
    for n in (1, 3):
        big_n = 2**n
        var = (big_n + 1) / (3 * (big_n - 1))
        assert low_bit_curves(n, [lam]).dloss[0] == pytest.approx(0.5 * math.exp(lam) * var, rel=1e-5)


@pytest.mark.parametrize("bad", [0, 13, 2.5, True])
def test_low_bit_bad_n_bits(bad):
    # a non-int fails jaxtyping's runtime check (a TypeError) in tests, our ValueError otherwise
    with pytest.raises((ValueError, TypeError), match="n_bits"):
        low_bit_curves(bad, [0.0])


def test_low_bit_bad_lams():
    with pytest.raises(ValueError, match="lams"):
        low_bit_curves(2, [[0.0]])
    with pytest.raises(ValueError, match="lams"):
        low_bit_curves(2, [50.0])


# --- Fourier spectra (K&G App. J) ---------------------------------------------------------------


def test_power_spectra_parseval_and_snr():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 12, 12))
    lam = np.array([-2.0, 0.0, 3.0])
    ps = power_spectra(images, lam)
    # Parseval (power_x[1] is at lam = 0, alpha^2 = 1/2): sum over frequencies of |F(x)|^2 = H W sum x^2;
    # add back the DC term
    total = np.sum(ps.power_x[1] / 0.5 * ps.counts) + np.mean(np.sum(images, axis=(1, 2)) ** 2)
    assert total == pytest.approx(144 * np.mean(np.sum(images**2, axis=(1, 2))), rel=1e-10)
    alpha2 = 1 / (1 + np.exp(-lam))
    np.testing.assert_allclose(ps.power_x / ps.power_x[1], np.broadcast_to(alpha2[:, None] / 0.5, ps.power_x.shape))
    np.testing.assert_allclose(ps.power_eps[:, 0], (1 - alpha2) * 144)
    np.testing.assert_allclose(ps.log_snr, np.log(ps.power_x / ps.power_eps), rtol=1e-10, atol=1e-10)


def test_power_spectra_cosine_peak():
    # a pure cosine with 3 cycles along x: all power in the radius-3 bin
    h = w = 16
    img = np.cos(2 * np.pi * 3 * np.arange(w) / w)[None, :].repeat(h, 0)[None]
    ps = power_spectra(img, 0.0)
    assert ps.freq[np.argmax(ps.power_x[0])] == 3.0
    others = np.delete(ps.power_x[0], np.argmax(ps.power_x[0]))
    assert np.max(others) < 1e-20
    # |F|^2 at (0, +-3) is (h w / 2)^2, times alpha^2 = 1/2, averaged over the bin's counts
    idx = int(np.argmax(ps.power_x[0]))
    assert ps.power_x[0, idx] * ps.counts[idx] == pytest.approx(0.5 * 2 * (h * w / 2) ** 2)


def test_power_spectra_white_noise_is_flat():
    rng = np.random.default_rng(1)
    ps = power_spectra(rng.normal(size=(400, 16, 16)), 0.0)
    # E|F(eps)|^2 = H W for white noise: log-SNR ~ 0 at lam = 0 at every frequency
    assert np.max(np.abs(ps.log_snr)) < 0.2


def test_power_spectra_bad_shape():
    with pytest.raises(ValueError, match="images"):
        power_spectra(np.zeros((4, 4)), 0.0)


# --- inspect_objective ------------------------------------------------------------------------


def _grid():
    return np.linspace(-10.0, 10.0, 81)


def test_inspect_plain_losses_match_table1():
    lam = _grid()
    cos = vd.schedules.Cosine(lam_min=-math.inf, lam_max=math.inf)
    r = inspect_objective(cos, None, vd.process.VPrediction(), lam=lam)
    np.testing.assert_allclose(r.weight, (2 / math.pi) * np.exp(-lam / 2), rtol=1e-5)
    assert r.monotonic
    r = inspect_objective(vd.schedules.FlowMatchingOT(-math.inf, math.inf), None, vd.process.OPrediction(), lam=lam)
    np.testing.assert_allclose(r.weight, np.exp(-lam / 2), rtol=1e-5)
    r = inspect_objective(vd.schedules.EDMTraining(-math.inf, math.inf), None, vd.process.FPrediction(), lam=lam)
    edm = np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi)) * (np.exp(-lam) + 0.25)
    np.testing.assert_allclose(r.weight, 8.0 * edm, rtol=1e-5)
    assert not r.monotonic
    r = inspect_objective(cos, None, vd.process.EpsPrediction(), lam=lam)
    np.testing.assert_allclose(r.weight, 1 / (math.pi * np.cosh(lam / 2)), rtol=1e-5)


def test_inspect_weighted_report():
    lam = _grid()
    cos = vd.schedules.Cosine(-12.0, 12.0)
    r = inspect_objective(cos, vd.weighting.Sigmoid(k=2.0), vd.process.EpsPrediction(), lam=lam)
    sig = 1 / (1 + np.exp(lam - 2.0))
    width = (2 / math.pi) * (math.atan(math.exp(6.0)) - math.atan(math.exp(-6.0)))  # t1 - t0 of the truncation
    p = 1 / (2 * math.pi * np.cosh(lam / 2)) / width
    np.testing.assert_allclose(r.weight, sig, rtol=1e-5)
    np.testing.assert_allclose(r.importance, sig / np.asarray(p), rtol=1e-4)
    # the same loss as an x-MSE: factor 1/2 (w/p) e^lam
    np.testing.assert_allclose(r.mse_weights["x"], 0.5 * sig / np.asarray(p) * np.exp(lam), rtol=1e-4)
    assert r.monotonic
    assert "w/p" in r.table()
    assert not inspect_objective(cos, vd.weighting.EDM(), lam=lam).monotonic


@pytest.mark.parametrize("param", vd.analysis.ALL_PARAMETERISATIONS, ids=lambda p: type(p).__name__)
def test_mse_ratio_matches_conversions(param, getkey):
    # ||eps - eps_hat||^2 / ||P - P_hat||^2, through vdmpp.process's own conversions
    for lam in (-4.0, 0.5, 6.0):
        x, eps, p_hat = (jr.normal(getkey(), (5,)) for _ in range(3))
        alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
        z = alpha * x + sigma * eps
        p_true = param.from_eps(z, eps, jnp.asarray(lam))
        eps_hat = param.to_eps(z, p_hat, jnp.asarray(lam))
        ratio = float(jnp.sum((eps - eps_hat) ** 2) / jnp.sum((p_true - p_hat) ** 2))
        assert ratio == pytest.approx(float(mse_ratio(param, lam)), rel=2e-4)


def test_inspect_bad_args():
    with pytest.raises(TypeError, match="parameterisation"):
        inspect_objective(vd.schedules.Cosine(), None, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule"):
        inspect_objective("cosine", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="support"):
        inspect_objective(vd.schedules.Cosine(-5.0, 5.0), vd.weighting.ELBO(), lam=np.linspace(-6, 6, 5))


# --- kl_path and Theorem 1 ----------------------------------------------------------------------


def wiener(var: float, dim: int):
    """The optimal eps-denoiser for Gaussian data N(0, var I): a deliberately imperfect denoiser here."""
    return vd.oracle.GaussianMixture(jnp.zeros((1, dim)), math.sqrt(var)).denoiser


def test_kl_path_oracle_matches_low_bit_information():
    # E_x[L(lam; x) - L(lam_min; x)] for the oracle on 2 levels {-1, 1} = I(lam) - I(lam_min) (low_bit_curves)
    data = jnp.array([[-1.0], [1.0]])
    lams = jnp.linspace(-6.0, 6.0, 121)
    path = kl_path(vd.oracle.EmpiricalDenoiser(data), data, lams, key=jr.key(0), num_samples=2000)
    info = low_bit_curves(1, np.asarray(lams)).loss
    mc = np.asarray(jnp.mean(path.cumulative, axis=0))
    # common random numbers: the MC error of the whole curve is ~2% of ln 2 here
    np.testing.assert_allclose(mc, info - info[0], atol=0.05)
    # the integrand is the I-MMSE derivative, within 5 standard errors where it is not a rare event
    # (at high SNR the error comes from rare tail draws that 2000 samples do not see)
    dl = low_bit_curves(1, np.asarray(lams)).dloss
    se = np.asarray(jnp.sqrt(jnp.mean(path.stderr**2, axis=0) / 2))
    mean = np.asarray(jnp.mean(path.integrand, axis=0))
    ok = dl > 1e-2
    assert ok.sum() > 60
    assert np.all(np.abs(mean - dl)[ok] < 5 * se[ok])
    assert np.all(np.abs(mean - dl)[~ok] < 1e-2)


@pytest.mark.parametrize(
    "weighting", [vd.weighting.ELBO(), vd.weighting.Sigmoid(k=2.0), vd.weighting.EDM(), vd.weighting.IDDPM()]
)
def test_theorem1_difference_between_denoisers(weighting):
    # Acceptance 4 (fast): Delta L_w (weighted_loss MC) = Delta theorem1_rhs (kl_path), within MC error.
    data = jnp.array([[-0.8, 0.3], [0.5, -0.6], [0.9, 0.9]])
    lam_min, lam_max = -6.0, 6.0
    good, bad = vd.oracle.EmpiricalDenoiser(data), wiener(0.3, data.shape[1])
    lams = jnp.linspace(lam_min, lam_max, 241)
    sched = vd.schedules.Cosine(lam_min=lam_min, lam_max=lam_max)
    reps = 3000
    xs = jnp.tile(data, (reps, 1))
    key = jr.key(1)
    diffs, ses = [], []
    for den in (good, bad):
        path = kl_path(den, data, lams, key=jr.fold_in(key, 7), num_samples=400)
        rhs = np.asarray(theorem1_rhs(path, weighting))
        lw = np.asarray(vd.losses.weighted_loss(den, xs, key=key, schedule=sched, weighting=weighting))
        lw = lw.reshape(reps, 3)
        diffs.append((lw.mean(0), rhs))
        ses.append(lw.std(0, ddof=1) / math.sqrt(reps))
        # the grid-based L_w agrees with integration by parts on the same grid (quadrature only)
        np.testing.assert_allclose(rhs, np.asarray(path.weighted_loss(weighting)), rtol=2e-3, atol=1e-4)
    d_lhs = diffs[1][0] - diffs[0][0]
    d_rhs = diffs[1][1] - diffs[0][1]
    se = np.sqrt(ses[0] ** 2 + ses[1] ** 2)
    # rhs has its own (smaller) MC error from kl_path's 400 draws; allow 4 combined standard errors
    assert np.all(np.abs(d_lhs - d_rhs) < 4 * se * 1.5), (d_lhs, d_rhs, se)
    assert np.all(np.abs(d_lhs) > 4 * se)  # the two denoisers really differ


def test_kl_path_bad_grid():
    with pytest.raises(ValueError, match="increasing"):
        kl_path(wiener(1.0, 1), jnp.zeros((2, 1)), jnp.array([1.0, 0.0]), key=jr.key(0))


def test_theorem1_rhs_jit_consistent():
    path = kl_path(wiener(0.5, 3), jnp.ones((2, 3)), jnp.linspace(-3.0, 3.0, 31), key=jr.key(3), num_samples=4)
    w = vd.weighting.Sigmoid(k=1.0)
    assert np.allclose(jax.jit(theorem1_rhs)(path, w), theorem1_rhs(path, w), rtol=1e-5)
