"""The sampler interface: every strategy through vd.samplers.sample (issue #16, acceptance 5, 6; item 3)."""

import functools as ft
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
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
LINEAR = vd.schedules.LinearLogSNR(lam_min=-10.0, lam_max=10.0)
COSINE = vd.schedules.Cosine(lam_min=-15.0, lam_max=15.0)
_CALLS: list = []


def _record(lam):
    _CALLS.append(float(lam))


class Recording(eqx.Module):
    """Calls the wrapped denoiser and records each call's lam (the callback runs once per batched call)."""

    fn: Callable

    def __call__(self, z, lam, **kwargs):
        jax.debug.callback(_record, lam)
        return self.fn(z, lam, **kwargs)


class CondMixture(eqx.Module):
    """Conditional denoiser: label k selects component k; label K (null) is the whole mixture."""

    g: vd.oracle.GaussianMixture

    def __call__(self, z, lam, *, label):
        k = self.g.means.shape[0]
        logw = jnp.where(label >= k, self.g.log_weights, jnp.where(jnp.arange(k) == label, 0.0, -1e30))
        return eqx.tree_at(lambda m: m.log_weights, self.g, logw).denoiser(z, lam)


ALL_SAMPLERS = [
    S.Ancestral(final_denoise=True, grid=S.UniformLogSNR()),
    S.DDIM(eta=1.0, grid=S.EDMGrid()),
    S.DPMSolverPP(order=2, final_denoise=True),
    S.DPMSolverPP(order=3, eta=0.5, grid=S.UniformLogSNR()),
    S.EDM(),
    S.EDM(s_churn=5.0, final_denoise=False, grid=S.UniformTime()),
    S.ProbabilityFlow(dfx.Tsit5(), grid=S.EDMGrid(), final_denoise=True),
    S.ReverseSDE(),
]


@pytest.mark.parametrize("sampler", ALL_SAMPLERS, ids=lambda s: type(s).__name__)
def test_sample_counts_calls_exactly_and_compiles_once(sampler):
    """Acceptance 5: a Python-int call count equal to the calls a counting callback sees; one trace per shape."""

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(key):
        return S.sample(sampler, Recording(MIX.denoiser), (3, 2), key=key, schedule=LINEAR, num_steps=4)

    run(jr.key(0))
    _CALLS.clear()
    x, nfe = run(jr.key(1))  # the same shape: no retrace
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert type(nfe) is int and nfe == len(_CALLS) > 0
    assert x.shape == (3, 2) and bool(jnp.all(jnp.isfinite(x)))


def test_guided_calls_counted_through_the_interface():
    den = vd.samplers.guided(CondMixture(MIX), 1, 3, 2.0)
    _, nfe = S.sample(S.DPMSolverPP(), den, (4, 2), key=jr.key(0), schedule=LINEAR, num_steps=5)
    assert nfe == 10 and S.calls_per_eval(den) == 2 and S.calls_per_eval(MIX.denoiser) == 1


def test_z_init_is_the_start_and_is_checked():
    z = jr.normal(jr.key(3), (5, 2))
    run = ft.partial(S.sample, S.DPMSolverPP(), MIX.denoiser, (5, 2), schedule=LINEAR, num_steps=3)
    a, _ = run(key=jr.key(1), z_init=z)
    b, _ = run(key=jr.key(2), z_init=z)
    assert np.array_equal(a, b)  # a deterministic sampler: the key only draws the start
    assert not np.allclose(run(key=jr.key(1))[0], a)
    with pytest.raises(ValueError, match="`z_init` must be finite"):
        run(key=jr.key(1), z_init=z.at[0, 0].set(jnp.nan))
    with pytest.raises((ValueError, RuntimeError), match="`z_init` must be finite"):
        jax.jit(lambda zi: run(key=jr.key(1), z_init=zi)[0])(z.at[0, 0].set(jnp.inf)).block_until_ready()
    with pytest.raises(ValueError, match="`z_init` must have the samples' shape"):
        run(key=jr.key(1), z_init=z[:4])
    with pytest.raises(TypeError, match="`z_init` must be a float"):
        run(key=jr.key(1), z_init=jnp.zeros((5, 2), jnp.int32))


def test_edm_noise_range_follows_the_schedule():
    # EDM()'s grid spans any schedule's range: sigma_max = exp(-lam_min/2), not a fixed 80 ...
    lams = np.asarray(S.EDMGrid().lams(vd.schedules.Cosine(-15.0, 15.0), 3))
    assert lams[0] == pytest.approx(-15.0) and lams[-1] == pytest.approx(15.0)
    # ... and on EDMSampling() (EDM's 80 and 0.002) the sampler evaluates the published grid
    _CALLS.clear()
    S.sample(S.EDM(), Recording(MIX.denoiser), (1, 2), key=jr.key(0), schedule=vd.schedules.EDMSampling(), num_steps=5)
    jax.effects_barrier()
    s6 = vd.samplers.edm_sigmas(6)  # EDM's 6 steps = 5 Heun steps + the final denoising step
    want = np.sort(-2 * np.log(np.concatenate([s6[:-1], s6[1:-1]])))
    assert np.allclose(np.sort(_CALLS), want, atol=2e-4)


