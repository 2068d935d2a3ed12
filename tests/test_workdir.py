"""A run owns its workdir (issue #15, acceptance 2): a second run on it is refused at once, the first finishes
bit-identical to a run alone, and a finished run's files are byte-identical after any refused command."""

import json
import os
import pathlib
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
import tyro
import vdmpp as vd

from _train_standins import build, CONFIG, POSTHOC


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiments.train_gaussian as tg  # noqa: E402
from experiments import _cli  # noqa: E402


def _one_device():
    return vd.train.Sharding(vd.train.make_mesh(1, devices=jax.devices()[:1]))


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _state_arrays(workdir: pathlib.Path, like, step: int) -> list[np.ndarray]:
    ckpt = vd.train.Checkpointer(workdir / "checkpoints")
    try:
        state, _, _ = ckpt.restore(like, config=CONFIG, step=step)
    finally:
        ckpt.close()
    leaves = jtu.tree_leaves(eqx.filter(state, eqx.is_array))
    return [np.asarray(jr.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x) for x in leaves]


def test_second_run_is_refused_and_first_is_bitwise_a_run_alone(tmp_path, capsys):
    steps, every = 6, 3
    model, loss, opt, loop, ds = build(steps, every, posthoc=True)  # as the stand-in script's run
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    vd.train.fit(model, loss, opt, ds, loop=loop, workdir=alone, config=CONFIG, key=jr.key(7), sharding=_one_device())

    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    script = str(ROOT / "tests" / "_train_standins.py")
    gate = tmp_path / "go"  # the first run's first batch waits for it: the run is inside `fit`, holding the lock
    argv = [sys.executable, script, str(shared), str(steps), str(every), f"--wait-for={gate}"]
    first = subprocess.Popen(argv, env=env)
    try:
        _, _, _, _, ds2 = build(steps, every)
        cfg = tyro.cli(tg.Config, args=["--workdir", str(shared), "--resume", "--no-progress"])
        lock = shared / "run.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and first.poll() is None, "the first run holds the lock"

        # the second run, through the library and through the script's user path, with --resume (issue case 3)
        t0 = time.perf_counter()
        with pytest.raises(vd.train.WorkdirError, match=rf"in use by another run \(PID {first.pid} on host"):
            vd.train.fit(model, loss, opt, ds2, loop=loop, workdir=shared, config=CONFIG, key=jr.key(7), resume=True)
        code, _ = _cli.call(tg.main, cfg)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"`--workdir` {shared} is in use by another run (PID {first.pid}" in err[0]
        assert time.perf_counter() - t0 < 20, "refused at once"
        assert first.poll() is None, "the first run was running all along"
        gate.touch()
        assert first.wait(timeout=240) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert not (shared / "run.lock").exists(), "released at the end"

    like = vd.train.init_train_state(model, opt, loss, key=jr.key(7), posthoc=vd.train.PostHocEMA(POSTHOC))
    a, b = _state_arrays(alone, like, steps), _state_arrays(shared, like, steps)
    assert len(a) == len(b) > 5 and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
    metrics = [(alone / "metrics.jsonl").read_text(), (shared / "metrics.jsonl").read_text()]
    losses = [[r["loss"] for r in map(json.loads, m.splitlines()) if "loss" in r] for m in metrics]
    assert losses[0] == losses[1] and len(losses[0]) == steps

    # every refused command leaves the finished run's files byte-identical
    before = _files(shared)
    other = {**CONFIG, "maths": {**CONFIG["maths"], "optimizer": {"lr": 1.0}}}
    fit = lambda **kw: vd.train.fit(model, loss, opt, ds, loop=loop, workdir=shared, key=jr.key(7), **kw)  # noqa: E731
    refused = [
        (lambda: fit(config=CONFIG), vd.train.WorkdirError, "holds the results of an earlier run"),
        (lambda: fit(config=other, resume=True), vd.train.CheckpointError, "different config"),
        (lambda: fit(config=CONFIG, resume_from=4), vd.train.CheckpointError, "No checkpoint for step 4"),
        (lambda: fit(config=CONFIG, resume=True, overwrite=True), ValueError, "contradict"),
    ]
    for call, exc, match in refused:
        with pytest.raises(exc, match=match):
            call()
    for argv in (["--steps", "7"], ["--overwrite", "--resume"], ["--lr", "inf"]):
        code, _ = _cli.call(tg.main, tyro.cli(tg.Config, args=["--workdir", str(shared), *argv]))
        assert code == 2
    assert _files(shared) == before


def test_overwrite_deletes_exactly_the_run_outputs(tmp_path, capsys):
    work = tmp_path / "run"
    (work / "checkpoints" / "10").mkdir(parents=True)
    (work / "tb").mkdir()
    for name in ("summary.json", "metrics.jsonl", "samples.png", "samples_000010.png", "loss_curve.png"):
        (work / name).write_text("old")
    (work / "notes.txt").write_text("mine")
    with vd.train.claim_workdir(work, overwrite=True):
        assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "run.lock"]
    assert "deleted the earlier run's outputs" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_workdir_is_refused(tmp_path):
    work = tmp_path / "ro"
    work.mkdir()
    work.chmod(0o555)
    try:
        with pytest.raises(vd.train.WorkdirError, match="is not writable"):
            vd.train.claim_workdir(work)
        with pytest.raises(vd.train.WorkdirError, match="Cannot create"):
            vd.train.claim_workdir(work / "sub")
    finally:
        work.chmod(0o755)
