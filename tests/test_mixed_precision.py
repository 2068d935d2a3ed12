"""Mixed precision through training (THEORY §15): the network computes in bfloat16, the loss's float32 islands
(α/σ, the weighting and importance weight, the parameterisation conversion, cross-entropy, the reduction, the
adaptive histogram) stay float32 in the jaxpr of the train step; likelihoods are traced at the highest matmul
precision; the −ELBO of a trained network agrees between bfloat16 and float32 compute."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd
from jax.extend import core as jcore


BF16 = vd.nn.Precision(jnp.bfloat16)
FLOATS = {"float16", "bfloat16", "float32", "float64"}


def _eqns(jaxpr):
    """Every equation of a jaxpr, recursing into sub-jaxprs (jit, remat, custom_jvp, scan, cond...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    yield from _eqns(sub.jaxpr)
                elif isinstance(sub, jcore.Jaxpr):
                    yield from _eqns(sub)


def _float_out_dtypes(eqns) -> set[str]:
    return {str(v.aval.dtype) for e in eqns for v in e.outvars if str(getattr(v.aval, "dtype", "")) in FLOATS}


def _scoped(eqns, scope: str) -> list:
    pattern = re.compile(rf"(^|[(/]){scope}($|[)/])")
    return [e for e in eqns if pattern.search(str(e.source_info.name_stack))]


def _step_eqns(net, loss, batch):
    opt = vd.train.make_optimizer(1e-3, 1, 10)
    state = vd.train.init_train_state(net, opt, loss, key=jr.key(0))
    step = vd.train.make_train_step(loss, opt, ema_decay=0.9)
    return list(_eqns(jax.make_jaxpr(lambda s, b: step(s, b))(state, batch).jaxpr))


def _check_islands(eqns, scopes):
    bf16_dots = [
        e for e in eqns if e.primitive.name == "dot_general" and {str(v.aval.dtype) for v in e.invars} == {"bfloat16"}
    ]
    assert bf16_dots, "the network's matmuls should run in bfloat16"
    for scope in scopes:
        found = _scoped(eqns, scope)
        assert found, f"no equation in scope {scope!r}"
        assert _float_out_dtypes(found) == {"float32"}, (scope, _float_out_dtypes(found))


def test_gaussian_train_step_keeps_float32_islands():
    net = vd.nn.MLP(6, width=16, depth=1, emb_dim=8, lam_min=-10.0, lam_max=6.0, precision=BF16, key=jr.key(1))
    loss = vd.train.GaussianLoss(
        vd.weighting.Sigmoid(2.0),
        vd.schedules.AdaptiveSchedule(-10.0, 6.0, num_bins=8),
        parameterisation=vd.process.VPrediction(),
        num_levels=17,
    )
    eqns = _step_eqns(net, loss, {"x": jnp.zeros((4, 6), jnp.uint8)})
    scopes = ("alpha_sigma", "weighting", "importance_weight", "parameterisation", "squared_error")
    _check_islands(eqns, scopes + ("loss_reduction", "schedule_update"))
    # the λ the network embeds is float32 (sinusoids of the normalised λ)
    assert {str(e.outvars[0].aval.dtype) for e in eqns if e.primitive.name == "sin"} == {"float32"}


def test_masked_train_step_keeps_float32_islands():
    net = vd.nn.Transformer(
        5, 8, dim=16, depth=1, num_heads=2, lam_min=-9.0, lam_max=9.0, precision=BF16, key=jr.key(2)
    )
    schedule = vd.masked.LinearSchedule()
    loss = vd.train.MaskedLoss(
        schedule, vd.weighting.Sigmoid(0.0), mask_id=5, importance=vd.schedules.AdaptiveSchedule(-9.0, 9.0, num_bins=8)
    )
    eqns = _step_eqns(net, loss, {"x": jnp.zeros((4, 8), jnp.int32)})
    _check_islands(eqns, ("weighting", "cross_entropy", "loss_reduction", "schedule_update"))


@pytest.mark.parametrize("precision", [vd.nn.Precision(), BF16], ids=["float32", "bfloat16"])
def test_likelihood_is_traced_at_highest_matmul_precision(precision):
    net = vd.nn.MLP(6, width=16, depth=1, emb_dim=8, lam_min=-10.0, lam_max=6.0, precision=precision, key=jr.key(1))
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), vd.schedules.Cosine(-10.0, 6.0), num_levels=17)
    x = jnp.zeros((4, 6), jnp.uint8)

    def bpd(model, batch):
        return loss.bits_per_dim(model, batch, key=jr.key(0), sched_state=loss.init_schedule_state())

    dots = [e for e in _eqns(jax.make_jaxpr(bpd)(net, {"x": x}).jaxpr) if e.primitive.name == "dot_general"]
    assert dots and all(e.params["precision"] == (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST) for e in dots)
    # the training loss is not (a bfloat16 matmul at default precision is the point of mixed precision)
    train = jax.make_jaxpr(lambda m, b: loss(m, b, key=jr.key(0), sched_state=loss.init_schedule_state()))
    dots = [e for e in _eqns(train(net, {"x": x}).jaxpr) if e.primitive.name == "dot_general"]
    assert dots and all(e.params["precision"] is None for e in dots)


def test_trained_network_elbo_agrees_between_bfloat16_and_float32():
    """Acceptance: train an MLP in bfloat16 on digits (to below the uniform 4.09 bits/dim), then evaluate the −ELBO
    of the same parameters with bfloat16 and with float32 compute (same draws): within 0.01 bits/dim."""
    data = vd.data.load("digits")
    train = np.asarray(data.train).reshape(len(data.train), -1)
    test = jnp.asarray(np.asarray(data.test).reshape(len(data.test), -1))
    net = vd.nn.MLP(64, width=128, depth=2, emb_dim=32, lam_min=-10.0, lam_max=6.2, precision=BF16, key=jr.key(0))
    loss = vd.train.GaussianLoss(vd.weighting.ELBO(), vd.schedules.Cosine(-10.0, 6.2), num_levels=17)
    opt = vd.train.make_optimizer(3e-3, 20, 500)
    state = vd.train.init_train_state(net, opt, loss, key=jr.key(1))
    step = vd.train.make_train_step(loss, opt, ema_decay=0.99)
    rng = np.random.default_rng(0)
    for _ in range(500):
        state, _ = step(state, {"x": train[rng.integers(0, len(train), 64)]})
    model = state.ema_model()
    schedule = vd.schedules.LinearLogSNR(-10.0, 6.2)

    @eqx.filter_jit
    def bpd(net, key):
        return jnp.mean(vd.losses.elbo_bpd(vd.nn.ModelDenoiser(net), test, key=key, schedule=schedule, num_levels=17))

    f32 = np.asarray([bpd(model.with_precision(vd.nn.Precision()), jr.key(k)) for k in range(2)])
    b16 = np.asarray([bpd(model, jr.key(k)) for k in range(2)])
    print(f"-ELBO float32 {f32}, bfloat16 {b16} bits/dim")
    assert np.all(f32 < np.log2(17))  # a trained network, not a random one
    assert np.all(np.abs(b16 - f32) <= 0.01), (f32, b16)
