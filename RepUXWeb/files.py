"""What RepUX Web may read from the server's disk and accept from the browser (plain Python, no trame).

* :class:`FileBrowser` lists and opens files below one root folder only: ``..`` parts, absolute
  paths outside the root and symlinks (or Windows junctions) that lead out of it are refused
  with a :class:`FileAccessError`; symlinks that lead out are not even listed.
* :func:`check_upload` validates an uploaded file *before* anything is written or loaded: size
  limit, file type by name, and the file's own signature (gzip, NIfTI header, ``NRRD``,
  MetaImage keys, DICOM preamble) so that a renamed PDF is refused with a clear message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = [
    "IMAGE_SUFFIXES",
    "UPLOAD_SUFFIXES",
    "FileAccessError",
    "FileBrowser",
    "UploadError",
    "check_upload",
    "image_suffix",
    "is_dicom_file",
    "safe_file_name",
]

#: files the browser offers to open (a DICOM series is opened as its folder)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: files that can be uploaded (single-file formats only: no detached headers)
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class FileAccessError(ValueError):
    """A path the file browser refuses (outside the root, missing, not openable)."""


class UploadError(ValueError):
    """An upload that is refused (too large, not an image)."""


def image_suffix(name: str) -> str:
    """The image suffix of ``name`` (lower case, ``.nii.gz`` as one) or ""."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return ""


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True if the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def safe_file_name(name: str) -> str:
    """The base name of a browser-supplied file name with only ``A-Za-z0-9._-`` (never empty, never hidden)."""
    base = PureWindowsPath(PurePosixPath(str(name)).name).name  # drop any folder part, / or \\
    cleaned = _UNSAFE_NAME.sub("_", base).lstrip(".")
    return cleaned or "upload"


@dataclass(frozen=True)
class Entry:
    """One row of a folder listing (``path`` is relative to the root, with ``/``)."""

    name: str
    path: str
    kind: str  # "folder", "dicom-folder", "image", "file"
    size: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "size": self.size, "openable": self.kind in ("image", "dicom-folder")}


