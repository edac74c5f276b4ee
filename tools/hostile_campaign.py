#!/usr/bin/env python
"""A campaign of hostile inputs and faults against the ``galcae`` command line.

Every case plays a careless or hostile user: it builds its inputs in a fresh directory,
runs ``python -m galcae.cli ...`` in a subprocess (with a timeout) and classifies what
happened:

  code executed  a marker file that a malicious payload would create exists
  data lost      a file that must survive (an input, an earlier catalog, an old run's model)
                 was changed or removed, or an output was corrupted by a concurrent run
  hang           the command did not finish within its timeout
  traceback      "Traceback (most recent call last)" in the output, or more than 3 lines of
                 error output
  crash          killed by a signal (segfault, OOM killer) without being asked to
  silent wrong   exit 0, but the result is wrong (rows not flagged, wrong format, NaN model,
                 an input accepted that should have been refused, ...)
  debris         refused, but left junk behind (e.g. CATALOG.parts/ holding only `signature`)
  unclear error  exit != 0 without a traceback, but not one line naming the culprit
  valid refused  a valid input refused
  clear error    exit != 0, exactly one error line (tqdm bars and lines starting with WARNING
                 ignored) that names the culprit (file, HDU, key, value or address)
  handled        exit 0 and the per-case check passes

Each case says what it wants: a clear error, success (handled), or either; it passes
when its outcome is one of those. The script reports, it does not fix: it always exits 0.

Usage: python tools/hostile_campaign.py [--only SUBSTRING] [--keep] [--workdir DIR] [--list]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

# --- outcomes ---------------------------------------------------------------------------------

HANDLED = "handled"
CLEAR = "clear error"
TRACEBACK = "traceback"
SILENT = "silent wrong"
LOST = "data lost"
EXECUTED = "code executed"
HANG = "hang"
CRASH = "crash"
UNCLEAR = "unclear error"
REFUSED = "valid refused"
DEBRIS = "debris"
SKIPPED = "skipped"
HARNESS = "harness error"  # the case could not be built (a fixture failed, a library refused)

#: What each expectation accepts.
PASSING = {"error": {CLEAR}, "ok": {HANDLED}, "either": {CLEAR, HANDLED}}
#: Order of the summary counts.
SUMMARY_ORDER = (CLEAR, HANDLED, TRACEBACK, SILENT, LOST, EXECUTED, HANG, CRASH, UNCLEAR, REFUSED,
                 DEBRIS, SKIPPED, HARNESS)

TB_TEXT = "Traceback (most recent call last)"
TQDM_LINE = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it|[a-z]+) \[\d")
DEFAULT_TIMEOUT = 60.0

#: The shared tiny dataset: 64 galaxies of 32x32 pixels, centred, bright enough.
SIM_ARGS = ("n_galaxies=64", "stamp_size=32", "chunk_size=16", "ranges.x=[14,18]", "ranges.y=[14,18]",
            "ranges.half_light_radius=[0.3,1.0]", "ranges.flux=[2000,50000]")
TRAIN_ARGS = ("epochs=1", "batch_size=16")


class Skip(Exception):
    """The case cannot run here (e.g. running as root makes chmod ineffective)."""


class FixtureError(RuntimeError):
    """A shared fixture could not be built."""


# --- running the CLI --------------------------------------------------------------------------


@dataclass
class Run:
    """One finished command."""

    summary: str
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def has_traceback(self) -> bool:
        return TB_TEXT in self.stdout or TB_TEXT in self.stderr

    @property
    def error_lines(self) -> list[str]:
        """Non-empty stderr lines, less tqdm progress bars and lines starting with WARNING."""
        lines = []
        for raw in self.stderr.replace("\r", "\n").split("\n"):
            line = raw.strip()
            if line and not line.startswith("WARNING") and not TQDM_LINE.search(line):
                lines.append(line)
        return lines

    def last_line(self) -> str:
        lines = [ln.strip() for ln in (self.stderr + "\n" + self.stdout).splitlines() if ln.strip()]
        return lines[-1] if lines else ""


class Proc:
    """A command started in its own process group (so a kill reaches Dask workers too)."""

    def __init__(self, argv: list[str], cwd: Path, summary: str):
        self.summary = summary
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=self._out, stderr=self._err,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def poll(self):
        return self.p.poll()

    def peek_stderr(self) -> str:
        """What the command has written to stderr so far (without moving the shared offset)."""
        return os.pread(self._err.fileno(), 1 << 20, 0).decode(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (this command and the children it started)."""
        try:
            os.killpg(self.p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> Run:
        timed_out = False
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            rc = self.p.wait()
        self.kill()  # workers or helpers the command left running
        seconds = time.monotonic() - self.t0
        out = []
        for f in (self._out, self._err):
            f.seek(0)
            out.append(f.read().decode(errors="replace"))
            f.close()
        return Run(self.summary, rc, out[0], out[1], seconds, timed_out)


@dataclass
class Verdict:
    outcome: str
    detail: str
    rc: int | None
    command: str
    want: str = "error"
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.outcome in PASSING[self.want]


# --- files: snapshots, guards, builders -------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot(path: Path):
    """None if missing; the SHA-256 of a file; {relative path: SHA-256} of a directory."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    if path.is_dir():
        return {str(p.relative_to(path)): sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return None


class Guard:
    """Files and directories that must come out of a command unchanged."""

    def __init__(self, *paths):
        self.paths = [Path(p) for p in paths]
        self.before = [snapshot(p) for p in self.paths]

    def lost(self) -> str | None:
        for path, before in zip(self.paths, self.before):
            after = snapshot(path)
            if after == before:
                continue
            if after is None:
                return f"{path.name} was removed"
            if isinstance(before, dict) and isinstance(after, dict):
                gone = [k for k in before if k not in after]
                changed = [k for k in before if k in after and after[k] != before[k]]
                if gone or changed:
                    which = (gone + changed)[0]
                    return f"{path.name}/{which} was {'removed' if gone else 'changed'}" + \
                        (f" (and {len(gone) + len(changed) - 1} more)" if len(gone) + len(changed) > 1 else "")
                continue  # only additions: nothing lost
            return f"{path.name} was changed"
        return None


def write_fits(path: Path, data, header: dict | None = None, extension: str | None = None) -> Path:
    """An image in the primary HDU, or (``extension``) in a named ImageHDU after an empty one."""
    from astropy.io import fits

    hdr = fits.Header()
    for key, value in (header or {}).items():
        hdr[key] = value
    if extension:
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=hdr, name=extension)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data, header=hdr)])
    hdul.writeto(path, overwrite=True)
    return Path(path)


def read_catalog(path: Path) -> dict:
    """Columns of a catalog, Parquet or FITS (by its bytes, not its name)."""
    import numpy as np

    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    from astropy.table import Table

    table = Table.read(path, format="fits")
    return {c: np.asarray(table[c]) for c in table.colnames}


def flagged(cat: dict):
    """Per row: some flag_* column True, or the flux left NaN (not measured)."""
    import numpy as np

    n = len(cat["id"])
    out = np.zeros(n, bool)
    for name, values in cat.items():
        if name.startswith("flag_"):
            out |= np.asarray(values, bool)
    if "flux" in cat:
        out |= ~np.isfinite(np.asarray(cat["flux"], float))
    return out


def truncate(path: Path, fraction: float = 0.5) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def listing(*dirs: Path) -> tuple:
    """Names, sizes and modification times of the entries of ``dirs`` (a change detector)."""
    out = []
    for d in dirs:
        if d.is_dir():
            for e in sorted(d.iterdir()):
                try:
                    st = e.stat()
                    out.append((str(e), st.st_size, st.st_mtime_ns))
                except FileNotFoundError:
                    pass
    return tuple(out)


# --- shared fixtures --------------------------------------------------------------------------


class Fixtures:
    """Inputs shared by the cases, built once per campaign (lazily: --only builds what it needs)."""

    def __init__(self, root: Path, python: str):
        self.root = root
        self.python = python
        root.mkdir(parents=True, exist_ok=True)

    def _cli(self, *args, timeout: float = 600) -> Run:
        summary = "galcae " + " ".join(map(str, args))
        run = Proc([self.python, "-m", "galcae.cli", *map(str, args)], self.root, summary).wait(timeout)
        if run.rc != 0:
            raise FixtureError(f"fixture `{summary}` failed (rc {run.rc}): {run.last_line()}")
        return run

    @cached_property
    def dataset(self) -> Path:
        """64 galaxies, 32x32 stamps (``galcae simulate paper``)."""
        path = self.root / "ds"
        if not path.exists():
            self._cli("simulate", "paper", "-o", path, *SIM_ARGS)
        return path

    @cached_property
    def run(self) -> Path:
        """A 1-epoch run on :attr:`dataset`."""
        path = self.root / "run"
        if not (path / "model.json").exists():
            self._cli("train", self.dataset, "-o", path, *TRAIN_ARGS, "--overwrite")
        return path

    @cached_property
    def images(self):
        """The dataset's images, (64, 32, 32) float32 ADU."""
        import numpy as np
        import zarr

        return np.asarray(zarr.open_array(str(self.dataset / "images.zarr"), mode="r")[:], np.float32)

    def _cube(self, name: str, repeat: int) -> Path:
        import numpy as np

        path = self.root / name
        if not path.exists():
            write_fits(path, np.tile(self.images, (repeat, 1, 1)))
        return path

    @cached_property
    def cube(self) -> Path:
        """The dataset's 64 stamps as a float32 FITS cube."""
        return self._cube("cube.fits", 1)

    @cached_property
    def big_cube(self) -> Path:
        """6,400 stamps (the 64 repeated): long enough for two runs to overlap."""
        return self._cube("big.fits", 100)

    @cached_property
    def mid_cube(self) -> Path:
        """3,200 stamps."""
        return self._cube("mid.fits", 50)

    @cached_property
    def reference_catalog(self) -> Path:
        """An uninterrupted ``--workers 1`` catalog of :attr:`mid_cube` in chunks of 128."""
        path = self.root / "ref" / "cat.parquet"
        if not path.exists():
            self._cli("infer", self.run, self.mid_cube, "-o", path, "--chunk-size", "128", "--workers", "1")
        return path

    @cached_property
    def earlier_catalog(self) -> Path:
        """A catalog of :attr:`cube`, standing for a user's earlier result."""
        path = self.root / "earlier.parquet"
        if not path.exists():
            self._cli("infer", self.run, self.cube, "-o", path, "--workers", "1")
        return path

    @cached_property
    def survey_images(self):
        """12 stamps of 64x64 for ``--model survey``: Sersic (x) Moffat(beta=3, FWHM 0.8"),
        0.2"/pixel, 5,000-50,000 ADU, Gaussian noise of 12 ADU."""
        import galsim
        import numpy as np

        rng = np.random.default_rng(2024)
        psf = galsim.Moffat(beta=3.0, fwhm=0.8)
        gsparams = galsim.GSParams(maximum_fft_size=16384)
        out = np.empty((12, 64, 64), np.float32)
        for i in range(len(out)):
            gal = galsim.Sersic(n=rng.uniform(0.6, 3.5), half_light_radius=rng.uniform(0.3, 1.2),
                                flux=rng.uniform(5000, 50000), gsparams=gsparams)
            gal = gal.shear(g=rng.uniform(0.0, 0.4), beta=rng.uniform(0, 180) * galsim.degrees)
            image = galsim.Convolve(gal, psf, gsparams=gsparams).drawImage(
                nx=64, ny=64, scale=0.2, offset=tuple(rng.uniform(-1, 1, 2)))
            out[i] = image.array + rng.normal(0.0, 12.0, (64, 64))
        return out


SURVEY_PSF = {"PSFFWHM": 0.8, "PSFBETA": 3.0}


# --- the case context and the judge -----------------------------------------------------------


@dataclass
class Ctx:
    tmp: Path  # this case's fresh directory (the commands' working directory)
    fx: Fixtures
    python: str

    @property
    def marker(self) -> Path:
        """The file a malicious payload creates."""
        return self.tmp / "PWNED"

    def short(self, arg) -> str:
        s = str(arg).replace(str(self.tmp) + "/", "").replace(str(self.fx.root) + "/", "FX/")
        return shlex.quote(s)

    def start(self, *args, wrap: tuple = ()) -> Proc:
        argv = [*wrap, self.python, "-m", "galcae.cli", *map(str, args)]
        summary = "galcae " + " ".join(self.short(a) for a in args)
        return Proc(argv, self.tmp, summary)

    def cli(self, *args, timeout: float = DEFAULT_TIMEOUT, wrap: tuple = ()) -> Run:
        return self.start(*args, wrap=wrap).wait(timeout)

    def copy(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        shutil.copytree(src, dst) if Path(src).is_dir() else shutil.copy2(src, dst)
        return dst

    def dataset(self, name: str = "ds") -> Path:
        return self.copy(self.fx.dataset, name)

    def run_dir(self, name: str = "run") -> Path:
        return self.copy(self.fx.run, name)


def _matches(item, line: str) -> bool:
    options = item if isinstance(item, (tuple, list)) else (item,)
    return any(str(o).lower() in line.lower() for o in options)


def judge(run: Run, want: str, culprit=(), *, check: Callable[[], object] | None = None,
          after: Callable[[], str | None] | None = None, guards=(), command: str | None = None) -> Verdict:
    """Classify one command.

    ``want``: "error", "ok" or "either". ``culprit``: what the error line must name (each
    item a string, or a tuple of alternatives). ``check()`` (on exit 0): None when the
    result is right, else a message (silent wrong) or ``(outcome, message)``. ``after()``
    (always): None, or what was left behind. ``guards``: :class:`Guard` s.
    """
    culprit = [culprit] if isinstance(culprit, str) else list(culprit)
    outcome, detail = _classify(run, want, culprit, check, after, guards)
    return Verdict(outcome, detail, run.rc, command or run.summary, want, run.seconds)


def _classify(run: Run, want, culprit, check, after, guards) -> tuple[str, str]:
    for guard in guards:
        lost = guard.lost()
        if lost:
            return LOST, lost + (f" (rc {run.rc}: {run.last_line()[:120]})" if run.rc else "")
    if run.timed_out:
        return HANG, f"no answer after {run.seconds:.0f} s"
    if run.has_traceback:
        return TRACEBACK, run.last_line()[:200]
    lines = run.error_lines
    if run.rc == 0:
        if check is not None:
            result = check()
            if result:
                return result if isinstance(result, tuple) else (SILENT, str(result))
        if after is not None and (left := after()):
            return SILENT, left
        if want == "error":
            return SILENT, "exit 0: accepted; expected a refusal" + \
                (f" naming {culprit[0]!r}" if culprit else "") + f" ({run.last_line()[:100]})"
        return HANDLED, run.last_line()[:160]
    if run.rc is not None and run.rc < 0:
        return CRASH, f"killed by signal {-run.rc}: {run.last_line()[:120]}"
    if len(lines) > 3:
        return TRACEBACK, f"{len(lines)} lines of error output, last: {lines[-1][:160]}"
    if after is not None and (left := after()):
        return DEBRIS, f"{left}; error: {' / '.join(lines)[:160]}"
    if want == "ok":
        return REFUSED, " / ".join(lines)[:200] or f"exit {run.rc} without a message"
    if not lines:
        return UNCLEAR, f"exit {run.rc} without an error message"
    if len(lines) > 1:
        return UNCLEAR, f"{len(lines)} lines: " + " / ".join(lines)[:200]
    missing = [c for c in culprit if not _matches(c, lines[0])]
    if missing:
        names = " + ".join(repr(m if isinstance(m, str) else m[0]) for m in missing)
        return UNCLEAR, f"does not name {names}: {lines[0][:200]}"
    return CLEAR, lines[0][:200]


def worst(*verdicts: Verdict) -> Verdict:
    """The first failing verdict of several steps of one case, else the last."""
    for v in verdicts:
        if not v.passed:
            return v
    return verdicts[-1]


# --- the registry -----------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    cls: str
    func: Callable[[Ctx], Verdict]

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.func) or ""


CASES: list[Case] = []


def case(case_id: str, cls: str):
    """Register a case: ``cls`` is security, lost, wrong, traceback, valid or careless."""
    def register(func):
        CASES.append(Case(case_id, cls, func))
        return func
    return register


def catalog_rows(path: Path, n: int):
    """A check: the catalog at ``path`` has ``n`` rows with ids 0..n-1."""
    def check():
        import numpy as np

        if not path.exists():
            return f"exit 0 but no catalog {path.name}"
        cat = read_catalog(path)
        if len(cat["id"]) != n:
            return f"{len(cat['id'])} rows, expected {n}"
        if not np.array_equal(np.sort(cat["id"]), np.arange(n)):
            return "ids are not 0..n-1"
        return None
    return check


def all_checks(*checks):
    def check():
        for c in checks:
            result = c()
            if result:
                return result
        return None
    return check


# =============================================================================================
# Security
# =============================================================================================


def _evil_state(ctx: Ctx, run: Path, payload: str) -> None:
    """Replace ``run/state.pt`` with a pickle whose loading runs ``payload``."""
    import torch

    class Evil:
        def __init__(self, func, arg):
            self.func, self.arg = func, arg

        def __reduce__(self):
            return self.func, (self.arg,)

    if payload == "exec":
        import builtins

        evil = Evil(builtins.exec, f"open({str(ctx.marker)!r}, 'w').write('pwned')")
    else:
        evil = Evil(os.system, f"touch {shlex.quote(str(ctx.marker))}")
    # An interrupted run's state as galcae wrote it before state.safetensors (torch.save of a
    # dict), the optimizer's entry carrying the payload; any newer state file is removed so
    # the resume has to read this one.
    for stale in run.glob("state.*"):
        stale.unlink()
    state = {"optimizer": {"state": {}, "param_groups": [], "x": evil},
             "batch_order": torch.Generator().get_state(), "epoch": 1}
    torch.save(state, run / "state.pt")


@case("sec-resume-pickle-exec", "security")
def sec_resume_pickle_exec(ctx: Ctx) -> Verdict:
    """security: `train --resume` on a run whose state.pt is a malicious pickle (builtins.exec
    writes a marker). Must not run the payload; must refuse in one line naming state.pt."""
    run = ctx.run_dir()
    _evil_state(ctx, run, "exec")
    r = ctx.cli("train", ctx.fx.dataset, "-o", "run", "--resume", *TRAIN_ARGS)
    return judge(r, "error", "state.pt")


@case("sec-resume-pickle-system", "security")
def sec_resume_pickle_system(ctx: Ctx) -> Verdict:
    """security: as sec-resume-pickle-exec, the payload calling os.system("touch MARKER")."""
    run = ctx.run_dir()
    _evil_state(ctx, run, "system")
    r = ctx.cli("train", ctx.fx.dataset, "-o", "run", "--resume", *TRAIN_ARGS)
    return judge(r, "error", "state.pt")


def _yaml_tag_dataset(ctx: Ctx) -> Path:
    ds = ctx.dataset("ds_tagged")
    text = (ds / "config.yaml").read_text()
    (ds / "config.yaml").write_text(
        f"evil: !!python/object/apply:os.system [\"touch {ctx.marker}\"]\n" + text)
    return ds


@case("sec-yaml-tag-dataset-train", "security")
def sec_yaml_tag_dataset_train(ctx: Ctx) -> Verdict:
    """security: a dataset whose config.yaml holds `!!python/object/apply:os.system`, given to
    train. The payload must not run; one clear line naming config.yaml."""
    _yaml_tag_dataset(ctx)
    return judge(ctx.cli("train", "ds_tagged", "-o", "run", *TRAIN_ARGS), "error", "config.yaml")


@case("sec-yaml-tag-dataset-infer", "security")
def sec_yaml_tag_dataset_infer(ctx: Ctx) -> Verdict:
    """security: the same tagged dataset given to infer. The payload must not run; one clear
    line naming config.yaml."""
    _yaml_tag_dataset(ctx)
    r = ctx.cli("infer", ctx.fx.run, "ds_tagged", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", "config.yaml")


@case("sec-yaml-tag-config-file", "security")
def sec_yaml_tag_config_file(ctx: Ctx) -> Verdict:
    """security: `simulate evil.yaml` where the config holds a python/object/apply tag: the
    payload must not run; one line naming evil.yaml."""
    (ctx.tmp / "evil.yaml").write_text(
        f"simulate:\n  n_galaxies: !!python/object/apply:os.system [\"touch {ctx.marker}\"]\n")
    return judge(ctx.cli("simulate", "evil.yaml", "-o", "ds"), "error", "evil.yaml")


@case("sec-yaml-tag-train-config", "security")
def sec_yaml_tag_train_config(ctx: Ctx) -> Verdict:
    """security: `train --config evil.yaml` with a tagged train section: the payload must not
    run; one line naming evil.yaml."""
    (ctx.tmp / "evil.yaml").write_text(
        f"train:\n  epochs: !!python/object/apply:os.system [\"touch {ctx.marker}\"]\n")
    r = ctx.cli("train", ctx.fx.dataset, "-o", "run", "--config", "evil.yaml")
    return judge(r, "error", "evil.yaml")


@case("sec-yaml-tag-override", "security")
def sec_yaml_tag_override(ctx: Ctx) -> Verdict:
    """security: an override value `n_galaxies=!!python/object/apply:os.system [...]`: the
    payload must not run; one line naming the override."""
    r = ctx.cli("simulate", "paper", "-o", "ds", f"n_galaxies=!!python/object/apply:os.system [\"touch {ctx.marker}\"]")
    return judge(r, "error", "n_galaxies")


@case("sec-yaml-invalid-dataset-train", "security")
def sec_yaml_invalid_dataset_train(ctx: Ctx) -> Verdict:
    """security: a dataset whose config.yaml is not valid YAML, given to train: one clear line
    naming config.yaml."""
    ds = ctx.dataset("ds_badyaml")
    (ds / "config.yaml").write_text("simulate: {stamp_size: [32,\n  :: oops\n\t- x")
    return judge(ctx.cli("train", "ds_badyaml", "-o", "run", *TRAIN_ARGS), "error", "config.yaml")


@case("sec-yaml-invalid-dataset-infer", "security")
def sec_yaml_invalid_dataset_infer(ctx: Ctx) -> Verdict:
    """security: the same invalid-YAML dataset given to infer: one clear line naming config.yaml."""
    ds = ctx.dataset("ds_badyaml")
    (ds / "config.yaml").write_text("simulate: {stamp_size: [32,\n  :: oops\n\t- x")
    r = ctx.cli("infer", ctx.fx.run, "ds_badyaml", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", "config.yaml")


# =============================================================================================
# Data lost / corrupted
# =============================================================================================


@case("lost-concurrent-infer", "lost")
def lost_concurrent_infer(ctx: Ctx) -> Verdict:
    """lost: two `infer` started at once on the same -o with different inputs (6,400 and 3,200
    stamps). One must finish, the other be refused in one line naming the lock; the catalog
    must hold only the winner's rows, with unique ids."""
    import numpy as np

    ctx.copy(ctx.fx.big_cube, "a.fits")
    ctx.copy(ctx.fx.mid_cube, "b.fits")
    common = ("-o", "cat.parquet", "--chunk-size", "256", "--workers", "1")
    p1 = ctx.start("infer", ctx.fx.run, "a.fits", *common)
    p2 = ctx.start("infer", ctx.fx.run, "b.fits", *common)
    r1, r2 = p1.wait(240), p2.wait(240)
    command = f"{r1.summary} & {r2.summary.split(' ', 3)[-1]}"
    runs = {"a.fits": (r1, 6400), "b.fits": (r2, 3200)}
    for r in (r1, r2):
        if r.timed_out or r.has_traceback or (r.rc not in (0, None) and len(r.error_lines) > 3):
            return judge(r, "error", "lock", command=command)
    winners = [name for name, (r, _) in runs.items() if r.rc == 0]
    cat_path = ctx.tmp / "cat.parquet"
    cat = read_catalog(cat_path) if cat_path.exists() else None

    def content() -> str:
        if cat is None:
            return "no catalog"
        srcs = sorted({Path(str(s)).name for s in cat["source"]})
        dup = len(cat["id"]) - len(np.unique(cat["id"]))
        return f"catalog: {len(cat['id'])} rows from {', '.join(srcs)}, {dup} duplicate ids"

    if len(winners) == 2:
        return Verdict(SILENT, f"both runs exited 0; {content()}", 0, command)
    if not winners:
        return Verdict(UNCLEAR, f"both refused: {r1.last_line()[:80]} | {r2.last_line()[:80]}", r1.rc, command)
    winner = winners[0]
    loser = next(r for name, (r, _) in runs.items() if name != winner)
    n = runs[winner][1]
    if cat is None or len(cat["id"]) != n or len(np.unique(cat["id"])) != n or \
            {Path(str(s)).name for s in cat["source"]} != {winner}:
        return Verdict(LOST, f"{winner} won but {content()}", loser.rc, command)
    return judge(loser, "error", "lock", command=command)


@case("lost-concurrent-simulate", "lost")
def lost_concurrent_simulate(ctx: Ctx) -> Verdict:
    """lost: two `simulate` to the same -o at once (seeds 1 and 2): one finishes, the other is
    refused in one line naming the lock; the dataset is the winner's, intact, and no
    temporary directories are left."""
    import yaml

    args = ("-o", "ds", "n_galaxies=300", "stamp_size=32", "chunk_size=25", *SIM_ARGS[3:])
    p1 = ctx.start("simulate", "paper", *args, "seed=1")
    p2 = ctx.start("simulate", "paper", *args, "seed=2")
    r1, r2 = p1.wait(240), p2.wait(240)
    command = f"{r1.summary} & (seed=2)"
    for r in (r1, r2):
        if r.timed_out or r.has_traceback or (r.rc not in (0, None) and len(r.error_lines) > 3):
            return judge(r, "error", "lock", command=command)
    winners = [seed for seed, r in ((1, r1), (2, r2)) if r.rc == 0]
    leftovers = [e.name for e in ctx.tmp.iterdir() if e.name.startswith(".ds")]
    try:
        cfg = yaml.safe_load((ctx.tmp / "ds" / "config.yaml").read_text())["simulate"]
        import zarr

        shape = zarr.open_array(str(ctx.tmp / "ds" / "images.zarr"), mode="r").shape
        state = f"dataset seed {cfg['seed']}, images {shape}"
    except Exception as err:  # noqa: BLE001 - any failure to read it is the finding
        cfg, state = None, f"dataset unreadable ({type(err).__name__}: {err})"
    if len(winners) == 2:
        return Verdict(SILENT, f"both runs exited 0, the second replaced the first's dataset; {state}", 0, command)
    if not winners:
        return Verdict(UNCLEAR, f"both refused: {r1.last_line()[:80]} | {r2.last_line()[:80]}", r1.rc, command)
    loser = r2 if winners[0] == 1 else r1
    if cfg is None or cfg.get("seed") != winners[0]:
        return Verdict(LOST, f"seed {winners[0]} won but {state}", loser.rc, command)
    if leftovers:
        return Verdict(DEBRIS, f"left {', '.join(leftovers)}", loser.rc, command)
    return judge(loser, "error", "lock", command=command)


@case("lost-reconstruct-is-output", "lost")
def lost_reconstruct_is_output(ctx: Ctx) -> Verdict:
    """lost: `infer ... -o X.fits --reconstruct X.fits`: must be refused in one line naming
    X.fits; the input cube must survive."""
    cube = ctx.copy(ctx.fx.cube, "cube.fits")
    guard = Guard(cube)
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "-o", "X.fits", "--reconstruct", "X.fits", "--workers", "1")

    def check():
        from astropy.io import fits

        with fits.open(ctx.tmp / "X.fits") as hdul:
            if not any(isinstance(h, fits.BinTableHDU) for h in hdul):
                return LOST, "X.fits holds the reconstructions: the catalog was overwritten"
        return "exit 0 with one path for two outputs"
    return judge(r, "error", "X.fits", check=check, guards=[guard])


@case("lost-reconstruct-is-input", "lost")
def lost_reconstruct_is_input(ctx: Ctx) -> Verdict:
    """lost: `infer cube.fits -o cat.fits --reconstruct cube.fits --overwrite`: must be refused
    naming cube.fits; the input cube must be unchanged (sha256)."""
    cube = ctx.copy(ctx.fx.cube, "cube.fits")
    guard = Guard(cube)
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "-o", "cat.fits", "--reconstruct", "cube.fits",
                "--overwrite", "--workers", "1")
    return judge(r, "error", "cube.fits", guards=[guard])


@case("lost-reconstruct-into-dataset", "lost")
def lost_reconstruct_into_dataset(ctx: Ctx) -> Verdict:
    """lost: `infer ds -o cat.parquet --reconstruct ds/images.zarr --overwrite` (the input
    dataset's own images): refused naming images.zarr; the dataset unchanged."""
    ds = ctx.dataset("ds")
    guard = Guard(ds)
    r = ctx.cli("infer", ctx.fx.run, "ds", "-o", "cat.parquet", "--reconstruct", "ds/images.zarr",
                "--overwrite", "--workers", "1")
    return judge(r, "error", "images.zarr", guards=[guard])


@case("lost-output-is-input-infer", "lost")
def lost_output_is_input_infer(ctx: Ctx) -> Verdict:
    """lost: `infer cube.fits -o cube.fits --overwrite`: refused naming cube.fits; the cube
    unchanged (sha256)."""
    cube = ctx.copy(ctx.fx.cube, "cube.fits")
    guard = Guard(cube)
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "-o", "cube.fits", "--overwrite", "--workers", "1")
    return judge(r, "error", "cube.fits", guards=[guard])


