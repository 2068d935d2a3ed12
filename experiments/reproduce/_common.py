"""Shared helpers of the reproduce scripts: `--out` parsing (tyro) and atomic PNG/JSON writes (not a script)."""

import dataclasses
import json
import math
import pathlib
import sys

import numpy as np
import tyro
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import _cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    """The reproduce scripts' settings."""

    out: pathlib.Path
    """Output folder."""
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def out_dir(name: str, description: str | None) -> pathlib.Path:
    """Parse `--out` (default `runs/reproduce/<name>/`) and create it; a bad `--out` is one `error:` line."""
    args = tyro.cli(Args, default=Args(out=pathlib.Path("runs/reproduce") / name), description=description)
    try:
        _cli.folder(args, "out")
        args.out.mkdir(parents=True, exist_ok=True)
    except (_cli.ConfigError, OSError) as e:
        if args.debug:
            raise
        _cli.fail(e, 2)
    return args.out


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def save_json(path: pathlib.Path, obj) -> None:
    """Write `obj` as indented JSON, atomically (NaN/inf become strings)."""
    text = json.dumps(_clean(obj), indent=2, allow_nan=False).encode()
    vd.train.atomic_write_bytes(path, text)


def save_fig(fig, path: pathlib.Path) -> None:
    """Save a matplotlib figure as PNG, atomically (and close it)."""
    vd.train.save_figure(fig, path)
