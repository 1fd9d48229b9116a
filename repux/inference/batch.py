"""Cohorts: many CTs segmented with the model loaded once.

* :func:`discover_cases` turns inputs (files, folders or trees of images and
  DICOM series, ``@list.txt`` files) into named cases: one case per image file
  and one per DICOM image series; names come from the file name or, for DICOM,
  PatientID + SeriesDescription (or the SeriesInstanceUID), made
  filesystem-safe and unique.
* :func:`select_shard` keeps a deterministic 1/N of the cases (by a CRC32 of
  the case name, stable across reruns and machines), so SLURM arrays or
  ``torchrun`` ranks (:func:`shard_from_env`) split a cohort with no
  coordination.
* :func:`run_batch` segments the cases with one :class:`~repux.inference.segmenter.Segmenter`:
  a reader thread reads and preprocesses the next case while the network runs
  (a bounded prefetch), a writer thread resamples and writes the previous one;
  complete outputs are skipped (resume) unless ``overwrite``; a failing case is
  reported and the batch goes on; the report ``repux-batch.json`` / ``.csv``
  is rewritten after every case.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repux.errors import Cancelled, ConfigError, InputImageError, RepuxError

__all__ = [
    "FORMATS",
    "Case",
    "CaseResult",
    "discover_cases",
    "expand_inputs",
    "format_for_output",
    "output_path",
    "parse_shard",
    "report_paths",
    "run_batch",
    "segment_many",
    "select_shard",
    "shard_from_env",
    "torchrun_device",
    "write_result",
]

logger = logging.getLogger(__name__)

#: --format value -> file ending
FORMATS: dict[str, str] = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom-seg": ".dcm"}
#: image files a folder scan picks up (DICOM files are found as series; .seg.nrrd are segmentations, not CTs)
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
REPORT_NAME = "repux-batch"
STATISTICS_NAME = "repux-statistics"


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One input of a batch: an image file or a DICOM series (``files`` set)."""

    name: str
    input: str
    series_uid: str | None = None
    files: list[str] | None = None
    error: str | None = None  # a problem found while scanning (reported as a failed case)

    @property
    def is_dicom(self) -> bool:
        return self.files is not None


@dataclass
class CaseResult:
    """What :func:`run_batch` yields per case.

    ``status`` is ``done``, ``skipped`` (complete output found), ``failed`` or
    ``cancelled``; ``seconds`` is the wall time the batch spent on the case
    (from the previous case's completion to this one's), ``timings`` the
    stages of the case (load, preprocess, infer, postprocess, write).
    """

    index: int
    count: int
    name: str
    input: str
    output: str
    status: str
    error: str = ""
    seconds: float = 0.0
    device: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    statistics: list[dict[str, Any]] | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "case": self.name,
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "volumes_ml": self.volumes_ml,
            "warnings": "; ".join(self.warnings),
        }
        if self.outputs:
            d["outputs"] = self.outputs
        return d


def expand_inputs(inputs: Sequence[str | Path] | str | Path) -> list[str]:
    """Input paths with ``@list.txt`` expanded (one path per line; blank lines and ``#`` comments skipped).

    Relative paths in a list are relative to the list file's folder.

    Raises:
        ConfigError: a list file that cannot be read, or no inputs.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    out: list[str] = []
    for item in items:
        s = str(item)
        if s.startswith("@"):
            lst = Path(s[1:])
            try:
                lines = lst.read_text().splitlines()
            except OSError as err:
                raise ConfigError(f"--input {s!r}: cannot read the list file: {err.strerror or err}.") from err
            for ln in lines:
                ln = ln.strip()
                if ln and not ln.startswith("#"):
                    p = Path(ln).expanduser()
                    out.append(str(p if p.is_absolute() else lst.parent / p))
        else:
            out.append(s)
    if not out:
        raise ConfigError("--input: no input paths (the list is empty).")
    return out


def safe_name(text: str) -> str:
    """A filesystem-safe case name: letters, digits, ``.``, ``_``, ``-``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).strip()).strip("._")
    return s[:120] or "case"


def _file_case_name(p: Path) -> str:
    from repux.io.images import suffix_of

    suf = suffix_of(p)
    return safe_name(p.name[: -len(suf)] if suf and p.name.lower().endswith(suf) else p.stem)