@case("lost-output-is-input-fit", "lost")
def lost_output_is_input_fit(ctx: Ctx) -> Verdict:
    """lost: `fit cube.fits -o cube.fits --overwrite`: refused naming cube.fits; the cube
    unchanged (sha256)."""
    write_fits(ctx.tmp / "cube.fits", ctx.fx.images[:2])
    guard = Guard(ctx.tmp / "cube.fits")
    r = ctx.cli("fit", "cube.fits", "-o", "cube.fits", "--overwrite", "--config",
                ctx.fx.dataset / "config.yaml", "--max-nfev", "5")
    return judge(r, "error", "cube.fits", guards=[guard])


@case("lost-output-is-dataset-file", "lost")
def lost_output_is_dataset_file(ctx: Ctx) -> Verdict:
    """lost: `infer ds -o ds/params.parquet --overwrite` (the input dataset's truth table as
    the catalog): refused naming params.parquet; the dataset unchanged."""
    ds = ctx.dataset("ds")
    guard = Guard(ds)
    r = ctx.cli("infer", ctx.fx.run, "ds", "-o", "ds/params.parquet", "--overwrite", "--workers", "1")
    return judge(r, "error", "params.parquet", guards=[guard])


@case("lost-failed-overwrite-keeps-catalog", "lost")
def lost_failed_overwrite_keeps_catalog(ctx: Ctx) -> Verdict:
    """lost: an earlier catalog, then `infer bad_stamps/ -o cat.parquet --overwrite` where a
    stamp file is truncated: the run fails (one line naming the file) and the earlier
    catalog survives."""
    cat = ctx.copy(ctx.fx.earlier_catalog, "cat.parquet")
    guard = Guard(cat)
    stamps = ctx.tmp / "stamps"
    stamps.mkdir()
    for i in range(4):
        write_fits(stamps / f"s{i}.fits", ctx.fx.images[i])
    truncate(stamps / "s3.fits", 0.6)
    r = ctx.cli("infer", ctx.fx.run, "stamps", "-o", "cat.parquet", "--overwrite", "--workers", "1")
    return judge(r, "error", "s3.fits", guards=[guard])


