"""The training loop's sample-quality hook (`vd.train.SampleEvaluation`) and the scripts' evaluations."""

import dataclasses
import json
import pathlib
import sys

import jax
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd

from _train_standins import build, CONFIG


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _one_device():
    return vd.train.Sharding(vd.train.make_mesh(1, devices=jax.devices()[:1]))


class _Recorder:
    """A tiny 'extractor': records every batch it is given and scores it by its mean level and a count."""

    def __init__(self):
        self.calls: list[np.ndarray] = []

    def __call__(self, samples: np.ndarray) -> dict[str, float]:
        self.calls.append(samples)
        return {"mean_level": float(np.mean(samples)), "n_seen": samples.shape[0]}


def _fit(workdir, evaluation, steps=4, eval_every=2):
    model, loss, opt, loop, ds = build(steps=4, every=2)  # the optimiser's schedule is that of a 4-step run
    loop = dataclasses.replace(loop, steps=steps, eval_every=eval_every, log_every=2, tensorboard=False)
    return vd.train.fit(
        model,
        loss,
        opt,
        ds,
        loop=loop,
        workdir=workdir,
        config=CONFIG,
        key=jr.key(7),
        sample_shape=(4, 4, 4, 1),  # the grid: the same jitted sampler call as the evaluation's chunks of 4
        sharding=_one_device(),
        evaluate_samples=evaluation,
        sample_steps=3,
    )


def test_hook_scores_ema_samples_logs_curves_and_summary(tmp_path):
    rec = _Recorder()
    evaluation = vd.train.SampleEvaluation(rec, num_samples=6, batch_size=4)  # 2 chunks, the last one padded
    summary = _fit(tmp_path / "a", evaluation)
    assert len(rec.calls) == 2  # at step 2 (eval_every) and at the end (step 4)
    for s in rec.calls:
        assert s.shape == (6, 4, 4, 1) and np.issubdtype(s.dtype, np.integer) and 0 <= s.min() and s.max() <= 16
    assert not np.array_equal(rec.calls[0], rec.calls[1])  # a different model and key at each step
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval" and "mean_level" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert [r["mean_level"] for r in evals] == [float(np.mean(c)) for c in rec.calls]
    assert all(r["n_seen"] == 6 and r["sample_eval_seconds"] >= 0 for r in evals)
    assert summary["mean_level"] == evals[-1]["mean_level"] and summary["n_seen"] == 6
    assert "sample_eval_seconds" not in summary  # timings stay out of the summary (resume compares it)
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk["mean_level"] == summary["mean_level"] and "sample_quality.png" in on_disk["files"]
    assert (tmp_path / "a" / "sample_quality.png").is_file()

    # the samples are the run's sampler (loss.sample) on the EMA model, with keys fixed by the step
    model, loss, opt, _, _ = build(steps=4, every=2)
    like = vd.train.init_train_state(model, opt, loss, key=jr.key(7))
    state, _, _ = vd.train.Checkpointer(tmp_path / "a" / "checkpoints").restore(like, config=CONFIG)
    key = jr.fold_in(jr.fold_in(jr.key(7), 3_000_017), 4)
    first = loss.sample(state.ema_model(), state.sched_state, key=jr.fold_in(key, 0), shape=(4, 4, 4, 1), num_steps=3)
    np.testing.assert_array_equal(rec.calls[1][:4], np.asarray(first))
    # (so a resumed run, whose state is bitwise that of the uninterrupted run, draws the same samples)


def test_hook_bad_input(tmp_path):
    with pytest.raises(ValueError, match="`num_samples` must be a positive integer"):
        vd.train.SampleEvaluation(lambda s: {}, num_samples=0)
    with pytest.raises(TypeError, match="score"):  # beartype (tests) or our check
        vd.train.SampleEvaluation("fd", num_samples=4)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="evaluate_samples"):  # beartype (tests) or our check
        _fit(tmp_path / "c", lambda s: {})
    clash = vd.train.SampleEvaluation(lambda s: {"test_bpd": 1.0}, num_samples=2)
    with pytest.raises(ValueError, match=r"names the loop writes itself: \['test_bpd'\]"):
        _fit(tmp_path / "d", clash, steps=2, eval_every=0)


def test_script_evaluations(tmp_path):
    """The scripts' image evaluation (quick classifier) and text evaluation give the summary's names."""
    sys.path.insert(0, str(ROOT))
    from experiments import _evaluation

    digits = vd.data.load("digits")
    quick = vd.metrics.ClassifierConfig(steps=20)
    ev = _evaluation.image_evaluation(digits, num_samples=8, classifier=quick, progress=False, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir()), "the classifier is trained at the first evaluation, not before the run"
    q = ev.score(np.asarray(digits.test[:40]))
    assert list(tmp_path.rglob("feature_network.json"))
    assert set(q) == {
        "test_fd", "test_kid", "test_kid_std", "precision", "recall", "classifier_confidence", "eval_samples"
    }  # fmt: skip
    assert q["eval_samples"] == 40 and 0 <= q["classifier_confidence"] <= 1 and q["test_fd"] >= 0
    text = vd.data.Dataset(
        train=np.tile(np.arange(5, dtype=np.int32), (20, 2)), test=np.tile(np.arange(5, dtype=np.int32), (4, 2)),
        num_levels=5, kind="text", name="abcde",
    )  # fmt: skip
    ev = _evaluation.sample_evaluation(text, num_samples=4)
    assert ev is not None
    good = ev.score(np.asarray(text.test))  # the test text: what the n-gram model saw in training
    bad = ev.score(np.zeros((4, 10), np.int32))  # one repeated character: low entropy
    assert good["generative_perplexity"] == pytest.approx(good["test_generative_perplexity"])
    assert good["unigram_entropy"] == pytest.approx(np.log(5)) and bad["unigram_entropy"] == 0.0
    assert bad["generative_perplexity"] > good["generative_perplexity"]
    assert _evaluation.sample_evaluation(text, num_samples=0) is None
    with pytest.raises(ValueError, match="`--eval-samples` must be an integer >= 0"):
        _evaluation.sample_evaluation(text, num_samples=-1)
