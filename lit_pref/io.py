"""Atomic writes: a crash or a kill never leaves a half-written file or folder that looks valid.

Work in progress lives beside its destination (same file system, so the final rename is atomic) under a name
that nothing mistakes for a result: a dot, ``tmp-``, digits, ``.partial``. In particular it never contains the
destination's name: Lightning's ``ckpt_path="last"`` takes any file whose name contains ``last``.

What is published gets the modes of a plain ``open``/``mkdir`` under the process's umask (files ``0644`` and
folders ``0755`` under the usual ``022``), also where a library wrote a file ``0600`` into the work folder, so a
colleague can read the results.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` by renames.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_partial(path.parent, os.mkdir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_modes(tmp)
    old = None
    if path.exists():
        old = _create_partial(path.parent, os.mkdir)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_partial(path.parent, lambda name: os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_modes(folder: Path) -> None:
    """Give ``folder`` and every file and folder below it the modes ``open``/``mkdir`` give under the umask."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _create_partial(directory: Path, create: Callable[[str], object]) -> Path:
    """Create (with ``create``, which fails if the entry exists) a fresh work-in-progress entry in ``directory``."""
    while True:
        path = directory / f".tmp-{os.getpid()}-{secrets.randbelow(10**12):012d}.partial"
        try:
            create(str(path))
            return path
        except FileExistsError:
            continue
