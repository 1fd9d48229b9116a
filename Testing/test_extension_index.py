"""Offline checks of the Slicer ExtensionsIndex rules for this extension.

* ``RepUX.json`` against the catalog-entry schema v1.0.2
  (https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json);
  its constraints are encoded in :data:`CATALOG_SCHEMA` below (the schema is not vendored) and checked by
  a small validator for exactly the keywords it uses;
* the checks of the index's ``scripts/check_description_files.py`` that need no network: accepted
  category, https/git ``scm_url`` whose repository name contains "Slicer", CMake ``project()`` name ==
  catalog file name, ``EXTENSION_ICONURL`` / ``EXTENSION_SCREENSHOTURLS`` present (same patterns as the
  index script) and pointing at files of this repository, a LICENSE file;
* the submission rules: extension name not starting with "Slicer", repository (``git ls-files``) under
  100 MB, ``build_dependencies`` == ``EXTENSION_DEPENDS``, icon a 128x128 PNG, license Apache-2.0.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXTENSION_NAME = "RepUX"
CATALOG_FILE = REPO / f"{EXTENSION_NAME}.json"
CMAKE_FILE = REPO / "CMakeLists.txt"
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json"
RAW_PREFIX = "https://raw.githubusercontent.com/RepUX/SlicerRepUX/main/"
MAX_REPOSITORY_BYTES = 100 * 1024 * 1024

#: the constraints of slicer-extension-catalog-entry-schema-v1.0.2.json (draft-07)
CATALOG_SCHEMA = {
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "dicom_support_rule": {"type": "string"},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}

#: categories accepted by the index (scripts/check_description_files.py, ACCEPTED_EXTENSION_CATEGORIES)
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda", "Converters", "DICOM",
    "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation", "Filtering", "Filtering.Morphology",
    "Filtering.Vesselness", "Holographic Display", "IGT", "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine",
    "Orthodontics", "Osteotomy Planning", "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing",
    "Quantification", "Radiotherapy", "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences",
    "Shape Analysis", "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography", "Training",
    "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools", "Wizards",
}  # fmt: skip

_TYPES = {"object": dict, "string": str, "array": list, "boolean": bool, "integer": int}


def schemaErrors(value, schema, path="") -> list[str]:
    """Errors of ``value`` against the subset of JSON Schema used by the catalog schema."""
    where = path or "(root)"
    expected = schema.get("type")
    if expected is not None:
        ok = isinstance(value, _TYPES[expected]) and not (expected == "integer" and isinstance(value, bool))
        if not ok:
            return [f"{where}: expected {expected}, got {type(value).__name__}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: {value} < minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if expected == "object":
        errors += [f"{where}: required property {k!r} is missing" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            errors += [f"{where}: additional property {k!r} is not allowed" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errors += schemaErrors(v, props[k], f"{path}/{k}")
    if expected == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += schemaErrors(item, schema["items"], f"{path}/{i}")
    return errors


def catalog() -> dict:
    return json.loads(CATALOG_FILE.read_text())


def cmakeText() -> str:
    return CMAKE_FILE.read_text()


def cmakeVariable(name: str) -> str:
    m = re.search(rf'set\s*\(\s*{name}\s+"([^"]*)"', cmakeText())
    assert m, f"{name} is not set in CMakeLists.txt"
    return m.group(1)


def repositoryPath(url: str) -> Path:
    assert url.startswith(RAW_PREFIX), f"{url} is not a raw file URL of the repository ({RAW_PREFIX}...)"
    return REPO / urllib.parse.unquote(url[len(RAW_PREFIX) :])


def pngSize(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ----------------------------------------------------------------------------- the validator itself


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"category": "Segmentation", "scm_url": "https://x/SlicerX.git"}, "required property '$schema'"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "homepage": "h"}, "additional property 'homepage'"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "tier": 7}, "> maximum 5"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "tier": True}, "expected integer"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "scm_type": "svn"}, "is not one of"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "build_dependencies": "PyTorch"}, "expected array"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "build_dependencies": [1]}, "/build_dependencies/0: expected string"),
        ({"$schema": "s", "category": "Segmentation", "scm_url": "u", "enabled": "yes"}, "expected boolean"),
    ],
    ids=["missing-schema", "extra-key", "tier-range", "tier-bool", "scm-type", "deps-type", "deps-items", "enabled-type"],
)
def test_validator_rejects_bad_entries(entry, message):
    errors = schemaErrors(entry, CATALOG_SCHEMA)
    assert any(message in e for e in errors), errors


# ----------------------------------------------------------------------------- catalog entry


def test_catalog_entry_is_valid_against_schema_v1_0_2():
    entry = catalog()
    assert schemaErrors(entry, CATALOG_SCHEMA) == []
    assert entry["$schema"].split("#")[0] == SCHEMA_URL


def test_catalog_entry_values():
    entry = catalog()
    assert entry["category"] in ACCEPTED_CATEGORIES and entry["category"] == "Segmentation"
    url = urllib.parse.urlsplit(entry["scm_url"])
    assert url.scheme in ("https", "git") and "://" in entry["scm_url"]
    assert entry["scm_url"] == "https://github.com/RepUX/SlicerRepUX.git"
    repoName = Path(url.path).stem
    assert "slicer" in repoName.lower()  # index rule: the repository name contains "Slicer"
    assert entry["scm_revision"] == "main"
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry.get("tier", 1) in (1, 3, 5)


def test_extension_name_rules():
    assert not EXTENSION_NAME.lower().startswith("slicer")
    # the index takes the first project() of the top-level CMakeLists.txt (its own regular expression)
    projects = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmakeText(), re.IGNORECASE | re.MULTILINE)
    assert projects and projects[0].strip("\"'") == CATALOG_FILE.stem == EXTENSION_NAME


def test_build_dependencies_match_extension_depends():
    depends = cmakeVariable("EXTENSION_DEPENDS")
    assert depends != "NA"
    assert depends.split() == catalog()["build_dependencies"]


def test_extension_metadata_is_complete():
    assert cmakeVariable("EXTENSION_CATEGORY") == catalog()["category"]
    assert cmakeVariable("EXTENSION_HOMEPAGE").startswith("https://github.com/RepUX/SlicerRepUX")
    assert cmakeVariable("EXTENSION_CONTRIBUTORS").strip()
    description = cmakeVariable("EXTENSION_DESCRIPTION")
    assert len(description) > 80 and "RepUX-Net" in description and "CT" in description
    text = cmakeText()
    assert re.search(r"find_package\s*\(\s*Slicer\b", text) and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    assert re.search(r"^add_subdirectory\(RepUXSegment\)$", text, re.MULTILINE)
    assert "## NEXT_MODULE" in text
    assert re.search(r'if\(EXISTS "\$\{CMAKE_CURRENT_SOURCE_DIR\}/RepUXTrainer/CMakeLists.txt"\)\s*add_subdirectory\(RepUXTrainer\)', text)


def test_icon_url_points_to_a_128px_png_in_the_repository():
    # the index script's pattern, so a formatting change that it would not parse fails here
    icons = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmakeText(), re.IGNORECASE | re.MULTILINE)
    assert len(icons) == 1
    icon = repositoryPath(icons[0])
    assert icon.suffix == ".png" and icon.is_file(), f"{icon} does not exist"
    assert pngSize(icon) == (128, 128)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(icon)], cwd=REPO, capture_output=True, check=False)
    untracked = subprocess.run(["git", "check-ignore", "-q", str(icon)], cwd=REPO, check=False)
    assert tracked.returncode == 0 or untracked.returncode != 0, f"{icon} is ignored by git: it would not be published"


def test_screenshot_urls_point_into_the_repository():
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmakeText(), re.IGNORECASE | re.MULTILINE)
    assert len(shots) == 1
    urls = shots[0].split()
    assert urls
    for url in urls:
        path = repositoryPath(url)
        assert path.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif")
        assert path.is_relative_to(REPO / "Resources" / "Screenshots")


def test_screenshot_files_exist():
    urls = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmakeText())[0].split()
    missing = [repositoryPath(u).relative_to(REPO).as_posix() for u in urls if not repositoryPath(u).is_file()]
    if missing:
        pytest.skip(f"screenshot not added yet: {', '.join(missing)} (required before submitting to the ExtensionsIndex)")
    for url in urls:
        path = repositoryPath(url)
        if path.suffix.lower() == ".png":
            width, height = pngSize(path)
            assert width >= 400 and height >= 300


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text


def test_repository_is_under_100_mb():
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    files = [f for f in proc.stdout.decode().split("\0") if f]
    assert files
    total = sum((REPO / f).stat().st_size for f in files if (REPO / f).is_file())
    assert total < MAX_REPOSITORY_BYTES, f"tracked files take {total / 1e6:.1f} MB (the index limit is 100 MB)"
