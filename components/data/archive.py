"""Safe extraction of .zip and .tar(.gz) archives of an image folder.

Every member is checked before anything is written: absolute paths, ``..`` components, links
that point outside the destination, and device files are refused with the member's name.
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from components.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _check_member_name(archive: Path, name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refused (nothing extracted)")
    if ".." in posix.parts:
        raise DataError(f"{archive}: member {name!r} contains '..'; refused (nothing extracted)")


def _inside(base: PurePosixPath, link_parent: PurePosixPath, target: str) -> bool:
    if target.startswith("/"):
        return False
    parts: list[str] = []
    for part in (link_parent / target).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    return True


def _check_size(archive: Path, count: int, total: int, max_members: int, max_bytes: int) -> None:
    if count > max_members:
        raise DataError(f"{archive}: {count} members exceed data.max_archive_members ({max_members}); "
                        "refused (nothing extracted)")
    if total > max_bytes:
        raise DataError(f"{archive}: {total} bytes once extracted exceed data.max_archive_bytes ({max_bytes}); "
                        "refused (nothing extracted)")


def _verify_gzip(archive: Path) -> None:
    """Read the compressed stream to its end: a truncated file or a bad CRC raises here (tarfile
    alone stops at the last member and never reaches the gzip trailer)."""
    try:
        with gzip.open(archive, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (OSError, EOFError) as err:
        raise DataError(f"{archive}: corrupt or truncated gzip stream ({err}); refused (nothing extracted)") from None


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _check_member_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DataError(f"{archive}: member {info.filename!r} is a symbolic link; refused (nothing extracted)")


def _check_tar(archive: Path, tf: tarfile.TarFile) -> None:
    root = PurePosixPath(".")
    for member in tf.getmembers():
        _check_member_name(archive, member.name)
        if member.issym() or member.islnk():
            parent = PurePosixPath(member.name).parent if member.issym() else root
            if not _inside(root, parent, member.linkname):
                raise DataError(
                    f"{archive}: member {member.name!r} links to {member.linkname!r}, outside the archive; "
                    "refused (nothing extracted)"
                )
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"{archive}: member {member.name!r} is a device or special file; refused")


def extract_archive(archive: Path, dest: Path, max_members: int = 100_000, max_bytes: int = 8 * 2**30) -> Path:
    """Extract ``archive`` into ``dest`` after checking every member, the member count and the
    extracted size against the caps, and the archive's checksums (zip CRCs, the gzip trailer);
    return the image root. If the archive holds one top-level folder and nothing else, that
    folder is the root.
    """
    if not archive.is_file():
        raise DataError(f"archive not found: {archive}")
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(archive, zf)
                infos = zf.infolist()
                _check_size(archive, len(infos), sum(i.file_size for i in infos), max_members, max_bytes)
                bad = zf.testzip()
                if bad is not None:
                    raise DataError(f"{archive}: member {bad!r} fails its CRC check; refused (nothing extracted)")
                zf.extractall(dest)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            if name.endswith((".gz", ".tgz")):
                _verify_gzip(archive)
            with tarfile.open(archive) as tf:
                _check_tar(archive, tf)
                members = tf.getmembers()
                _check_size(archive, len(members), sum(m.size for m in members), max_members, max_bytes)
                tf.extractall(dest, filter="data")
        else:
            raise DataError(f"{archive}: unsupported archive type; expected one of {', '.join(ARCHIVE_SUFFIXES)}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise DataError(f"{archive}: not a readable archive ({err})") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest
