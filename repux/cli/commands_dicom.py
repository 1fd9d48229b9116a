"""``repux dicom-seg``: a label map on a DICOM series' grid (from Slicer, or any tool) to a DICOM SEG.

The same writer as ``repux segment --format dicom-seg`` (:func:`repux.io.dicomseg.write_dicom_seg`); the
source instances are the files of the series (a folder, or ``@list.txt`` with one file per line: what
RepUX Segment passes for a volume loaded from Slicer's DICOM database).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from repux.cli.options import add_common, add_output_option
from repux.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dicom-seg",
        help="write a label map on a DICOM series' grid as a DICOM SEG (names, colours, SNOMED codes; references the series)",
        description="Writes a BINARY DICOM Segmentation of a label map (NRRD, NIfTI, .seg.nrrd) that lies on the grid of a DICOM series: "
        "one segment per label of --labels (JSON: [{\"value\": 1, \"name\": \"liver\", \"color\": [r, g, b]}, ...]; known organs get their SNOMED CT codes).",
    )
    p.add_argument("-i", "--input", required=True, metavar="LABELMAP", help="label map on the series' grid (.nrrd, .seg.nrrd, .nii.gz, .mha)")
    p.add_argument("--source", required=True, nargs="+", metavar="PATH", help="the series: its folder, its files, or @list.txt (one file per line)")
    p.add_argument("--labels", metavar="JSON", help="segment names, colours and codes by label value (default: the .seg.nrrd's segments)")
    p.add_argument("--series-description", default="RepUX segmentation", help="Series Description of the SEG (default: 'RepUX segmentation')")
    p.add_argument("--algorithm-name", dest="algorithm_name", default="manual", metavar="NAME", help="algorithm (model) name recorded in the SEG (default: manual)")
    add_output_option(p, help="the DICOM SEG file to write (.dcm)")
    add_common(p, progress=False)
    p.set_defaults(func=cmd_dicom_seg)


def _source_files(items: list[str]) -> list[str]:
    from repux.inference.batch import expand_inputs
    from repux.io.dicomseg import dicom_source_files

    paths = expand_inputs(items)
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return dicom_source_files(paths[0])
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"--source: {len(missing)} of {len(paths)} files do not exist (first: {missing[0]!r}).")
    return paths


def _labels(args: argparse.Namespace, present: list[int]) -> Any:
    from repux.io.images import read_segmentation_nrrd_labels
    from repux.labels import Label, LabelSet

    if args.labels:
        labels = LabelSet.load(args.labels)
    elif args.input.lower().endswith(".seg.nrrd"):
        meta = read_segmentation_nrrd_labels(args.input)
        items = []
        for value, m in sorted(meta.items()):
            rgb = [round(float(c) * 255) for c in m.get("Color", "0.5 0.5 0.5").split()]
            items.append({"value": value, "name": m.get("Name", f"segment {value}"), "color": rgb})
        labels = LabelSet.from_list(items)
    else:
        labels = LabelSet([Label(v, f"segment {v}", (128, 174, 128)) for v in present])
    values = [lab.value for lab in labels]
    if values != list(range(1, len(values) + 1)):
        raise ConfigError(f"--labels: the label values must be 1..N in order (DICOM SEG segment numbers); got {values}.")
    unknown = sorted(set(present) - set(values))
    if unknown:
        raise ConfigError(f"--input {args.input!r} holds label values {unknown} that --labels does not name.")
    return labels


def cmd_dicom_seg(args: argparse.Namespace, ctx: Any) -> int:
    import numpy as np
    import SimpleITK as sitk

    from repux.io.dicomseg import check_seg_sources, write_dicom_seg
    from repux.io.images import read_image

    if not str(args.output).lower().endswith(".dcm"):
        raise ConfigError(f"--output {args.output!r}: a DICOM SEG is written to a .dcm file.")
    files = _source_files(args.source)
    check_seg_sources(files)  # before any other work: refused in one line when the series lacks its UIDs
    label_map = read_image(args.input)
    present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label_map)) if v != 0]
    labels = _labels(args, present)
    out = write_dicom_seg(
        sitk.Cast(label_map, sitk.sitkUInt16), labels, files, args.output, model_id=args.algorithm_name, model_version="1", series_description=args.series_description
    )
    print(f"wrote {out}: {len(labels)} segments on {len(files)} source instances")
    return 0
