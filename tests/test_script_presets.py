"""The training scripts with the accelerator flags (issue 14): `--preset` fills the published hyperparameters
(explicit flags win), the reduced presets train two steps through the command line under bfloat16 and remat,
and bad input (unknown or misplaced preset, precision, post-hoc widths, preset/data mismatch, foreign
ArrayRecord files) is a clear error before anything is written."""

import importlib
import pathlib
import sys

import numpy as np
import pytest
import tyro


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments._presets import get_preset  # noqa: E402


# text8's alphabet: a pangram has all 26 letters and the space
PANGRAM = "the quick brown fox jumps over the lazy dog "


def _script(name: str):
    return importlib.import_module(f"experiments.{name}")


def _text_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "pangram.txt"
    path.write_text(PANGRAM * 12)
    return str(path)


TINY = [
    pytest.param("train_masked", "md4_text8_tiny", "text", id="md4_text8_tiny"),
    # XLA's CPU compiles of the U-Net's and U-ViT's train step, ELBO and sampler take a minute under load: slow
    # (the U-Net's train step alone runs in CI below)
    pytest.param("train_gaussian", "vdm_cifar10_tiny", "digits", id="vdm_cifar10_tiny", marks=pytest.mark.slow),
    pytest.param("train_masked", "md4_imagenet64_tiny", "digits", id="md4_imagenet64_tiny", marks=pytest.mark.slow),
]


def test_gaussian_preset_trains_two_steps_through_the_scripts_setup():
    """train_gaussian.py's command line, `build_run` and `training_setup` with the VDM preset's reduced U-Net in
    bfloat16, then two steps of the train step the loop runs (one compile, where the full script needs three)."""
    import jax
    import vdmpp as vd

    tg = _script("train_gaussian")
    args = ["--workdir", "unused", "--data", "digits", "--preset", "vdm_cifar10_tiny", "--precision", "bfloat16"]
    run = tg.build_run(tyro.cli(tg.Config, args=args))
    assert isinstance(run.model, vd.nn.UNet) and run.model.precision == vd.nn.Precision(jax.numpy.bfloat16)
    assert run.cfg.weight_decay == 0.01 and run.cfg.grad_clip is None and run.cfg.weighting == "elbo"
    optimizer, dataset, _ = tg._launch.training_setup(run.cfg, run.data.train)
    posthoc = vd.train.PostHocEMA(tuple(run.cfg.posthoc_sigma_rels))
    state = vd.train.init_train_state(run.model, optimizer, run.loss, key=run.key, posthoc=posthoc)
    step = vd.train.make_train_step(run.loss, optimizer, ema_decay=run.cfg.ema_decay, posthoc=posthoc)
    before = np.asarray(state.params.conv_in.weight)
    batches = iter(dataset)
    for _ in range(2):
        state, metrics = step(state, {k: jax.numpy.asarray(v) for k, v in next(batches).items()})
        assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0
    assert int(state.step) == 2 and not np.array_equal(np.asarray(state.params.conv_in.weight), before)


@pytest.mark.parametrize("script,name,data", TINY)
def test_tiny_preset_trains_two_steps_through_the_script(script, name, data, tmp_path):
    mod = _script(script)
    data_arg = _text_file(tmp_path) if data == "text" else data
    args = ["--workdir", str(tmp_path / "run"), "--data", data_arg, "--preset", name, "--precision", "bfloat16"]
    args += ["--remat", "--eval-examples", "8", "--num-samples", "2", "--sample-steps", "2", "--no-progress"]
    args += [] if data == "text" else ["--eval-samples", "0"]  # image sample metrics: tests/test_sample_eval.py
    summary = mod.main(tyro.cli(mod.Config, args=args))
    preset = get_preset(name)
    maths = summary["config"]["maths"]
    assert summary["steps"] == preset.steps == 2 and np.isfinite(summary["test_bpd"])
    for field, value in preset.run_overrides().items():  # every published setting reached the run
        assert maths.get(field, summary["config"]["run"].get(field)) == value, field
    assert maths["precision"] == "bfloat16" and summary["config"]["run"]["remat"] is True
    snaps = sorted(p.name for p in (tmp_path / "run" / "ema_snapshots").iterdir())
    assert snaps == ["0000000002.npz"]  # post-hoc EMA is on by default: the final step's snapshot
    if name == "md4_text8_tiny":
        _sweep_the_finished_run(tmp_path / "run")


