"""Masked diffusion: schedules, forward process, ELBO, reweighted losses, samplers (issue #6)."""

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
    dlam = jax.vmap(jax.grad(schedule.lam))(t)
    assert tree_allclose(schedule.density(schedule.lam(t)) * -dlam, jnp.ones_like(t), rtol=2e-3)
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
