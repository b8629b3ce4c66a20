"""The results file of ``ml.sweep``: one JSON record per line, safe to share between sweeps.

A *record* is a JSON object with at least "key" (the canonical JSON of its config), "config"
(a dict) and "status". A writer appends each record with a single ``os.write`` while holding
an exclusive ``fcntl.flock`` of the file, then fsyncs; readers therefore see whole lines, plus
at most one incomplete last line left by a writer killed mid-write. A UTF-8 byte-order mark
at the start (an editor's) is ignored.

Nothing here destroys data. Before a sweep writes to a file it checks every line
(``ResultsFile.open``): a file whose lines are not records (a ``grid.json``, a CSV, binary
data) is refused with a ValueError naming the line, and left byte-for-byte as it was; a
complete last record that only lacks its newline gets the newline; the one thing ever cut is
an incomplete trailing fragment: a last line that is not valid JSON and begins like a record
(``{"key"``), i.e. what a killed writer leaves.

Sweeps running at the same time on one file cooperate: each *claims* a config before running
it (a POSIX record lock on the sidecar file ``PATH.lock``, released once the run is written or
when the process dies), re-reads what the others appended (only the bytes added since its last
read) before claiming and before appending, and never appends a key that is already finished.
So no config runs twice at once and no finished key is written twice. The sidecar is empty;
the last sweep to finish deletes it (one killed with -9 leaves it for the next to delete). It is
opened without following links: a symlink, folder or pipe there is refused, nothing created.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

DONE = ("ok", "diverged")  # statuses that count as finished; "error" runs are retried
REQUIRED = ("key", "config", "status")
BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark: some editors start a file with it
_RECORD_START = b'{"key"'  # how every record written by sweep begins (json.dumps keeps key order)


# ---------------------------------------------------------------- reading
def parse_line(path, lineno: int, raw: bytes) -> dict:
    """One line of a results file as a record; ValueError naming the file and the line otherwise."""
    where = f"results: {path}: line {lineno}"
    if lineno == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    if b"\0" in raw:
        raise ValueError(f"{where} holds NUL bytes: not a results file (one JSON record per line)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text: not a results file (one JSON record per line)") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e})") from None
    if not (isinstance(rec, dict) and all(k in rec for k in REQUIRED) and isinstance(rec["key"], str)
            and isinstance(rec["config"], dict) and isinstance(rec["status"], str)):
        shown = text.strip()
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(f'{where} is not a results record (expected a JSON object with "key", "config" '
                         f'(an object) and "status"), got {shown}')
    return rec


def _tail(path, lineno: int, tail: bytes):
    """Classify the bytes after the last newline: ("blank", None), ("record", rec) or
    ("fragment", None); anything else raises (the file is not a results file)."""
    if lineno == 1 and tail.startswith(BOM):
        tail = tail[len(BOM):]
    if not tail.strip():
        return "blank", None
    try:
        return "record", parse_line(path, lineno, tail)
    except ValueError:
        stripped = tail.lstrip()
        looks_cut = stripped.startswith(_RECORD_START) or _RECORD_START.startswith(stripped)
        if looks_cut and b"\0" not in tail and _is_utf8(tail) and not _is_json(tail):
            return "fragment", None
        raise


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _is_json(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except ValueError:
        return False


def read_records(path) -> list[dict]:
    """The records of ``path``, in file order. Blank lines are skipped, and so is an incomplete
    last line (a writer killed mid-line); any other line that is not a record raises ValueError
    naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise ValueError(f"results: expected a results file, got {str(path)!r} (not a regular file)")
        raise FileNotFoundError(f"results: no file {path}; run ml.sweep(grid, results={str(path)!r}) first")
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    out = [parse_line(path, i + 1, raw) for i, raw in enumerate(lines) if raw.strip()]
    kind, rec = _tail(path, len(lines) + 1, data[end:])
    if kind == "record":
        out.append(rec)
    return out


def load_results(path="results/sweep.jsonl"):
    """A DataFrame with one row per run (the last line of each key): the config's keys as
    columns, then status, metrics (train_loss, best_loss, test_accuracy, ...) and ``curve``."""
    import pandas as pd
    latest = {}
    for rec in read_records(path):
        latest[rec["key"]] = rec
    rows = [{**r["config"], **{k: v for k, v in r.items() if k != "config"}} for r in latest.values()]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the path
def check_path(results, arg: str = "results", create: bool = True) -> Path:
    """``results`` as a Path to a regular file that can be written, else ValueError/TypeError
    naming ``arg``. ``create``: also create the folders and the (empty) file now."""
    if not isinstance(results, (str, os.PathLike)):
        raise TypeError(f"{arg}: expected a file path (str or Path), got {type(results).__name__}")
    path = Path(results)
    if str(results) == "" or path.is_dir():
        raise ValueError(f"{arg}: expected a file path, got the directory {str(path)!r}")
    if path.is_symlink() and not path.exists():  # creating it would create the link's target
        raise ValueError(f"{arg}: expected a regular file or a new path, got {str(path)!r} "
                         f"(a symlink to {os.readlink(path)!r}, which does not exist)")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{arg}: expected a regular file, got {str(path)!r} ({_kind(mode)})")
        writable = os.access(path, os.W_OK)
        where = path
    else:
        where = path.parent
        while not where.exists() and not where.is_symlink() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise ValueError(f"{arg}: expected a writable file path, got {str(path)!r} ({where} is not a folder)")
        writable = os.access(where, os.W_OK | os.X_OK)
    if not writable:
        raise ValueError(f"{arg}: expected a writable file path, got {str(path)!r} ({where}: permission denied)")
    _check_sidecar(sidecar_of(path), arg)
    if create and not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # never through a link
        except FileExistsError:
            pass  # another sweep created it; open() checks what it is
        except OSError as e:
            raise ValueError(f"{arg}: expected a writable file path, got {str(path)!r} ({e.strerror})") from e
    return path