def _sweep_the_finished_run(workdir: pathlib.Path):
    """experiments/posthoc_ema.py on the run just trained: JSON + PNG, representable widths evaluated with
    shared draws (the tracked 0.05 rebuilt exactly), unrepresentable ones skipped, no overwriting."""
    sweep = _script("posthoc_ema")
    args = sweep.Args(workdir=str(workdir), sigma_rels=(0.005, 0.05, 0.07), eval_examples=8, repeats=1)
    out = sweep.main(args)
    assert [r["sigma_rel"] for r in out["results"]] == [0.05, 0.07] and out["results"][0]["residual"] < 1e-6
    assert [s["sigma_rel"] for s in out["skipped"]] == [0.005] and "cannot be represented" in out["skipped"][0][
        "reason"
    ]
    assert all(np.isfinite(r["bpd"]) for r in out["results"]) and np.isfinite(out["fixed_ema"]["bpd"])
    folder = workdir / "posthoc_ema" / "2"
    assert (folder / "posthoc_ema.png").stat().st_size > 0 and (folder / "posthoc_ema.json").is_file()
    with pytest.raises(ValueError, match="already holds a sweep"):
        sweep.main(args)
    with pytest.raises(ValueError, match=r"`--sigma-rels`: `sigma_rel` must lie in"):
        sweep.main(sweep.Args(workdir=str(workdir), sigma_rels=(0.4,), out=str(workdir / "other")))


def test_explicit_flags_win_over_the_preset():
    tg = _script("train_gaussian")
    cfg = tyro.cli(tg.Config, args=["--workdir", "w", "--preset", "vdm_cifar10", "--lr", "0.01", "--weight-decay", "0"])
    cfg, preset = tg._launch.apply_model_preset(cfg, "gaussian", tg.MODEL_FIELDS)
    assert preset is get_preset("vdm_cifar10")
    assert cfg.lr == 0.01 and cfg.batch_size == 128 and cfg.adam_b2 == 0.99 and cfg.grad_clip is None
    assert cfg.weighting == "elbo" and cfg.schedule == "linear" and (cfg.lam_min, cfg.lam_max) == (-5.0, 13.3)
    assert cfg.weight_decay == 0.01  # a flag equal to the default cannot be told from no flag (as with --demo)


@pytest.mark.parametrize("script", ["train_gaussian", "train_masked"])
def test_quality_preset_fills_its_settings_and_explicit_flags_win(script):
    """`--preset quality` fills the script's QUALITY settings (no model preset), except where a flag was given."""
    mod = _script(script)
    assert mod.QUALITY and set(mod.QUALITY) <= set(mod.Config.__dataclass_fields__)
    args = ["--workdir", "w", "--preset", "quality", "--steps", "7", "--seed", "3"]
    cfg, preset = mod.prepare(tyro.cli(mod.Config, args=args))
    assert preset is None and cfg.preset == "quality" and cfg.steps == 7 and cfg.seed == 3 and not cfg.demo
    assert mod.QUALITY["steps"] != 7
    for field, value in mod.QUALITY.items():
        if field != "steps":
            assert getattr(cfg, field) == value, field
    assert cfg != mod.Config(workdir="w", preset="quality", steps=7, seed=3)  # it changed something
    assert mod.prepare(mod.Config(workdir="w")) == (mod.Config(workdir="w"), None)
    with pytest.raises(ValueError, match=r"^`--demo` and `--preset quality` cannot be combined"):
        mod.prepare(mod.Config(workdir="w", demo=True, preset="quality"))


def test_preset_cli_names_build_the_preset_objects():
    """The script-level names a preset fills (`cli`) map to exactly the preset's schedule and weighting objects."""
    import equinox as eqx

    tg, tm = _script("train_gaussian"), _script("train_masked")
    for name, mod, kind in (
        ("vdm_cifar10", tg, "gaussian"),
        ("md4_text8", tm, "masked"),
        ("md4_imagenet64", tm, "masked"),
    ):
        cfg, preset = mod._launch.apply_model_preset(mod.Config(workdir="w", preset=name), kind, mod.MODEL_FIELDS)
        assert preset is not None
        schedule = mod.build_schedule(cfg)
        assert eqx.tree_equal(schedule, preset.schedule) is True, name
        if kind == "gaussian":
            assert eqx.tree_equal(mod.build_weighting(cfg), preset.weighting) is True
        else:
            assert type(mod.build_weighting(cfg, schedule)).__name__ == "ELBO"


