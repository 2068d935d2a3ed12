import jax.numpy as jnp
import numpy as np
import pytest
import vdmpp as vd


def test_uniform_bins_linear():
    a = vd.adaptive.AdaptiveSchedule(lam_min=-10.0, lam_max=6.0, num_bins=7)
    state = a.init()
    t = jnp.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(a.lam(state, t), 6.0 - 16.0 * np.asarray(t), atol=2e-5)
    np.testing.assert_allclose(a.density(state, a.lam(state, t)), 1.0 / 16.0, rtol=1e-6)


def test_bad_num_bins():
    with pytest.raises(ValueError, match="num_bins"):
        vd.adaptive.AdaptiveSchedule(num_bins=0)