@case("lost-train-overwrite-killed", "lost")
def lost_train_overwrite_killed(ctx: Ctx) -> Verdict:
    """lost: `train --overwrite` on an existing run (epochs=1000), killed with kill -9 once two
    epochs are logged (-v): the old run's model.safetensors and model.json must be unchanged."""
    run = ctx.run_dir()
    guard = Guard(run / "model.safetensors", run / "model.json")
    # -v logs "epoch N: loss ..." after each epoch (and its checkpoint): kill after the second.
    p = ctx.start("-v", "train", ctx.fx.dataset, "-o", "run", "--overwrite", "epochs=1000", "batch_size=16")
    seen = wait_for(lambda: p.poll() is not None or len(re.findall(r"epoch \d+:", p.peek_stderr())) >= 2, 60)
    finished = p.poll() is not None
    p.kill()
    r = p.wait(30)
    r.summary += "  (kill -9 after 2 epochs logged)" if seen else "  (kill -9 after 60 s, no epoch logged)"
    if finished:
        if r.rc != 0:
            return judge(r, "error")
        raise RuntimeError("training finished before it could be killed")
    lost = guard.lost()
    if lost:
        return Verdict(LOST, lost + " by the killed --overwrite run", r.rc, r.summary, "ok", r.seconds)
    return Verdict(HANDLED, "old model intact after kill -9", r.rc, r.summary, "ok", r.seconds)


