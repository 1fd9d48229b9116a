"""The model store, the model catalog and safe downloads.

* **Store**: a folder of model folders, ``$REPUX_HOME/models/<id>/`` (default
  ``~/.repux``).  Models shipped inside the package (``repux/resources/models``)
  are *built-in*: always available, read-only.
* **Catalog**: ``Resources/catalog.json`` (packaged as
  ``repux/resources/catalog.json``; ``$REPUX_CATALOG`` overrides it with a
  path or URL) lists downloadable models with URL, size and sha256.
* **Downloads** stream to ``<store>/downloads/<id>.zip.part`` with progress,
  resume after an interruption (HTTP ``Range``), are verified against the
  catalog's sha256, extracted into a temporary folder (refusing members that
  would escape it), verified again (the model's own sha256) and only then
  moved into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repux.errors import ConfigError, ModelFileError, OutputError, did_you_mean
from repux.io.files import os_error_message
from repux.models.folder import CARD_FILE, ModelCard, inspect_model, read_model_card, sha256_file
from repux.models.ids import MODEL_ID_RULE, check_model_id, is_model_id

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ID_RULE",
    "CatalogEntry",
    "ModelStore",
    "builtin_models_dir",
    "catalog_rows",
    "check_model_id",
    "download",
    "list_models",
    "load_catalog",
    "official_checkpoints",
    "resolve_model",
    "safe_extract_zip",
    "store_root",
]

logger = logging.getLogger(__name__)

#: the model used when none is named (built in, no download)
DEFAULT_MODEL = "repux-tiny-abdomen-ct"

#: refuse archives that unpack to more than this (zip-bomb guard)
MAX_UNPACKED_BYTES = 8 * 1024**3


def store_root() -> Path:
    """``$REPUX_HOME`` or ``~/.repux``."""
    env = os.environ.get("REPUX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".repux"


def builtin_models_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "resources" / "models"


def _catalog_location() -> str:
    env = os.environ.get("REPUX_CATALOG")
    if env:
        return env
    packaged = Path(__file__).resolve().parents[1] / "resources" / "catalog.json"
    if packaged.is_file():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "Resources" / "catalog.json")


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable model."""

    id: str
    version: str
    name: str
    description: str
    url: str
    size_bytes: int
    sha256: str
    labels: tuple[str, ...] = ()
    preset: str = ""
    license: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CatalogEntry:
        try:
            return cls(
                id=str(d["id"]),
                version=str(d.get("version", "1.0.0")),
                name=str(d.get("name", d["id"])),
                description=str(d.get("description", "")),
                url=str(d["url"]),
                size_bytes=int(d.get("size_bytes", 0)),
                sha256=str(d["sha256"]).lower(),
                labels=tuple(d.get("labels", ())),
                preset=str(d.get("preset", "")),
                license=str(d.get("license", "")),
            )
        except KeyError as err:
            raise ConfigError(f"catalog entry {d.get('id', d)!r} lacks the field {err.args[0]!r}.") from err


