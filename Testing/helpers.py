"""Plain helpers shared by the tests (import with ``from helpers import ...``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("REPUX_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a clear message when absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not available: {p} (the ../shared/data folder ships with the project's CI, not with the repository)")
    return p


def make_blob_dataset(root: Path, n: int = 4, size=(40, 36, 28), spacing=(4.0, 4.0, 5.0), seed: int = 0, organs=("liver", "spleen")) -> Path:
    """A tiny dataset of ellipsoid 'organs' in a body (fast; the phantom generator is the realistic one).

    Returns the folder holding repux-dataset.json; the last case is held out ('val').
    """
    import numpy as np
    import SimpleITK as sitk

    from repux.data.datasets import Case, write_manifest
    from repux.labels import LabelSet

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    cases = []
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")
    for i in range(n):
        img = np.full(size[::-1], -1000.0, dtype=np.float32)
        lab = np.zeros(size[::-1], dtype=np.uint8)
        body = ((xx - size[0] / 2) / (size[0] * 0.45)) ** 2 + ((yy - size[1] / 2) / (size[1] * 0.42)) ** 2 <= 1
        img[body] = 40.0
        for v, (hu, cx) in enumerate([(120.0, 0.33), (200.0, 0.68), (0.0, 0.5)][: len(organs)], start=1):
            c = np.array([size[0] * cx, size[1] * 0.5, size[2] * 0.5]) + rng.uniform(-2, 2, 3)
            r = np.array([size[0] * 0.14, size[1] * 0.2, size[2] * 0.25]) * rng.uniform(0.85, 1.15, 3)
            m = ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((zz - c[2]) / r[2]) ** 2 <= 1
            img[m] = hu
            lab[m] = v
        img += rng.normal(0, 10, img.shape).astype(np.float32)
        im = sitk.GetImageFromArray(img.astype(np.int16))
        lb = sitk.GetImageFromArray(lab)
        for o in (im, lb):
            o.SetSpacing(spacing)
            o.SetOrigin((-80.0, -70.0, 100.0))
        sitk.WriteImage(im, str(root / "imagesTr" / f"blob_{i:02d}.nii.gz"))
        sitk.WriteImage(lb, str(root / "labelsTr" / f"blob_{i:02d}.nii.gz"))
        cases.append(
            Case(f"blob_{i:02d}", root / "imagesTr" / f"blob_{i:02d}.nii.gz", root / "labelsTr" / f"blob_{i:02d}.nii.gz", "val" if i == n - 1 else "train")
        )
    write_manifest(root, LabelSet.from_names(list(organs)), cases, name="blobs")
    return root


KEYS_FILE = Path(__file__).resolve().parent / "data" / "official_repuxnet_flare_keys.txt"


def official_keys() -> dict[str, tuple[tuple[int, ...], str]]:
    """The official RepUX-Net (FLARE, 5 outputs) state-dict keys with shapes and dtypes (Testing/data)."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(\S+) \(([\d, ]*)\)\s*(\w+)?", line)
        assert m, line
        shape = tuple(int(v) for v in m.group(2).replace(" ", "").split(",") if v)
        out[m.group(1)] = (shape, m.group(3) or "float32")
    return out
