"""Crash-safe file writing: every file is written whole or not at all.

`atomic_write` writes to a temporary file in the same directory, flushes and fsyncs it, gives it
the permissions a plain `open(path, "w")` would (0666 minus the umask; `mkstemp` alone gives
0600), renames it over the target and fsyncs the directory, so a crash leaves either the old
file or the new one, never a mix.
"""
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory):
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, chunks):
    """Write the byte strings `chunks` to `path` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
