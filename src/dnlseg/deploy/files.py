"""An output file that is either complete or absent: written beside its path, then renamed onto it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """``with atomic_output(path) as tmp: write(tmp)``: ``tmp`` (``.<name>.<random>.tmp`` in the same folder) is
    renamed onto ``path`` when the block ends without an error; when it raises or is interrupted, ``tmp`` and the
    folders this made for it are removed."""
    created = [folder for folder in reversed(path.parent.parents) if not folder.exists()]
    created += [path.parent] if not path.parent.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # the mode a plain open() gives, not mkstemp's 0600
    done = False
    try:
        yield tmp
        os.replace(tmp, path)
        done = True
    finally:
        tmp.unlink(missing_ok=True)
        for folder in reversed(created if not done else []):
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was put there meanwhile
                break
