"""The RepUX Web loop as a browser-free state machine (no trame, no Qt).

:class:`WebController` drives the *same* Qt-free Libs as the Slicer modules on a real MRML scene:

* segmentation: ``RepUXSegmentLib.segmentation.SegmentationJob`` (``repux segment`` in a child process);
* curation, fine-tuning, re-segmentation, uncertainty ranking: ``RepUXTrainerLib.logic.TrainerLogic``.

Nothing here blocks: every long task is a child process that :meth:`WebController.poll` pumps from the
web server's event loop (a few times per second).  The whole UI state is the JSON-ready dict
:attr:`WebController.state`; the trame layer (:mod:`RepUXWeb.app`) mirrors it into the page, and
unit tests read it directly.  Views are reached through a small :class:`Viewer` protocol (the app
implements it with trame-slicer's display manager and segment editor; tests use a recorder).

Every action catches user errors and reports them in ``state["notice"]`` (one line), never as a
traceback; :attr:`WebController.last_error` keeps the message for callers.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from repux.config import DEVICE_KINDS, QUALITIES
from RepUXWeb.files import FileAccessError, FileBrowser, UploadError, check_upload

__all__ = ["Viewer", "WebController", "WebSettings", "segment_voxel_counts"]

logger = logging.getLogger(__name__)

#: mapping choices besides the training set's classes
NEW_CLASS, IGNORE = "(new class)", "(ignore)"
#: how many log lines the page keeps
LOG_LINES = 40


#: the click tool's page state before Initialize
CLICK_IDLE: dict[str, Any] = {
    "status": "off",
    "positive": True,
    "placing": False,
    "message": "Initialize, then click an organ in the axial view.",
    "volume_id": "",
    "answers": 0,  # click answers so far (the page and its tests see each new one)
}


class Viewer(Protocol):
    """What the controller asks of the views (implemented by the trame app; a recorder in tests)."""

    def show_volume(self, volume_node: Any) -> None: ...

    def show_segmentation(self, segmentation_node: Any, volume_node: Any) -> None: ...

    def show_overlay(self, volume_node: Any, overlay_node: Any) -> None: ...

    def place_points(self, point_list_node: Any) -> None:
        """Let clicks in the slice views place control points of ``point_list_node`` (persistent place mode)."""
        ...

    def stop_placing(self) -> None:
        """Back to the normal view interaction."""
        ...


@dataclass
class WebSettings:
    """How the server was started.

    Attributes:
        root: the folder the file browser shows (nothing outside it is readable).
        max_upload_mb: upload size limit.
        work_dir: uploads, the demo phantom and job folders (default: a new temporary folder).
        dataset: the training-set folder (default ``$REPUX_HOME/web/training-set``).
        python: interpreter of the ``repux`` child processes (default: this one).
        finetune: default ``FinetuneOptions`` fields (``maxIterations``, ``roiSize``, ``threads``...).
        segment_arguments: extra ``repux segment`` arguments, e.g. ``("--threads", "2")``.
        session_arguments: extra ``repux session`` arguments of the click tool, e.g. ``("--threads", "2")``.
        model: the model selected at start (default: the built-in default model).
    """

    root: Path
    max_upload_mb: float = 1024.0
    work_dir: Path | None = None
    dataset: Path | None = None
    python: str | None = None
    finetune: dict[str, Any] = field(default_factory=dict)
    segment_arguments: tuple[str, ...] = ()
    session_arguments: tuple[str, ...] = ()
    model: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def segment_voxel_counts(segmentation_node: Any) -> list[dict[str, Any]]:
    """``[{"id", "name", "color", "voxels"}]`` of every segment (binary label map representation)."""
    import numpy as np
    import slicer
    from vtkmodules.util import numpy_support

    out = []
    if segmentation_node is None:
        return out
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        image = segment.GetRepresentation(binary)
        voxels = 0
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if scalars is not None and scalars.GetNumberOfTuples() > 0:
            voxels = int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars) == segment.GetLabelValue()))
        r, g, b = (int(round(255 * c)) for c in segment.GetColor())
        out.append({"id": segmentation.GetNthSegmentID(i), "name": segment.GetName(), "color": f"#{r:02x}{g:02x}{b:02x}", "voxels": voxels})
    return out


def _segmentation_signature(segmentation_node: Any) -> tuple:
    """Changes whenever a segment is added, removed or edited (cheap: modification times only)."""
    import slicer

    if segmentation_node is None:
        return ()
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    parts: list[Any] = [segmentation.GetNumberOfSegments()]
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        image = segment.GetRepresentation(binary)
        scalars = image.GetPointData().GetScalars() if image is not None else None
        parts += [
            segmentation.GetNthSegmentID(i),
            segment.GetName(),
            image.GetMTime() if image is not None else 0,
            scalars.GetMTime() if scalars is not None else 0,
        ]
    return tuple(parts)


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class WebController:
    """State and actions of the RepUX Web page.

    Args:
        context: ``RepUXSegmentLib.mrml.MRMLContext`` (scene, segmentations and volumes logics).
        viewer: the views (:class:`Viewer`).
        settings: :class:`WebSettings`.
        load_files: ``(paths) -> [volume nodes]``; default: ``vtkSlicerVolumesLogic.AddArchetypeVolume`` for
            one file (the app passes trame-slicer's IOManager, which also reads DICOM series).
    """

    def __init__(self, context: Any, viewer: Viewer, settings: WebSettings, load_files: Callable[[Sequence[str]], list[Any]] | None = None) -> None:
        from RepUXTrainerLib.logic import TrainerLogic

        self.context = context
        self.viewer = viewer
        self.settings = settings
        self.browser = FileBrowser(settings.root)
        self.work_dir = Path(settings.work_dir) if settings.work_dir else Path(tempfile.mkdtemp(prefix="repux-web-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if context.temporaryDirectory is None:
            context.temporaryDirectory = str(self.work_dir)
        self.python = settings.python or sys.executable
        self.trainer = TrainerLogic(context=context, pythonExecutable=self.python)
        self._load_files = load_files or self._load_with_volumes_logic
        self.segmentation_job: Any = None
        self.click_tool: Any = None  # RepUXSegmentLib.clicksession.ClickSegmentTool while the click session runs
        self.segmentation_target: tuple[str, str] | None = None  # (volume id, model id) of the running job
        self.results: dict[str, list[dict[str, Any]]] = {}  # volume id -> [{"segmentation", "model", "volumes_ml"}]
        self.mapping: Any = None
        self.last_error = ""
        self._signature: tuple = ()
        self._ranked: list[Any] = []
        self.state: dict[str, Any] = {
            "busy": "",
            "progress": {"fraction": 0.0, "stage": "", "message": "", "eta": ""},
            "notice": {"level": "info", "text": ""},
            "log": [],
            "browser": {"path": "", "parent": None, "entries": []},
            "volumes": [],
            "volume_id": "",
            "models": [],
            "model": "",
            "devices": list(DEVICE_KINDS),
            "device": "auto",
            "qualities": list(QUALITIES),
            "quality": "fast",
            "model_organs": [],
            "organs": [],
            "segmentation_id": "",
            "segments": [],
            "comparison": {"organs": [], "rows": []},
            "training_set": {"path": str(self.training_set_folder), "cases": [], "classes": []},
            "mapping": [],
            "mapping_targets": [],
            "train": {"status": "idle", "iteration": 0, "max_iterations": 0, "loss": None, "mean_dice": None, "can_resume": False, "model_id": "", "eta": ""},
            "max_iterations": int(settings.finetune.get("maxIterations", 300)),
            "roi_size": int(settings.finetune.get("roiSize") or 0),
            "chart": {"loss": [], "dice": []},
            "ranking": [],
            "overlay": "",
            "click": dict(CLICK_IDLE),
            "click_organ": "",  # "": a positive click selects the organ under it; a name: grows / corrects that organ
        }
        self.refresh_models()
        self.browse("")

    # ================================================================= helpers
    @property
    def training_set_folder(self) -> Path:
        if self.settings.dataset is not None:
            return Path(self.settings.dataset)
        from repux.models.store import store_root

        return store_root() / "web" / "training-set"

    def _log(self, level: str, text: str) -> None:
        logger.log(getattr(logging, level, logging.INFO), "%s", text)
        stamp = time.strftime("%H:%M:%S")
        self.state["log"] = ([*self.state["log"], f"{stamp} {level.lower()}: {text}"])[-LOG_LINES:]

    def notify(self, text: str, level: str = "info") -> None:
        self.state["notice"] = {"level": level, "text": text}
        if level == "error":
            self.last_error = text
        self._log("ERROR" if level == "error" else "WARNING" if level == "warning" else "INFO", text)

    def _run(self, action: Callable[[], Any]) -> Any:
        """Run an action; user errors become a one-line notice (returns None then)."""
        from repux.errors import RepuxError

        self.last_error = ""
        try:
            return action()
        except (ValueError, RuntimeError, OSError, RepuxError, FileAccessError, UploadError) as err:
            self.notify(str(err), "error")
        except Exception as err:
            logger.exception("RepUX Web action failed")
            self.notify(f"{type(err).__name__}: {err}", "error")
        return None

    def _node(self, node_id: str) -> Any:
        return self.context.scene.GetNodeByID(node_id) if node_id else None

    @property
    def volume_node(self) -> Any:
        return self._node(self.state["volume_id"])

    @property
    def segmentation_node(self) -> Any:
        return self._node(self.state["segmentation_id"])

    # ================================================================== files
    def browse(self, relative: str) -> bool:
        """Show folder ``relative`` of the root in the file browser."""

        def go() -> bool:
            self.state["browser"] = self.browser.list(relative)
            return True

        return bool(self._run(go))

    def _register_volume(self, node: Any) -> Any:
        import slicer

        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.context.scene)
        if sh is not None and not sh.GetItemByDataNode(node):
            sh.CreateItem(sh.GetSceneItemID(), node)
        self._refresh_volumes()
        self.select_volume(node.GetID())
        return node

    def _load_with_volumes_logic(self, paths: Sequence[str]) -> list[Any]:
        if len(paths) != 1:
            raise ValueError("DICOM series need the app's loader; open one image file.")
        path = Path(paths[0])
        name = path.name.split(".")[0]
        node = self.context.volumesLogic.AddArchetypeVolume(str(path), self.context.scene.GenerateUniqueName(name))
        return [node] if node is not None else []

    def _load(self, paths: Sequence[Path], what: str, name: str | None = None) -> Any:
        from RepUXSegmentLib.mrml import checkScalarVolume

        nodes = [n for n in self._load_files([str(p) for p in paths]) if n is not None]
        if not nodes:
            raise OSError(f"could not read {what} as a volume.")
        node = max(nodes, key=lambda n: n.GetImageData().GetNumberOfPoints() if n.GetImageData() is not None else 0)  # a series may split
        if name:
            node.SetName(self.context.scene.GenerateUniqueName(name))
        try:
            checkScalarVolume(node)
        except ValueError:
            for n in nodes:
                self.context.scene.RemoveNode(n)
            raise
        self._register_volume(node)
        self.notify(f"opened {what}: {node.GetName()} ({' x '.join(str(d) for d in node.GetImageData().GetDimensions())} voxels)")
        return node

    def open_path(self, relative: str) -> Any:
        """Open the image file or DICOM folder ``relative`` (of the root); returns the volume node."""
        return self._run(lambda: self._load(self.browser.files_to_open(relative), relative))

    def receive_upload(self, name: str, content: bytes) -> Any:
        """Validate an uploaded file, store it in the work folder and open it; returns the volume node."""

        def go() -> Any:
            safe = check_upload(name, len(content), bytes(content[:1024]), self.settings.max_upload_bytes)
            folder = self.work_dir / "uploads"
            folder.mkdir(exist_ok=True)
            target = folder / safe
            n = 2
            while target.exists():
                target = folder / f"{n}-{safe}"
                n += 1
            partial = folder / f".{target.name}.partial"
            partial.write_bytes(content)
            os.replace(partial, target)
            try:
                return self._load([target], safe)
            except (OSError, ValueError):
                target.unlink(missing_ok=True)
                raise

        return self._run(go)

    def load_demo(self, seed: int = 7) -> Any:
        """Generate the built-in synthetic phantom (as ``repux demo``) and open it."""

        def go() -> Any:
            from repux.data.phantom import generate_phantom
            from repux.io.images import write_image

            path = self.work_dir / f"demo-phantom-{seed}.nii.gz"
            if not path.exists():
                # 3 mm axial: the built-in model's scale, and quick to segment on a CPU
                write_image(generate_phantom(seed, spacing=(3.0, 3.0, 3.0), orientation="axial").image, path)
            return self._load([path], "the demo phantom", name="demo phantom")

        return self._run(go)

    # ================================================================ volumes
    def _refresh_volumes(self) -> None:
        from RepUXTrainerLib.curation import CASE_ID_ATTRIBUTE
        from RepUXTrainerLib.suggest import UNCERTAINTY_ATTRIBUTE

        scene = self.context.scene
        rows = []
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(UNCERTAINTY_ATTRIBUTE) or node.GetImageData() is None:
                continue
            rows.append({"id": node.GetID(), "name": node.GetName(), "case": bool(node.GetAttribute(CASE_ID_ATTRIBUTE))})
        self.state["volumes"] = rows

    def select_volume(self, node_id: str) -> bool:
        """Make ``node_id`` the current volume and show it (with its latest segmentation)."""
        node = self._node(node_id)
        if node is None:
            self.notify(f"no volume {node_id!r} in the scene.", "error")
            return False
        if self.click_tool is not None and self.click_tool.volumeNode is not node:
            self.stop_clicks()  # the session answers for its own volume only
        self.state["volume_id"] = node_id
        self.state["overlay"] = ""
        self.viewer.show_volume(node)
        results = self.results.get(node_id, [])
        self.set_segmentation(results[-1]["segmentation"] if results else "")
        self._refresh_comparison()
        return True

    def set_segmentation(self, node_id: str) -> None:
        """Make ``node_id`` the edited segmentation of the current volume ("" for none)."""
        node = self._node(node_id)
        self.state["segmentation_id"] = node_id if node is not None else ""
        if node is not None and self.volume_node is not None:
            self.viewer.show_segmentation(node, self.volume_node)
        self._signature = ()
        self.mapping = None
        self.refresh_segments()

    def refresh_segments(self, force: bool = True) -> bool:
        """Recount the voxels of the edited segmentation (only if it changed unless ``force``); True if it changed."""
        node = self.segmentation_node
        signature = _segmentation_signature(node)
        if not force and signature == self._signature:
            return False
        self._signature = signature
        self.state["segments"] = segment_voxel_counts(node)
        self._refresh_mapping()
        return True

    # ================================================================= models
    def refresh_models(self) -> None:
        """The installed and built-in models with their organs."""
        from RepUXSegmentLib.models import listModels

        rows = [
            {"id": m.id, "title": f"{m.id} ({m.status})", "name": m.displayName, "organs": list(m.labels), "status": m.status}
            for m in listModels(catalog=False)  # installed and built-in only: the catalog is not read
            if m.installed
        ]
        self.state["models"] = rows
        if not self.state["model"] or self.state["model"] not in [r["id"] for r in rows]:
            from repux.models.store import DEFAULT_MODEL

            ids = [r["id"] for r in rows]
            wanted = self._start_model_id() or DEFAULT_MODEL
            self.select_model(wanted if wanted in ids else (DEFAULT_MODEL if DEFAULT_MODEL in ids else (ids[0] if ids else "")))

    def _start_model_id(self) -> str | None:
        """The id of ``settings.model`` (an id, or a folder whose model is installed or built in)."""
        if not self.settings.model:
            return None
        from repux.models.store import resolve_model

        try:
            return resolve_model(self.settings.model).id
        except Exception:  # noqa: BLE001 - an unknown model falls back to the default (the CLI checked it already)
            return None

    def select_model(self, model_id: str) -> None:
        rows = {r["id"]: r for r in self.state["models"]}
        self.state["model"] = model_id
        organs = rows[model_id]["organs"] if model_id in rows else []
        self.state["model_organs"] = organs
        self.state["organs"] = list(organs)

    # =========================================================== segmentation
    def start_segmentation(self) -> bool:
        """Segment the current volume with the selected model, device and quality (in the background)."""

        def go() -> bool:
            from RepUXSegmentLib.segmentation import SegmentationJob, SegmentationOptions

            if self.segmentation_job is not None and self.segmentation_job.running:
                raise RuntimeError("a segmentation is running; wait for it or cancel it.")
            if self.state["busy"]:
                raise RuntimeError(f"the {self.state['busy']} task is running; wait for it or cancel it.")
            volume = self.volume_node
            if volume is None:
                raise ValueError("open a CT first (Open, Upload or the demo case).")
            if self.state["model_organs"] and not self.state["organs"]:
                raise ValueError("choose at least one organ.")
            chosen = [o for o in self.state["model_organs"] if o in set(self.state["organs"])]
            options = SegmentationOptions(
                model=self.state["model"],
                device=self.state["device"],
                quality=self.state["quality"],
                organs=tuple(chosen) if chosen and len(chosen) < len(self.state["model_organs"]) else None,  # only these become segments
                extraArguments=tuple(self.settings.segment_arguments),
            )
            job = SegmentationJob(
                volume,
                options,
                context=self.context,
                pythonExecutable=self.python,
                onProgress=self._on_segmentation_progress,
                onLog=lambda level, text: self._log(level, text) if level in ("WARNING", "ERROR") else None,
                onFinished=self._on_segmentation_finished,
            )
            self.segmentation_target = (volume.GetID(), self.state["model"])
            self.state["busy"] = "segment"
            self.state["progress"] = {"fraction": 0.0, "stage": "starting", "message": f"segmenting {volume.GetName()} with {self.state['model']}", "eta": ""}
            try:
                job.start()
            except BaseException:
                self.state["busy"] = ""
                raise
            self.segmentation_job = job
            self._log("INFO", f"segmenting {volume.GetName()} with {self.state['model']} ({self.state['device']}, {self.state['quality']})")
            return True

        return bool(self._run(go))

    def cancel(self) -> None:
        """Cancel the running segmentation or ranking."""
        if self.segmentation_job is not None and self.segmentation_job.running:
            self.segmentation_job.cancel()
        if self.trainer.ranking is not None and self.trainer.ranking.running:
            self.trainer.ranking.cancel()

    def _on_segmentation_progress(self, fraction: float, stage: str, message: str, eta: float | None) -> None:
        self.state["progress"] = {
            "fraction": round(float(fraction), 4),
            "stage": stage,
            "message": message,
            "eta": "" if eta is None or eta <= 0 else f"{eta:.0f} s left",
        }

    def _on_segmentation_finished(self, outcome: Any) -> None:
        self.state["busy"] = ""
        volume_id, model_id = self.segmentation_target or ("", "")
        if not outcome.succeeded:
            self.state["progress"] = {**self.state["progress"], "stage": outcome.status}
            if outcome.status == "cancelled":
                self.notify("segmentation cancelled; the scene is unchanged.", "warning")
            else:
                self.notify(f"segmentation failed: {outcome.errorMessage}", "error")
            return
        node = outcome.segmentationNode
        node.SetName(self.context.scene.GenerateUniqueName(f"{self._node(volume_id).GetName()} - {model_id}"))
        volumes = {k: round(float(v), 1) for k, v in outcome.volumesMl.items()}  # the engine reports the chosen organs only
        self.results.setdefault(volume_id, []).append({"segmentation": node.GetID(), "model": model_id, "volumes_ml": volumes})
        self.state["progress"] = {
            "fraction": 1.0,
            "stage": "done",
            "message": f"{node.GetName()}: {node.GetSegmentation().GetNumberOfSegments()} segments",
            "eta": "",
        }
        for w in outcome.warnings:
            self._log("WARNING", w)
        if volume_id == self.state["volume_id"]:
            self.set_segmentation(node.GetID())
            self._refresh_comparison()
        self.notify(f"segmented in {outcome.seconds:.1f} s with {model_id}: " + ", ".join(f"{k} {v:.0f} mL" for k, v in volumes.items()))

    def _refresh_comparison(self) -> None:
        results = self.results.get(self.state["volume_id"], [])
        organs: list[str] = []
        for r in results:
            organs += [o for o in r["volumes_ml"] if o not in organs]
        rows = []
        for r in results:
            node = self._node(r["segmentation"])
            rows.append(
                {
                    "id": r["segmentation"],
                    "name": node.GetName() if node is not None else "(removed)",
                    "model": r["model"],
                    "volumes": [r["volumes_ml"].get(o) for o in organs],
                }
            )
        self.state["comparison"] = {"organs": organs, "rows": rows}

    # ============================================================== curation
    def _ensure_training_set(self) -> Any:
        from RepUXSegmentLib.segmentation import MODEL_ATTRIBUTE

        if self.trainer.trainingSet is None:
            node = self.segmentation_node
            model = (node.GetAttribute(MODEL_ATTRIBUTE) if node is not None else None) or self.state["model"]
            self.trainer.openTrainingSet(self.training_set_folder, model=model, name="RepUX Web training set")
            self._log("INFO", f"training set: {self.training_set_folder}")
        return self.trainer.trainingSet

    def _refresh_training_set(self) -> None:
        ts = self.trainer.trainingSet
        if ts is None:
            return
        self.state["training_set"] = {
            "path": str(ts.root),
            "cases": [{"id": r.id, "name": r.name, "organs": ", ".join(r.organs)} for r in ts.rows()],
            "classes": list(ts.labels.names),
        }

    def _refresh_mapping(self) -> None:
        node = self.segmentation_node
        if node is None or self.trainer.trainingSet is None and not self.state["segments"]:
            self.state["mapping"], self.state["mapping_targets"] = [], []
            return
        try:
            from RepUXTrainerLib.mapping import LabelMapping, segmentsOf

            labels = self.trainer.trainingSet.labels if self.trainer.trainingSet is not None else self._model_labels()
            segments = segmentsOf(node)
            if self.mapping is None or not self.mapping.matches(segments):
                self.mapping = LabelMapping.build(segments, labels)
            targets = [*labels.names, NEW_CLASS, IGNORE]
        except Exception as err:
            logger.debug("no mapping: %s", err)
            self.state["mapping"], self.state["mapping_targets"] = [], []
            return
        rows = []
        for entry in self.mapping.entries:
            target = entry.label if entry.label else (NEW_CLASS if entry.addAsNew else IGNORE)
            rows.append(
                {"segment_id": entry.segment.id, "segment": entry.segment.name, "target": target, "status": entry.status, "matched_by": entry.matchedBy}
            )
        self.state["mapping"], self.state["mapping_targets"] = rows, targets

    def _model_labels(self) -> Any:
        from repux.models.store import resolve_model

        return resolve_model(self.state["model"]).labels

    def set_mapping(self, segment_id: str, target: str) -> bool:
        """Map a segment to a class of the training set, ``(new class)`` or ``(ignore)``."""

        def go() -> bool:
            if self.mapping is None:
                raise ValueError("there is no segmentation to map.")
            entry = self.mapping.entry(segment_id)
            if target == NEW_CLASS:
                self.mapping.setTarget(segment_id, None)
                entry.addAsNew = True
            elif target == IGNORE:
                self.mapping.setTarget(segment_id, None)
                entry.addAsNew = False
            else:
                labels = self.trainer.trainingSet.labels if self.trainer.trainingSet is not None else self._model_labels()
                self.mapping.setTarget(segment_id, target, labels)
            self._refresh_mapping()
            return True

        return bool(self._run(go))

    def add_case(self) -> Any:
        """Add the current volume and its (edited) segmentation to the training set; returns the ``CaseExport``."""

        def go() -> Any:
            from RepUXSegmentLib.segmentation import MODEL_ATTRIBUTE

            volume, segmentation = self.volume_node, self.segmentation_node
            if volume is None or segmentation is None:
                raise ValueError("segment a CT (or open a segmentation) before adding it as a case.")
            ts = self._ensure_training_set()
            self.refresh_segments()
            from RepUXTrainerLib.mapping import segmentsOf

            mapping = self.mapping if self.mapping is not None and self.mapping.matches(segmentsOf(segmentation)) else None
            export = self.trainer.addCase(volume, segmentation, mapping=mapping, sourceModel=segmentation.GetAttribute(MODEL_ATTRIBUTE) or None)
            self.mapping = None
            self._refresh_training_set()
            self._refresh_volumes()
            self._refresh_mapping()
            self.notify(" ".join(export.messages()) + f" ({len(ts)} cases in the training set)")
            return export

        return self._run(go)

    # ============================================================= fine-tune
    def finetune_settings(self) -> dict[str, Any]:
        settings = dict(self.settings.finetune)
        iterations = int(self.state["max_iterations"] or 0)
        settings["maxIterations"] = iterations
        roi = int(self.state["roi_size"] or 0)
        settings["roiSize"] = roi or None
        settings.setdefault("valInterval", max(1, min(50, iterations // 2 or 1)))
        settings["valInterval"] = max(1, min(int(settings["valInterval"]), iterations or 1))
        settings.setdefault("device", self.state["device"])
        return settings

    def start_finetune(self) -> bool:
        """Fine-tune the training set's model on its cases in the background (live chart)."""

        def go() -> bool:
            if self.trainer.trainingSet is None:
                raise ValueError("add at least two cases to the training set first.")
            base = self.trainer.trainingSet.referenceModel or self.state["model"]
            job = self.trainer.startFinetune(
                baseModel=base, onProgress=self._on_train_progress, onLog=self._on_train_log, onFinished=self._on_train_finished, **self.finetune_settings()
            )
            self.state["chart"] = {"loss": [], "dice": []}
            self._train_state(job)
            self._log("INFO", f"fine-tuning {base} -> {job.options.modelId} on {len(self.trainer.trainingSet)} cases")
            return True

        return bool(self._run(go))

    def stop_finetune(self) -> None:
        """Stop after the current iteration; a resumable checkpoint is written."""
        self._run(lambda: self.trainer.stopFinetune(wait=False))
        if self.trainer.job is not None:
            self._train_state(self.trainer.job)

    def resume_finetune(self) -> bool:
        """Continue the stopped run from its checkpoint."""

        def go() -> bool:
            job = self.trainer.resumeFinetune(onProgress=self._on_train_progress, onLog=self._on_train_log, onFinished=self._on_train_finished)
            self._train_state(job)
            self._refresh_chart()
            return True

        return bool(self._run(go))

    def _on_train_log(self, level: str, text: str) -> None:
        if level in ("WARNING", "ERROR"):
            self._log(level, text)

    def _on_train_progress(self, update: Any) -> None:
        if self.trainer.job is not None:
            self._train_state(self.trainer.job)
        self._refresh_chart()

    def _refresh_chart(self) -> None:
        progress = self.trainer.progress
        if progress is None:
            return
        loss = [[r.iteration, round(r.loss, 5)] for r in progress.rows if _finite(r.loss) is not None]
        dice = []
        for r in progress.rows:
            values = [v for v in r.dice.values() if _finite(v) is not None]
            if values:
                dice.append([r.iteration, round(sum(values) / len(values), 4)])
        self.state["chart"] = {"loss": loss, "dice": dice}

    def _train_state(self, job: Any) -> None:
        p = job.progress
        self.state["train"] = {
            "status": job.state,
            "iteration": p.iteration,
            "max_iterations": p.maxIterations or job.options.maxIterations,
            "loss": _finite(p.lastLoss),
            "mean_dice": _finite(p.lastMeanDice),
            "can_resume": bool(job.canResume),
            "model_id": job.options.modelId,
            "eta": "" if not p.etaSeconds else f"{p.etaSeconds:.0f} s left",
        }

    def _on_train_finished(self, outcome: Any) -> None:
        if self.trainer.job is not None:
            self._train_state(self.trainer.job)
        self._refresh_chart()
        if outcome.succeeded:
            self.refresh_models()
            self.select_model(outcome.modelId)
            dice = f" (validation mean Dice {outcome.bestMeanDice:.3f})" if outcome.bestMeanDice is not None else ""
            self.notify(f"new model {outcome.modelId} after {outcome.iterations} iterations{dice}; it is selected: Segment compares it with the old one.")
        elif outcome.status == "stopped":
            self.notify(f"fine-tuning stopped at iteration {outcome.iterations}; Resume continues from the checkpoint.", "warning")
        elif outcome.status == "cancelled":
            self.notify("fine-tuning stopped before the first checkpoint.", "warning")
        else:
            self.notify(f"fine-tuning failed: {outcome.errorMessage}", "error")

    # =============================================================== ranking
    def start_ranking(self) -> bool:
        """Rank the scene's volumes that are not cases yet by the selected model's uncertainty."""

        def go() -> bool:
            if self.state["busy"]:
                raise RuntimeError(f"the {self.state['busy']} task is running; wait for it or cancel it.")
            candidates = self.trainer.sceneCandidates()
            if not candidates:
                raise ValueError("every volume is already a case of the training set; open another CT to rank.")
            self.state["busy"] = "rank"
            self.state["ranking"] = []
            self.state["progress"] = {"fraction": 0.0, "stage": "ranking", "message": f"0/{len(candidates)} volumes", "eta": ""}
            try:
                self.trainer.startRanking(
                    candidates,
                    model=self.state["model"],
                    device=self.state["device"],
                    onProgress=self._on_rank_progress,
                    onLog=self._on_train_log,
                    onFinished=self._on_rank_finished,
                    extraArguments=tuple(self.settings.segment_arguments),
                )
            except BaseException:
                self.state["busy"] = ""
                raise
            return True

        return bool(self._run(go))

    def _on_rank_progress(self, done: int, total: int, candidate: Any) -> None:
        self.state["progress"] = {"fraction": done / max(total, 1), "stage": "ranking", "message": f"{done}/{total} volumes ({candidate.name})", "eta": ""}

    def _on_rank_finished(self, ranking: Any) -> None:
        self.state["busy"] = ""
        self._ranked = ranking.ranked()
        self.state["ranking"] = [
            {
                "index": i,
                "name": c.name,
                "mean_entropy": None if c.meanEntropy is None else round(c.meanEntropy, 4),
                "status": c.status,
                "error": c.errorMessage,
            }
            for i, c in enumerate(self._ranked)
        ]
        self.state["progress"] = {"fraction": 1.0, "stage": "done", "message": "ranking finished", "eta": ""}
        if self._ranked and self._ranked[0].meanEntropy is not None:
            self.show_uncertainty(0)
            self.notify(f"next case: {self._ranked[0].name} (mean uncertainty {self._ranked[0].meanEntropy:.4f}); its uncertainty map is shown.")
        elif ranking.cancelled:
            self.notify("ranking cancelled.", "warning")
        else:
            self.notify("no volume could be ranked; see the log.", "error")

    def show_uncertainty(self, index: int) -> bool:
        """Show the ranked volume ``index`` with its uncertainty map as an overlay."""

        def go() -> bool:
            candidate = self._ranked[int(index)]
            volume, overlay = self.trainer.showUncertainty(candidate)
            self.state["volume_id"] = volume.GetID()
            results = self.results.get(volume.GetID(), [])
            self.state["segmentation_id"] = results[-1]["segmentation"] if results else ""
            self.viewer.show_overlay(volume, overlay)
            if self.segmentation_node is not None:
                self.viewer.show_segmentation(self.segmentation_node, volume)
            self.state["overlay"] = overlay.GetName()
            self._refresh_volumes()
            self.refresh_segments()
            self._refresh_comparison()
            return True

        return bool(self._run(go))

    # ======================================================= click to segment
    def start_clicks(self) -> bool:
        """Start the click session (``repux session``) on the current volume and model; clicks then place points."""

        def go() -> bool:
            from RepUXSegmentLib.clicksession import ClickSegmentTool, clickPointList

            volume = self.volume_node
            if volume is None:
                raise ValueError("open a CT first (Open, Upload or the demo case).")
            if not self.state["model"]:
                raise ValueError("no model is installed: install one (repux models install) and reload the page.")
            self.stop_clicks()
            points = clickPointList(self.context.scene)
            segmentation = self.segmentation_node if self.state["segmentation_id"] else None
            tool = ClickSegmentTool(
                self.context,
                volume,
                points,
                segmentation,
                model=self.state["model"],
                device=self.state["device"],
                pythonExecutable=self.python,
                onOutcome=self._on_click_outcome,
                onProgress=self._on_click_progress,
                extraArguments=list(self.settings.session_arguments),
            )
            tool.organ = self.state["click_organ"] or None
            tool.start()
            self.click_tool = tool
            self.state["click"] = {
                **CLICK_IDLE,
                "status": "starting",
                "positive": True,
                "message": f"starting the session on {volume.GetName()} with {self.state['model']}...",
                "volume_id": volume.GetID(),
            }
            self.place_clicks(True)
            self._log("INFO", f"click session on {volume.GetName()} with {self.state['model']} ({self.state['device']})")
            return True

        return bool(self._run(go))

    def _update_click(self, **changes: Any) -> None:
        """Change fields of the click card's state (a new dict, so that trame sends the change)."""
        self.state["click"] = {**self.state["click"], **changes}

    def place_clicks(self, placing: bool) -> None:
        """Turn placing clicks in the slice views on or off."""
        tool = self.click_tool
        if placing and tool is not None and tool.running:
            self.viewer.place_points(tool.pointListNode)
        else:
            self.viewer.stop_placing()
            placing = False
        self._update_click(placing=bool(placing))

    def set_click_positive(self, positive: bool) -> None:
        """``True``: a click selects the organ under it; ``False``: it removes the selected blob under it."""
        if self.click_tool is not None:
            self.click_tool.positive = bool(positive)
        self._update_click(positive=bool(positive))

    def set_click_organ(self, organ: str | None) -> None:
        """The organ a positive click grows (select mode) or corrects (a click-guidance model); "" or None: select."""
        organ = organ or ""
        if organ and organ not in self.state["model_organs"]:
            self.notify(f"organ {organ!r} is not one of the model's organs ({', '.join(self.state['model_organs'])}).", "error")
            return
        self.state["click_organ"] = organ
        if self.click_tool is not None:
            self.click_tool.organ = organ or None

    def undo_click(self) -> bool:
        """Restore the segments as they were before the last click."""
        if self.click_tool is None or not self.click_tool.undo():
            self._update_click(message="nothing to undo")
            return False
        self._update_click(message="undone")
        self.refresh_segments()
        return True

    def stop_clicks(self) -> None:
        """End the click session (the segments stay)."""
        tool, self.click_tool = self.click_tool, None
        if tool is not None:
            self.viewer.stop_placing()
            tool.stop()
            self.state["click"] = {**CLICK_IDLE, "message": "click session ended"}

    def _on_click_progress(self, update: Any) -> None:
        self._update_click(message=f"{update.message} ({100 * update.fraction:.0f} %)")

    def _on_click_outcome(self, outcome: Any) -> None:
        status = "failed" if outcome.status == "failed" else "ready"
        answers = self.state["click"]["answers"] + (outcome.clickId is not None and outcome.status not in ("opened", "failed"))
        self._update_click(status=status, message=outcome.describe(), answers=int(answers))
        tool = self.click_tool
        if tool is None:
            return
        if outcome.status == "failed":
            self.place_clicks(False)
            self.notify(outcome.message, "error")
            return
        node = tool.segmentationNode
        if node is not None and self.state["volume_id"] == tool.volumeNode.GetID() and self.state["segmentation_id"] != node.GetID():
            self.set_segmentation(node.GetID())  # the first click made the "<volume> clicks" segmentation
        else:
            self.refresh_segments()

    # ================================================================== pump
    def poll(self) -> None:
        """Pump the background jobs and pick up edits; call a few times per second from the event loop."""
        try:
            if self.segmentation_job is not None and self.segmentation_job.running:
                self.segmentation_job.processEvents()
            if self.click_tool is not None:
                self.click_tool.processEvents()
            self.trainer.processEvents()
            if self.trainer.job is not None and self.trainer.job.running:
                self._train_state(self.trainer.job)
            self.refresh_segments(force=False)
        except Exception as err:
            logger.exception("RepUX Web poll failed")
            self.notify(f"{type(err).__name__}: {err}", "error")

    def poll_interval(self) -> float:
        """Seconds between polls: short while the click session runs (a click's answer is shown at once)."""
        if self.click_tool is not None and self.click_tool.running:
            return 0.05
        return 0.2 if self.busy() else 0.5

    def busy(self) -> bool:
        """True while a segmentation, ranking or fine-tuning runs."""
        return bool(self.state["busy"]) or (self.trainer.job is not None and self.trainer.job.running)

    def wait(self, timeout: float = 600.0, interval: float = 0.1) -> None:
        """Poll until nothing runs (for scripts and tests).

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.busy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"RepUX Web tasks still running after {timeout} s.")
            self.poll()
            time.sleep(interval)
        self.poll()

    def shutdown(self) -> None:
        """Stop everything (the fine-tuning with a checkpoint) and delete temporary job files."""
        self.stop_clicks()
        if self.segmentation_job is not None and self.segmentation_job.running:
            self.segmentation_job.cancel()
            try:
                self.segmentation_job.wait(timeout=30)
            except TimeoutError:
                logger.warning("the segmentation did not stop within 30 s")
        self.trainer.shutdown()
