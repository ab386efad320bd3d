"""Atomic writes: a crash or a kill never leaves a half-written file or folder that looks valid.

Work in progress lives beside its destination (same file system, so the final rename is atomic) under a name
that nothing mistakes for a result: a dot, ``tmp-``, digits, ``.partial``. In particular it never contains the
destination's name: Lightning's ``ckpt_path="last"`` takes any file whose name contains ``last``.

Replacing a folder takes two renames (the old one aside, the new one in); a journal (``.tmp-*.swap.partial``)
names both while they happen, so a kill between them is undone the next time :func:`atomic_dir` writes that
destination (or :func:`recover_dir` is called): the new folder, complete by then, is moved in.

What is published gets the modes of a plain ``open``/``mkdir`` under the process's umask (files ``0644`` and
folders ``0755`` under the usual ``022``), also where a library wrote a file ``0600`` into the work folder, so a
colleague can read the results.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` by renames.

    On an exception the temporary folder is removed and ``path`` is left as it was. A swap of an earlier call that
    a kill interrupted is completed first (:func:`recover_dir`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = _create_partial(path.parent, os.mkdir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish_modes(tmp)
    if not path.exists():
        os.replace(tmp, path)
        return
    old = _create_partial(path.parent, os.mkdir)
    journal = path.parent / f"{old.name.removesuffix('.partial')}.swap.partial"
    with atomic_file(journal) as partial:
        partial.write_text(json.dumps({"destination": path.name, "new": tmp.name, "old": old.name}))
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    journal.unlink()


def recover_dir(path: str | os.PathLike) -> None:
    """Complete the swaps of ``path`` that a kill interrupted between :func:`atomic_dir`'s two renames: when
    ``path`` is missing, move in the new folder (or, if it is gone too, the old one); then remove the leftovers.
    Logs a warning for each."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for journal in sorted(path.parent.glob(".tmp-*.swap.partial")):
        try:
            swap = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue
        if swap.get("destination") != path.name:
            continue
        new, old = path.parent / swap["new"], path.parent / swap["old"]
        restored = None
        if not path.exists():
            restored = new if new.is_dir() else old if old.is_dir() else None
            if restored is not None:
                os.replace(restored, path)
        for leftover in (new, old):
            shutil.rmtree(leftover, ignore_errors=True)
        journal.unlink(missing_ok=True)
        what = {new: "the new folder", old: "the old folder", None: "nothing (both were gone)"}[restored]
        logger.warning("%s: completed a folder swap a kill had interrupted (restored %s; removed the leftovers)",
                       path, what)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    tmp = _create_partial(path.parent, lambda name: os.close(os.open(name, flags, 0o666)))  # 0644 under umask 022
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
