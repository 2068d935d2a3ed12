"""A finished training run, loaded back (not a script): its script, its rebuilt run and a checkpoint's train state.

    loaded = _runs.load_run(pathlib.Path("runs/demo"), step=None)   # the newest checkpoint
    loaded.run.model, loaded.run.loss, loaded.state.ema_model(), loaded.step

The run's config record (WORKDIR/summary.json, else the checkpoint's own) picks the training script whose
`Config` takes exactly its fields; that script's `build_run` rebuilds the data, network and loss, and the
checkpoint is restored into them (`vd.train.Checkpointer.restore`, which checks the saved config). Used by
experiments/posthoc_ema.py and experiments/sample.py.
"""

import dataclasses
import json
import pathlib
import types
from typing import Any, NamedTuple

import vdmpp as vd
from experiments import _launch, train_gaussian, train_masked


SCRIPTS: dict[str, types.ModuleType] = {"gaussian": train_gaussian, "masked": train_masked}
"""The training scripts a run can come from, by the kind of diffusion they train."""


class RunRecord(NamedTuple):
    """What a run's config record says: the kind, its training script, the script's `Config`, the raw record."""

    kind: str
    script: types.ModuleType
    cfg: Any
    record: dict


class LoadedRun(NamedTuple):
    """A run rebuilt by its script (`run`: config, data, network, loss, key) and the train state at `step`."""

    kind: str
    script: types.ModuleType
    run: _launch.Run
    state: vd.train.TrainState
    step: int


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _checkpointer(workdir: pathlib.Path) -> vd.train.Checkpointer:
    return vd.train.Checkpointer(workdir / "checkpoints", max_to_keep=1)


def run_config(workdir: pathlib.Path) -> RunRecord:
    """The training script and its `Config` for a run, from the config record it saved."""
    summary = workdir / "summary.json"
    if summary.is_file():
        record = json.loads(summary.read_text())["config"]
    elif (workdir / "checkpoints").is_dir():
        ckpt = _checkpointer(workdir)
        try:
            record = ckpt.read_config()
        finally:
            ckpt.close()
    else:
        raise ValueError(
            f"`--workdir` {workdir} holds no training run (neither summary.json nor checkpoints/); pass the "
            "--workdir of train_gaussian.py or train_masked.py."
        )
    fields = {**record.get("maths", {}), **record.get("run", {})}
    fields = {k: _tuples(v) for k, v in fields.items()}
    fields.update(workdir=str(workdir), resume=False, progress=False)
    for kind, script in SCRIPTS.items():  # the one whose Config takes exactly these fields
        names = {f.name for f in dataclasses.fields(script.Config)}
        if set(fields) <= names:
            return RunRecord(kind, script, script.Config(**fields), record)
    raise ValueError(f"{workdir}: its config record matches neither train_gaussian.py nor train_masked.py.")


def checkpoint_step(workdir: pathlib.Path, step: int | None = None) -> int:
    """`step` if the run has a complete checkpoint there, else the newest one's step (`--step` names the flag)."""
    ckpt = _checkpointer(workdir)
    try:
        steps = ckpt.all_steps()
    finally:
        ckpt.close()
    if not steps:
        raise ValueError(f"`--workdir` {workdir} has no complete checkpoint in checkpoints/; train the run first.")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"`--step` {step}: no such checkpoint in {workdir}; its checkpoints are at steps {steps}.")
    return step


def restore(run: _launch.Run, record: dict, workdir: pathlib.Path, step: int | None = None) -> tuple[Any, int]:
    """The train state of checkpoint `step` (default: the newest) of the run `run` was rebuilt from."""
    optimizer, _, _ = _launch.training_setup(run.cfg, run.data.train)
    posthoc = vd.train.PostHocEMA(tuple(run.cfg.posthoc_sigma_rels)) if run.cfg.posthoc_sigma_rels else None
    like = vd.train.init_train_state(run.model, optimizer, run.loss, key=run.key, posthoc=posthoc)
    ckpt = _checkpointer(workdir)
    try:
        state, _, step = ckpt.restore(like, config=record, step=step)
    finally:
        ckpt.close()
    return state, step


def load_run(workdir: pathlib.Path, step: int | None = None) -> LoadedRun:
    """Rebuild the run in `workdir` with its training script and restore checkpoint `step` (default: the newest)."""
    kind, script, cfg, record = run_config(workdir)
    step = checkpoint_step(workdir, step)
    run = script.build_run(cfg)
    state, step = restore(run, record, workdir, step)
    return LoadedRun(kind, script, run, state, step)