def load_catalog(location: str | None = None) -> list[CatalogEntry]:
    """Read the catalog (a JSON file path or an http(s) URL)."""
    loc = location or _catalog_location()
    try:
        if loc.startswith(("http://", "https://")):
            with urllib.request.urlopen(loc, timeout=30) as r:
                data = json.loads(r.read().decode("utf-8"))
        else:
            if not Path(loc).is_file():
                return []
            data = json.loads(Path(loc).read_text())
    except (OSError, urllib.error.URLError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the model catalog {loc!r}: {err}") from err
    items = data.get("models", []) if isinstance(data, dict) else data
    return [CatalogEntry.from_dict(d) for d in items]


#: refuse archives with more members than this (a model folder holds a handful of files)
MAX_ARCHIVE_MEMBERS = 1000
#: refuse members compressed more than this (zip bombs; real weights compress about 1.1:1)
MAX_COMPRESSION_RATIO = 200


def safe_extract_zip(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract ``archive`` into ``dest``, refusing anything unsafe before writing a byte.

    Refused: absolute paths, drive letters, ``..``, backslashes, duplicate names,
    links and special files (only regular files and folders), more than
    :data:`MAX_ARCHIVE_MEMBERS` members, a compression ratio above
    :data:`MAX_COMPRESSION_RATIO` and more than ``max_bytes`` in total.  Members
    are then streamed with the byte counts enforced (a member that unpacks to
    more than it declares is refused too).
    """
    dest = dest.resolve()
    where = f"refusing to extract {str(archive)!r}"
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(f"{str(archive)!r} is not a valid zip archive: {err}") from err
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARCHIVE_MEMBERS:
            raise ModelFileError(f"{where}: it has {len(infos)} members; a model archive has a few (at most {MAX_ARCHIVE_MEMBERS}).")
        total = 0
        seen: set[str] = set()
        for info in infos:
            name = info.filename
            if "\\" in name or ":" in name or name.startswith("/") or "\x00" in name:
                raise ModelFileError(f"{where}: member {name!r} has an absolute path, a drive letter or a backslash.")
            target = (dest / name).resolve()
            if ".." in Path(name).parts or (dest != target and dest not in target.parents):
                raise ModelFileError(f"{where}: member {name!r} would be written outside the target folder.")
            key = name.rstrip("/").lower()
            if key in seen:
                raise ModelFileError(f"{where}: member {name!r} appears twice.")
            seen.add(key)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise ModelFileError(f"{where}: member {name!r} is a symbolic link.")
            if mode not in (0, 0o100000, 0o040000):
                raise ModelFileError(f"{where}: member {name!r} is not a regular file or folder (a link, device or pipe).")
            total += info.file_size
            if total > max_bytes:
                raise ModelFileError(f"{where}: it unpacks to more than {max_bytes / 1024**3:.1f} GB.")
            if info.file_size > 1024 * 1024 and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
                raise ModelFileError(
                    f"{where}: member {name!r} is compressed {info.file_size / max(1, info.compress_size):.0f}:1 (a zip bomb?); at most {MAX_COMPRESSION_RATIO}:1 is accepted."
                )
        try:
            _extract_members(zf, infos, dest, max_bytes, where)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ModelFileError(f"{where}: it is corrupted ({err}).") from err


def _extract_members(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], dest: Path, max_bytes: int, where: str) -> None:
    written = 0
    for info in infos:
        target = dest / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with zf.open(info) as src, open(target, "wb") as out:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                n += len(b)
                written += len(b)
                if n > info.file_size or written > max_bytes:
                    raise ModelFileError(f"{where}: member {info.filename!r} unpacks to more than it declares.")
                out.write(b)


def _refuse_links(folder: Path) -> None:
    """A model folder to import holds regular files only (no symbolic links that could point anywhere)."""
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            raise ModelFileError(f"refusing to import {str(folder)!r}: {str(p)!r} is a symbolic link; copy the real files into the model folder.")
        if not (p.is_file() or p.is_dir()):
            raise ModelFileError(f"refusing to import {str(folder)!r}: {str(p)!r} is not a regular file.")


def _find_model_dir(root: Path) -> Path:
    cards = sorted(root.rglob(CARD_FILE), key=lambda p: len(p.parts))
    if not cards:
        raise ModelFileError(f"no {CARD_FILE} found in the archive or folder {str(root)!r}; it is not a RepUX model.")
    return cards[0].parent


def download(
    url: str, dest: Path, *, expected_sha256: str | None = None, progress: Callable[[int, int], None] | None = None, cancel=None, chunk: int = 1 << 16
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part``; verify sha256; atomic rename.

    Args:
        url: http(s) or file URL.
        dest: final file path.
        expected_sha256: hex digest to verify (the partial file is discarded on mismatch).
        progress: called with ``(bytes_done, bytes_total)``; total is 0 when unknown.
        cancel: optional :class:`~repux.progress.CancelToken` checked per chunk.

    Raises:
        ModelFileError: on network errors (the partial file is kept for resuming) or a checksum mismatch.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "repux"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # already complete
            resp = None
        else:
            raise ModelFileError(f"download of {url} failed: HTTP {err.code} {err.reason}.") from err
    except (urllib.error.URLError, OSError) as err:
        raise ModelFileError(
            f"download of {url} failed: {getattr(err, 'reason', err)}. Check the network or proxy, or download the file by hand and use 'repux models import'."
        ) from err
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            if status == 206:
                total = have + int(resp.headers.get("Content-Length", 0) or 0)
                mode = "ab"
                logger.info("resuming download of %s at %d bytes", url, have)
            else:
                total = int(resp.headers.get("Content-Length", 0) or 0)
                have = 0
                mode = "wb"
            try:
                f = open(part, mode)
            except OSError as err:
                raise OutputError(os_error_message(part, err)) from err
            with f:
                while True:
                    if cancel is not None:
                        cancel.check()
                    try:
                        b = resp.read(chunk)
                    except (OSError, urllib.error.URLError) as err:
                        raise ModelFileError(f"download of {url} was interrupted after {have} bytes ({err}); run the same command again to resume.") from err
                    if not b:
                        break
                    try:
                        f.write(b)
                    except OSError as err:
                        raise OutputError(os_error_message(part, err) + " The partial download is kept; run the same command again to resume.") from err
                    have += len(b)
                    if progress is not None:
                        progress(have, total)
            if total and have < total:
                raise ModelFileError(f"download of {url} stopped after {have} of {total} bytes; run the same command again to resume.")
    if expected_sha256:
        digest = sha256_file(part)
        if digest != expected_sha256.lower():
            part.unlink()
            raise ModelFileError(
                f"download of {url} is corrupted: sha256 {digest[:16]}... does not match the catalog's {expected_sha256[:16]}...; the partial file was removed, try again."
            )
    os.replace(part, dest)
    return dest


class ModelStore:
    """Installed models in ``root/models`` plus the built-in ones."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else store_root()
        self.models_dir = self.root / "models"
        self.downloads_dir = self.root / "downloads"

    # ----------------------------------------------------------------- listing
    def installed(self) -> list[ModelCard]:
        """Model cards of the installed (user) models, sorted by id."""
        out = []
        if self.models_dir.is_dir():
            for d in sorted(self.models_dir.iterdir()):
                if d.is_dir() and not d.name.startswith(".") and (d / CARD_FILE).is_file():
                    try:
                        out.append(read_model_card(d))
                    except ModelFileError as err:
                        logger.warning("skipping broken model folder %s: %s", d, err)
        return out

    def builtin(self) -> list[ModelCard]:
        root = builtin_models_dir()
        if not root.is_dir():
            return []
        return [read_model_card(d) for d in sorted(root.iterdir()) if (d / CARD_FILE).is_file()]

    def available(self) -> list[ModelCard]:
        """Built-in and installed models (installed ones shadow built-ins of the same id)."""
        cards = {c.id: c for c in self.builtin()}
        cards.update({c.id: c for c in self.installed()})
        return [cards[k] for k in sorted(cards)]

    def path(self, model_id: str) -> Path:
        check_model_id(model_id)
        for c in self.available():
            if c.id == model_id:
                assert c.path is not None
                return c.path
        raise ModelFileError(self._unknown_message(model_id))

    def _unknown_message(self, model_id: str) -> str:
        known = [c.id for c in self.available()]
        try:
            catalog = {e.id: e for e in load_catalog()}
        except ConfigError:
            catalog = {}
        if model_id in catalog:
            e = catalog[model_id]
            return f"model {model_id!r} is not installed; install it with 'repux models install {model_id}' ({e.size_bytes / 1e6:.0f} MB)."
        hint = did_you_mean(model_id, known + list(catalog))
        return f"unknown model {model_id!r}; installed: {', '.join(known) or 'none'}.{hint} A model can also be given as a folder path."

    # ------------------------------------------------------------ installation
    def _unique_dest(self, model_id: str, replace: bool) -> Path:
        check_model_id(model_id)
        dest = self.models_dir / model_id
        if dest.exists() and not replace:
            raise ModelFileError(f"a model with id {model_id!r} is already installed at {dest}; remove it first or import under another --id.")
        return dest

    def lock(self, model_id: str):
        """The lock that serializes installing, replacing and removing ``model_id`` (see :class:`repux.io.locks.FileLock`)."""
        from repux.io.locks import FileLock

        return FileLock(self.models_dir / f".{model_id}.lock", f"model id {model_id!r}")

    def import_model(self, source: str | Path, *, model_id: str | None = None, replace: bool = False) -> ModelCard:
        """Install a model folder or a ``.zip`` of one into the store.

        The archive is checked before anything is written (see :func:`safe_extract_zip`), the
        model is inspected completely (:func:`repux.models.folder.inspect_model`: card values,
        sha256, tensor names, shapes, dtypes, finite values) in a temporary folder, and only
        then moved into place under the id's lock: of two imports of the same id at once,
        exactly one wins and the other gets a clear error; a replaced model is swapped in
        with renames (a reader never sees a half-written folder).
        """
        src = Path(source)
        if model_id is not None:
            check_model_id(model_id, "--id")
        if not src.exists():
            raise ModelFileError(f"{str(src)!r} does not exist.")
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=self.models_dir))
        except OSError as err:
            from repux.errors import OutputError
            from repux.io.files import os_error_message

            raise OutputError(os_error_message(self.models_dir, err)) from err
        try:
            if src.is_file():
                if not zipfile.is_zipfile(src):
                    raise ModelFileError(f"{str(src)!r} is neither a model folder nor a zip archive.")
                safe_extract_zip(src, tmp / "x")
                found = _find_model_dir(tmp / "x")
            else:
                found = _find_model_dir(src)
                _refuse_links(found)
                shutil.copytree(found, tmp / "x", symlinks=True)
                found = tmp / "x"
            card = inspect_model(found)
            new_id = model_id or card.id
            if model_id is None and not is_model_id(new_id):
                raise ModelFileError(
                    f"the model's id {new_id!r} (in {CARD_FILE}) is not allowed as a store name; import it under another id with --id (use {MODEL_ID_RULE})."
                )
            if model_id and model_id != card.id:
                data = json.loads((found / CARD_FILE).read_text())
                data["id"] = model_id
                (found / CARD_FILE).write_text(json.dumps(data, indent=2) + "\n")
            with self.lock(new_id):
                dest = self._unique_dest(new_id, replace)
                if dest.exists():
                    old = tmp / "old"
                    os.replace(dest, old)  # readers holding files of the old model keep them
                os.replace(found, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("installed model %s in %s", new_id, dest)
        return read_model_card(dest)

    def install(self, model_id: str, *, progress: Callable[[int, int], None] | None = None, cancel=None, replace: bool = False) -> ModelCard:
        """Download a catalog model, verify it and install it."""
        check_model_id(model_id)
        catalog = {e.id: e for e in load_catalog()}
        if model_id not in catalog:
            raise ModelFileError(f"model {model_id!r} is not in the catalog; available: {', '.join(catalog) or 'none'}.{did_you_mean(model_id, catalog)}")
        entry = catalog[model_id]
        self._unique_dest(entry.id, replace)
        archive = self.downloads_dir / f"{entry.id}-{entry.version}.zip"
        if not (archive.exists() and sha256_file(archive) == entry.sha256):
            download(entry.url, archive, expected_sha256=entry.sha256, progress=progress, cancel=cancel)
        card = self.import_model(archive, model_id=entry.id, replace=replace)
        archive.unlink(missing_ok=True)
        return card

    def remove(self, model_id: str) -> Path:
        """Delete an installed model (built-in models cannot be removed)."""
        check_model_id(model_id)
        dest = self.models_dir / model_id
        if not (dest / CARD_FILE).is_file():
            if any(c.id == model_id for c in self.builtin()):
                raise ModelFileError(f"model {model_id!r} is built into RepUX and cannot be removed.")
            raise ModelFileError(self._unknown_message(model_id))
        with self.lock(model_id):
            trash = Path(tempfile.mkdtemp(prefix=".remove-", dir=self.models_dir))
            os.replace(dest, trash / "x")  # one rename: the id disappears at once
            shutil.rmtree(trash, ignore_errors=True)
        logger.info("removed model %s", model_id)
        return dest

    def new_model_dir(self, model_id: str) -> Path:
        """A free folder path for a new model id (never overwrites)."""
        check_model_id(model_id)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        dest = self.models_dir / model_id
        if dest.exists():
            raise ModelFileError(f"a model with id {model_id!r} already exists in {self.models_dir}; choose another name.")
        return dest


def official_checkpoints(location: str | None = None) -> list[dict[str, Any]]:
    """The paper's official RepUX-Net checkpoints listed in the catalog's ``official`` section, as model-list rows.

    They are not downloadable here: each row says where to get the file (``source``, the official repository)
    and the one command that imports it (``import_command``: ``repux convert-official ... --labels flare|amos``).
    """
    from repux.labels import LABEL_SETS

    loc = location or _catalog_location()
    if loc.startswith(("http://", "https://")) or not Path(loc).is_file():
        return []
    try:
        data = json.loads(Path(loc).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the model catalog {loc!r}: {err}") from err
    rows = []
    for d in data.get("official", []) if isinstance(data, dict) else []:
        labels = LABEL_SETS.get(str(d.get("labels", "")))
        if labels is None:
            raise ConfigError(f"catalog: official checkpoint {d.get('id')!r} has the label set {d.get('labels')!r}; known: {', '.join(LABEL_SETS)}.")
        rows.append(
            {
                "id": str(d["id"]),
                "version": "official",
                "status": "official",
                "size_mb": round(int(d.get("size_bytes", 0)) / 1e6, 1),
                "labels": labels.names,
                "path": "",
                "name": str(d.get("name", d["id"])),
                "description": str(d.get("description", "")),
                "source": str(d.get("source", "")),
                "import_command": f"repux convert-official CHECKPOINT.pth --labels {d['labels']} --id {d['id']} --install -o FOLDER",
            }
        )
    return rows


def catalog_rows(location: str | None = None) -> list[dict[str, Any]]:
    """The catalog's rows of :func:`list_models`: the official checkpoints, then the downloadable models.

    Raises:
        ConfigError: the catalog cannot be read (unreachable URL, malformed JSON, an entry without a field).
    """
    rows = official_checkpoints(location)
    for e in load_catalog(location):
        rows.append(
            {
                "id": e.id,
                "version": e.version,
                "status": "downloadable",
                "size_mb": round(e.size_bytes / 1e6, 1),
                "labels": list(e.labels),
                "path": "",
                "name": e.name,
                "description": e.description,
            }
        )
    return rows


def list_models(store: ModelStore | None = None, catalog: bool = True) -> list[dict[str, Any]]:
    """Built-in, installed and downloadable models as rows (what ``repux models list --json`` prints).

    Each row: ``id, version, status (built-in|installed|downloadable|official), size_mb, labels, path, name, description``;
    ``official`` rows are the paper's checkpoints, which are imported, not downloaded (their ``source`` and ``import_command``).
    ``catalog=False``: the built-in and installed models only (the catalog is not read).
    """
    s = store or ModelStore()
    rows: list[dict[str, Any]] = []
    builtin_root = builtin_models_dir()
    for c in s.available():
        path = Path(c.path) if c.path else None
        size = c.size_bytes or ((path / "model.safetensors").stat().st_size if path and (path / "model.safetensors").is_file() else 0)
        builtin = path is not None and builtin_root in path.resolve().parents
        rows.append(
            {
                "id": c.id,
                "version": c.version,
                "status": "built-in" if builtin else "installed",
                "size_mb": round(size / 1e6, 1),
                "labels": c.labels.names,
                "path": str(path or ""),
                "name": c.name,
                "description": c.description,
            }
        )
    if catalog:
        have = {r["id"] for r in rows}
        rows += [r for r in catalog_rows() if r["id"] not in have]
    return rows


def resolve_model(spec: str | Path, store: ModelStore | None = None) -> ModelCard:
    """A model folder path, an installed id, or a built-in id -> its (unverified) :class:`ModelCard`."""
    p = Path(spec).expanduser()
    if p.is_dir() and (p / CARD_FILE).is_file():
        return read_model_card(p)
    if p.is_dir() or (os.sep in str(spec) and not p.exists()):
        raise ModelFileError(f"{str(spec)!r} is not a RepUX model folder ({CARD_FILE} is missing).")
    s = store or ModelStore()
    return read_model_card(s.path(str(spec)))
