"""Model store, catalog and downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from repux.cli.main import main
from repux.errors import ModelFileError
from repux.models.store import ModelStore, download, resolve_model, safe_extract_zip


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: int | None = None  # drop the connection after this many bytes (once)
    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = 0
        if rng:
            type(self).ranges.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            n = type(self).cut_after
            type(self).cut_after = None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files = {}
    _Handler.ranges = []
    _Handler.cut_after = None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()


def _zip_model(model_dir: Path, zpath: Path, prefix: str = "tiny-test/") -> bytes:
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(model_dir.iterdir()):
            z.write(f, prefix + f.name)
    return zpath.read_bytes()


def _catalog(tmp_path, url, data, model_id="tiny-test", sha=None):
    cat = tmp_path / "catalog.json"
    cat.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "id": model_id,
                        "version": "1.0.0",
                        "name": "Tiny",
                        "url": url,
                        "size_bytes": len(data),
                        "sha256": sha or hashlib.sha256(data).hexdigest(),
                        "labels": ["liver"],
                    }
                ]
            }
        )
    )
    return cat


def test_install_resumes_after_interruption_and_verifies(server, tmp_path, tiny_model_dir, monkeypatch):
    base, handler = server
    data = _zip_model(tiny_model_dir, tmp_path / "m.zip")
    handler.files["/models/tiny.zip"] = data
    monkeypatch.setenv("REPUX_CATALOG", str(_catalog(tmp_path, base + "/models/tiny.zip", data)))
    handler.cut_after = len(data) // 3
    store = ModelStore()
    with pytest.raises(ModelFileError, match="resume|stopped after"):
        store.install("tiny-test")
    part = store.downloads_dir / "tiny-test-1.0.0.zip.part"
    assert part.exists() and 0 < part.stat().st_size < len(data)
    seen = []
    card = store.install("tiny-test", progress=lambda done, total: seen.append((done, total)))
    assert handler.ranges and handler.ranges[-1] == f"bytes={len(data) // 3}-"
    assert card.id == "tiny-test" and (store.models_dir / "tiny-test" / "model.safetensors").exists()
    assert seen[-1] == (len(data), len(data))
    assert not part.exists() and not list(store.downloads_dir.iterdir())
    assert [c.id for c in store.installed()] == ["tiny-test"]


def test_checksum_mismatch_is_refused(server, tmp_path, tiny_model_dir, monkeypatch):
    base, handler = server
    data = _zip_model(tiny_model_dir, tmp_path / "m.zip")
    handler.files["/m.zip"] = data
    monkeypatch.setenv("REPUX_CATALOG", str(_catalog(tmp_path, base + "/m.zip", data, sha="0" * 64)))
    with pytest.raises(ModelFileError, match="corrupted"):
        ModelStore().install("tiny-test")
    assert not ModelStore().installed()


def test_cli_models_commands(server, tmp_path, tiny_model_dir, monkeypatch, capsys):
    base, handler = server
    data = _zip_model(tiny_model_dir, tmp_path / "m.zip")
    handler.files["/m.zip"] = data
    monkeypatch.setenv("REPUX_CATALOG", str(_catalog(tmp_path, base + "/m.zip", data)))
    assert main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"tiny-test": "downloadable"}.items() <= {m["id"]: m["status"] for m in listing["models"]}.items()
    assert main(["models", "install", "tiny-test", "--progress", "json"]) == 0
    out = capsys.readouterr().out
    events = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert events and events[-1]["stage"] == "download"
    assert main(["models", "path", "tiny-test"]) == 0
    assert capsys.readouterr().out.strip().endswith("tiny-test")
    assert main(["models", "install", "tiny-test"]) == 1  # already installed
    assert main(["models", "remove", "tiny-test"]) == 0
    assert main(["models", "remove", "tiny-test"]) == 1
    assert main(["models", "import", str(tmp_path / "m.zip"), "--id", "renamed"]) == 0
    assert resolve_model("renamed").id == "renamed"


def test_zip_slip_and_links_are_refused(tmp_path, tiny_model_dir):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("model/model.json", "{}")
        z.writestr("../../outside.txt", "gotcha")
    with pytest.raises(ModelFileError, match="outside the target folder"):
        safe_extract_zip(evil, tmp_path / "x")
    assert not (tmp_path.parent / "outside.txt").exists()
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as z:
        info = zipfile.ZipInfo("model/evil")
        info.external_attr = 0o120777 << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ModelFileError, match="symbolic link"):
        safe_extract_zip(link, tmp_path / "y")
    with pytest.raises(ModelFileError, match="already installed|outside"):
        ModelStore().import_model(evil)


def test_unknown_model_suggestions_and_catalog_hint(tmp_path, tiny_model_dir, monkeypatch):
    ModelStore().import_model(tiny_model_dir)
    with pytest.raises(ModelFileError, match="Did you mean 'tiny-test'"):
        resolve_model("tiny-tets")
    cat = _catalog(tmp_path, "http://127.0.0.1:9/none.zip", b"x" * 10, model_id="big-model")
    monkeypatch.setenv("REPUX_CATALOG", str(cat))
    with pytest.raises(ModelFileError, match="repux models install big-model"):
        resolve_model("big-model")


def test_download_network_error_is_clear(tmp_path):
    with pytest.raises(ModelFileError, match="download of .* failed"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
