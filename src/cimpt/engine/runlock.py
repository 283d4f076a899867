"""One process per run directory: an advisory lock on ``<run.dir>/.lock``.

Two trainers writing to the same run directory (a command launched twice, a resume started
while the first run still lives) would interleave ``metrics.jsonl`` lines and race on
checkpoints. The main rank takes an exclusive POSIX record lock (``lockf``) on
``<run.dir>/.lock`` before it resumes or writes anything. The operating system drops it when
the process ends, even by SIGKILL, so a crashed run never leaves a stale lock; and unlike
``flock`` it is not shared with forked data-loader workers, which may outlive a killed parent
for a moment. POSIX locks do not conflict within one process, so a set of held paths covers
two trainers in one process (a notebook). Where locking is missing (Windows) or unsupported
(some network file systems, with a note) only that in-process check remains: the lock guards
against a mistake and must never stop a run that would otherwise work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from types import TracebackType

from cimpt.errors import CimptError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_HELD: set[Path] = set()  # lock files this process holds


class RunLock:
    """Exclusive, non-blocking lock on a run directory; the holder's pid is in the file.

    Raises ``CimptError`` on ``acquire`` when another live process holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._key: Path | None = None  # our entry in _HELD
        self._made: list[Path] = []

    def _unwritable(self, e: OSError) -> CimptError:
        return CimptError(f"run.dir {self.path.parent}: cannot write there ({e.strerror or e})")

    def acquire(self) -> RunLock:
        if self._key is not None:
            return self
        # What acquire creates, so that a run that fails to start can leave nothing behind.
        self._made = [p for p in (self.path.parent, self.path) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e) from None
        key = self.path.resolve()
        if key in _HELD:
            # Checked before opening the file: closing any descriptor of it would drop the
            # POSIX lock this process already holds.
            self._in_use(str(os.getpid()))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise self._unwritable(e) from None
        if fcntl is None:
            os.close(fd)
            _HELD.add(key)  # this process's own runs are still kept apart
            self._key = key
            return self
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._in_use(holder)
            print(
                f"note: run.dir {self.path.parent}: cannot lock ({e.strerror}); "
                "nothing stops a second run from writing to it",
                file=sys.stderr,
            )
            _HELD.add(key)
            self._key = key
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(key)
        self._key = key
        return self

    def _in_use(self, holder: str) -> None:
        who = f" (pid {holder})" if holder else ""
        raise CimptError(
            f"run.dir {self.path.parent}: in use by another cimpt run{who}; "
            "wait for it to end or choose another run.dir"
        )

    def release(self, undo: bool = False) -> None:
        """Unlock; with ``undo`` (a run that failed before writing anything) also remove the
        lock file and the run directory if ``acquire`` created them and they hold nothing else.
        """
        if self._key is not None:
            _HELD.discard(self._key)
            self._key = None
        if self._fd is not None:
            os.close(self._fd)  # closing drops the POSIX lock
            self._fd = None
        if undo:
            for made in reversed(self._made):  # the file, then its directory
                with contextlib.suppress(OSError):  # not empty, or gone: leave it
                    made.rmdir() if made.is_dir() else made.unlink()
        self._made = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