class FileBrowser:
    """Files below ``root`` and nothing else.

    Args:
        root: the folder the browser may show (must exist).

    Paths given to :meth:`resolve`, :meth:`list` and :meth:`files_to_open` are relative to the root
    (``""`` is the root itself); an absolute path is accepted only if it lies inside the root.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileAccessError(f"--root {str(root)!r} is not a folder.")
        self.root = path.resolve()

    # ------------------------------------------------------------------ paths
    def _inside(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def resolve(self, relative: str | os.PathLike[str] = "") -> Path:
        """The real path of ``relative``.

        Raises:
            FileAccessError: ``..`` in the path, an absolute path outside the root, a symlink that
                leads outside the root, or a path that does not exist.
        """
        text = str(relative or "").replace("\\", "/")
        parts = PurePosixPath(text).parts
        if ".." in parts:
            raise FileAccessError(f"path {text!r}: '..' is not allowed; paths are relative to the root folder.")
        candidate = Path(text) if Path(text).is_absolute() else self.root.joinpath(*[p for p in parts if p not in ("/", ".")])
        if Path(text).is_absolute() and not self._inside(Path(os.path.abspath(candidate))):
            raise FileAccessError(f"path {text!r} is outside the root folder {self.root}.")
        resolved = candidate.resolve()
        if not self._inside(resolved):
            raise FileAccessError(f"path {text!r} leads outside the root folder {self.root} (symbolic link); it is not readable here.")
        if not resolved.exists():
            raise FileAccessError(f"path {text!r} does not exist in {self.root}.")
        return resolved

    def relative(self, path: Path) -> str:
        """``path`` (inside the root) relative to the root, with ``/``."""
        rel = path.resolve().relative_to(self.root)
        return "" if str(rel) == "." else rel.as_posix()

    # ---------------------------------------------------------------- listing
    def _kind(self, path: Path) -> str:
        if path.is_dir():
            try:
                files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")][:8]
            except OSError:
                return "folder"
            return "dicom-folder" if any(is_dicom_file(p) for p in files) else "folder"
        if image_suffix(path.name):
            return "image"
        return "file"

    def list(self, relative: str | os.PathLike[str] = "") -> dict[str, object]:
        """The folder ``relative``: ``{"path", "parent", "entries": [Entry.to_dict()...]}`` (folders first).

        Hidden entries and symlinks that lead outside the root are left out.

        Raises:
            FileAccessError: see :meth:`resolve`, or not a folder.
        """
        folder = self.resolve(relative)
        if not folder.is_dir():
            raise FileAccessError(f"{relative!r} is not a folder.")
        entries: list[Entry] = []
        try:
            children = sorted(folder.iterdir(), key=lambda p: p.name.lower())
        except OSError as err:
            raise FileAccessError(f"cannot read folder {relative!r}: {err.strerror or err}.") from err
        for child in children:
            if child.name.startswith("."):
                continue
            real = child.resolve()
            if not self._inside(real) or not real.exists():
                continue
            kind = self._kind(real)
            size = real.stat().st_size if real.is_file() else 0
            entries.append(Entry(child.name, self.relative(child.parent) + ("/" if folder != self.root else "") + child.name, kind, size))
        entries.sort(key=lambda e: (e.kind not in ("folder", "dicom-folder"), e.name.lower()))
        here = self.relative(folder)
        parent = None if folder == self.root else self.relative(folder.parent)
        return {"path": here, "parent": parent, "entries": [e.to_dict() for e in entries]}

    def files_to_open(self, relative: str | os.PathLike[str]) -> list[Path]:
        """What to load for ``relative``: ``[image file]`` or the DICOM files of a folder (sorted by name).

        Raises:
            FileAccessError: see :meth:`resolve`; not an image file; a folder without DICOM files.
        """
        path = self.resolve(relative)
        if path.is_file():
            if not image_suffix(path.name):
                raise FileAccessError(f"{path.name}: not an image file; RepUX Web opens {', '.join(IMAGE_SUFFIXES)} files and DICOM folders.")
            return [path]
        files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and self._inside(p.resolve()) and is_dicom_file(p)]
        if not files:
            raise FileAccessError(f"folder {relative!r} holds no DICOM files (nothing with the 'DICM' preamble).")
        return files


# ---------------------------------------------------------------------- uploads


def _signature_ok(suffix: str, head: bytes) -> bool:
    if suffix == ".nii.gz":
        return head[:2] == b"\x1f\x8b"
    if suffix == ".nii":
        if len(head) < 4:
            return False
        return int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)
    if suffix == ".nrrd":
        return head.startswith(b"NRRD")
    if suffix == ".mha":
        text = head[:1024]
        return b"ObjectType" in text or b"NDims" in text
    if suffix == ".dcm":
        return len(head) >= 132 and head[128:132] == b"DICM"
    return False


def check_upload(name: str, size: int, head: bytes, max_bytes: int) -> str:
    """Validate an upload before it is written or loaded; returns the safe file name to store it under.

    Args:
        name: the file name the browser sent.
        size: its size in bytes.
        head: its first bytes (at least 1 KiB when the file is that large).
        max_bytes: the size limit.

    Raises:
        UploadError: too large, empty, not an image type RepUX Web reads, or content that does not match.
    """
    shown = safe_file_name(name)
    if size > max_bytes:
        raise UploadError(f"{shown} is {size / 1e6:.1f} MB; the upload limit is {max_bytes / 1e6:.0f} MB (repux web --max-upload-mb).")
    if size <= 0:
        raise UploadError(f"{shown} is empty.")
    suffix = image_suffix(shown)
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadError(f"{shown} is not a CT image RepUX Web can read; upload one of: {', '.join(UPLOAD_SUFFIXES)} (or open a DICOM folder on the server).")
    if not _signature_ok(suffix, head):
        raise UploadError(f"{shown} does not look like a {suffix} image (its content does not match its name); nothing was loaded.")
    return shown