@case("lost-simulate-killed-leftover", "lost")
def lost_simulate_killed_leftover(ctx: Ctx) -> Verdict:
    """lost: `simulate -o ds` killed with kill -9 mid-way, then run again: the second run must
    succeed and leave no `.ds.tmp-*` (or other hidden .ds*) directories behind."""
    first = ("simulate", "paper", "-o", "ds", "n_galaxies=800", "stamp_size=32", "chunk_size=25", *SIM_ARGS[3:])
    p = ctx.start(*first)
    # Killed once some image chunks are on disk (wherever the run keeps its unfinished dataset).
    wait_for(lambda: p.poll() is not None or any("images.zarr/c/" in str(f) for f in ctx.tmp.rglob("*")), 60)
    time.sleep(0.5)
    if p.poll() is not None:
        raise RuntimeError("the simulation finished before it could be killed")
    p.kill()
    p.wait(30)
    r = ctx.cli("simulate", "paper", "-o", "ds", *SIM_ARGS, timeout=120)
    r.summary += "  (after a kill -9 of one of 800 galaxies)"

    def after():
        left = [e.name for e in ctx.tmp.iterdir() if e.name.startswith(".ds")]
        return f"left {', '.join(left)}" if left else None
    return judge(r, "ok", after=after, check=catalog_ok_dataset(ctx.tmp / "ds", 64))


def catalog_ok_dataset(path: Path, n: int):
    def check():
        import zarr

        shape = zarr.open_array(str(path / "images.zarr"), mode="r").shape
        return None if shape[0] == n else f"dataset holds {shape[0]} images, expected {n}"
    return check


@case("lost-failed-chunk-parts", "lost")
def lost_failed_chunk_parts(ctx: Ctx) -> Verdict:
    """lost: infer on a directory of stamp files, one truncated: refused naming the file (or
    exit 0 with its row flagged); `cat.parquet.parts/` must not be left holding only
    `signature`."""
    stamps = ctx.tmp / "stamps"
    stamps.mkdir()
    for i in range(5):
        write_fits(stamps / f"s{i}.fits", ctx.fx.images[i])
    truncate(stamps / "s4.fits", 0.6)
    r = ctx.cli("infer", ctx.fx.run, "stamps", "-o", "cat.parquet", "--workers", "1")

    def after():
        parts = ctx.tmp / "cat.parquet.parts"
        if parts.is_dir() and [p.name for p in parts.iterdir()] == ["signature"]:
            return "cat.parquet.parts/ left holding only `signature`"
        return None

    def check():
        cat = read_catalog(ctx.tmp / "cat.parquet")
        bad = [i for i, s in enumerate(cat["source"]) if str(s).endswith("s4.fits")]
        return None if bad and flagged(cat)[bad[0]] else "the truncated stamp's row is missing or unflagged"
    return judge(r, "either", "s4.fits", check=check, after=after)


@case("lost-resume-identical", "lost")
def lost_resume_identical(ctx: Ctx) -> Verdict:
    """lost: `infer` killed with kill -9 after a few chunks, then re-run: the resumed catalog
    must be byte-identical to an uninterrupted run's."""
    ref = ctx.fx.reference_catalog
    cmd = ("infer", ctx.fx.run, ctx.fx.mid_cube, "-o", "cat.parquet", "--chunk-size", "128", "--workers", "1")
    parts = ctx.tmp / "cat.parquet.parts"
    p = ctx.start(*cmd)
    wait_for(lambda: p.poll() is not None or (parts.is_dir() and len(list(parts.glob("part-*"))) >= 3), 120)
    interrupted = p.poll() is None
    p.kill()
    p.wait(30)
    r = ctx.cli(*cmd, timeout=180)
    r.summary += "  (resumed after kill -9)"
    if not interrupted:
        raise RuntimeError("the first run finished before it could be killed")

    def check():
        if not (ctx.tmp / "cat.parquet").exists():
            return "no catalog"
        return None if sha256(ctx.tmp / "cat.parquet") == sha256(ref) else \
            "resumed catalog differs from the uninterrupted one"
    return judge(r, "ok", check=check)


@case("lost-workers-identical", "lost")
def lost_workers_identical(ctx: Ctx) -> Verdict:
    """lost: `infer --workers 2` must give a catalog byte-identical to `--workers 1`."""
    ref = ctx.fx.reference_catalog
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.mid_cube, "-o", "cat.parquet", "--chunk-size", "128",
                "--workers", "2", timeout=240)

    def check():
        return None if sha256(ctx.tmp / "cat.parquet") == sha256(ref) else \
            "--workers 2 catalog differs from --workers 1"
    return judge(r, "ok", check=check)


# =============================================================================================
# Wrong answers with exit 0
# =============================================================================================

CHUNK1 = ("1/0/0", "1.0.0", "(1, 0, 0)", "[1, 0, 0]", "chunk 1")
CHUNK0 = ("0/0/0", "0.0.0", "(0, 0, 0)", "[0, 0, 0]", "chunk 0")


def _model_sanity(run: Path):
    """A check: the run's model and history hold no NaN."""
    def check():
        import math

        history = json.loads((run / "history.json").read_text())
        if any(not math.isfinite(v) for rec in history for v in rec.values() if isinstance(v, float)):
            return "exit 0 with NaN losses in history.json (a NaN model saved)"
        import numpy as np
        from safetensors.numpy import load_file

        weights = load_file(str(run / "model.safetensors"))
        if any(not np.all(np.isfinite(w)) for w in weights.values()):
            return "exit 0 with NaN weights in model.safetensors"
        return None
    return check


@case("wrong-zarr-chunk-deleted-train", "wrong")
def wrong_zarr_chunk_deleted_train(ctx: Ctx) -> Verdict:
    """wrong: a dataset with images.zarr/c/1/0/0 deleted, given to train: refused in one line
    naming the dataset and the chunk (not trained on NaN fill values)."""
    ds = ctx.dataset("ds_holey")
    (ds / "images.zarr" / "c" / "1" / "0" / "0").unlink()
    r = ctx.cli("train", "ds_holey", "-o", "run", *TRAIN_ARGS)
    return judge(r, "error", ["ds_holey", CHUNK1], check=_model_sanity(ctx.tmp / "run"))


@case("wrong-zarr-chunk-deleted-infer", "wrong")
def wrong_zarr_chunk_deleted_infer(ctx: Ctx) -> Verdict:
    """wrong: the same dataset given to infer: refused naming the chunk, or exit 0 with rows
    16-31 flagged."""
    import numpy as np

    ds = ctx.dataset("ds_holey")
    (ds / "images.zarr" / "c" / "1" / "0" / "0").unlink()
    r = ctx.cli("infer", ctx.fx.run, "ds_holey", "-o", "cat.parquet", "--workers", "1")

    def check():
        f = flagged(read_catalog(ctx.tmp / "cat.parquet"))
        return None if f[16:32].all() else f"{int(np.sum(~f[16:32]))} of the 16 missing stamps not flagged"
    return judge(r, "either", ["ds_holey", CHUNK1], check=check)


@case("wrong-zarr-chunk-truncated-train", "wrong")
def wrong_zarr_chunk_truncated_train(ctx: Ctx) -> Verdict:
    """wrong: images.zarr/c/0/0/0 cut to half its bytes, given to train: refused in one line
    naming the chunk."""
    ds = ctx.dataset("ds_cut")
    truncate(ds / "images.zarr" / "c" / "0" / "0" / "0")
    r = ctx.cli("train", "ds_cut", "-o", "run", *TRAIN_ARGS)
    return judge(r, "error", ["ds_cut", CHUNK0], check=_model_sanity(ctx.tmp / "run"))


@case("wrong-zarr-chunk-truncated-infer", "wrong")
def wrong_zarr_chunk_truncated_infer(ctx: Ctx) -> Verdict:
    """wrong: the truncated-chunk dataset given to infer: refused in one line naming the chunk."""
    ds = ctx.dataset("ds_cut")
    truncate(ds / "images.zarr" / "c" / "0" / "0" / "0")
    r = ctx.cli("infer", ctx.fx.run, "ds_cut", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", ["ds_cut", CHUNK0])


def _edit_params(ds: Path, edit) -> None:
    """Rewrite params.parquet through ``edit(table) -> table``, keeping the schema metadata."""
    import pyarrow.parquet as pq

    path = ds / "params.parquet"
    table = pq.read_table(path)
    new = edit(table)
    pq.write_table(new.replace_schema_metadata(table.schema.metadata), path)


def _nan_flux(table):
    import numpy as np
    import pyarrow as pa

    i = table.column_names.index("flux")
    flux = table.column("flux").to_numpy().copy()
    flux[3] = np.nan
    return table.set_column(i, table.schema.field("flux"), pa.array(flux))


@case("wrong-params-nan-train", "wrong")
def wrong_params_nan_train(ctx: Ctx) -> Verdict:
    """wrong: params.parquet with flux NaN in one row (schema metadata kept), given to train:
    refused in one line naming the column."""
    ds = ctx.dataset("ds_nan")
    _edit_params(ds, _nan_flux)
    r = ctx.cli("train", "ds_nan", "-o", "run", *TRAIN_ARGS)
    return judge(r, "error", "flux", check=_model_sanity(ctx.tmp / "run"))


def _cube_with(ctx: Ctx, bad, name="cube.fits") -> Path:
    """A cube: 4 good stamps then ``bad`` (a 32x32 array) at index 4."""
    import numpy as np

    data = np.concatenate([ctx.fx.images[:4], np.asarray(bad, np.float32)[None]])
    return write_fits(ctx.tmp / name, data)


def _row_flagged(path: Path, row: int):
    def check():
        cat = read_catalog(path)
        if len(cat["id"]) <= row:
            return f"only {len(cat['id'])} rows"
        if flagged(cat)[row]:
            return None
        return f"row {row} not flagged (flux {float(cat['flux'][row]):.4g}, no flag_* set)"
    return check


def _neg_few(ctx):
    img = ctx.fx.images[4].copy()
    img[3, 5] = img[20, 7] = img[30, 30] = -1e30
    return img


NEGATIVE = {
    "neg100": (lambda ctx: __import__("numpy").full((32, 32), -100.0), "-100 ADU everywhere"),
    "neg1e30": (lambda ctx: __import__("numpy").full((32, 32), -1e30), "-1e30 ADU everywhere"),
    "few-neg1e30": (_neg_few, "a galaxy with three -1e30 pixels"),
}


def _negative_infer_case(key: str):
    make, text = NEGATIVE[key]

    def run_case(ctx: Ctx) -> Verdict:
        _cube_with(ctx, make(ctx))
        r = ctx.cli("infer", ctx.fx.run, "cube.fits", "-o", "cat.parquet", "--workers", "1")
        return judge(r, "ok", check=_row_flagged(ctx.tmp / "cat.parquet", 4))
    run_case.__doc__ = (f"wrong: a cube whose stamp 4 is {text}: infer must exit 0 with that row "
                        "flagged (some flag_* True) or NaN.")
    return run_case


for _key in NEGATIVE:
    case(f"wrong-{_key}-infer", "wrong")(_negative_infer_case(_key))


def _negative_fit_case(key: str):
    make, text = NEGATIVE[key]

    def run_case(ctx: Ctx) -> Verdict:
        import numpy as np

        write_fits(ctx.tmp / "cube.fits", np.stack([ctx.fx.images[0], make(ctx)]).astype(np.float32))
        r = ctx.cli("fit", "cube.fits", "-o", "fit.parquet", "--config", ctx.fx.dataset / "config.yaml",
                    "--max-nfev", "20", timeout=120)

        def check():
            cat = read_catalog(ctx.tmp / "fit.parquet")
            if str(cat["status"][1]) != "ok":
                return None
            if key != "neg1e30" and flagged(cat)[1]:  # bad pixels flagged and left out
                return None
            return f"status 'ok' for a stamp of {text} (flux {float(cat['flux'][1]):.4g})" + \
                ("" if key == "neg1e30" else ", no flag_* set")
        return judge(r, "ok", check=check)
    run_case.__doc__ = (f"wrong: `galcae fit` of a stamp of {text}: exit 0 and its status must "
                        "not be 'ok'" + ("." if key == "neg1e30" else " unless the row is flagged."))
    return run_case


for _key in ("neg1e30", "few-neg1e30"):
    case(f"wrong-{_key}-fit", "wrong")(_negative_fit_case(_key))


@case("wrong-inf-pixels-infer", "wrong")
def wrong_inf_pixels_infer(ctx: Ctx) -> Verdict:
    """wrong: a stamp with +inf and -inf pixels: exit 0 with its row flagged."""
    img = ctx.fx.images[4].copy()
    img[10, 10], img[11, 11] = float("inf"), float("-inf")
    _cube_with(ctx, img)
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_row_flagged(ctx.tmp / "cat.parquet", 4))