def sidecar_of(path) -> str:
    """The claim lock of the results file ``path``: next to the real file, so that sweeps
    reaching it through different symlinks share it."""
    return f"{os.path.realpath(path)}.lock"


def _check_sidecar(sidecar: str, arg: str = "results"):
    """ValueError naming ``arg`` unless ``sidecar`` is absent or a regular file (not a link)."""
    try:
        mode = os.lstat(sidecar).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable folder: open() then runs without claims
    if not stat.S_ISREG(mode):
        what = f"a symlink to {os.readlink(sidecar)!r}" if stat.S_ISLNK(mode) else _kind(mode)
        raise ValueError(f"{arg}: expected the claim lock {sidecar!r} to be a regular file or absent, got "
                         f"{what}; remove it (a sweep creates it and never follows a link there)")


def _kind(mode) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


# ---------------------------------------------------------------- writing, shared
class ResultsFile:
    """A results file opened by one sweep: ``done`` (finished keys, kept up to date by
    ``refresh``), ``claim``/``release`` of configs, and de-duplicated, locked ``append``."""

    def __init__(self, path):
        self.path = Path(path)
        self.done: set[str] = set()
        self._offset = 0  # bytes of complete lines read so far
        self._lines = 0  # lines read so far (for error messages)
        self._claims = None  # fd of the sidecar PATH.lock
        self._sidecar = None

    @contextmanager
    def _locked(self, create=True):
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def open(self) -> "ResultsFile":
        """Check and repair the file and read the finished keys; open the sidecar of claims.
        Both under the file lock, as ``close`` deletes the sidecar under it."""
        with self._locked() as fd:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ValueError(f"results: expected a regular file, got {str(self.path)!r} ({_kind(mode)})")
            self._read_new(fd, fix_tail=True)
            self._sidecar = sidecar_of(self.path)
            _check_sidecar(self._sidecar)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                self._claims = os.open(self._sidecar, flags, 0o644)
                if not stat.S_ISREG(os.fstat(self._claims).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "not a regular file")
                fcntl.lockf(self._claims, fcntl.LOCK_SH, 1, 0)  # "in use": byte 0, shared by all sweeps
            except OSError as e:  # no sidecar or no record locks: no claims; appends stay de-duplicated
                if self._claims is not None:
                    os.close(self._claims)
                self._claims = None
                if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # planted since the check
                    _check_sidecar(self._sidecar)  # raises, naming what is there
        return self

    def close(self):
        """Release this process's claims; delete the sidecar if no other sweep is using it."""
        if self._claims is None:
            return
        try:
            with self._locked(create=False):
                fcntl.lockf(self._claims, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the whole sidecar: nobody else in it
                if os.lstat(self._sidecar).st_ino == os.fstat(self._claims).st_ino:
                    os.unlink(self._sidecar)
        except OSError:
            pass  # another sweep still uses it (or the file is gone): leave it
        finally:
            os.close(self._claims)  # releases every lock of this process on the sidecar
            self._claims = None

    def _read_new(self, fd, fix_tail: bool):
        """Read the bytes appended since the last read; with ``fix_tail`` (the lock held, so
        no writer is mid-line) end the file on a newline: add it after a complete record, or
        cut an incomplete fragment. Raises, changing nothing, on a line that is not a record."""
        size = os.fstat(fd).st_size
        if size < self._offset:  # truncated or replaced by hand: read it all again
            self._offset, self._lines, self.done = 0, 0, set()
        chunks, pos = [], self._offset
        while pos < size:
            chunk = os.pread(fd, size - pos, pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        recs = [parse_line(self.path, self._lines + i + 1, raw) for i, raw in enumerate(lines) if raw.strip()]
        tail = data[end:]
        kind, rec = _tail(self.path, self._lines + len(lines) + 1, tail) if fix_tail else ("blank", None)
        self.done.update(r["key"] for r in recs if r["status"] in DONE)
        self._offset += end
        self._lines += len(lines)
        if not fix_tail or not tail:
            return
        if kind == "fragment":
            os.ftruncate(fd, self._offset)
            return
        os.write(fd, b"\n")
        self._offset += len(tail) + 1
        self._lines += 1
        if kind == "record" and rec["status"] in DONE:
            self.done.add(rec["key"])

    def refresh(self) -> set[str]:
        """Read what other sweeps appended; return the finished keys."""
        with self._locked() as fd:
            self._read_new(fd, fix_tail=False)
        return self.done

    def append(self, record: dict) -> bool:
        """Append ``record`` (one write, then fsync) unless its key is already finished."""
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        with self._locked() as fd:
            self._read_new(fd, fix_tail=True)
            if record["key"] in self.done:
                return False
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            self._offset += len(line)
            self._lines += 1
            if record["status"] in DONE:
                self.done.add(record["key"])
        return True

    def claim(self, key: str) -> bool:
        """Try to claim ``key`` for this process; False while another process holds it."""
        if self._claims is None:
            return True
        try:
            fcntl.lockf(self._claims, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _slot(key))
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False
            return True  # the filesystem has no record locks: run it; appends stay de-duplicated
        return True

    def release(self, key: str):
        if self._claims is not None:
            try:
                fcntl.lockf(self._claims, fcntl.LOCK_UN, 1, _slot(key))
            except OSError:
                pass


def _slot(key: str) -> int:
    """The byte of the sidecar whose record lock stands for ``key`` (byte 0 means "in use")."""
    return 1 + int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big")
