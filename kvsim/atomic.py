"""Whole files or nothing, and only over regular files: every output kvsim writes (sweep CSVs, profiles, plots)
goes through `check_target` and then `replacing` or `output`.

- a regular file (or a new name in an existing, writable folder) is written to a temporary file beside it and
  renamed over it only when everything was written; on any failure (an exception, a full disk, SIGTERM via
  `terminate_cleanly`) the temporary file is removed and the old file is left as it was;
- a character device or a FIFO (/dev/null, /dev/stdout, a named pipe) is written through, never renamed over:
  a rename would replace the device node with a regular file;
- a folder, a missing folder, or anything else is refused with one line (KvsimError) before any work.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import KvsimError


def check_target(path: str | Path, what: str = "--out", stream_ok: bool = True) -> Path:
    """The output path, or KvsimError if kvsim cannot (or must not) write it."""
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():
        raise KvsimError(f"{what}: {p} is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise KvsimError(f"{what}: folder {parent} does not exist")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise KvsimError(f"{what}: cannot use {p}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stream_ok and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            return p
        raise KvsimError(f"{what}: {p} is not a regular file; kvsim replaces only regular files")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KvsimError(f"{what}: folder {parent} is not writable")
    return p


def _is_stream(p: Path) -> bool:
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def replacing(target: Path, suffix: str = "", what: str = "output"):
    """A temporary path beside `target` (ending in `suffix`, for writers that infer a format from it),
    renamed over `target` when the block succeeds and removed when it fails, so an existing file is never
    left half-written. `target` must be a regular file or a new name."""
    target = check_target(target, what, stream_ok=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as e:
        raise KvsimError(f"{what}: cannot write in {target.parent}: {e.strerror}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode())
        os.replace(tmp, target)
    except OSError as e:
        raise KvsimError(f"{what}: cannot write {target}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def output(path: str | Path, what: str = "--out", buffering: int = 1 << 20):
    """A text file object for `path`: a temporary file renamed over it on success, or the device or FIFO
    itself. OSError (a full disk, a closed pipe) becomes one KvsimError line; nothing half-written remains."""
    p = check_target(path, what)
    if _is_stream(p):
        try:
            with open(p, "w", buffering=buffering) as f:
                yield f
        except OSError as e:
            raise KvsimError(f"{what}: cannot write {p}: {e.strerror or e}") from None
        return
    with replacing(p, what=what) as tmp:
        try:
            with open(tmp, "w", buffering=buffering) as f:
                yield f
        except OSError as e:
            raise KvsimError(f"{what}: cannot write {p}: {e.strerror or e}") from None


def terminate_cleanly() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks run and remove temporary files (the default
    action kills the process where it stands and leaves them behind)."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    try:
        signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        pass
