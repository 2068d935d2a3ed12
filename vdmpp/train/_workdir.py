"""A run owns its output folder: an exclusive lock, and no writing over an earlier run's results.

`claim_workdir` takes an exclusive lock on `WORKDIR/run.lock` (`fcntl.flock`, released by the operating system
when the process ends, however it ends) and records the holder's PID, host and start time in it, so a second run
on the same folder is refused at once with a message naming the holder. A lock file left by a process that died
is stale: the next run takes it over and says so. A folder holding an earlier run's results (`summary.json`,
`metrics.jsonl` or `checkpoints/`) is refused unless the run resumes (`resume=True`) or `overwrite=True`, which
deletes exactly the files a run writes (`RUN_OUTPUTS`) and names them.
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import sys

import numpy as np


LOCK_NAME = "run.lock"
"""The lock file inside a run's folder."""

RESULTS = ("summary.json", "metrics.jsonl", "checkpoints", "ema_snapshots")
"""Entries that mark a folder as holding an earlier run's results."""

RUN_OUTPUTS = RESULTS + (
    "tb",
    "loss_curve.png",
    "bpd_curve.png",
    "p_lambda.png",
    "samples.png",
    "samples_*.png",
    "samples.txt",
    "samples_*.txt",
    "posthoc_ema",
)
"""Everything `fit` writes into a run's folder, and `posthoc_ema.py`'s results derived from it (glob patterns);
`overwrite=True` deletes exactly these."""


class WorkdirError(RuntimeError):
    """A run's folder cannot be used: in use by another run, holding an earlier run's results, or not writable."""


