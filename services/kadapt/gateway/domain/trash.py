"""Deferred removal of a deleted scan's directories: out of sight at once, off the disk later.

Removing a scan's files is slow on a journaling file system: freeing the blocks of a freshly written
k-space file took 7 ms median and up to 39 ms on an idle ext4 volume, and 50-100 ms while other
processes wrote (the gateway's ``DELETE`` requests in ``kadapt bench load``), all of it on the event loop
that also answers plan deadlines. :meth:`Trash.discard` instead *renames* the directory into a trash
folder beside it, one metadata operation, so the scan is gone for every reader as soon as the request
returns and a cancelled request cannot leave it half-deleted; :meth:`Trash.empty` removes the trash in a
worker thread. The trash folder sits in the same parent as the directory's own parent (same volume, so
the rename is atomic); if the rename fails anyway the directory is removed at once, as before. Leftovers of
a process that died before emptying are removed by the next :meth:`Trash.empty`.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path


class Trash:
    """Trash folders named ``.<folder>-trash`` beside each ``<folder>`` whose subdirectories are
    discarded (``<data_dir>/scans/<id>`` -> ``<data_dir>/.scans-trash/<id>-<uuid>``)."""

    def __init__(self, *folders: Path) -> None:
        self._folders: set[Path] = {self.folder_for(Path(folder)) for folder in folders}

    @staticmethod
    def folder_for(parent: Path) -> Path:
        """The trash folder for subdirectories of ``parent``."""
        return parent.parent / f".{parent.name}-trash"

    def discard(self, directory: Path) -> None:
        """Move ``directory`` into the trash (nothing if it does not exist)."""
        folder = self.folder_for(directory.parent)
        self._folders.add(folder)
        try:
            folder.mkdir(exist_ok=True)
            directory.rename(folder / f"{directory.name}-{uuid.uuid4().hex}")
        except FileNotFoundError:
            if directory.exists():  # the trash folder's parent vanished: remove in place
                shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)

    def empty(self) -> None:
        """Remove everything in the known trash folders (blocking: run it in a worker thread)."""
        for folder in list(self._folders):
            if folder.is_dir():
                for entry in folder.iterdir():
                    shutil.rmtree(entry, ignore_errors=True)