@case("wrong-suffix-PARQUET", "wrong")
def wrong_suffix_parquet_upper(ctx: Ctx) -> Verdict:
    """wrong: `-o cat.PARQUET` must write Parquet (magic PAR1) or be refused naming it."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.PARQUET", "--workers", "1")

    def check():
        head = (ctx.tmp / "cat.PARQUET").read_bytes()[:6]
        return None if head[:4] == b"PAR1" else f"cat.PARQUET written as {head!r}... (not Parquet)"
    return judge(r, "either", "cat.PARQUET", check=check)


@case("wrong-suffix-FITS", "wrong")
def wrong_suffix_fits_upper(ctx: Ctx) -> Verdict:
    """wrong: `-o cat.FITS` must write FITS (SIMPLE) or be refused naming it."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.FITS", "--workers", "1")

    def check():
        head = (ctx.tmp / "cat.FITS").read_bytes()[:6]
        return None if head == b"SIMPLE" else f"cat.FITS written as {head!r}... (not FITS)"
    return judge(r, "either", "cat.FITS", check=check)


@case("wrong-suffix-fit", "wrong")
def wrong_suffix_fit(ctx: Ctx) -> Verdict:
    """wrong: `-o cat.fit` (a FITS suffix) must write FITS or be refused naming it."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.fit", "--workers", "1")

    def check():
        head = (ctx.tmp / "cat.fit").read_bytes()[:6]
        return None if head == b"SIMPLE" else f"cat.fit written as {head!r}... (not FITS)"
    return judge(r, "either", "cat.fit", check=check)


def _survey_stamps(ctx: Ctx, headers: list[dict | None], name="stamps") -> Path:
    folder = ctx.tmp / name
    folder.mkdir()
    for i, header in enumerate(headers):
        write_fits(folder / f"g{i:02d}.fits", ctx.fx.survey_images[i], header)
    return folder


def _survey_row(ctx: Ctx, cat_path: Path, file: str, flag: str = "flag_conditions_out_of_range"):
    def check():
        cat = read_catalog(cat_path)
        rows = [i for i, s in enumerate(cat["source"]) if str(s).endswith(file)]
        if not rows:
            return f"no row for {file}"
        if flag in cat and cat[flag][rows[0]]:
            return None
        return f"{file}'s row not flagged {flag}"
    return check


@case("wrong-survey-psf-negative", "wrong")
def wrong_survey_psf_negative(ctx: Ctx) -> Verdict:
    """wrong: `infer --model survey` (default refinement) on stamps, one with PSFFWHM=-1: exit
    0 with that row flagged flag_conditions_out_of_range, not an abort."""
    _survey_stamps(ctx, [SURVEY_PSF] * 3 + [{"PSFFWHM": -1.0, "PSFBETA": 3.0}])
    r = ctx.cli("infer", "--model", "survey", "stamps", "-o", "cat.parquet", "--workers", "1", timeout=120)
    return judge(r, "ok", check=_survey_row(ctx, ctx.tmp / "cat.parquet", "g03.fits"))


@case("wrong-survey-psf-huge", "wrong")
def wrong_survey_psf_huge(ctx: Ctx) -> Verdict:
    """wrong: a survey stamp with PSFFWHM=50 (arcsec): exit 0 with that row flagged
    flag_conditions_out_of_range."""
    _survey_stamps(ctx, [SURVEY_PSF] * 3 + [{"PSFFWHM": 50.0, "PSFBETA": 3.0}])
    r = ctx.cli("infer", "--model", "survey", "stamps", "-o", "cat.parquet", "--workers", "1", timeout=120)
    return judge(r, "ok", check=_survey_row(ctx, ctx.tmp / "cat.parquet", "g03.fits"))


# =============================================================================================
# Tracebacks and unclear messages
# =============================================================================================


def _readonly(ctx: Ctx) -> tuple[Path, tuple]:
    """A read-only directory, and the wrapper that makes it read-only for the command (as
    root, the command runs without CAP_DAC_OVERRIDE); Skip where that is impossible."""
    ro = ctx.tmp / "readonly_dir"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        return ro, ()
    setpriv = shutil.which("setpriv")
    wrap = (setpriv, "--bounding-set=-dac_override,-dac_read_search") if setpriv else ()
    if wrap:
        probe = subprocess.run([*wrap, "sh", "-c", f"touch {shlex.quote(str(ro))}/x"], capture_output=True)
        if probe.returncode != 0:
            return ro, wrap
    raise Skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod 555 has no effect")


@case("tb-readonly-outdir-infer", "traceback")
def tb_readonly_outdir_infer(ctx: Ctx) -> Verdict:
    """traceback: `infer -o readonly_dir/cat.parquet` into a chmod-555 directory: one line
    naming readonly_dir."""
    cube = ctx.copy(ctx.fx.cube, "cube.fits")
    ro, wrap = _readonly(ctx)
    r = ctx.cli("infer", ctx.fx.run, cube.name, "-o", "readonly_dir/cat.parquet", "--workers", "1", wrap=wrap)
    return judge(r, "error", "readonly_dir")


@case("tb-readonly-outdir-simulate", "traceback")
def tb_readonly_outdir_simulate(ctx: Ctx) -> Verdict:
    """traceback: `simulate -o readonly_dir/ds` into a chmod-555 directory: one line naming
    readonly_dir."""
    ro, wrap = _readonly(ctx)
    r = ctx.cli("simulate", "paper", "-o", "readonly_dir/ds", *SIM_ARGS, wrap=wrap)
    return judge(r, "error", "readonly_dir")


@case("tb-readonly-outdir-train", "traceback")
def tb_readonly_outdir_train(ctx: Ctx) -> Verdict:
    """traceback: `train -o readonly_dir/run` into a chmod-555 directory: one line naming
    readonly_dir."""
    ro, wrap = _readonly(ctx)
    r = ctx.cli("train", ctx.fx.dataset, "-o", "readonly_dir/run", *TRAIN_ARGS, wrap=wrap)
    return judge(r, "error", "readonly_dir")


@case("tb-output-under-file-infer", "traceback")
def tb_output_under_file_infer(ctx: Ctx) -> Verdict:
    """traceback: `infer -o somefile.txt/cat.parquet` (a regular file as the directory): one
    line naming somefile.txt; somefile.txt unchanged."""
    (ctx.tmp / "somefile.txt").write_text("notes\n")
    guard = Guard(ctx.tmp / "somefile.txt")
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "somefile.txt/cat.parquet", "--workers", "1")
    return judge(r, "error", "somefile.txt", guards=[guard])


@case("tb-output-under-file-simulate", "traceback")
def tb_output_under_file_simulate(ctx: Ctx) -> Verdict:
    """traceback: `simulate -o somefile.txt/ds`: one line naming somefile.txt."""
    (ctx.tmp / "somefile.txt").write_text("notes\n")
    guard = Guard(ctx.tmp / "somefile.txt")
    r = ctx.cli("simulate", "paper", "-o", "somefile.txt/ds", *SIM_ARGS)
    return judge(r, "error", "somefile.txt", guards=[guard])


@case("tb-output-under-file-train", "traceback")
def tb_output_under_file_train(ctx: Ctx) -> Verdict:
    """traceback: `train -o somefile.txt/run`: one line naming somefile.txt."""
    (ctx.tmp / "somefile.txt").write_text("notes\n")
    guard = Guard(ctx.tmp / "somefile.txt")
    r = ctx.cli("train", ctx.fx.dataset, "-o", "somefile.txt/run", *TRAIN_ARGS)
    return judge(r, "error", "somefile.txt", guards=[guard])


@case("tb-scheduler-closed-port", "traceback")
def tb_scheduler_closed_port(ctx: Ctx) -> Verdict:
    """traceback: `infer --scheduler tcp://127.0.0.1:9` (nothing listens): one line naming the
    address, within the timeout."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.parquet", "--scheduler", "tcp://127.0.0.1:9",
                timeout=90)
    return judge(r, "error", "127.0.0.1:9")


@case("tb-simulate-billion", "traceback")
def tb_simulate_billion(ctx: Ctx) -> Verdict:
    """traceback: `simulate paper n_galaxies=1000000000` under `ulimit -v 8000000`: refused
    quickly in one line naming n_galaxies (a MemoryError, a hang or a kill is a failure)."""
    wrap = ("bash", "-c", 'ulimit -v 8000000; exec "$0" "$@"')
    r = ctx.cli("simulate", "paper", "-o", "ds", "n_galaxies=1000000000", wrap=wrap, timeout=60)
    return judge(r, "error", "n_galaxies")


