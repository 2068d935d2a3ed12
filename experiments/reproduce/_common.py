"""Shared helpers of the reproduce scripts: `--out` parsing and atomic PNG/JSON writes (not a script)."""

import argparse
import json
import math
import pathlib

import numpy as np
import vdmpp as vd


def out_dir(name: str, description: str) -> pathlib.Path:
    """Parse `--out` (default `runs/reproduce/<name>/`) and create it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/reproduce") / name)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
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
