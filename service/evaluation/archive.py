"""Extract an uploaded data set archive (zip, tar, tar.gz) without trusting it.

Refused: members that escape the extraction folder (absolute paths, `..`, links), special files, more
members or more uncompressed bytes than the limits (counted while copying, not taken from headers).
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from service.errors import ArchiveTooLarge, InvalidArchive

_CHUNK = 1 << 20


def _safe_target(dest: Path, name: str) -> Path | None:
    """The member's path inside dest, or None for a folder entry; raises when it would escape."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise InvalidArchive(f"archive member {name!r} escapes the extraction folder")
    parts = [p for p in posix.parts if p not in ("", ".")]
    if not parts:
        return None
    target = dest.joinpath(*parts).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise InvalidArchive(f"archive member {name!r} escapes the extraction folder")
    return target


class _Budget:
    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.bytes_left = max_bytes
        self.members_left = max_members
        self.max_bytes, self.max_members = max_bytes, max_members

    def member(self) -> None:
        self.members_left -= 1
        if self.members_left < 0:
            raise ArchiveTooLarge(f"archive has more than {self.max_members} members (OPTIC_MAX_ARCHIVE_MEMBERS)")

    def copy(self, source: IO[bytes], target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while chunk := source.read(_CHUNK):
                self.bytes_left -= len(chunk)
                if self.bytes_left < 0:
                    raise ArchiveTooLarge(
                        f"archive expands to more than {self.max_bytes} bytes (OPTIC_MAX_ARCHIVE_BYTES)"
                    )
                out.write(chunk)


def extract_archive(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(max_bytes, max_members)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, budget)
        elif _is_tar(archive):
            _extract_tar(archive, dest, budget)
        else:
            raise InvalidArchive("the dataset is not a zip, tar or tar.gz archive")
    except (InvalidArchive, ArchiveTooLarge):
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise InvalidArchive(f"broken archive: {exc}") from None
    return dest


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.next()
        return True
    except (tarfile.TarError, EOFError, OSError):
        return False


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            budget.member()
            target = _safe_target(dest, info.filename)
            if target is None or info.is_dir():
                continue
            # Unix symlinks stored in a zip carry S_IFLNK in the high bits of external_attr.
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise InvalidArchive(f"archive member {info.filename!r} is a symbolic link")
            with zf.open(info) as source:
                budget.copy(source, target)


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            budget.member()
            target = _safe_target(dest, member.name)
            if target is None or member.isdir():
                continue
            if not member.isfile():
                raise InvalidArchive(f"archive member {member.name!r} is a link or special file")
            source = tar.extractfile(member)
            if source is None:
                raise InvalidArchive(f"archive member {member.name!r} cannot be read")
            with source:
                budget.copy(source, target)