@case("tb-params-no-status", "traceback")
def tb_params_no_status(ctx: Ctx) -> Verdict:
    """traceback: params.parquet without its `status` column, given to train: one line naming
    the column (or params.parquet)."""
    ds = ctx.dataset("ds_nostatus")
    _edit_params(ds, lambda t: t.drop_columns(["status"]))
    r = ctx.cli("train", "ds_nostatus", "-o", "run", *TRAIN_ARGS)
    return judge(r, "error", "status")


@case("tb-model-json-no-dataset", "traceback")
def tb_model_json_no_dataset(ctx: Ctx) -> Verdict:
    """traceback: a run whose model.json lacks its `dataset` section, given to infer: one line
    naming model.json and the key."""
    run = ctx.run_dir()
    meta = json.loads((run / "model.json").read_text())
    del meta["dataset"]
    (run / "model.json").write_text(json.dumps(meta, indent=2))
    r = ctx.cli("infer", "run", ctx.fx.cube, "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", ["model.json", "dataset"])


@case("tb-model-json-binary", "traceback")
def tb_model_json_binary(ctx: Ctx) -> Verdict:
    """traceback: a run whose model.json is random bytes: one line naming model.json."""
    run = ctx.run_dir()
    (run / "model.json").write_bytes(os.urandom(2048))
    r = ctx.cli("infer", "run", ctx.fx.cube, "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", "model.json")


@case("tb-binary-config", "traceback")
def tb_binary_config(ctx: Ctx) -> Verdict:
    """traceback: random bytes given as the config of simulate: one line naming the file."""
    (ctx.tmp / "junk.yaml").write_bytes(os.urandom(4096))
    return judge(ctx.cli("simulate", "junk.yaml", "-o", "ds"), "error", "junk.yaml")


@case("tb-params-not-parquet", "traceback")
def tb_params_not_parquet(ctx: Ctx) -> Verdict:
    """traceback: a dataset whose params.parquet is a text file, given to train: one line
    naming params.parquet."""
    ds = ctx.dataset("ds_txt")
    (ds / "params.parquet").write_text("id,flux\n0,1\n")
    return judge(ctx.cli("train", "ds_txt", "-o", "run", *TRAIN_ARGS), "error", "params.parquet")


@case("tb-zarr-json-garbage", "traceback")
def tb_zarr_json_garbage(ctx: Ctx) -> Verdict:
    """traceback: a dataset whose images.zarr/zarr.json is garbage, given to infer: one line
    naming images.zarr."""
    ds = ctx.dataset("ds_zj")
    (ds / "images.zarr" / "zarr.json").write_text("{not json")
    r = ctx.cli("infer", ctx.fx.run, "ds_zj", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", "images.zarr")


@case("tb-survey-psffwhm-abc", "traceback")
def tb_survey_psffwhm_abc(ctx: Ctx) -> Verdict:
    """traceback: a survey stamp with PSFFWHM='abc': one line naming the file (and keyword), or
    exit 0 with that row flagged flag_conditions_out_of_range."""
    _survey_stamps(ctx, [SURVEY_PSF] * 2 + [{"PSFFWHM": "abc", "PSFBETA": 3.0}])
    r = ctx.cli("infer", "--model", "survey", "stamps", "-o", "cat.parquet", "--workers", "1", timeout=120)
    return judge(r, "either", "g02.fits", check=_survey_row(ctx, ctx.tmp / "cat.parquet", "g02.fits"))


WCS_BASE = {"CRPIX1": 16.5, "CRPIX2": 16.5, "CRVAL1": 150.0, "CRVAL2": 2.0, "CUNIT1": "deg", "CUNIT2": "deg"}


@case("tb-wcs-bad-ctype", "traceback")
def tb_wcs_bad_ctype(ctx: Ctx) -> Verdict:
    """traceback: a stamp with CTYPE1='RA---XXX' (unknown projection): one line naming the
    file, or exit 0 with its row."""
    header = {**WCS_BASE, "CTYPE1": "RA---XXX", "CTYPE2": "DEC--XXX", "CDELT1": -0.2 / 3600,
              "CDELT2": 0.2 / 3600}
    write_fits(ctx.tmp / "wcs.fits", ctx.fx.images[0], header)
    r = ctx.cli("infer", ctx.fx.run, "wcs.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "either", "wcs.fits", check=catalog_rows(ctx.tmp / "cat.parquet", 1))


@case("tb-wcs-singular-cd", "traceback")
def tb_wcs_singular_cd(ctx: Ctx) -> Verdict:
    """traceback: a stamp with a singular CD matrix (all zero): one line naming the file, or
    exit 0 with its row."""
    header = {**WCS_BASE, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CD1_1": 0.0, "CD1_2": 0.0,
              "CD2_1": 0.0, "CD2_2": 0.0}
    write_fits(ctx.tmp / "wcs.fits", ctx.fx.images[0], header)
    r = ctx.cli("infer", ctx.fx.run, "wcs.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "either", "wcs.fits", check=catalog_rows(ctx.tmp / "cat.parquet", 1))


@case("tb-empty-cube", "traceback")
def tb_empty_cube(ctx: Ctx) -> Verdict:
    """traceback: a cube of shape 0x32x32: refused in one line naming the file."""
    import numpy as np

    write_fits(ctx.tmp / "empty.fits", np.zeros((0, 32, 32), np.float32))
    r = ctx.cli("infer", ctx.fx.run, "empty.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", "empty.fits")


@case("tb-evaluate-nan-truth", "traceback")
def tb_evaluate_nan_truth(ctx: Ctx) -> Verdict:
    """traceback: `evaluate RUN DATASET` where DATASET has a NaN flux truth: one line naming
    the column, not NaN metrics."""
    ctx.run_dir()
    ds = ctx.dataset("ds_nan")
    _edit_params(ds, _nan_flux)
    r = ctx.cli("evaluate", "run", "ds_nan", "--classical", "0", "--no-remeasure", timeout=120)
    return judge(r, "error", "flux")


@case("tb-train-stamp-not-divisible", "traceback")
def tb_train_stamp_not_divisible(ctx: Ctx) -> Verdict:
    """traceback: train on a dataset of 30x30 stamps (the CAE's poolings need a multiple of 4):
    one line naming stamp_size."""
    s = ctx.cli("simulate", "paper", "-o", "ds30", "n_galaxies=16", "stamp_size=30", "chunk_size=16",
                *SIM_ARGS[3:])
    if s.rc != 0:
        raise RuntimeError(f"could not simulate 30x30 stamps: {s.last_line()}")
    return judge(ctx.cli("train", "ds30", "-o", "run", *TRAIN_ARGS), "error", "stamp_size")


@case("tb-fits-gz-garbage", "traceback")
def tb_fits_gz_garbage(ctx: Ctx) -> Verdict:
    """traceback: a `cube.fits.gz` that is not gzip at all: one line naming the file."""
    (ctx.tmp / "cube.fits.gz").write_bytes(os.urandom(5000))
    r = ctx.cli("infer", ctx.fx.run, "cube.fits.gz", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "error", "cube.fits.gz")


# =============================================================================================
# Valid input refused
# =============================================================================================


def _twin_check(ctx: Ctx, cat_path: Path, n: int, rtol: float = 1e-3):
    """A check: a catalog of two inputs of ``n`` stamps each whose values nearly agree."""
    def check():
        import numpy as np

        cat = read_catalog(cat_path)
        if len(cat["id"]) != 2 * n:
            return f"{len(cat['id'])} rows, expected {2 * n}"
        a, b = np.asarray(cat["flux"][:n], float), np.asarray(cat["flux"][n:], float)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return "NaN fluxes"
        worst_ = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)))
        return None if worst_ <= rtol else f"fluxes differ from the float twin by up to {worst_:.2%}"
    return check


def _quantize_int16(ctx: Ctx, data, path: Path) -> Path:
    """Write ``data`` as int16 with BSCALE/BZERO; return a float32 twin of the stored values."""
    import numpy as np
    from astropy.io import fits

    lo, hi = float(np.min(data)), float(np.max(data))
    bscale, bzero = (hi - lo) / 60000.0, (hi + lo) / 2.0
    hdu = fits.PrimaryHDU(np.asarray(data, np.float64))
    hdu.scale("int16", bscale=bscale, bzero=bzero)
    hdu.writeto(path, overwrite=True)
    with fits.open(path) as hdul:
        assert hdul[0].header["BITPIX"] == 16, "astropy did not write int16"
        stored = np.asarray(hdul[0].data, np.float32)
    twin = path.with_name("float_" + path.name)
    write_fits(twin, stored)
    return twin


