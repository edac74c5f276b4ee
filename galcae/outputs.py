"""Writing outputs safely, for every stage: one writer at a time, whole files or nothing,
never over an input.

- :func:`output_lock`: a lock file ``OUTPUT.lock`` (pid, host, start time) held while an
  output is written; a second writer is refused with one line, and a lock whose process is
  gone (same host) is taken over. Leftover temporary files of killed writers are removed
  when the lock is taken, since no one else can be writing them then.
- :func:`atomic_file` / :func:`atomic_directory`: write under a temporary sibling name and
  rename into place; a failure (a full disk, an interruption) removes the temporary and
  leaves any earlier output untouched.
- :func:`refuse_overlap`: an output that is, holds or lies inside one of the inputs, or
  another output, is refused before anything is written.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import OutputError

log = logging.getLogger(__name__)


# --- locks ------------------------------------------------------------------------------------


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.lock")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a recycled pid is not mistaken for the
    lock's owner; None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (unknowable for another host: yes)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


@contextmanager
def output_lock(path: str | Path):
    """Hold ``PATH.lock`` while ``path`` is written; refuse if another live process holds it."""
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if not isinstance(holder, dict):
                holder = {}
            if holder and _holder_alive(holder):
                raise OutputError(f"{path} is being written by process {holder.get('pid')} on "
                                  f"{holder.get('host')} (since {holder.get('since')}); wait for it, "
                                  f"or delete {lock} if that process is gone") from None
            if not holder and time.time() - _mtime(lock) < 5:  # being written this instant
                time.sleep(0.2)
                continue
            log.warning("%s: taking over the lock of a process that is gone (%s)", path, holder or "unreadable")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise OutputError(f"{path}: cannot take the lock {lock}")
    try:
        remove_leftovers(path)
        yield
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()
        except (OSError, ValueError):
            pass


@contextmanager
def output_locks(*paths):
    """:func:`output_lock` on each of ``paths`` that is not None."""
    with ExitStack() as stack:
        for path in paths:
            if path is not None:
                stack.enter_context(output_lock(path))
        yield


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --- whole files or nothing -----------------------------------------------------------------


def temporary_sibling(path: Path) -> Path:
    """A temporary name beside ``path`` that keeps its suffix (``np.save`` adds one otherwise)."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def remove(path: Path) -> None:
    """Remove a file or a directory tree, if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(path: Path) -> None:
    """Remove the temporaries that killed writers of ``path`` left beside it (call under its lock)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    name = glob.escape(path.name)
    for pattern in (f".tmp-*-{name}", f".{name}.tmp-*", f".{name}.old-*"):
        for leftover in path.parent.glob(pattern):
            log.info("removing %s, left by an interrupted run", leftover)
            remove(leftover)


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary path; on success it is renamed onto ``path``, on failure removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_dir() or path.is_dir():  # a Zarr store, say: no atomic rename over a directory
            swap_in(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False):
    """Yield a temporary sibling directory that becomes ``path`` when the block succeeds.

    An existing ``path`` is refused unless ``overwrite``; it is replaced only after the
    new directory is complete, and left untouched if the block fails.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    swap_in(tmp, path)


def swap_in(new: Path, path: Path) -> None:
    """Rename the finished directory ``new`` onto ``path``, replacing what was there."""
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        new.rename(path)
        remove(old)
    else:
        new.rename(path)


def refuse_existing(path: Path, overwrite: bool) -> None:
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass --overwrite")


# --- outputs are not inputs -------------------------------------------------------------------


def _related(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same path or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def refuse_overlap(outputs: dict[str, str | Path | None], inputs) -> None:
    """Refuse outputs (``{option: path}``) that are, hold or lie inside an input or each other."""
    resolved_inputs = [Path(i).resolve() for i in inputs]
    named = [(option, Path(p).resolve()) for option, p in outputs.items() if p is not None]
    for option, out in named:
        for given, source in zip(inputs, resolved_inputs):
            if _related(out, source):
                raise OutputError(f"{option} {outputs[option]} would overwrite the input {given}; "
                                  "choose another output path")
    for i, (option, out) in enumerate(named):
        for other, path in named[i + 1:]:
            if _related(out, path):
                raise OutputError(f"{option} and {other} are the same path ({outputs[option]}); "
                                  "give each output its own")
