"""Reading a file the daemon did not make (a model, a replayed picture) without being stuck on it.

A FIFO in its place would block the open until a writer comes, and a device (``/dev/zero``) never
ends: either would stop the frame loop, and SIGTERM with it. Only regular files are read, of a
size known before anything is read.
"""

from __future__ import annotations

import os
import stat


def check_regular(path, max_bytes: int) -> None:
    """ValueError unless ``path`` is a regular file of at most ``max_bytes`` (saying what it is
    instead: a folder, a FIFO, a device, too large); OSError if it cannot be looked at (missing).
    Symlinks are followed: /dev/zero behind one is a device."""
    _check(os.stat(path), max_bytes)


def open_regular(path, max_bytes: int):
    """``path`` opened for binary reading, if check_regular passes, also for the file opened."""
    check_regular(path, max_bytes)
    # O_NONBLOCK: should a FIFO take the file's place after the check, opening it does not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    f = os.fdopen(fd, "rb")
    try:
        _check(os.fstat(fd), max_bytes)
    except BaseException:
        f.close()
        raise
    return f


def _check(st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
                 (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
        kind = next((kind for test, kind in kinds if test(st.st_mode)), "not a file")
        raise ValueError(f"cannot read: is {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"is {st.st_size / 2**20:.1f} MB; the largest accepted is {max_bytes / 2**20:.0f} MB")