@case("valid-int16-bscale-cube", "valid")
def valid_int16_bscale_cube(ctx: Ctx) -> Verdict:
    """valid: an int16 cube with BSCALE/BZERO and its float32 twin: infer must succeed and give
    (nearly) the same fluxes for both."""
    twin = _quantize_int16(ctx, ctx.fx.images, ctx.tmp / "int.fits")
    r = ctx.cli("infer", ctx.fx.run, "int.fits", twin.name, "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_twin_check(ctx, ctx.tmp / "cat.parquet", 64))


@case("valid-int16-bscale-stamp", "valid")
def valid_int16_bscale_stamp(ctx: Ctx) -> Verdict:
    """valid: a 2-D int16 stamp with BSCALE/BZERO and its float twin: same values."""
    twin = _quantize_int16(ctx, ctx.fx.images[7], ctx.tmp / "int.fits")
    r = ctx.cli("infer", ctx.fx.run, "int.fits", twin.name, "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_twin_check(ctx, ctx.tmp / "cat.parquet", 1))


@case("valid-uint16-cube", "valid")
def valid_uint16_cube(ctx: Ctx) -> Verdict:
    """valid: a uint16 cube (BITPIX 16, BZERO 32768) and its float twin: same values."""
    import numpy as np

    counts = np.round(ctx.fx.images + 1000.0).astype(np.uint16)
    write_fits(ctx.tmp / "uint.fits", counts)
    write_fits(ctx.tmp / "float.fits", counts.astype(np.float32))
    r = ctx.cli("infer", ctx.fx.run, "uint.fits", "float.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_twin_check(ctx, ctx.tmp / "cat.parquet", 64))


@case("valid-float64-cube", "valid")
def valid_float64_cube(ctx: Ctx) -> Verdict:
    """valid: a float64 (BITPIX -64) cube and its float32 twin: same values."""
    import numpy as np

    write_fits(ctx.tmp / "f64.fits", ctx.fx.images.astype(np.float64))
    write_fits(ctx.tmp / "f32.fits", ctx.fx.images)
    r = ctx.cli("infer", ctx.fx.run, "f64.fits", "f32.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_twin_check(ctx, ctx.tmp / "cat.parquet", 64, rtol=1e-5))


@case("valid-cube-in-extension", "valid")
def valid_cube_in_extension(ctx: Ctx) -> Verdict:
    """valid: the cube in extension SCI after an empty primary HDU, found without --hdu."""
    write_fits(ctx.tmp / "ext.fits", ctx.fx.images, extension="SCI")
    r = ctx.cli("infer", ctx.fx.run, "ext.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=catalog_rows(ctx.tmp / "cat.parquet", 64))


@case("valid-hdu-name-lowercase", "valid")
def valid_hdu_name_lowercase(ctx: Ctx) -> Verdict:
    """valid: `--hdu sci` (lower case) for an extension named SCI: FITS names are case-blind."""
    write_fits(ctx.tmp / "ext.fits", ctx.fx.images, extension="SCI")
    r = ctx.cli("infer", ctx.fx.run, "ext.fits", "--hdu", "sci", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=catalog_rows(ctx.tmp / "cat.parquet", 64))


@case("valid-compressed-cube", "valid")
def valid_compressed_cube(ctx: Ctx) -> Verdict:
    """valid: a tile-compressed (CompImageHDU, lossless GZIP_2) cube and its plain twin: same
    values."""
    from astropy.io import fits

    comp = fits.CompImageHDU(ctx.fx.images, compression_type="GZIP_2", quantize_level=0.0)
    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(ctx.tmp / "comp.fits")
    write_fits(ctx.tmp / "plain.fits", ctx.fx.images)
    r = ctx.cli("infer", ctx.fx.run, "comp.fits", "plain.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_twin_check(ctx, ctx.tmp / "cat.parquet", 64, rtol=1e-5))


@case("valid-gzip-cube", "valid")
def valid_gzip_cube(ctx: Ctx) -> Verdict:
    """valid: a gzipped cube (cube.fits.gz) and its plain twin: same values."""
    import gzip

    plain = write_fits(ctx.tmp / "plain.fits", ctx.fx.images)
    (ctx.tmp / "cube.fits.gz").write_bytes(gzip.compress(plain.read_bytes()))
    r = ctx.cli("infer", ctx.fx.run, "cube.fits.gz", "plain.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=_twin_check(ctx, ctx.tmp / "cat.parquet", 64, rtol=1e-5))


@case("valid-nan-pixels", "valid")
def valid_nan_pixels(ctx: Ctx) -> Verdict:
    """valid: a stamp with a few NaN pixels: exit 0, that row flag_nan_pixels, the others not."""
    img = ctx.fx.images[4].copy()
    img[0:3, 0:3] = float("nan")
    _cube_with(ctx, img)
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "-o", "cat.parquet", "--workers", "1")

    def check():
        nan = list(read_catalog(ctx.tmp / "cat.parquet")["flag_nan_pixels"])
        return None if nan == [False] * 4 + [True] else f"flag_nan_pixels is {nan}"
    return judge(r, "ok", check=check)


@case("valid-adapt-size", "valid")
def valid_adapt_size(ctx: Ctx) -> Verdict:
    """valid: 40x40 stamps with --adapt-size: exit 0, every row flag_adapted."""
    import numpy as np

    big = np.zeros((8, 40, 40), np.float32)
    big[:, 4:36, 4:36] = ctx.fx.images[:8]
    write_fits(ctx.tmp / "big.fits", big)
    r = ctx.cli("infer", ctx.fx.run, "big.fits", "--adapt-size", "-o", "cat.parquet", "--workers", "1")

    def check():
        flags = read_catalog(ctx.tmp / "cat.parquet")["flag_adapted"]
        return None if len(flags) == 8 and all(flags) else f"flag_adapted {list(flags)}"
    return judge(r, "ok", check=check)


@case("valid-dataset-input", "valid")
def valid_dataset_input(ctx: Ctx) -> Verdict:
    """valid: infer on a galcae dataset directory: 64 rows."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.dataset, "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=catalog_rows(ctx.tmp / "cat.parquet", 64))


@case("valid-glob-input", "valid")
def valid_glob_input(ctx: Ctx) -> Verdict:
    """valid: a quoted glob 'stamps/*.fits' of 5 stamp files: 5 rows."""
    (ctx.tmp / "stamps").mkdir()
    for i in range(5):
        write_fits(ctx.tmp / "stamps" / f"s{i}.fits", ctx.fx.images[i])
    r = ctx.cli("infer", ctx.fx.run, "stamps/*.fits", "-o", "cat.parquet", "--workers", "1")
    return judge(r, "ok", check=catalog_rows(ctx.tmp / "cat.parquet", 5))


@case("valid-path-with-spaces", "valid")
def valid_path_with_spaces(ctx: Ctx) -> Verdict:
    """valid: input and output under 'my data é/' (space, non-ASCII): 64 rows."""
    folder = ctx.tmp / "my data é"
    folder.mkdir()
    write_fits(folder / "cube 1.fits", ctx.fx.images)
    r = ctx.cli("infer", ctx.fx.run, "my data é/cube 1.fits", "-o", "my data é/cat é.parquet", "--workers", "1")
    return judge(r, "ok", check=catalog_rows(folder / "cat é.parquet", 64))


@case("valid-fit-cube", "valid")
def valid_fit_cube(ctx: Ctx) -> Verdict:
    """valid: `galcae fit` of 3 stamps with the dataset's config: exit 0, 3 rows."""
    write_fits(ctx.tmp / "cube.fits", ctx.fx.images[:3])
    r = ctx.cli("fit", "cube.fits", "-o", "fit.parquet", "--config", ctx.fx.dataset / "config.yaml",
                "--max-nfev", "20", timeout=120)
    return judge(r, "ok", check=catalog_rows(ctx.tmp / "fit.parquet", 3))


@case("valid-survey-headers", "valid")
def valid_survey_headers(ctx: Ctx) -> Verdict:
    """valid: `infer --model survey` on 12 GalSim stamps with PSFFWHM/PSFBETA: exit 0, 12 rows,
    none flagged flag_conditions_out_of_range."""
    _survey_stamps(ctx, [SURVEY_PSF] * 12)
    r = ctx.cli("infer", "--model", "survey", "stamps", "-o", "cat.parquet", "--workers", "1", timeout=180)

    def check():
        cat = read_catalog(ctx.tmp / "cat.parquet")
        bad = int(sum(cat["flag_conditions_out_of_range"]))
        return f"{bad} rows flagged flag_conditions_out_of_range" if bad else None
    return judge(r, "ok", check=all_checks(catalog_rows(ctx.tmp / "cat.parquet", 12), check))


@case("valid-survey-psf-options", "valid")
def valid_survey_psf_options(ctx: Ctx) -> Verdict:
    """valid: `infer --model survey --psf-fwhm 0.8 --psf-beta 3` on a cube without keywords:
    exit 0, 12 rows, fluxes finite."""
    write_fits(ctx.tmp / "cube.fits", ctx.fx.survey_images)
    r = ctx.cli("infer", "--model", "survey", "cube.fits", "--psf-fwhm", "0.8", "--psf-beta", "3",
                "-o", "cat.parquet", "--workers", "1", timeout=180)

    def check():
        import numpy as np

        return None if np.all(np.isfinite(read_catalog(ctx.tmp / "cat.parquet")["flux"])) else "NaN fluxes"
    return judge(r, "ok", check=all_checks(catalog_rows(ctx.tmp / "cat.parquet", 12), check))


@case("valid-survey-no-psf", "valid")
def valid_survey_no_psf(ctx: Ctx) -> Verdict:
    """valid: survey stamps stating no PSF and no --psf-*: exit 0 with every row flagged
    flag_conditions_out_of_range (documented), not an abort."""
    _survey_stamps(ctx, [None] * 3)
    r = ctx.cli("infer", "--model", "survey", "stamps", "-o", "cat.parquet", "--workers", "1", timeout=120)

    def check():
        flags = read_catalog(ctx.tmp / "cat.parquet")["flag_conditions_out_of_range"]
        return None if len(flags) == 3 and all(flags) else f"flag_conditions_out_of_range {list(flags)}"
    return judge(r, "ok", check=check)


# =============================================================================================
# Careless users
# =============================================================================================


@case("care-missing-input", "careless")
def care_missing_input(ctx: Ctx) -> Verdict:
    """careless: infer on a file that does not exist: one line naming it."""
    return judge(ctx.cli("infer", ctx.fx.run, "nosuch.fits", "-o", "cat.parquet"), "error", "nosuch.fits")


@case("care-dir-without-fits", "careless")
def care_dir_without_fits(ctx: Ctx) -> Verdict:
    """careless: infer on a directory holding no FITS: one line naming it."""
    (ctx.tmp / "notes").mkdir()
    (ctx.tmp / "notes" / "a.txt").write_text("x")
    return judge(ctx.cli("infer", ctx.fx.run, "notes", "-o", "cat.parquet"), "error", "notes")


@case("care-text-as-fits", "careless")
def care_text_as_fits(ctx: Ctx) -> Verdict:
    """careless: a text file renamed .fits: one line naming it."""
    (ctx.tmp / "notes.fits").write_text("this is not FITS\n" * 50)
    return judge(ctx.cli("infer", ctx.fx.run, "notes.fits", "-o", "cat.parquet"), "error", "notes.fits")


@case("care-table-only-fits", "careless")
def care_table_only_fits(ctx: Ctx) -> Verdict:
    """careless: a FITS file holding only a table HDU: one line naming it."""
    from astropy.table import Table

    Table({"a": [1, 2, 3]}).write(ctx.tmp / "table.fits")
    return judge(ctx.cli("infer", ctx.fx.run, "table.fits", "-o", "cat.parquet"), "error", "table.fits")


@case("care-hdu-out-of-range", "careless")
def care_hdu_out_of_range(ctx: Ctx) -> Verdict:
    """careless: `--hdu 7` on a one-HDU file: one line naming the file and the HDU."""
    write_fits(ctx.tmp / "cube.fits", ctx.fx.images[:4])
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "--hdu", "7", "-o", "cat.parquet")
    return judge(r, "error", ["cube.fits", "7"])


@case("care-hdu-name-missing", "careless")
def care_hdu_name_missing(ctx: Ctx) -> Verdict:
    """careless: `--hdu SCI` on a file without such an extension: one line naming it."""
    write_fits(ctx.tmp / "cube.fits", ctx.fx.images[:4])
    r = ctx.cli("infer", ctx.fx.run, "cube.fits", "--hdu", "SCI", "-o", "cat.parquet")
    return judge(r, "error", ["cube.fits", "SCI"])


@case("care-wrong-stamp-size", "careless")
def care_wrong_stamp_size(ctx: Ctx) -> Verdict:
    """careless: a cube of 24x24 stamps without --adapt-size: one line naming the file and
    pointing to --adapt-size."""
    write_fits(ctx.tmp / "small.fits", ctx.fx.images[:4, 4:28, 4:28])
    r = ctx.cli("infer", ctx.fx.run, "small.fits", "-o", "cat.parquet")
    return judge(r, "error", ["small.fits", "--adapt-size"])


@case("care-train-non-dataset", "careless")
def care_train_non_dataset(ctx: Ctx) -> Verdict:
    """careless: train on a directory that is not a dataset: one line naming it."""
    (ctx.tmp / "photos").mkdir()
    (ctx.tmp / "photos" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    return judge(ctx.cli("train", "photos", "-o", "run", *TRAIN_ARGS), "error", "photos")


@case("care-train-missing-dataset", "careless")
def care_train_missing_dataset(ctx: Ctx) -> Verdict:
    """careless: train on a path that does not exist: one line naming it."""
    return judge(ctx.cli("train", "nosuch_ds", "-o", "run", *TRAIN_ARGS), "error", "nosuch_ds")


@case("care-model-missing", "careless")
def care_model_missing(ctx: Ctx) -> Verdict:
    """careless: infer with a model path that does not exist: one line naming it."""
    r = ctx.cli("infer", "nosuch_run", ctx.fx.cube, "-o", "cat.parquet")
    return judge(r, "error", "nosuch_run")


@case("care-dataset-as-model", "careless")
def care_dataset_as_model(ctx: Ctx) -> Verdict:
    """careless: a dataset given where the model goes: one line naming the path or model file."""
    r = ctx.cli("infer", ctx.fx.dataset, ctx.fx.cube, "-o", "cat.parquet")
    return judge(r, "error", [("model.safetensors", "model.json", "ds")])


@case("care-model-truncated", "careless")
def care_model_truncated(ctx: Ctx) -> Verdict:
    """careless: a run whose model.safetensors is truncated: one line naming it."""
    run = ctx.run_dir()
    truncate(run / "model.safetensors")
    return judge(ctx.cli("infer", "run", ctx.fx.cube, "-o", "cat.parquet"), "error", "model.safetensors")


@case("care-chunk-size-zero", "careless")
def care_chunk_size_zero(ctx: Ctx) -> Verdict:
    """careless: `--chunk-size 0`: one line naming --chunk-size."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.parquet", "--chunk-size", "0")
    return judge(r, "error", "chunk-size")


@case("care-unknown-config-key", "careless")
def care_unknown_config_key(ctx: Ctx) -> Verdict:
    """careless: `train ... epoch=3` (a typo): one line naming the key."""
    return judge(ctx.cli("train", ctx.fx.dataset, "-o", "run", "epoch=3"), "error", "epoch")


@case("care-epochs-negative", "careless")
def care_epochs_negative(ctx: Ctx) -> Verdict:
    """careless: `train ... epochs=-1`: one line naming epochs."""
    return judge(ctx.cli("train", ctx.fx.dataset, "-o", "run", "epochs=-1"), "error", "epochs")


@case("care-override-wrong-type", "careless")
def care_override_wrong_type(ctx: Ctx) -> Verdict:
    """careless: `simulate paper n_galaxies=many`: one line naming n_galaxies."""
    return judge(ctx.cli("simulate", "paper", "-o", "ds", "n_galaxies=many"), "error", "n_galaxies")


@case("care-override-no-equals", "careless")
def care_override_no_equals(ctx: Ctx) -> Verdict:
    """careless: an override without `=`: one line naming it."""
    return judge(ctx.cli("simulate", "paper", "-o", "ds", "n_galaxies"), "error", "n_galaxies")


@case("care-unknown-preset", "careless")
def care_unknown_preset(ctx: Ctx) -> Verdict:
    """careless: `simulate papr` (no such file or preset): one line naming it."""
    return judge(ctx.cli("simulate", "papr", "-o", "ds"), "error", "papr")


@case("care-existing-catalog", "careless")
def care_existing_catalog(ctx: Ctx) -> Verdict:
    """careless: infer onto an existing catalog without --overwrite: refused naming it, the
    catalog unchanged."""
    cat = ctx.copy(ctx.fx.earlier_catalog, "cat.parquet")
    guard = Guard(cat)
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.parquet")
    return judge(r, "error", "cat.parquet", guards=[guard])


@case("care-existing-run", "careless")
def care_existing_run(ctx: Ctx) -> Verdict:
    """careless: train into an existing run without --overwrite/--resume: refused naming it,
    the run unchanged."""
    run = ctx.run_dir()
    guard = Guard(run)
    return judge(ctx.cli("train", ctx.fx.dataset, "-o", "run", *TRAIN_ARGS), "error", "run", guards=[guard])


@case("care-existing-dataset", "careless")
def care_existing_dataset(ctx: Ctx) -> Verdict:
    """careless: simulate into an existing dataset without --overwrite: refused naming it,
    the dataset unchanged."""
    ds = ctx.dataset("ds")
    guard = Guard(ds)
    return judge(ctx.cli("simulate", "paper", "-o", "ds", *SIM_ARGS), "error", "ds", guards=[guard])


@case("care-catalog-suffix", "careless")
def care_catalog_suffix(ctx: Ctx) -> Verdict:
    """careless: `-o cat.csv`: one line naming cat.csv."""
    return judge(ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.csv"), "error", "cat.csv")


@case("care-samples-without-dropout", "careless")
def care_samples_without_dropout(ctx: Ctx) -> Verdict:
    """careless: `--samples 5` with a model trained without dropout: one line naming --samples."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.parquet", "--samples", "5")
    return judge(r, "error", "samples")


@case("care-device-cuda", "careless")
def care_device_cuda(ctx: Ctx) -> Verdict:
    """careless: `--device cuda` (no GPU here): one line naming cuda (or exit 0 where a GPU
    exists)."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.parquet", "--device", "cuda", "--workers", "1")
    return judge(r, "either", "cuda", check=catalog_rows(ctx.tmp / "cat.parquet", 64))


@case("care-resume-without-run", "careless")
def care_resume_without_run(ctx: Ctx) -> Verdict:
    """careless: `train --resume` into an empty path: one line naming it."""
    r = ctx.cli("train", ctx.fx.dataset, "-o", "norun", "--resume", *TRAIN_ARGS)
    return judge(r, "error", "norun")


@case("care-infer-no-model", "careless")
def care_infer_no_model(ctx: Ctx) -> Verdict:
    """careless: `infer cube.fits -o cat.parquet` without a model: one line asking for one."""
    return judge(ctx.cli("infer", ctx.fx.cube, "-o", "cat.parquet"), "error", "model")


@case("care-reconstruct-suffix", "careless")
def care_reconstruct_suffix(ctx: Ctx) -> Verdict:
    """careless: `--reconstruct recon.npy`: one line naming recon.npy."""
    r = ctx.cli("infer", ctx.fx.run, ctx.fx.cube, "-o", "cat.parquet", "--reconstruct", "recon.npy")
    return judge(r, "error", "recon.npy")


# =============================================================================================
# The campaign
# =============================================================================================


def run_case(c: Case, root: Path, fx: Fixtures, python: str) -> Verdict:
    tmp = root / "cases" / c.id
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ctx = Ctx(tmp, fx, python)
    t0 = time.monotonic()
    try:
        verdict = c.func(ctx)
    except Skip as why:
        verdict = Verdict(SKIPPED, str(why), None, "", "either")
    except Exception as err:  # noqa: BLE001 - a case that cannot be built is reported, not fatal
        where = traceback.extract_tb(err.__traceback__)[-1]
        verdict = Verdict(HARNESS, f"{type(err).__name__}: {str(err)[:160]} "
                                   f"({Path(where.filename).name}:{where.lineno})", None, "", "ok")
    if ctx.marker.exists():
        verdict = Verdict(EXECUTED, f"the payload ran ({ctx.marker.name} exists); before: "
                                    f"{verdict.outcome}: {verdict.detail[:100]}", verdict.rc, verdict.command,
                          verdict.want)
    verdict.seconds = time.monotonic() - t0
    return verdict


def print_table(results: list[tuple[Case, Verdict]]) -> None:
    wid = max(len(c.id) for c, _ in results)
    head = f"{'case':<{wid}}  {'class':<9} {'rc':>4}  {'outcome':<13} {'pass':<4} {'s':>5}  command"
    print(head)
    print("-" * len(head))
    for c, v in results:
        rc = "-" if v.rc is None else str(v.rc)
        mark = "ok" if v.passed else ("--" if v.outcome == SKIPPED else "FAIL")
        cmd = v.command if len(v.command) <= 110 else v.command[:107] + "..."
        print(f"{c.id:<{wid}}  {c.cls:<9} {rc:>4}  {v.outcome:<13} {mark:<4} {v.seconds:5.0f}  {cmd}")


def summary_line(results: list[tuple[Case, Verdict]]) -> str:
    counts = {k: 0 for k in SUMMARY_ORDER}
    for _, v in results:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
    passed = sum(v.passed for _, v in results)
    parts = [f"{len(results)} cases tried", f"{passed} passed",
             f"clear errors {counts[CLEAR]}", f"handled as documented {counts[HANDLED]}",
             f"tracebacks {counts[TRACEBACK]}", f"silent wrong results {counts[SILENT]}",
             f"data lost {counts[LOST]}", f"code executed {counts[EXECUTED]}"]
    parts += [f"{k} {counts[k]}" for k in (HANG, CRASH, UNCLEAR, REFUSED, DEBRIS, SKIPPED, HARNESS) if counts[k]]
    return "Summary: " + ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                        help="run only the cases whose id contains this (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work here (kept; shared fixtures already there are reused)")
    parser.add_argument("--python", default=sys.executable, help="Python with galcae installed")
    parser.add_argument("--list", action="store_true", help="list the cases and what each checks")
    args = parser.parse_args(argv)

    selected = [c for c in CASES if not args.only or any(s in c.id for s in args.only)]
    if args.list:
        for c in selected:
            print(f"{c.id} [{c.cls}]\n{textwrap.indent(c.doc, '    ')}")
        return 0
    probe = subprocess.run([args.python, "-m", "galcae.cli", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"cannot run `{args.python} -m galcae.cli`: {(probe.stderr or probe.stdout).strip()[-300:]}")
        return 0
    root = args.workdir or Path(tempfile.mkdtemp(prefix="hostile-", dir="/tmp"))
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.workdir is not None
    print(f"{probe.stdout.strip()}; {len(selected)} cases; work directory {root}", flush=True)
    fx = Fixtures(root / "fixtures", args.python)
    results = []
    t0 = time.monotonic()
    try:
        for c in selected:
            v = run_case(c, root, fx, args.python)
            results.append((c, v))
            mark = "ok" if v.passed else ("--" if v.outcome == SKIPPED else "FAIL")
            print(f"  [{len(results):>2}/{len(selected)}] {c.id}: {v.outcome} ({mark}, {v.seconds:.0f} s)",
                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; reporting the cases run so far", file=sys.stderr)
    finally:
        if not keep:
            for p in root.rglob("*"):  # read-only directories made by the cases
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    if not results:
        return 0
    print()
    print_table(results)
    failing = [(c, v) for c, v in results if not v.passed and v.outcome != SKIPPED]
    if failing:
        print("\nNot passing:")
        for c, v in failing:
            print(f"  {c.id} [{v.outcome}]: {v.detail}")
    skipped = [(c, v) for c, v in results if v.outcome == SKIPPED]
    for c, v in skipped:
        print(f"  {c.id} [skipped]: {v.detail}")
    print()
    print(summary_line(results) + f" ({time.monotonic() - t0:.0f} s)")
    if keep:
        print(f"Work directory kept: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