def _dicom_info(path: str) -> dict[str, str]:
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(path)
    try:
        r.ReadImageInformation()
    except RuntimeError:
        return {}

    def tag(t: str) -> str:
        return r.GetMetaData(t).strip() if r.HasMetaDataKey(t) else ""

    return {"modality": tag("0008|0060").upper(), "patient_id": tag("0010|0020"), "description": tag("0008|103e")}


def _dicom_cases(folder: Path, exclude: Path | None) -> tuple[list[Case], list[str]]:
    """Image series under ``folder`` as cases, and the non-image modalities seen."""
    from repux.io.images import NON_IMAGE_MODALITIES, list_dicom_series

    cases, skipped = [], []
    for s in list_dicom_series(folder):
        files = [f for f in s["files"] if exclude is None or not _inside(Path(f), exclude)]
        if not files:
            continue
        info = _dicom_info(files[0])
        if info.get("modality") in NON_IMAGE_MODALITIES:
            skipped.append(info["modality"])
            continue
        label = info.get("description") or s["uid"] or "series"
        name = safe_name(f"{info.get('patient_id') or 'dicom'}_{label}")
        parent = os.path.commonpath([str(Path(f).parent) for f in files])  # a series may span nested folders
        cases.append(Case(name, parent, series_uid=s["uid"] or None, files=list(files), error=s.get("error")))
    return cases, skipped


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def discover_cases(inputs: Sequence[str | Path] | str | Path, *, exclude: str | Path | None = None) -> list[Case]:
    """Cases of a batch, in a stable order, with unique names.

    A missing path, an empty folder or a folder whose DICOM series are all
    non-image objects (SEG, SR, ...) becomes a case with ``error`` set, so it is
    reported like any failing case.  ``exclude`` (the output folder) is not scanned.
    """
    from repux.io.images import _looks_like_dicom, suffix_of

    ex = Path(exclude) if exclude is not None else None
    cases: list[Case] = []
    for item in expand_inputs(inputs):
        p = Path(item)
        if not p.exists():
            cases.append(Case(safe_name(p.name) or "missing", item, error=f"input {item!r} does not exist."))
        elif p.is_dir():
            found: list[Case] = []
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if ex is not None and _inside(f, ex):
                    continue
                name = f.name.lower()
                if name.endswith(SCAN_SUFFIXES) and not name.endswith(".seg.nrrd"):
                    found.append(Case(_file_case_name(f), str(f)))
            dicom, non_image = _dicom_cases(p, ex)
            found.extend(dicom)
            if not found:
                why = f"only non-image DICOM objects ({', '.join(sorted(set(non_image)))})" if non_image else "no image files or DICOM series"
                cases.append(Case(safe_name(p.name), item, error=f"folder {item!r} holds {why}."))
            cases.extend(found)
        elif suffix_of(p) == ".dcm" or _looks_like_dicom(p):
            dicom, non_image = _dicom_cases(p.parent, None)
            if not dicom:
                cases.append(Case(_file_case_name(p), item, error=f"{item!r} is a non-image DICOM object ({', '.join(non_image) or 'unknown'})."))
            else:
                # the series this file belongs to (else the largest image series of its folder)
                mine = [c for c in dicom if c.files and str(p) in c.files]
                cases.append((mine or dicom)[0])
        else:
            cases.append(Case(_file_case_name(p), item))
    return _unique_names(cases)


def _unique_names(cases: list[Case]) -> list[Case]:
    seen: dict[str, int] = {}
    keys = set()
    out = []
    for c in cases:
        key = (c.input, c.series_uid)
        if key in keys:  # the same series or file given twice
            continue
        keys.add(key)
        base = c.name
        n = seen.get(base.lower(), 0)
        name = base
        while name.lower() in {x.name.lower() for x in out}:
            n += 1
            name = f"{base}_{n + 1}"
        if name != base:
            logger.info("case name %s is used twice; %s is named %s", base, c.input, name)
        seen[base.lower()] = n
        c.name = name
        out.append(c)
    return out


