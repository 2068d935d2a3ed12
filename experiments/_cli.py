"""The command line of every experiment and benchmark (not a script): tyro parsing and one clear line per error.

    cli.run(main, Config)     # in a script's `if __name__ == "__main__":`

`Config` is a frozen dataclass with a `debug: bool` field. A user error (a bad flag value, a missing or unreadable
file, an unusable workdir or checkpoint) prints ONE line, `error: ...`, naming the flag, file or argument, the bad
value and the fix, and exits with status 2; a run that started and then failed on a non-finite number exits with
status 1 (a `FloatingPointError`, e.g. `vd.train.NonFiniteLossError`). `--debug` shows the full traceback
instead. Validation helpers (`flags`, `at_least`, `finite`, `in_range`) turn the library's messages about a field
into messages about its flag.
"""

import contextlib
import dataclasses
import math
import os
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np


ROOT = pathlib.Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A bad command-line value, found by a script's start-up validation."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "fix your input" (exit status 2)."""
    import vdmpp as vd

    return (ValueError, TypeError, OSError, vd.train.CheckpointError, vd.train.WorkdirError)


def flag(name: str) -> str:
    """`--flag-name` of a config field."""
    return "--" + name.replace("_", "-")


@contextlib.contextmanager
def flags(cfg: Any, *names: str) -> Iterator[None]:
    """Re-raise a user error (`user_errors()`) from inside as a `ConfigError` about the command line.

    Backticked config field names in the message (`` `lam_min` ``) become their flags (`` `--lam-min` ``); when the
    message names none of `names`, it is prefixed with them.
    """
    try:
        yield
    except user_errors() as e:
        msg = str(e)
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        for f in dataclasses.fields(cfg):
            msg = msg.replace(f"`{f.name}`", f"`{flag(f.name)}`")
        wanted = [flag(n) for n in names]
        if wanted and not any(w in msg for w in wanted):
            values = ", ".join(f"{flag(n)} {getattr(cfg, n)!r}" for n in names)
            msg = f"{values}: {msg}"
        raise ConfigError(msg) from e


def at_least(cfg: Any, minimum: int, *names: str, hint: str = "") -> None:
    """Each named field must be an integer >= `minimum`."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"`{flag(name)}` must be an integer >= {minimum}{hint}; got {value!r}.")


def finite(cfg: Any, *names: str) -> None:
    """Each named float field must be a finite number."""
    for name in names:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ConfigError(f"`{flag(name)}` must be a finite number; got {value!r}.")


def in_range(cfg: Any, name: str, lo: float, hi: float, *, closed: str = "[)") -> None:
    """A float field must be finite and lie in [lo, hi) (or the interval `closed` describes)."""
    value = getattr(cfg, name)
    left_ok = value >= lo if closed[0] == "[" else value > lo
    right_ok = value <= hi if closed[1] == "]" else value < hi
    if not (isinstance(value, (int, float)) and math.isfinite(value) and left_ok and right_ok):
        raise ConfigError(f"`{flag(name)}` must lie in {closed[0]}{lo}, {hi}{closed[1]}; got {value!r}.")


def folder(cfg: Any, name: str = "out") -> None:
    """The path field `name` must be a folder or not exist yet (a file there is an error naming the flag)."""
    path = pathlib.Path(getattr(cfg, name))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"`{flag(name)}` {path} is a file, not a folder; choose another path.")


def _first_non_finite(obj: Any, path: str) -> str | None:
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        try:
            values = [float(v) for v in np.ravel(np.asarray(obj, dtype=float))]
        except (TypeError, ValueError):
            return None
        return path if not all(math.isfinite(v) for v in values) else None
    for k, v in items:
        found = _first_non_finite(v, f"{path}[{k!r}]")
        if found is not None:
            return found
    return None


def check_finite_results(results: Any, what: str) -> None:
    """Stop with a `FloatingPointError` (exit status 1) before anything is plotted or written if a number is NaN/inf."""
    found = _first_non_finite(results, "results")
    if found is not None:
        raise FloatingPointError(
            f"{what} produced a non-finite number at {found}; nothing was plotted or written. Check the settings "
            "(learning rate, weighting, steps) and run again."
        )


def report(e: BaseException) -> None:
    """Print `error: <message>` on stderr: one line, unless the message itself has several."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    sys.stdout.flush()
    print(f"error: {msg}  [--debug shows the traceback]", file=sys.stderr, flush=True)


def fail(e: BaseException, code: int) -> None:
    """`report` the error and leave at once with status `code`.

    `os._exit` skips the interpreter's teardown, where threads left by a failed checkpoint read or write would
    print pages of `ImportError: sys.meta_path is None`; files were already closed by the code that failed.
    """
    report(e)
    os._exit(code)


C = TypeVar("C")


def call(main: Callable[[C], Any], cfg: C) -> tuple[int, Any]:
    """`(0, main(cfg))`, or, after a user error (status 2) or a non-finite result (status 1), `report` it and return
    `(status, None)`; with `cfg.debug` the exception propagates instead."""
    try:
        return 0, main(cfg)
    except user_errors() as e:
        if getattr(cfg, "debug", False):
            raise
        report(e)
        return 2, None
    except FloatingPointError as e:  # vd.train.NonFiniteLossError and non-finite results: the run failed
        if getattr(cfg, "debug", False):
            raise
        report(e)
        return 1, None


def run(main: Callable[[C], Any], config: type[C], *, args: list[str] | None = None, description: str = "") -> Any:
    """Parse the command line into `config` with tyro and call `main`, with one clear line per user error."""
    import tyro

    os.environ.setdefault("MPLBACKEND", "Agg")
    # XLA's persistent compilation cache (the repository's .cache/jax, as `make` uses; set the variable to ''
    # to turn it off). In the environment, so that the processes a script spawns share it.
    cache = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
    if cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
    cfg = tyro.cli(config, args=sys.argv[1:] if args is None else args, description=description or None)
    try:
        code, result = call(main, cfg)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        code, result = 130, None
    if code:
        sys.stdout.flush()
        os._exit(code)  # see `fail`
    return result
