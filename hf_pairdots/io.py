"""Atomic publication of files and folders: a kill leaves the old version or the new, never half.

Every file or folder hf_pairdots publishes (``report.html``, a rewritten ``explanations.jsonl``,
``meta.json``, cache entries, a ``datasets`` copy of the records, an augmented dataset folder,
the installed WordNet corpus) goes through one of these:

- :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_write_file`: the new
  content goes to a temp file in the target's folder, which is fsynced, given its mode, renamed
  over the target (``os.replace``, atomic on POSIX and Windows), and then the folder is fsynced
  so that the rename itself survives a power cut.
- :func:`atomic_replace_dir`: a context manager that yields a temp sibling folder to fill; on
  a clean exit every file in it and the folder are fsynced and it is swapped in place of the
  target. An existing target is first moved aside; if the swap fails it is moved back
  (rollback), and only after a successful swap is it deleted.

On any error (``KeyboardInterrupt`` included) the temp file or folder is removed and the
target is left as it was. Appends to ``explanations.jsonl`` are not whole-file writes; their
recovery rule is in :class:`hf_pairdots.report.ExplanationStore`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_replace_dir", "atomic_write_bytes", "atomic_write_file", "atomic_write_text", "fsync_dir"]

FILE_MODE = 0o644
DIR_MODE = 0o755


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk. No-op on Windows, which cannot open
    a folder for fsync."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_file(path: str | os.PathLike, write: Callable[[Path], None], *, mode: int = FILE_MODE) -> Path:
    """Publish the file that ``write(temp_path)`` writes as ``path``, atomically.

    ``write`` receives the path of an empty temp file in ``path``'s folder and writes the whole
    content there (e.g. ``lambda tmp: safetensors.torch.save_file(tensors, tmp)``). Then the
    temp file is fsynced, chmod-ed to ``mode``, renamed over ``path`` and the folder fsynced.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileNotFoundError: the parent folder does not exist.
        Whatever ``write`` or the rename raises; the temp file is removed first and ``path``
        keeps its previous content.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int = FILE_MODE) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_file`); mode 0644 by default."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)

    return atomic_write_file(path, write, mode=mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = FILE_MODE) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_file`); mode 0644 by default."""
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
        fsync_dir(folder)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first, put back if
    the rename fails, and deleted once the new folder is in place."""
    if not os.path.lexists(target):
        os.replace(staging, target)
        fsync_dir(target.parent)
        return
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException as err:
        try:
            os.replace(old, target)
        except OSError:
            err.add_note(f"the previous {target} could not be put back; it is kept at {old}")
        raise
    fsync_dir(target.parent)
    _remove(old)


@contextmanager
def atomic_replace_dir(target: str | os.PathLike, *, mode: int = DIR_MODE) -> Iterator[Path]:
    """Build a folder and publish it as ``target`` in one rename.

    Usage::

        with atomic_replace_dir(out) as tmp:
            dataset.save_to_disk(str(tmp))   # fill tmp; out is untouched until the block ends

    The yielded folder is a new, empty sibling of ``target`` (same file system, so the rename
    is atomic). On a clean exit it is given ``mode``, its files and folders are fsynced, and it
    replaces ``target``: an existing ``target`` (folder or file) is renamed aside, the new folder
    renamed in, then the old one deleted; if renaming the new one in fails, the old one is
    renamed back and the error re-raised (with a note saying where the old copy is, should even
    that fail). If the block raises, the temp folder is deleted and ``target`` is not touched.
    ``target``'s parent folders are created.

    Cost: one fsync per file written, plus two or three renames.

    Raises:
        OSError: the rename failed (e.g. another process put a non-empty folder at ``target``
            meanwhile); ``target`` holds what it held before.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        staging.chmod(mode)
        _fsync_tree(staging)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