@pytest.mark.parametrize(
    "script,kwargs,match",
    [
        ("train_gaussian", dict(preset="vdm_cifar100"), r"`--preset`: Unknown preset 'vdm_cifar100'; choose one of"),
        ("train_gaussian", dict(preset="md4_text8"), r"masked-diffusion model: train it with experiments/train_masked"),
        ("train_masked", dict(preset="vdm_cifar10_tiny"), r"gaussian-diffusion model: train it with .*train_gaussian"),
        ("train_gaussian", dict(preset="vdm_cifar10", width=64), r"--width cannot be used with `--preset vdm_cifar10`"),
        ("train_masked", dict(preset="md4_text8_tiny", demo=True), r"`--demo` and `--preset` cannot be combined"),
        ("train_gaussian", dict(precision="float16"), r"`--precision` must be one of float32, bfloat16; got 'float16'"),
        ("train_masked", dict(posthoc_sigma_rels=(0.05, 0.4)), r"`--posthoc-sigma-rels`: `sigma_rel` must lie in"),
        ("train_gaussian", dict(snapshot_every=0), r"`--snapshot-every` must be a positive integer"),
        ("train_masked", dict(num_workers=-1), r"`--num-workers` must be an integer >= 0"),
        (
            "train_gaussian",
            dict(preset="vdm_cifar10"),
            r"built for examples of shape \(32, 32, 3\) with 256 levels; "
            r"`--data digits` has shape \(8, 8, 1\) with 17 levels",
        ),
    ],  # fmt: skip
)
def test_bad_accelerator_flags_are_clear_errors_before_any_output(script, kwargs, match, tmp_path):
    mod = _script(script)
    work = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        mod.main(mod.Config(workdir=str(work), data="digits", progress=False, **kwargs))
    assert not work.exists(), "nothing may be written for a bad config"


def test_precision_outside_the_two_is_rejected_by_the_command_line(capsys):
    tg = _script("train_gaussian")
    with pytest.raises(SystemExit):
        tyro.cli(tg.Config, args=["--workdir", "w", "--precision", "float16"])
    assert "float16" in capsys.readouterr().err


def test_foreign_array_record_file_names_the_file(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    foreign = tmp_path / "foreign.array_record"
    writer = ArrayRecordWriter(str(foreign), "group_size:1")
    writer.write(b"someone else's record")
    writer.close()
    tm = _script("train_masked")
    work = tmp_path / "run"
    with pytest.raises(ValueError, match=r"foreign\.array_record is not a vdmpp ArrayRecord data file"):
        tm.main(tm.Config(workdir=str(work), data=str(foreign), progress=False))
    (tmp_path / "bad.array_record").write_bytes(b"\x00" * 64)  # corrupt: not an ArrayRecord file at all
    with pytest.raises(ValueError, match=r"bad\.array_record is not a vdmpp ArrayRecord data file.*corrupt"):
        tm.main(tm.Config(workdir=str(work), data=str(tmp_path / "bad.array_record"), progress=False))
    assert not work.exists()


def test_short_runs_warn_that_the_ema_model_is_still_mostly_its_initialisation(capsys):
    """The EMA starts at the initial parameters, which still weigh decay**steps at the end of the run."""
    import types

    from experiments import _launch

    _launch.warn_short_ema(types.SimpleNamespace(ema_decay=0.998, steps=300))  # 0.998**300 = 0.548
    err = capsys.readouterr().err
    assert "still holds 55% of the initial parameters after `--steps` 300" in err and "e.g. 0.983" in err
    for decay, steps in ((0.998, 2000), (0.98, 300), (0.0, 5)):  # 1.8 %, 0.2 %, nothing: silent
        _launch.warn_short_ema(types.SimpleNamespace(ema_decay=decay, steps=steps))
    assert capsys.readouterr().err == ""