@dataclasses.dataclass
class WorkdirLock:
    """The held lock of a run's folder (from `claim_workdir`); `release()` or leave the `with` block to free it.

    Attributes:
        path: the folder (absolute).
    """

    path: pathlib.Path
    _fd: int
    _created: bool
    _depth: int = 1

    def __enter__(self) -> "WorkdirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Release one claim; the last one deletes the lock file (and the folder, if this run made it and left it
        empty)."""
        self._depth -= 1
        if self._depth > 0:
            return
        _HELD.pop(self.path, None)
        if self._fd < 0:  # not the lock holder (a process other than 0 of a multi-host run), or released already
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path / LOCK_NAME)  # while still holding the lock: no one else can be using this file
        os.close(self._fd)
        self._fd = -1
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty: a start that failed before writing anything leaves no trace


_HELD: dict[pathlib.Path, WorkdirLock] = {}


def _holder(text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict) -> str:
    if not record:
        return "a process that left no record"
    return f"PID {record.get('pid')} on host {record.get('host')}, started {record.get('started', '?')}"


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_lock(path: pathlib.Path) -> int:
    """An open descriptor of `path/run.lock` holding the exclusive lock, or `WorkdirError` naming the holder."""
    lock = path / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # permission denied, read-only file system, ...
            raise WorkdirError(
                f"`workdir` {path} is not writable ({e.strerror} for {lock}); choose a folder you can write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _holder(_read(fd))
            os.close(fd)
            raise WorkdirError(
                f"`workdir` {path} is in use by another run ({_describe(record)}); wait for it to finish, or "
                "choose another --workdir."
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            _refuse_if_live(path, _holder(_read(fd)))  # no flock on this file system: go by the recorded PID
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released (and deleted) the file between our open and lock: take the new one
    raise WorkdirError(f"Could not lock {lock}: it keeps being replaced; is another run starting in {path}?")


def _refuse_if_live(path: pathlib.Path, record: dict) -> None:
    if record and record.get("pid") != os.getpid():
        if record.get("host") != socket.gethostname() or _pid_alive(record.get("pid")):
            raise WorkdirError(
                f"`workdir` {path} is in use by another run ({_describe(record)}); wait for it to finish or choose "
                f"another --workdir (if no run is using it, delete {path / LOCK_NAME})."
            )


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 65536).decode("utf-8", "replace")


def _write_record(fd: int) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)


def _outputs(path: pathlib.Path) -> list[pathlib.Path]:
    found = {p for pattern in RUN_OUTPUTS for p in path.glob(pattern)}
    return sorted(found)


def _check_results(path: pathlib.Path, *, resume: bool, overwrite: bool) -> None:
    present = [name for name in RESULTS if (path / name).exists()]
    if resume:
        ckpt = path / "checkpoints"
        has_ckpt = ckpt.is_dir() and any(ckpt.iterdir())
        if (path / "summary.json").exists() and not has_ckpt:
            raise WorkdirError(
                f"`workdir` {path} holds a finished run's summary.json but no checkpoint to resume from; pass "
                "--overwrite instead of --resume to replace that run, or choose another --workdir."
            )
        return
    if not present:
        return
    if not overwrite:
        raise WorkdirError(
            f"`workdir` {path} holds the results of an earlier run ({', '.join(present)}); pass --resume to "
            "continue it, --overwrite to delete them and start afresh, or choose another --workdir."
        )
    doomed = _outputs(path)
    for p in doomed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in doomed)
    print(f"--overwrite: deleted the earlier run's outputs in {path}: {names}", file=sys.stderr)


def claim_workdir(workdir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> WorkdirLock:
    """Take exclusive ownership of a run's output folder (created if missing).

    A claim made again by the process that holds it nests (and skips the checks): a script claims its folder
    before loading data, and `fit` claims it again. In a multi-host run process 0 claims the folder and the other
    processes follow its verdict (they never touch the lock or an earlier run's files).

    Args:
        workdir: the run's folder.
        resume: the run continues from its checkpoints (their folder may hold results).
        overwrite: delete an earlier run's outputs (`RUN_OUTPUTS`) instead of refusing the folder.

    Returns:
        The held lock (a context manager).

    Raises:
        ValueError: `resume` and `overwrite` together.
        WorkdirError: the path is a file or not writable, another live run holds the lock, or the folder holds an
            earlier run's results and neither `resume` nor `overwrite` is set.
    """
    if resume and overwrite:
        raise ValueError("`--resume` and `--overwrite` contradict each other; pass one of them.")
    path = pathlib.Path(os.path.realpath(workdir))
    held = _HELD.get(path)
    if held is not None:
        held._depth += 1
        return held
    import jax

    if jax.process_count() == 1:
        lock = _claim(path, resume=resume, overwrite=overwrite)
    else:
        from jax.experimental import multihost_utils

        lock, error = None, None
        if jax.process_index() == 0:
            try:
                lock = _claim(path, resume=resume, overwrite=overwrite)
            except (WorkdirError, OSError) as e:
                error = e
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if error is not None:
            raise error
        if not ok:
            raise WorkdirError(f"Process 0 refused `workdir` {path} (its message says why).")
        lock = lock or WorkdirLock(path, -1, False)
    _HELD[path] = lock
    return lock


def _claim(path: pathlib.Path, *, resume: bool, overwrite: bool) -> WorkdirLock:
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"`workdir` {path} is a file, not a folder; choose another --workdir.")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # permission denied, a parent is a file, read-only file system, ...
        raise WorkdirError(f"Cannot create `workdir` {path}: {e.strerror}; choose another --workdir.") from None
    lock = None
    try:
        fd = _open_lock(path)
        lock = WorkdirLock(path, fd, created)
        previous = _holder(_read(fd))
        if previous and previous.get("pid") != os.getpid():
            state = "no longer running" if not _pid_alive(previous.get("pid")) else "no longer holding it"
            print(
                f"Taking over the stale lock {path / LOCK_NAME} of {_describe(previous)} ({state}; killed?).",
                file=sys.stderr,
            )
        _write_record(fd)
        _check_results(path, resume=resume, overwrite=overwrite)
    except BaseException:
        if lock is not None:
            lock.release()
        elif created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return lock