def test_bad_sampler_input():
    """Acceptance 6 (Gaussian part): clear errors before any work."""
    for order in (0, 4):
        with pytest.raises(ValueError, match="`order` of DPMSolverPP must be 1, 2 or 3"):
            S.DPMSolverPP(order=order)
    with pytest.raises((ValueError, TypeError), match="order"):  # jaxtyping rejects the float first in tests
        S.DPMSolverPP(order=2.0)  # pyright: ignore[reportArgumentType]
    for cls in (S.DDIM, S.DPMSolverPP):
        for eta in (-0.1, float("nan")):
            with pytest.raises(ValueError, match="`eta`"):
                cls(eta=eta)
    run = ft.partial(S.sample, denoiser=MIX.denoiser, shape=(2, 2), key=jr.key(0), schedule=LINEAR)
    with pytest.raises(ValueError, match="fewer than DPMSolverPP's `order`=3"):
        run(S.DPMSolverPP(order=3), num_steps=2)
    with pytest.raises(ValueError, match="increasing strictly"):
        S.ExplicitGrid([-5.0, 1.0, 0.0, 5.0])
    with pytest.raises(ValueError, match="`num_steps` must be 3"):
        run(S.DDIM(grid=S.ExplicitGrid([-5.0, 0.0, 1.0, 5.0])), num_steps=4)
    with pytest.raises(ValueError, match="finite `lam_min` and `lam_max`"):
        S.sample(S.DDIM(grid=S.UniformLogSNR()), MIX.denoiser, (2, 2), key=jr.key(0),
                 schedule=vd.schedules.Cosine(-float("inf"), float("inf")), num_steps=3)  # fmt: skip
    with pytest.raises(ValueError, match="`rho` of EDMGrid"):
        S.EDMGrid(rho=0.0)
    with pytest.raises(ValueError, match="`num_steps` must be a positive integer"):
        run(S.DDIM(), num_steps=0)
    with pytest.raises(TypeError, match="sampler"):
        run("ddim", num_steps=3)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="not supported"):
        S.ProbabilityFlow(dfx.Kvaerno5())


# --- classifier-free guidance ----------------------------------------------------------------


# guidance is a denoiser wrapper, the same for every sampler: one deterministic and one stochastic sampler
GUIDED = {
    "ancestral": ft.partial(vd.samplers.ancestral, schedule=COSINE, num_steps=8),
    "edm": ft.partial(vd.samplers.edm, num_steps=5, s_churn=2.0),
}


@eqx.filter_jit
def _guided_run(sampler, scale, key):
    return sampler(vd.samplers.guided(CondMixture(MIX), 1, 3, scale), (64, 2), key=key)


@eqx.filter_jit
def _plain_run(sampler, denoiser, key):
    return sampler(denoiser, (64, 2), key=key)


@pytest.mark.parametrize("name", list(GUIDED))
def test_guidance_scale_zero_and_one(name):
    sampler, key = GUIDED[name], jr.key(13)
    g0, nfe_g = _guided_run(sampler, jnp.asarray(0.0), key)
    g1, _ = _guided_run(sampler, jnp.asarray(1.0), key)
    uncond, nfe_u = _plain_run(sampler, ft.partial(CondMixture(MIX), label=jnp.asarray(3)), key)
    cond, _ = _plain_run(sampler, ft.partial(CondMixture(MIX), label=jnp.asarray(1)), key)
    assert np.allclose(g0, uncond, atol=1e-4)
    assert np.allclose(g1, cond, atol=1e-3)
    assert not np.allclose(cond, uncond, atol=1e-2)
    assert int(nfe_g) == 2 * int(nfe_u)  # two network calls per guided evaluation


def test_guided_wrapper_formula():
    z, lam = jnp.array([0.3, -1.2]), jnp.asarray(0.5)
    den = CondMixture(MIX)
    c, u = den(z, lam, label=1), den(z, lam, label=3)
    for w in (0.0, 1.0, 2.5):
        got = vd.samplers.guided(den, 1, 3, w)(z, lam)
        assert np.allclose(got, u + w * (c - u), atol=1e-6)
    assert vd.samplers.guided(den, 1, 3, 2.0).calls_per_eval == 2
