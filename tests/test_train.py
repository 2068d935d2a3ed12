"""Training system: loss object, jitted step, NaN guard, sharding, checkpoints and exact resume."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
import vdmpp as vd

from _train_standins import build, CONFIG, fake_data, pipeline, POSTHOC, TinyDenoiser
from helpers import finite, tree_allclose


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _one_device():
    return vd.train.Sharding(vd.train.make_mesh(1, devices=jax.devices()[:1]))


def _loss():
    return vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), vd.schedules.Cosine(-10.0, 10.0), num_levels=17)


def _arrays(tree):
    leaves = jtu.tree_leaves(eqx.filter(tree, eqx.is_array))
    return [
        np.asarray(jr.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x) for x in leaves
    ]


def _copy(tree):
    """A copy with fresh buffers (the train step donates its input state)."""
    return jtu.tree_map(lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, tree)


def _step(loss, opt, ema_decay=0.9, **kw):
    return vd.train.make_train_step(loss, opt, ema_decay=ema_decay, **kw)


def _bitwise_equal(a, b) -> bool:
    xs, ys = _arrays(a), _arrays(b)
    return len(xs) == len(ys) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(xs, ys))


# --- the loss object ------------------------------------------------------------------------


def test_gaussian_loss_is_the_weighted_loss(getkey):
    # Independent path: scale the data by hand and call vd.losses.weighted_loss_at with the same draws.
    model = TinyDenoiser(16, 8, key=getkey())
    loss = _loss()
    x_int = jnp.asarray(fake_data(6))
    key = getkey()
    per_example, aux = loss(model, {"x": x_int}, key=key, sched_state=None)
    tkey, ekey, _ = jr.split(key, 3)
    x = (2.0 * (x_int.astype(jnp.float32) + 0.5) / 17.0) - 1.0
    t = (jr.uniform(tkey, (), jnp.float32) + jnp.arange(6, dtype=jnp.float32) / 6) % 1.0
    eps = jr.normal(ekey, x.shape, x.dtype)
    den = lambda z, lam: model(z, lam, inference=True)
    expected, exp_aux = vd.losses.weighted_loss_at(
        den, x, t, eps, schedule=loss.schedule, weighting=loss.weighting, return_aux=True
    )
    assert per_example.shape == (6,)
    assert tree_allclose(per_example, expected, rtol=1e-5, atol=1e-6)
    assert tree_allclose(aux.lam, exp_aux.lam) and tree_allclose(aux.values, exp_aux.values, rtol=1e-5)


def test_gaussian_loss_rejects_float_data(getkey):
    model = TinyDenoiser(16, 8, key=getkey())
    with pytest.raises(TypeError, match="integer levels"):
        _loss()(model, {"x": jnp.zeros((2, 4, 4, 1))}, key=getkey(), sched_state=None)


def test_optimizer_bad_input():
    with pytest.raises(ValueError, match="`lr`"):
        vd.train.make_optimizer(0.0, 1, 10)
    with pytest.raises(ValueError, match="`warmup`"):
        vd.train.make_optimizer(1e-3, -1, 10)
    with pytest.raises(ValueError, match="`clip_norm`"):
        vd.train.make_optimizer(1e-3, 1, 10, clip_norm=0.0)
    with pytest.raises(ValueError, match="`weight_decay`"):
        vd.train.make_optimizer(1e-3, 1, 10, weight_decay=-0.1)


def test_adamw_option_first_step_by_hand():
    """AdamW without clipping (the presets' optimiser): the first step from zero moments is, by hand,
    p - lr * (g / (|g| + eps) + wd * p) (bias-corrected moments equal g and g^2)."""
    lr, wd, eps = 0.01, 0.1, 1e-8
    opt = vd.train.make_optimizer(lr, 0, 10, vd.train.WarmupConstant(), clip_norm=None, weight_decay=wd, eps=eps)
    p = np.array([1.0, -2.0, 0.5], np.float32)
    g = np.array([30.0, -0.5, 0.0], np.float32)
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = opt.update(jnp.asarray(g), opt.init(jnp.asarray(p)), jnp.asarray(p))
    expected = -lr * (g / (np.abs(g) + eps) + wd * p)
    assert np.allclose(np.asarray(updates), expected, rtol=2e-5, atol=1e-9)  # float32 bias corrections: ~6e-6


class TinyTokenModel(eqx.Module):
    """Logits over V tokens from a token embedding (+ lambda); one example."""

    emb: eqx.nn.Embedding
    out: eqx.nn.Linear
    vocab: int = eqx.field(static=True)

    def __init__(self, vocab, dim, *, key):
        k1, k2 = jr.split(key)
        self.emb, self.out, self.vocab = (
            eqx.nn.Embedding(vocab + 1, dim, key=k1),
            eqx.nn.Linear(dim, vocab, key=k2),
            vocab,
        )

    def __call__(self, z, lam, *, key=None, inference=False):
        h = jax.vmap(self.emb)(z.reshape(-1)) + lam / 10.0
        return jax.vmap(self.out)(h).reshape(z.shape + (self.vocab,))


def test_masked_loss_is_the_reweighted_loss_and_trains_with_adaptive_importance(getkey):
    model = TinyTokenModel(17, 8, key=getkey())
    sched = vd.masked.LinearSchedule()
    loss = vd.train.MaskedLoss(sched, vd.weighting.Sigmoid(1.0), mask_id=17)
    tokens = jnp.asarray(fake_data(8))
    key = getkey()
    per_example, aux = loss(model, {"x": tokens}, key=key, sched_state=None)
    lkey, _ = jr.split(key)
    den = lambda z, lam: model(z, lam, inference=True)
    expected, exp_aux = vd.masked.reweighted_loss(
        den,
        tokens.astype(jnp.int32),
        key=lkey,
        schedule=sched,
        weighting=vd.weighting.Sigmoid(1.0),
        mask_id=17,
        return_aux=True,
    )
    assert tree_allclose(per_example, expected, rtol=1e-5) and tree_allclose(aux.values, exp_aux.values, rtol=1e-5)
    # the same train step runs the masked loss with a learned importance schedule
    adaptive = vd.train.MaskedLoss(
        sched, vd.weighting.ELBO(), mask_id=17, importance=vd.adaptive.AdaptiveSchedule(-12.0, 12.0)
    )
    opt = vd.train.make_optimizer(1e-2, 0, 10)
    state = vd.train.init_train_state(model, opt, adaptive, key=getkey())
    before = np.asarray(state.sched_state.ema)
    new, m = _step(adaptive, opt)(state, {"x": tokens})
    assert int(m["skipped"]) == 0 and int(new.step) == 1
    assert not np.array_equal(np.asarray(new.sched_state.ema), before)


def test_gaussian_loss_adaptive_schedule_update_in_step(getkey):
    a = vd.adaptive.AdaptiveSchedule(-10.0, 10.0, num_bins=20, decay=0.9)
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), a, num_levels=17)
    model = TinyDenoiser(16, 8, key=getkey())
    opt = vd.train.make_optimizer(1e-2, 0, 10)
    state = vd.train.init_train_state(model, opt, loss, key=getkey())
    batch = {"x": jnp.asarray(fake_data(16))}
    new, _ = _step(loss, opt)(_copy(state), batch)
    # independently: the loss's aux at the step's key, fed to AdaptiveSchedule.update
    key = jr.fold_in(jr.fold_in(state.key, state.step), state.total_skips)
    _, aux = loss(model, batch, key=key, sched_state=state.sched_state)
    expected = a.update(state.sched_state, aux.lam, aux.values)
    assert tree_allclose(new.sched_state.ema, expected.ema, rtol=1e-5)


# --- the step: compiles once, EMA, accumulation, NaN guard -----------------------------------


def _setup(getkey, n=16, width=16):
    model = TinyDenoiser(16, width, key=getkey())
    loss = _loss()
    opt = vd.train.make_optimizer(1e-2, 0, 20)
    state = vd.train.init_train_state(model, opt, loss, key=getkey())
    batch = {"x": jnp.asarray(fake_data(n)), "label": jnp.zeros((n,), jnp.int32)}
    return state, loss, opt, batch


class _CountingDenoiser(TinyDenoiser):
    traces = 0

    def __call__(self, z, lam, *, label=None, key=None, inference=False):
        type(self).traces += 1  # a Python side effect: runs only while JAX traces
        return super().__call__(z, lam, label=label, key=key, inference=inference)


def test_step_compiles_once_and_donates_the_state(getkey):
    model = _CountingDenoiser(16, 16, key=getkey())
    loss, opt = _loss(), vd.train.make_optimizer(1e-2, 0, 20)
    step = _step(loss, opt, ema_decay=0.5)
    state = vd.train.init_train_state(model, opt, loss, key=getkey())
    batch = {"x": jnp.asarray(fake_data(16))}
    s, _ = step(state, batch)
    traced = _CountingDenoiser.traces
    assert traced >= 1
    old_leaves = [x for x in jtu.tree_leaves(state) if isinstance(x, jax.Array)]
    assert old_leaves and all(x.is_deleted() for x in old_leaves), "the input state's buffers must be donated"
    for _ in range(3):
        s, m = step(s, {"x": jnp.asarray(fake_data(16, seed=int(s.step)))})
    assert _CountingDenoiser.traces == traced, "the step must not retrace for new batches of the same shape"
    assert int(s.step) == 4 and int(m["skipped"]) == 0


def test_step_without_graph_checks_is_the_same_step_with_no_host_callback(getkey):
    # The masked loss's in-graph checks (token ids, alpha in [0, 1]) are host callbacks, which the persistent
    # compilation cache does not store; `fit` traces its step without them (graph_checks=False) and checks every
    # batch on the host instead.
    model = TinyTokenModel(17, 8, key=getkey())
    loss = vd.train.MaskedLoss(vd.masked.LinearSchedule(), vd.weighting.Sigmoid(1.0), mask_id=17)
    opt = vd.train.make_optimizer(1e-2, 0, 10)
    state = vd.train.init_train_state(model, opt, loss, key=getkey())
    batch = {"x": jnp.asarray(fake_data(8))}
    assert "callback" in _step(loss, opt).lower(state, batch).as_text()
    assert "callback" not in _step(loss, opt, graph_checks=False).lower(state, batch).as_text()
    s1, m1 = _step(loss, opt)(_copy(state), batch)
    s2, m2 = _step(loss, opt, graph_checks=False)(_copy(state), batch)
    assert _bitwise_equal(s1, s2) and float(m1["loss"]) == float(m2["loss"])
    with pytest.raises(Exception, match="`tokens` holds ids outside"):  # with the checks: a run-time error
        jax.block_until_ready(_step(loss, opt)(_copy(state), {"x": batch["x"].at[0, 0].set(17)}))


def test_losses_check_batches_on_the_host():
    loss = _loss()
    loss.check_batch({"x": fake_data(4)})
    with pytest.raises(ValueError, match=r'`batch\["x"\]` holds levels in \[17, 17\]; they must lie in \[0, 16\]'):
        loss.check_batch({"x": np.full((2, 16), 17, np.uint8)})
    with pytest.raises(TypeError, match="integer levels"):
        loss.check_batch({"x": np.zeros((2, 16), np.float32)})
    masked = vd.train.MaskedLoss(vd.masked.LinearSchedule(), vd.weighting.ELBO(), mask_id=5)
    masked.check_batch({"x": np.array([[0, 4]])})
    with pytest.raises(ValueError, match=r"token ids in \[-1, 4\].*`mask_id`"):
        masked.check_batch({"x": np.array([[-1, 4]])})
    with pytest.raises(ValueError, match=r"holds levels in \[17, 17\]"):  # evaluate_bpd checks too
        bad = np.full((2, 4, 4, 1), 17, np.uint8)
        vd.train.evaluate_bpd(TinyDenoiser(16, 8, key=jr.key(0)), loss, bad, key=jr.key(0), sched_state=None)


def test_fit_checks_every_batch_on_the_host(tmp_path):
    model, loss, opt, loop, _ = build(steps=6, every=2)
    data = fake_data()
    data[::3, 0, 0, 0] = 17  # a level outside [0, 17) in a third of the examples
    with pytest.raises(ValueError, match=r'`batch\["x"\]` holds levels in \[0, 17\].*`num_levels`'):
        vd.train.fit(
            model,
            loss,
            opt,
            pipeline(data, 16, seed=0),
            loop=loop,
            workdir=tmp_path,
            config=CONFIG,
            key=jr.key(0),
            sharding=_one_device(),
        )
    assert not (tmp_path / "checkpoints").is_dir() or not any((tmp_path / "checkpoints").iterdir())


def test_step_updates_ema(getkey):
    state, loss, opt, batch = _setup(getkey)
    # EMA recursion after one step, on one leaf: 0.5 * old + 0.5 * new
    s1, _ = _step(loss, opt, ema_decay=0.5)(_copy(state), batch)
    w0 = np.asarray(state.model.mlp.layers[0].weight)
    w1 = np.asarray(s1.model.mlp.layers[0].weight)
    assert np.allclose(np.asarray(s1.ema.mlp.layers[0].weight), 0.5 * w0 + 0.5 * w1, atol=1e-7)
    assert not np.allclose(w0, w1)


def test_gradient_accumulation_matches_full_batch_gradient(getkey):
    # With the same per-micro-batch draws, accumulating 2 micro-batches equals averaging their two losses.
    state, loss, opt, batch = _setup(getkey)
    s2, m2 = _step(loss, opt, ema_decay=0.0, accum_steps=2)(_copy(state), batch)
    key = jr.fold_in(jr.fold_in(state.key, state.step), state.total_skips)
    halves = [jtu.tree_map(lambda a: a[i * 8 : (i + 1) * 8], batch) for i in range(2)]
    values = [jnp.mean(loss(state.model, h, key=jr.fold_in(key, i), sched_state=None)[0]) for i, h in enumerate(halves)]
    assert tree_allclose(m2["loss"], (values[0] + values[1]) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="accum_steps"):
        _step(loss, opt, ema_decay=0.0, accum_steps=3)(_copy(state), batch)
    with pytest.raises(ValueError, match="accum_steps"):
        _step(loss, opt, accum_steps=0)


def test_nan_guard_leaves_state_unchanged(getkey):
    state, loss, opt, batch = _setup(getkey)
    loss = vd.train.GaussianLoss(loss.weighting, loss.schedule, num_levels=17, use_labels=True)
    bad = {"x": batch["x"], "label": batch["label"].at[3].set(-1)}  # one NaN example poisons the batch
    s1, m1 = _step(loss, opt)(_copy(state), bad)
    assert not np.isfinite(float(m1["loss"]))
    assert int(m1["skipped"]) == 1 and int(s1.skips) == 1 and int(s1.total_skips) == 1
    same = eqx.tree_at(lambda s: (s.skips, s.total_skips), s1, (state.skips, state.total_skips))
    assert _bitwise_equal(same, state)
    s2, m2 = _step(loss, opt)(s1, batch)
    assert int(m2["skipped"]) == 0 and int(s2.skips) == 0 and int(s2.total_skips) == 1 and int(s2.step) == 1
    assert finite(eqx.filter(s2.model, eqx.is_array))


def test_nan_guard_stops_run_and_last_checkpoint_restores(tmp_path, getkey):
    model, loss, opt, loop, _ = build(steps=12, every=2)
    loss = vd.train.GaussianLoss(loss.weighting, loss.schedule, num_levels=17, use_labels=True)
    labels = np.zeros(96, np.int64)
    data = fake_data()
    # batches 0..4 are clean; every batch from the 6th on contains a poisoned example (epoch of 96 = 6 batches)
    ds = pipeline(data, 16, seed=1, labels=labels)

    class Poison:
        def __init__(self, it):
            self.it, self.n = it, 0

        def __next__(self):
            b = next(self.it)
            self.n += 1
            if self.n > 5:
                b["label"] = np.full_like(b["label"], -1)
            return b

        def get_state(self):
            return {"inner": self.it.get_state(), "n": self.n}

        def set_state(self, s):
            self.it.set_state(s["inner"])
            self.n = s["n"]

    class PoisonDS:
        def __iter__(self):
            return Poison(iter(ds))

    loop = vd.train.LoopConfig(steps=12, checkpoint_every=2, log_every=1, max_consecutive_skips=3, progress=False)
    with pytest.raises(vd.train.NonFiniteLossError, match="3 consecutive.*step 4.*intact"):
        vd.train.fit(
            model,
            loss,
            opt,
            PoisonDS(),
            loop=loop,
            workdir=tmp_path,
            config=CONFIG,
            key=jr.key(0),
            sharding=_one_device(),
        )
    ckpt = vd.train.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 4
    like = vd.train.init_train_state(model, opt, loss, key=jr.key(0))
    restored, data_state, step = ckpt.restore(like, config=CONFIG)
    assert (
        step == 4
        and int(restored.step) == 4
        and int(restored.total_skips) == 0
        and finite(eqx.filter(restored.model, eqx.is_array))
    )
    assert data_state["n"] == 4
    nan_records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "nan_guard" for r in nan_records) == 3


# --- sharding: 8 fake devices == 1 device ------------------------------------------------------


def _run_steps(getkey_seed, sharding, n_steps=5, batch=16):
    model = TinyDenoiser(16, 64, key=jr.key(getkey_seed))
    loss = _loss()
    opt = vd.train.make_optimizer(1e-2, 1, 20)
    state = sharding.shard_state(vd.train.init_train_state(model, opt, loss, key=jr.key(getkey_seed + 1)))
    data = fake_data(n_steps * batch)
    losses = []
    step = _step(loss, opt, sharding=sharding)
    for i in range(n_steps):
        b = sharding.shard_batch({"x": data[i * batch : (i + 1) * batch], "label": np.zeros(batch, np.int32)})
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    return np.asarray(losses), state


def test_data_parallel_and_fsdp_match_one_device():
    assert jax.device_count() == 8, "conftest fakes 8 CPU devices"
    one = vd.train.Sharding(vd.train.make_mesh(1, devices=jax.devices()[:1]))
    eight = vd.train.Sharding(vd.train.make_mesh(1))
    fsdp = vd.train.Sharding(vd.train.make_mesh(2), fsdp_min_size=64)
    l1, s1 = _run_steps(3, one)
    l8, s8 = _run_steps(3, eight)
    lf, sf = _run_steps(3, fsdp)
    w = sf.model.mlp.layers[1].weight
    assert w.sharding.spec == jax.sharding.PartitionSpec("fsdp", None) or "fsdp" in tuple(w.sharding.spec)
    assert len(s8.model.mlp.layers[0].weight.sharding.device_set) == 8
    # float32: reductions run in a different order across devices
    assert np.allclose(l1, l8, rtol=1e-5) and np.allclose(l1, lf, rtol=1e-5)
    for s in (s8, sf):
        assert tree_allclose(
            eqx.filter(s1.model, eqx.is_array), eqx.filter(s.model, eqx.is_array), rtol=1e-4, atol=1e-6
        )
        assert tree_allclose(s1.ema, s.ema, rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_by_devices():
    sh = vd.train.Sharding(vd.train.make_mesh(1))
    with pytest.raises(ValueError, match="divisible by the number of devices"):
        sh.shard_batch({"x": np.zeros((12, 2), np.uint8)})
    with pytest.raises(ValueError, match="`fsdp`"):
        vd.train.make_mesh(3)


# --- checkpoints and exact resume ---------------------------------------------------------------


def test_resume_is_bitwise(tmp_path):
    """With post-hoc EMA on: model, optimiser, both EMAs, schedule, counters and the EMA snapshots bit for bit."""
    model, loss, opt, loop, ds = build(steps=6, every=3, posthoc=True)
    straight = vd.train.fit(
        model, loss, opt, ds, loop=loop, workdir=tmp_path / "a", config=CONFIG, key=jr.key(7), sharding=_one_device()
    )
    loop_k = dataclasses.replace(loop, steps=3)
    _, _, _, _, ds = build(steps=6, every=3)
    vd.train.fit(
        model, loss, opt, ds, loop=loop_k, workdir=tmp_path / "b", config=CONFIG, key=jr.key(7), sharding=_one_device()
    )
    _, _, _, _, ds = build(steps=6, every=3)
    resumed = vd.train.fit(
        model,
        loss,
        opt,
        ds,
        loop=loop,
        workdir=tmp_path / "b",
        config=CONFIG,
        key=jr.key(7),
        resume=True,
        sharding=_one_device(),
    )
    assert straight["steps"] == resumed["steps"] == 6 and resumed["resumed_from"] == 3
    _compare_runs(tmp_path / "a", tmp_path / "b", model, loss, opt)


def _compare_runs(a, b, model, loss, opt):
    like = vd.train.init_train_state(model, opt, loss, key=jr.key(7), posthoc=vd.train.PostHocEMA(POSTHOC))
    sa, da, _ = vd.train.Checkpointer(a / "checkpoints").restore(like, config=CONFIG)
    sb, db, _ = vd.train.Checkpointer(b / "checkpoints").restore(like, config=CONFIG)
    assert _bitwise_equal(sa, sb)  # model, optimiser, EMA, schedule state, step, key
    assert da == db
    _, _, _, _, ds = build(steps=6, every=3)
    ia, ib = iter(ds), iter(ds)
    ia.set_state(da)
    ib.set_state(db)
    assert np.array_equal(next(ia)["x"], next(ib)["x"])  # the next data batch
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in la if "loss" in r] == [r["loss"] for r in lb if "loss" in r]
    snaps_a = vd.train.load_ema_snapshots(a / "ema_snapshots")
    snaps_b = {(s.step, s.sigma_rel): s for s in vd.train.load_ema_snapshots(b / "ema_snapshots")}
    assert sorted({s.step for s in snaps_a}) == [2, 4, 6] and len(sa.phema) == 2
    for s in snaps_a:  # every snapshot of the straight run exists in the resumed run, bit for bit
        other = snaps_b[(s.step, s.sigma_rel)]
        assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(s.params, other.params))


def test_resume_after_sigkill(tmp_path):
    script = str(ROOT / "tests" / "_train_standins.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    model, loss, opt, loop, ds = build(steps=6, every=3, posthoc=True)  # the uninterrupted run, in-process
    vd.train.fit(
        model, loss, opt, ds, loop=loop, workdir=tmp_path / "a", config=CONFIG, key=jr.key(7), sharding=_one_device()
    )
    proc = subprocess.Popen([sys.executable, script, str(tmp_path / "b"), "6", "3", "--slow"], env=env)
    ckpt3 = tmp_path / "b" / "checkpoints" / "3"
    deadline = time.time() + 120
    while not ckpt3.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "checkpoints" / "6").exists()
    subprocess.run(
        [sys.executable, script, str(tmp_path / "b"), "6", "3", "--resume"], check=True, env=env, timeout=120
    )
    _compare_runs(tmp_path / "a", tmp_path / "b", model, loss, opt)
    assert not list((tmp_path / "b").rglob("*.tmp")), "half-written files left behind"
    assert not [p for p in (tmp_path / "b" / "checkpoints").iterdir() if "tmp" in p.name], "unfinished checkpoint left"
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["resumed_from"] == 3


def test_checkpoint_from_other_model_config_is_refused(tmp_path):
    model, loss, opt, loop, ds = build(steps=2, every=2)
    vd.train.fit(
        model, loss, opt, ds, loop=loop, workdir=tmp_path, config=CONFIG, key=jr.key(7), sharding=_one_device()
    )
    other = {**CONFIG, "maths": {**CONFIG["maths"], "model": {"kind": "tiny", "width": 48}}}
    bigger = TinyDenoiser(16, 48, key=jr.key(0))
    _, _, _, _, ds = build(steps=4, every=2)
    with pytest.raises(vd.train.CheckpointError, match=r"different config:\n  maths.model.width: checkpoint has 32"):
        vd.train.fit(
            bigger,
            loss,
            opt,
            ds,
            loop=loop,
            workdir=tmp_path,
            config=other,
            key=jr.key(7),
            resume=True,
            sharding=_one_device(),
        )
    # same config record but a different structure (e.g. edited code): caught by the shape check
    like = vd.train.init_train_state(bigger, opt, loss, key=jr.key(7))
    with pytest.raises(vd.train.CheckpointError, match="does not match this run's state structure"):
        vd.train.Checkpointer(tmp_path / "checkpoints").restore(like, config=CONFIG)
    # without --resume an existing run is never overwritten
    with pytest.raises(vd.train.WorkdirError, match="holds the results of an earlier run"):
        vd.train.fit(
            model, loss, opt, ds, loop=loop, workdir=tmp_path, config=CONFIG, key=jr.key(7), sharding=_one_device()
        )


def test_corrupt_checkpoint_is_an_error_not_skipped(tmp_path):
    model, loss, opt, loop, ds = build(steps=4, every=2)
    vd.train.fit(
        model, loss, opt, ds, loop=loop, workdir=tmp_path, config=CONFIG, key=jr.key(7), sharding=_one_device()
    )
    for f in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0" * 7)
    like = vd.train.init_train_state(model, opt, loss, key=jr.key(7))
    ckpt = vd.train.Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(vd.train.CheckpointError, match=r"step 4 \(.*checkpoints/4\) is damaged.*--resume-from 2"):
        ckpt.restore(like, config=CONFIG)
    assert ckpt.restore(like, config=CONFIG, step=2)[2] == 2  # an older one only when asked for
    # a step folder replaced by a file is reported too, never skipped for step 2
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    (tmp_path / "checkpoints" / "4").write_text("not a checkpoint")
    ckpt = vd.train.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 2 and ckpt.damaged_steps() == {4: "a file, not a checkpoint folder"}
    with pytest.raises(vd.train.CheckpointError, match=r"step 4 .* is damaged: a file, not a checkpoint folder"):
        ckpt.restore(like, config=CONFIG)
    ckpt.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_jax_distributed_match_one_process(tmp_path):
    # reference: one process, 4 of the 8 fake devices, the same global batches
    sharding = vd.train.Sharding(vd.train.make_mesh(1, devices=jax.devices()[:4]))
    ref_losses, ref_state = _run_steps(3, sharding)
    port, out = str(_free_port()), str(tmp_path / "out.json")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    script = str(ROOT / "tests" / "_multihost_worker.py")
    procs = [subprocess.Popen([sys.executable, script, port, str(i), out], env=env) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=240) == 0
    got = json.loads(pathlib.Path(out).read_text())
    assert np.isfinite(got["fit_bpd"]) and (tmp_path / "out.json.run" / "checkpoints" / "2").is_dir()
    assert np.allclose(got["losses"], ref_losses, rtol=1e-5)
    assert np.allclose(np.asarray(got["w"]), np.asarray(ref_state.model.mlp.layers[0].weight), rtol=1e-4, atol=1e-6)


# --- the experiment script: bad input leaves nothing behind ------------------------------------


def _experiment():
    sys.path.insert(0, str(ROOT))
    import experiments.train_gaussian as tg

    return tg


def test_experiment_batch_larger_than_data_set(tmp_path):
    tg = _experiment()
    work = tmp_path / "run"
    with pytest.raises(ValueError, match=r"`--batch-size` \(5000\) is larger than the training set"):
        tg.main(tg.Config(workdir=str(work), data="digits", batch_size=5000, progress=False))
    assert not work.exists(), "nothing may be written for a bad config"


def test_experiment_missing_data_path(tmp_path):
    tg = _experiment()
    work = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--data '.*nope.npy': Data path .* does not exist"):
        tg.main(tg.Config(workdir=str(work), data=str(tmp_path / "nope.npy"), progress=False))
    assert not work.exists()


def test_demo_preset_keeps_explicit_flags():
    tg = _experiment()
    cfg = tg.apply_demo(tg.Config(workdir="w", demo=True, steps=7))
    assert cfg.steps == 7 and cfg.dropout == tg.DEMO["dropout"] and cfg.schedule == "adaptive"
    assert cfg.weighting == "sigmoid" and cfg.weighting_param == 2.0
    assert tg.apply_demo(tg.Config(workdir="w")) == tg.Config(workdir="w")


@pytest.mark.slow
def test_experiment_end_to_end_writes_outputs(tmp_path):
    tg = _experiment()
    cfg = tg.Config(
        workdir=str(tmp_path),
        steps=40,
        checkpoint_every=20,
        eval_every=20,
        width=32,
        depth=1,
        batch_size=32,
        num_samples=4,
        sample_steps=5,
        eval_samples=32,
        progress=False,
    )
    summary = tg.main(cfg)
    names = ("summary.json", "metrics.jsonl", "samples.png", "loss_curve.png", "bpd_curve.png", "p_lambda.png")
    for name in names + ("sample_quality.png",):
        assert (tmp_path / name).is_file(), name
    assert np.isfinite(summary["test_bpd"])
    for name in ("test_fd", "test_kid", "test_kid_std", "precision", "recall", "classifier_confidence"):
        assert np.isfinite(summary[name]), name
    assert summary["eval_samples"] == cfg.eval_samples
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_masked_experiment_end_to_end(tmp_path):
    sys.path.insert(0, str(ROOT))
    import experiments.train_masked as tm

    cfg = tm.Config(
        workdir=str(tmp_path),
        steps=20,
        checkpoint_every=10,
        eval_every=10,
        dim=16,
        depth=1,
        num_heads=2,
        batch_size=16,
        num_samples=4,
        sample_steps=4,
        eval_samples=16,
        importance="adaptive",
        progress=False,
    )
    summary = tm.main(cfg)
    assert np.isfinite(summary["test_bpd"]) and np.isfinite(summary["test_fd"]) and 0 <= summary["precision"] <= 1
    for name in ("summary.json", "samples.png", "p_lambda.png", "loss_curve.png"):
        assert (tmp_path / name).is_file(), name