# ----------------------------------------------------------------------------- shards
def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``.

    Raises:
        ConfigError: anything else.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard {text!r}: use I/N with 0 <= I < N, e.g. 0/4 (SLURM: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ConfigError(f"--shard {text!r}: I must be in 0..N-1 and N >= 1.")
    return i, n


def shard_of(name: str, count: int) -> int:
    """The shard (0..count-1) of a case name: CRC32, the same on every machine and Python."""
    return zlib.crc32(name.encode("utf-8")) % count


def select_shard(cases: Sequence[Case], index: int, count: int) -> list[Case]:
    """The cases of shard ``index`` of ``count`` (each case is in exactly one shard)."""
    return [c for c in cases if shard_of(c.name, count) == index]


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` under torchrun (WORLD_SIZE > 1), else None."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
    except ValueError:
        return None
    return (rank, world) if world > 1 and 0 <= rank < world else None


def torchrun_device(requested: str, env: Mapping[str, str] | None = None) -> str:
    """``cuda:LOCAL_RANK`` for ``--device auto``/``cuda`` under torchrun when CUDA is present; else ``requested``."""
    env = os.environ if env is None else env
    if requested not in ("auto", "cuda") or "LOCAL_RANK" not in env or shard_from_env(env) is None:
        return requested
    import torch

    if not torch.cuda.is_available():
        return requested
    return f"cuda:{int(env['LOCAL_RANK']) % max(1, torch.cuda.device_count())}"


# ----------------------------------------------------------------------------- outputs
def format_for_output(path: str | Path, requested: str | None = None) -> str:
    """The --format of an output file name (``.dcm`` -> dicom-seg), checked against ``requested``.

    Raises:
        ConfigError: an unknown ending, or one that contradicts ``requested``.
    """
    name = Path(path).name.lower()
    fmt = next((f for f, ext in sorted(FORMATS.items(), key=lambda kv: -len(kv[1])) if name.endswith(ext)), None)
    if fmt is None and name.endswith(".nii"):
        fmt = "nii.gz" if requested in (None, "nii.gz") else None
        if fmt:
            return "nii"
    if fmt is None:
        raise ConfigError(f"--output {str(path)!r}: unsupported file type; use one of .seg.nrrd, .nii.gz, .nii, .nrrd, .mha, .dcm (DICOM SEG).")
    if requested is not None and requested != fmt:
        raise ConfigError(f"--format {requested} does not match --output {str(path)!r} (a {fmt} file name); use a name ending in {FORMATS[requested]}.")
    return fmt


def output_path(out_dir: str | Path, case: Case, fmt: str) -> Path:
    return Path(out_dir) / f"{case.name}{FORMATS[fmt]}"


def write_result(result: Any, path: str | Path, fmt: str, *, source_files: Sequence[str] | None = None) -> Path:
    """Write a :class:`~repux.inference.segmenter.SegmentationResult` in ``fmt`` (atomically)."""
    from repux.io.images import write_image, write_segmentation_nrrd

    if fmt == "dicom-seg":
        from repux.io.dicomseg import write_dicom_seg

        if not source_files:
            raise InputImageError("--format dicom-seg needs a DICOM series input (the SEG references its instances); this input is not DICOM.")
        model = result.summary.get("model") or {}
        return write_dicom_seg(
            result.labels, result.label_set, source_files, path, model_id=model.get("id", "custom"), model_version=model.get("version", "unknown")
        )
    if fmt == "seg.nrrd":
        return write_segmentation_nrrd(result.labels, result.label_set, path)
    return write_image(result.labels, path)


def report_paths(out_dir: str | Path, shard: tuple[int, int] | None = None) -> tuple[Path, Path, Path]:
    """Batch report JSON, CSV and the cohort statistics CSV (suffixed per shard)."""
    tag = f".shard{shard[0]}of{shard[1]}" if shard and shard[1] > 1 else ""
    d = Path(out_dir)
    return d / f"{REPORT_NAME}{tag}.json", d / f"{REPORT_NAME}{tag}.csv", d / f"{STATISTICS_NAME}{tag}.csv"


REPORT_FIELDS = ["case", "input", "output", "status", "error", "warnings", "seconds", "device"]


def _write_report(
    paths: tuple[Path, Path, Path], header: dict[str, Any], rows: list[CaseResult], stats_rows: list[tuple[str, list[dict[str, Any]]]] | None
) -> None:
    from repux.inference.statistics import FIELDS, _fmt
    from repux.io.images import atomic_path

    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    doc = {**header, "counts": counts, "cases": [r.to_dict() for r in rows]}
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: v for k, v in r.to_dict().items() if k in REPORT_FIELDS})
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(buf.getvalue())
    if stats_rows is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["case", *FIELDS], lineterminator="\n")
        w.writeheader()
        for name, organs in stats_rows:
            for o in organs:
                w.writerow({"case": name, **{k: _fmt(o.get(k)) for k in FIELDS}})
        with atomic_path(paths[2]) as tmp:
            tmp.write_text(buf.getvalue())


def _read_statistics_csv(path: Path) -> list[dict[str, Any]] | None:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return None


# ----------------------------------------------------------------------------- the batch
def _seg_source_problem(files: Sequence[str]) -> str | None:
    """Why a DICOM SEG cannot reference these source files (None: it can)."""
    from repux.io.dicomseg import check_seg_sources

    try:
        check_seg_sources(files)
    except RepuxError as err:
        return str(err)
    return None


def _next_prepared(q: queue.Queue, thread: threading.Thread, cancel: Any) -> Any:
    while True:
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            if cancel is not None:
                cancel.check()
            if not thread.is_alive() and q.empty():
                raise RuntimeError("the prefetch thread stopped unexpectedly") from None


def _check_batch_options(format: str, out: Path, shard: tuple[int, int] | None) -> None:
    """Refuse an unknown format, an output folder that is a file and a bad shard (before anything runs)."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {str(out)!r} is a file; with several cases --output is a folder (each case writes <folder>/<case>{FORMATS[format]}).")
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: I must be in 0..N-1.")


def _batch_cases(inputs: Sequence[str | Path] | str | Path | Sequence[Case], out: Path, shard: tuple[int, int] | None) -> list[Case]:
    """The cases of a batch: :class:`Case` objects as given or discovered from paths, then this shard's."""
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(c, Case) for c in inputs):
        cases = list(inputs)  # type: ignore[arg-type]
    else:
        cases = discover_cases(inputs, exclude=out if out.exists() else None)  # type: ignore[arg-type]
    if shard is not None and shard[1] > 1:
        n_all = len(cases)
        cases = select_shard(cases, *shard)
        logger.info("shard %d/%d: %d of %d cases", shard[0], shard[1], len(cases), n_all)
    return cases


class _BatchRun:
    """One :func:`run_batch` call: the plan, the prefetch thread, the network loop, the writer thread and the report.

    Built (and everything checked) when :func:`run_batch` first runs; :meth:`run` yields the results.
    """

    def __init__(
        self,
        segmenter: Any,
        inputs: Sequence[str | Path] | str | Path | Sequence[Case],
        out_dir: str | Path,
        *,
        format: str,
        overwrite: bool,
        shard: tuple[int, int] | None,
        statistics: bool,
        roi_ras: Sequence[float] | None,
        prefetch: int,
        report: bool,
        progress: Any,
        cancel: Any,
    ) -> None:
        self.segmenter = segmenter
        self.format = format
        self.overwrite = overwrite
        self.statistics = statistics
        self.roi_ras = roi_ras
        self.prefetch = prefetch
        self.report = report
        self.progress = progress
        self.cancel = cancel
        self.out = Path(out_dir)
        _check_batch_options(format, self.out, shard)
        cases = _batch_cases(inputs, self.out, shard)
        self.out.mkdir(parents=True, exist_ok=True)
        self.n = len(cases)
        self.paths = report_paths(self.out, shard)
        self.device = str(segmenter.device)
        self.header = self._header(shard)
        self.rows: list[CaseResult] = []
        self.stats_rows: list[tuple[str, list[dict[str, Any]]]] | None = [] if statistics else None
        self.shown = 0.0  # a case's completion is reported while the next one runs: keep the fraction monotone
        self.plan = self._plan(cases)
        self.todo = [c for c, s in self.plan if s is None]
        self.stop = threading.Event()
        self.q: queue.Queue = queue.Queue(maxsize=max(1, int(prefetch)))
        self.thread = threading.Thread(target=self._reader, name="repux-prefetch", daemon=True)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="repux-write")
        self.pending: tuple[int, Case, Future] | None = None
        self.last_done = time.perf_counter()
        self.started = False

    # ------------------------------------------------------------------ planning
    def _header(self, shard: tuple[int, int] | None) -> dict[str, Any]:
        seg = self.segmenter
        return {
            "repux_batch": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "out_dir": str(self.out),
            "format": self.format,
            "shard": list(shard) if shard else None,
            "device": self.device,
            "model": {"id": seg.card.id, "version": seg.card.version} if seg.card is not None else None,
            "organs": seg.labels.names,
        }

    def _expected_outputs(self, case: Case) -> list[Path]:
        p = output_path(self.out, case, self.format)
        if self.statistics:
            from repux.inference.statistics import statistics_paths

            return [p, *statistics_paths(p)]
        return [p]

    def _plan(self, cases: list[Case]) -> list[tuple[Case, str | None]]:
        """``(case, None)`` for a case to segment, ``(case, status)`` for one that needs no network.

        Those are discovery errors, format mismatches and complete outputs.
        """
        plan: list[tuple[Case, str | None]] = []  # (case, None=todo | status text)
        for c in cases:
            if c.error:
                plan.append((c, "failed"))
            elif self.format == "dicom-seg" and not c.is_dicom:
                c.error = f"--format dicom-seg needs a DICOM series input; {c.input!r} is not DICOM (use seg.nrrd, nii.gz, nrrd or mha)."
                plan.append((c, "failed"))
            elif self.format == "dicom-seg" and (seg_problem := _seg_source_problem(c.files or [])):
                c.error = seg_problem  # the SEG could not reference this series: refused before inference
                plan.append((c, "failed"))
            elif not self.overwrite and all(p.exists() for p in self._expected_outputs(c)):
                plan.append((c, "skipped"))
            else:
                plan.append((c, None))
        return plan

    # ------------------------------------------------------------------ threads
    def _reader(self) -> None:
        """The prefetch thread: reads and preprocesses the cases to segment, in order, into ``self.q``."""
        limit = max(1, int(self.prefetch))
        for c in self.todo:
            # read the next case only when fewer than `prefetch` cases wait: at most prefetch + 2 cases in memory
            # (the waiting ones, the one in the network, the one being written)
            while self.q.qsize() >= limit and not self.stop.is_set():
                time.sleep(0.05)
            if self.stop.is_set():
                break
            t = time.perf_counter()
            try:
                item = (c, self.segmenter.prepare(c.input, series_uid=c.series_uid, roi_ras=self.roi_ras), None)
            except Exception as err:
                item = (c, None, err)
            logger.debug("prefetched %s in %.2f s", c.name, time.perf_counter() - t)
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def _finish(self, c: Case, prepared: Any) -> CaseResult:
        """The writer thread's work for a case: postprocess, write the labels (and statistics)."""
        res = self.segmenter.finish(prepared)
        path = output_path(self.out, c, self.format)
        t = time.perf_counter()
        write_result(res, path, self.format, source_files=c.files)
        outputs = {"labels": str(path)}
        stats = None
        if self.statistics:
            from repux.inference.statistics import write_statistics

            stats = res.statistics()
            csv_p, json_p = write_statistics(stats, path, {"case": c.name, "input": c.input, "output": str(path)})
            outputs.update(statistics_csv=str(csv_p), statistics_json=str(json_p))
        timings = dict(prepared.timings)
        timings["write"] = time.perf_counter() - t
        return CaseResult(
            0,
            self.n,
            c.name,
            c.input,
            str(path),
            "done",
            device=self.device,
            timings=timings,
            volumes_ml=res.summary["volumes_ml"],
            statistics=stats,
            outputs=outputs,
            warnings=list(res.summary.get("warnings", [])),
        )

    # ------------------------------------------------------------------ results and progress
    def _emit(self, stage: str, frac: float, message: str, **extra: Any) -> None:
        from repux.progress import ProgressEvent

        self.shown = max(self.shown, min(1.0, max(0.0, frac)))
        if self.progress is not None:
            self.progress(ProgressEvent(stage, self.shown, message, None, extra))

    def _result(self, i: int, c: Case, status: str, error: str = "") -> CaseResult:
        """A result with no outputs written (failed, skipped, cancelled)."""
        return CaseResult(i, self.n, c.name, c.input, str(output_path(self.out, c, self.format)), status, error=error, device=self.device)

    def _record(self, r: CaseResult) -> CaseResult:
        """Time, keep and report a case's result (the report files are rewritten)."""
        now = time.perf_counter()
        if r.status in ("done", "failed") and not r.seconds:
            r.seconds = now - self.last_done
        if r.status in ("done", "failed"):
            self.last_done = now
        self.rows.append(r)
        if self.stats_rows is not None:
            if r.statistics is not None:
                self.stats_rows.append((r.name, r.statistics))
            elif r.status == "skipped":
                from repux.inference.statistics import statistics_paths

                old = _read_statistics_csv(statistics_paths(r.output)[0])
                if old:
                    self.stats_rows.append((r.name, old))
        if self.report:
            self._write_report()
        if r.status == "failed":
            logger.error("case %s (%s) failed: %s", r.name, r.input, r.error)
        n = self.n
        self._emit(
            "case",
            r.index / max(n, 1),
            f"case {r.index}/{n} {r.name}: {r.status}",
            case=r.name,
            case_index=r.index,
            case_count=n,
            status=r.status,
            error=r.error,
            output=r.output,
            volumes_ml=r.volumes_ml,
        )
        return r

    def _write_report(self) -> None:
        _write_report(self.paths, self.header, self.rows, self.stats_rows)

    def _collect(self) -> Iterator[CaseResult]:
        """The result of the case in the writer thread, if any (waits for it)."""
        if self.pending is None:
            return
        i, c, fut = self.pending
        self.pending = None
        try:
            r = fut.result()
            r.index = i
        except Exception as err:
            r = self._result(i, c, "failed", error=_one_line(err))
        yield self._record(r)

    def _tracker(self, i: int, c: Case) -> Any:
        """A progress tracker of case ``i`` that reports the fraction of the whole batch."""
        from repux.progress import ProgressTracker

        n = self.n

        def case_progress(ev: Any) -> None:
            self._emit(
                ev.stage,
                (i - 1 + ev.fraction) / max(n, 1),
                f"case {i}/{n} {c.name}: {ev.message}",
                case=c.name,
                case_index=i,
                case_count=n,
                case_fraction=round(ev.fraction, 4),
                **ev.extra,
            )

        return ProgressTracker(case_progress, {"infer": 1.0}, self.cancel)

    # ------------------------------------------------------------------ the loop
    def _segment(self, i: int, c: Case) -> Iterator[CaseResult]:
        """Run case ``i`` through the network and hand it to the writer; yields the previous case's result."""
        if not self.started:
            self.thread.start()
            self.started = True
        if self.cancel is not None:
            self.cancel.check()
        item = _next_prepared(self.q, self.thread, self.cancel)
        assert item[0] is c, "prefetch out of order"
        _, prepared, err = item
        if err is not None:
            yield from self._collect()
            yield self._record(self._result(i, c, "failed", error=_one_line(err)))
            return
        tracker = self._tracker(i, c)
        try:
            self.segmenter.infer(prepared, tracker=tracker, cancel=self.cancel)
        except Cancelled:
            raise
        except (RepuxError, MemoryError, RuntimeError, ValueError) as err:
            yield from self._collect()
            yield self._record(self._result(i, c, "failed", error=_one_line(err)))
            return
        yield from self._collect()
        self.pending = (i, c, self.writer.submit(self._finish, c, prepared))
        del prepared, item

    def _cancelled(self) -> None:
        """Mark the cases not finished as cancelled and write the report."""
        done_names = {r.name for r in self.rows}
        for i, (c, _) in enumerate(self.plan, start=1):
            if c.name not in done_names:
                self.rows.append(self._result(i, c, "cancelled"))
        if self.report:
            self._write_report()

    def run(self) -> Iterator[CaseResult]:
        """Yield a :class:`CaseResult` per case, in order; stops the threads at the end."""
        if self.report:
            self._write_report()  # an empty shard still leaves its (empty) report
        try:
            for i, (c, status) in enumerate(self.plan, start=1):
                if status is not None:
                    yield self._record(self._result(i, c, status, error=c.error or ""))
                else:
                    yield from self._segment(i, c)
            yield from self._collect()
        except Cancelled:
            self.stop.set()
            yield from self._collect()
            self._cancelled()
            raise
        finally:
            self.stop.set()
            self.writer.shutdown(wait=True)
            if self.started:
                self.thread.join(timeout=5.0)


def run_batch(
    segmenter: Any,
    inputs: Sequence[str | Path] | str | Path | Sequence[Case],
    out_dir: str | Path,
    *,
    format: str = "seg.nrrd",
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    statistics: bool = False,
    roi_ras: Sequence[float] | None = None,
    prefetch: int = 1,
    report: bool = True,
    progress: Any = None,
    cancel: Any = None,
) -> Iterator[CaseResult]:
    """Segment many cases with one loaded :class:`~repux.inference.segmenter.Segmenter`; yields a :class:`CaseResult` per case.

    Args:
        segmenter: the loaded model and settings.
        inputs: paths (files, folders, ``@list.txt``) or :class:`Case` objects.
        out_dir: output folder; case ``c`` writes ``out_dir/c.<ext>``.
        format: one of :data:`FORMATS`.
        overwrite: redo cases whose output exists (else they are skipped: resume).
        shard: ``(I, N)``: only this deterministic 1/N of the cases.
        statistics: also write per-organ statistics beside each output and a cohort CSV.
        prefetch: cases read and preprocessed ahead of the network (1 or 2; at most ``prefetch + 2``
            cases are in memory: the prefetched ones, the one in the network, the one being written).
        report: write ``repux-batch.json``/``.csv`` in ``out_dir`` after every case.
        progress: callback of :class:`~repux.progress.ProgressEvent` (overall fraction; extras
            ``case``, ``case_index`` (1-based), ``case_count``).
        cancel: :class:`~repux.progress.CancelToken`; finished cases are kept, the report written,
            then :class:`~repux.errors.Cancelled` is raised.

    Raises:
        ConfigError: bad format/shard, an output folder that is a file.
    """
    yield from _BatchRun(
        segmenter,
        inputs,
        out_dir,
        format=format,
        overwrite=overwrite,
        shard=shard,
        statistics=statistics,
        roi_ras=roi_ras,
        prefetch=prefetch,
        report=report,
        progress=progress,
        cancel=cancel,
    ).run()


def _one_line(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory"
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, RepuxError) else f"{type(err).__name__}: {text}"


#: keyword arguments of :func:`segment_many` that go to :func:`run_batch` (the rest builds the Segmenter)
BATCH_OPTIONS = ("format", "overwrite", "shard", "statistics", "roi_ras", "prefetch", "report", "progress", "cancel")


def segment_many(inputs: Sequence[str | Path] | str | Path, model: Any, out_dir: str | Path, **options: Any) -> Iterator[CaseResult]:
    """Segment a cohort with ``model`` loaded once; an iterator of :class:`CaseResult`.

    ``model`` is a model id or folder, or a :class:`~repux.inference.segmenter.Segmenter` already loaded (then only
    the options of :func:`run_batch` apply). Options are those of :func:`run_batch` plus, for a model id or folder,
    any :class:`~repux.inference.segmenter.Segmenter` argument (``device``, ``organs``, ``quality``...).

    Example:
        >>> for r in segment_many(["a.nii.gz", "dicom/"], "repux-tiny-phantom", "out"):  # doctest: +SKIP
        ...     print(r.name, r.status, r.output)
    """
    from repux.inference.segmenter import Segmenter

    batch = {k: options.pop(k) for k in list(options) if k in BATCH_OPTIONS}
    if isinstance(model, Segmenter):
        if options:
            raise TypeError(f"segment_many: {', '.join(sorted(options))} cannot change a Segmenter already loaded; pass a model id to set them.")
        return run_batch(model, inputs, out_dir, **batch)
    return run_batch(Segmenter(model, **options), inputs, out_dir, **batch)
