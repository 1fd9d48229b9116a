"""The RepUX Web page: trame-slicer views and segment editor + the RepUX panel.

Layers: :class:`RepuxWebApp` builds trame-slicer's ``SlicerApp`` (scene, logics, views, segment
editor), its segment-editor and layout logic, and a :class:`~RepUXWeb.controller.WebController` on
the same scene; it implements the controller's :class:`~RepUXWeb.controller.Viewer` with
trame-slicer's display manager and editor, mirrors ``controller.state`` into the trame state
(``rx_<key>``) and pumps the controller from the event loop (never blocking it).

Every control of the RepUX panel has a stable ``data-testid`` (listed in :data:`TEST_IDS` and in
the README's "RepUX Web" section).
"""

from __future__ import annotations

import asyncio
import html as html_text
import logging
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X server: offscreen EGL (Mesa) directly

from trame.app import TrameApp
from trame.app.file_upload import ClientFile
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, SegmentEditorLogic
from trame_slicer.app.ui import (
    ControlButton,
    LayoutButton,
    SegmentEditorToolbarUI,
    SegmentEditorUI,
    SegmentEditorUndoRedoUI,
    ViewerLayout,
)
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import (
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationEffectSmoothing,
    SegmentationEffectThreshold,
)

from RepUXWeb.controller import WebController, WebSettings
from RepUXWeb.slicer_fixes import attach_effect_pipelines_to_views

__all__ = ["EFFECTS", "TEST_IDS", "RepuxWebApp", "chart_svg"]

logger = logging.getLogger(__name__)

#: effect buttons of the RepUX panel: test id suffix -> (label, trame-slicer effect)
EFFECTS = {
    "none": ("Select", SegmentationEffectNoTool),
    "paint": ("Paint", SegmentationEffectPaint),
    "erase": ("Erase", SegmentationEffectErase),
    "scissors": ("Scissors", SegmentationEffectScissors),
    "threshold": ("Threshold", SegmentationEffectThreshold),
    "islands": ("Islands", SegmentationEffectIslands),
    "smoothing": ("Smoothing", SegmentationEffectSmoothing),
}

#: every stable test id of the page (``<name>-<value>`` ids are per row / per segment)
TEST_IDS = (
    "notice",
    "browser-path",
    "browser-up",
    "browser-entry-<name>",
    "upload-input",
    "open-demo",
    "volume-select",
    "model-select",
    "model-organs",
    "device-select",
    "quality-select",
    "organ-select",
    "segment-start",
    "segment-cancel",
    "segment-progress",
    "segment-stage",
    "segment-eta",
    "click-start",
    "click-place",
    "click-polarity",
    "click-organ",
    "click-undo",
    "click-stop",
    "click-status",
    *(f"effect-{k}" for k in EFFECTS),
    "edit-undo",
    "edit-redo",
    "segment-table",
    "segment-row-<name>",
    "segment-voxels-<name>",
    "compare-table",
    "mapping-table",
    "mapping-target-<segment>",
    "case-add",
    "case-count",
    "case-table",
    "train-iterations",
    "train-roi",
    "train-start",
    "train-stop",
    "train-resume",
    "train-status",
    "train-chart",
    "train-chart-points",
    "rank-start",
    "rank-table",
    "rank-row-<index>",
    "log",
)

PREFIX = "rx_"
#: state keys the page may change (the rest flows from the server to the page only)
EDITABLE = ("volume_id", "model", "device", "quality", "organs", "max_iterations", "roi_size", "click_organ")


def tid(name: str) -> list[str]:
    """``raw_attrs`` for a static ``data-testid``."""
    return [f'data-testid="{name}"']


def tool_button(label: str, click: Any, test_id: str, *, disabled: Any = None, size: str = "x-small", classes: str = "mr-1 mb-1", **props: Any) -> Any:
    """One of the panel's small tonal buttons, with its test id (``props`` add or override Vuetify properties)."""
    kw: dict[str, Any] = {"size": size, "variant": "tonal", "classes": classes, "click": click, "raw_attrs": tid(test_id)}
    if disabled is not None:
        kw["disabled"] = disabled
    return v3.VBtn(label, **{**kw, **props})


def chart_svg(chart: dict[str, list], width: int = 380, height: int = 150) -> str:
    """Loss (orange, scaled to its maximum) and mean validation Dice (green, 0..1) against iteration, as SVG."""
    loss, dice = chart.get("loss", []), chart.get("dice", [])
    points = [p[0] for p in loss + dice]
    x0, x1 = (min(points), max(points)) if points else (0, 1)
    span = max(x1 - x0, 1)
    top = max([p[1] for p in loss] or [1.0]) or 1.0
    pad = 24

    def xy(it: float, value: float, scale: float) -> str:
        x = pad + (it - x0) / span * (width - 2 * pad)
        y = height - pad - max(0.0, min(value / scale, 1.0)) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    def line(series: list, scale: float, color: str) -> str:
        if not series:
            return ""
        pts = " ".join(xy(i, v, scale) for i, v in series)
        dots = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.5" fill="{color}"/>' for p in pts.split())
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>{dots}'

    label = html_text.escape(f"iterations {x0}..{x1}" if points else "no points yet")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="background:#1e1e1e">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
        f"{line(loss, top, '#ff9800')}{line(dice, 1.0, '#4caf50')}"
        f'<text x="{pad}" y="14" fill="#ff9800" font-size="11">loss (max {top:.3g})</text>'
        f'<text x="{width // 2}" y="14" fill="#4caf50" font-size="11">mean val Dice (0..1)</text>'
        f'<text x="{pad}" y="{height - 6}" fill="#aaa" font-size="10">{label}</text></svg>'
    )


class RepuxWebApp(TrameApp):
    """trame-slicer views + segment editor, and the RepUX panel driving a :class:`WebController`.

    Args:
        settings: :class:`WebSettings`.
        server: a trame server (default: a new one).
        load_demo: open the built-in demo phantom at start.
    """

    def __init__(self, settings: WebSettings, server: Any = None, load_demo: bool = True) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self._stop_requested: Callable[[], bool] | None = None
        self._pump_task: Any = None
        self._pushed: dict[str, Any] = {}
        self._build_ui()
        # trame-slicer 2.0.0 workaround (see slicer_fixes): the views exist now
        attach_effect_pipelines_to_views(self.editor, self.slicer_app.view_manager)

        from RepUXSegmentLib.mrml import MRMLContext

        context = MRMLContext(self.slicer_app.scene, self.slicer_app.segmentations_logic, self.slicer_app.volumes_logic, None)
        self.controller = WebController(context, self, settings, load_files=self.slicer_app.io_manager.load_volumes)
        if settings.work_dir is None:
            settings.work_dir = self.controller.work_dir
        self.state["trame__title"] = "RepUX Web"
        self.state["trame__favicon"] = ""  # the default points to the internet
        for key in EDITABLE:
            self.state.change(PREFIX + key)(self._make_change_handler(key))
        self.state.change(PREFIX + "upload")(self._on_upload)
        if load_demo:
            self.controller.load_demo()
        self.sync()
        self.ctrl.on_server_ready.add(self._on_ready)
        self.ctrl.on_server_exited.add(lambda **_: self.controller.shutdown())

    # ------------------------------------------------------------------ viewer
    @property
    def editor(self) -> Any:
        return self.slicer_app.segmentation_editor

    def show_volume(self, volume_node: Any) -> None:
        """Background of the slice views (no volume rendering: the 3D view shows the organ surfaces)."""
        self.editor.deactivate_effect()
        if self.editor.active_volume_node is not None and self.editor.active_volume_node is not volume_node:
            self.editor.clear()  # the editor must not keep editing another volume's segmentation
        self._show_only_segmentation(None)
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(volume_node)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()
        self.layout_typed.data.is_volume_loaded = True
        self.layout_typed.data.is_drawer_visible = True
        self.layout_typed.data.active_tool = SegmentEditorUI.__name__

    def _show_only_segmentation(self, segmentation_node: Any) -> None:
        scene = self.slicer_app.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            node.SetDisplayVisibility(node is segmentation_node)

    def show_segmentation(self, segmentation_node: Any, volume_node: Any) -> None:
        self.editor.deactivate_effect()
        self._show_only_segmentation(segmentation_node)
        self.editor.set_active_segmentation(segmentation_node, volume_node)
        self.editor.set_surface_representation_enabled(True)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        attach_effect_pipelines_to_views(self.editor, self.slicer_app.view_manager)

    def show_overlay(self, volume_node: Any, overlay_node: Any) -> None:
        from RepUXTrainerLib.suggest import showForeground

        self.show_volume(volume_node)
        showForeground(self.slicer_app.scene, overlay_node, volume_node, 0.5)

    def place_points(self, point_list_node: Any) -> None:
        """Clicks in the slice views place control points of ``point_list_node`` (trame-slicer's markups placement)."""
        self.editor.deactivate_effect()
        self.slicer_app.markups_logic.place_node(point_list_node, persistent=True)

    def stop_placing(self) -> None:
        self.slicer_app.markups_logic.disable_place_mode()

    # -------------------------------------------------------------- actions
    def set_effect(self, key: str) -> None:
        if self.controller.click_tool is not None and key != "none":
            self.controller.place_clicks(False)  # a segment editor effect takes the mouse
        if self.controller.segmentation_node is None:
            self.controller.notify("segment a CT first: the editor works on its segmentation.", "error")
        else:
            self.editor.set_active_effect_type(EFFECTS[key][1])
            attach_effect_pipelines_to_views(self.editor, self.slicer_app.view_manager)
        self.sync()

    def undo(self) -> None:
        if self.editor.undo_stack is not None and self.editor.undo_stack.can_undo():
            self.editor.undo_stack.undo()
        self.sync()

    def redo(self) -> None:
        if self.editor.undo_stack is not None and self.editor.undo_stack.can_redo():
            self.editor.undo_stack.redo()
        self.sync()

    def _call(self, method: Callable[..., Any], *args: Any) -> None:
        method(*args)
        self.sync()

    def _on_upload(self, **kwargs: Any) -> None:
        files = kwargs.get(PREFIX + "upload")
        if not files:
            return
        for f in files if isinstance(files, list) else [files]:
            client = ClientFile(f)
            self.controller.receive_upload(client.name or "upload", client.content or b"")
        self.state[PREFIX + "upload"] = None
        self.sync()

    def _make_change_handler(self, key: str) -> Callable[..., None]:
        def changed(**kwargs: Any) -> None:
            value = kwargs.get(PREFIX + key)
            if value == self.controller.state.get(key):
                return
            if key == "volume_id":
                self.controller.select_volume(value)
            elif key == "model":
                self.controller.select_model(value)
            elif key == "click_organ":
                self.controller.set_click_organ(value)
            elif key in ("max_iterations", "roi_size"):
                try:
                    self.controller.state[key] = max(0, int(value or 0))
                except (TypeError, ValueError):
                    self.controller.notify(f"{key.replace('_', ' ')} must be a whole number; got {value!r}.", "error")
            else:
                self.controller.state[key] = value
            self.sync()

        return changed

    # ------------------------------------------------------------------ sync
    def sync(self) -> None:
        """Push the controller state that changed into the trame state."""
        updates = {}
        for key, value in self.controller.state.items():
            if self._pushed.get(key, object()) != value:
                updates[PREFIX + key] = value
                self._pushed[key] = _copy(value)
        if "chart" in [k[len(PREFIX) :] for k in updates]:
            updates[PREFIX + "chart_svg"] = chart_svg(self.controller.state["chart"])
            chart = self.controller.state["chart"]
            updates[PREFIX + "chart_points"] = len(chart["loss"]) + len(chart["dice"])
        if updates:
            with self.state:
                self.state.update(updates)

    def request_stop(self, stop_requested: Callable[[], bool]) -> None:
        """Stop the server once ``stop_requested()`` is true (e.g. on Ctrl-C)."""
        self._stop_requested = stop_requested

    def _on_ready(self, **_: Any) -> None:
        from trame_server.utils.asynchronous import create_task

        self._pump_task = create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            self.controller.poll()
            self.sync()
            if self._stop_requested is not None and self._stop_requested():
                self.controller.shutdown()
                await self.server.stop()
                return
            await asyncio.sleep(self.controller.poll_interval())

    # -------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        with ViewerLayout(self.server, is_drawer_visible=False) as layout:
            self.layout = layout
            self.layout_typed = layout.typed_state
            name = layout.typed_state.name
            layout.title.set_text("RepUX Web")
            with layout.drawer:
                self.segment_editor_ui = SegmentEditorUI(v_if=(f"{name.active_tool} === '{SegmentEditorUI.__name__}'",))
            with layout.toolbar:
                self.layout_button = LayoutButton(classes="mt-1", disabled=(f"!{name.is_volume_loaded}",))

                def toggle_editor() -> None:
                    visible = not layout.typed_state.data.is_drawer_visible
                    layout.typed_state.data.is_drawer_visible = visible
                    layout.typed_state.data.active_tool = SegmentEditorUI.__name__ if visible else None

                ControlButton(icon="mdi-brush", name="Segment editor", click=toggle_editor, classes="mt-1", disabled=(f"!{name.is_volume_loaded}",))
                SegmentEditorToolbarUI(editor_ui=self.segment_editor_ui)
            with layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.segment_editor_ui, v_if=(f"{name.active_tool} === '{SegmentEditorUI.__name__}'",))
            with layout.content:
                self.layout_logic.layout_manager.initialize_layout_grid(layout)
            with v3.VNavigationDrawer(location="right", permanent=True, width=430, disable_resize_watcher=True, disable_route_watcher=True):
                self._build_panel()
        self.editor_logic.set_ui(self.segment_editor_ui)
        self.layout_logic.set_ui(self.layout_button)

    def _section(self, title: str) -> None:
        html.Div(title, classes="text-subtitle-2 text-primary mt-3 mb-1")

    def _build_panel(self) -> None:
        s = PREFIX
        with html.Div(classes="pa-2", style="font-size: 13px;"):
            v3.VAlert(
                v_if=(f"{s}notice.text",),
                text=(f"{s}notice.text",),
                type=(f"{s}notice.level === 'error' ? 'error' : ({s}notice.level === 'warning' ? 'warning' : 'info')",),
                density="compact",
                variant="tonal",
                classes="mb-2",
                raw_attrs=tid("notice"),
            )
            for card in (
                self._card_open,
                self._card_segment,
                self._card_click,
                self._card_edit,
                self._card_compare,
                self._card_curate,
                self._card_finetune,
                self._card_rank,
                self._card_log,
            ):
                card()

    def _card_open(self) -> None:
        """The panel's open card."""
        s = PREFIX
        self._section("1. Open a CT")
        with html.Div(classes="d-flex align-center"):
            v3.VBtn(
                "Up",
                size="x-small",
                variant="tonal",
                disabled=(f"{s}browser.parent === null",),
                click=(self._on_up, "[rx_browser.parent || '']"),
                raw_attrs=tid("browser-up"),
            )
            html.Span("{{ '/' + rx_browser.path }}", classes="ml-2 text-caption", raw_attrs=tid("browser-path"))
        with v3.VList(density="compact", max_height=140, style="overflow-y: auto;", classes="py-0"):
            v3.VListItem(
                v_for="e in rx_browser.entries",
                key="e.path",
                title=("e.name + (e.kind.endsWith('folder') ? '/' : '')",),
                subtitle=(
                    "e.kind === 'image' ? (e.size / 1e6).toFixed(1) + ' MB - click to open'"
                    " : (e.kind === 'dicom-folder' ? 'DICOM series - click to open' : '')",
                ),
                click=(self._on_entry, "[e.path, e.kind]"),
                raw_attrs=[':data-testid="`browser-entry-${e.name}`"'],
            )
        with html.Div(classes="d-flex align-center"):
            v3.VFileInput(
                v_model=(f"{s}upload", None),
                label="Upload a CT (.nii.gz .nii .nrrd .mha .dcm)",
                density="compact",
                hide_details=True,
                show_size=True,
                raw_attrs=tid("upload-input"),
            )
            v3.VBtn("Demo", size="small", variant="tonal", classes="ml-2", click=self._open_demo, raw_attrs=tid("open-demo"))
        v3.VSelect(
            label="Volume",
            v_model=(f"{s}volume_id",),
            items=(f"{s}volumes",),
            item_title="name",
            item_value="id",
            density="compact",
            hide_details=True,
            classes="mt-2",
            raw_attrs=tid("volume-select"),
        )

    def _card_segment(self) -> None:
        """The panel's segment card."""
        s = PREFIX
        self._section("2. Segment")
        v3.VSelect(
            label="Model",
            v_model=(f"{s}model",),
            items=(f"{s}models",),
            item_title="title",
            item_value="id",
            density="compact",
            hide_details=True,
            raw_attrs=tid("model-select"),
        )
        html.Div("organs: {{ rx_model_organs.join(', ') }}", classes="text-caption", raw_attrs=tid("model-organs"))
        with html.Div(classes="d-flex"):
            v3.VSelect(
                label="Device",
                v_model=(f"{s}device",),
                items=(f"{s}devices",),
                density="compact",
                hide_details=True,
                classes="mr-1",
                raw_attrs=tid("device-select"),
            )
            v3.VSelect(
                label="Quality", v_model=(f"{s}quality",), items=(f"{s}qualities",), density="compact", hide_details=True, raw_attrs=tid("quality-select")
            )
        v3.VSelect(
            label="Organs",
            v_model=(f"{s}organs",),
            items=(f"{s}model_organs",),
            multiple=True,
            chips=True,
            closable_chips=True,
            density="compact",
            hide_details=True,
            classes="mt-1",
            raw_attrs=tid("organ-select"),
        )
        with html.Div(classes="d-flex align-center mt-1"):
            v3.VBtn(
                "Segment",
                color="primary",
                size="small",
                disabled=(f"!!{s}busy || !{s}volume_id",),
                click=lambda: self._call(self.controller.start_segmentation),
                raw_attrs=tid("segment-start"),
            )
            tool_button("Cancel", lambda: self._call(self.controller.cancel), "segment-cancel", disabled=(f"!{s}busy",), size="small", classes="ml-2")
            html.Span("{{ rx_progress.stage }}", classes="ml-2 text-caption", raw_attrs=tid("segment-stage"))
            html.Span("{{ rx_progress.eta }}", classes="ml-2 text-caption", raw_attrs=tid("segment-eta"))
        v3.VProgressLinear(
            model_value=(f"Math.round(100 * {s}progress.fraction)",),
            height=8,
            color="primary",
            classes="mt-1",
            raw_attrs=[*tid("segment-progress"), ':data-value="Math.round(100 * rx_progress.fraction)"'],
        )
        html.Div("{{ rx_progress.message }}", classes="text-caption")

    def _card_click(self) -> None:
        """The panel's click to segment card."""
        s = PREFIX
        html.Div("Click to segment", classes="text-caption font-weight-bold mt-2")
        with html.Div(classes="d-flex flex-wrap align-center"):
            tool_button("Initialize", lambda: self._call(self.controller.start_clicks), "click-start", disabled=(f"!{s}volume_id || !{s}model",))
            tool_button(
                "Place",
                lambda: self._call(self.controller.place_clicks, not self.controller.state["click"]["placing"]),
                "click-place",
                disabled=(f"{s}click.status === 'off' || {s}click.status === 'failed'",),
                variant=(f"{s}click.placing ? 'flat' : 'tonal'",),
                color=(f"{s}click.placing ? 'primary' : undefined",),
            )
            tool_button(
                "{{ rx_click.positive ? '+ organ' : '- remove' }}",
                lambda: self._call(self.controller.set_click_positive, not self.controller.state["click"]["positive"]),
                "click-polarity",
                disabled=(f"{s}click.status === 'off'",),
            )
            tool_button("Undo", lambda: self._call(self.controller.undo_click), "click-undo", disabled=(f"{s}click.status === 'off'",))
            tool_button("End", lambda: self._call(self.controller.stop_clicks), "click-stop", disabled=(f"{s}click.status === 'off'",))
        v3.VSelect(
            label="Positive click: the organ under it, or grow / correct",
            v_model=(f"{s}click_organ",),
            items=(f"[{{title: '(the organ under the click)', value: ''}}, ...{s}model_organs.map(o => ({{title: o, value: o}}))]",),
            density="compact",
            hide_details=True,
            classes="mt-1",
            raw_attrs=tid("click-organ"),
        )
        html.Div(
            "{{ rx_click.message }}",
            classes="text-caption",
            raw_attrs=[*tid("click-status"), ':data-status="rx_click.status"', ':data-answers="rx_click.answers"'],
        )

    def _card_edit(self) -> None:
        """The panel's edit card."""
        s = PREFIX
        self._section("3. Edit (Slicer segment editor)")
        with html.Div(classes="d-flex flex-wrap"):
            for key, (label, _) in EFFECTS.items():
                tool_button(label, (self.set_effect, f"['{key}']"), f"effect-{key}", disabled=(f"!{s}segmentation_id",))
            tool_button("Undo", self.undo, "edit-undo")
            tool_button("Redo", self.redo, "edit-redo")
        with v3.VTable(density="compact", raw_attrs=tid("segment-table")):
            with html.Tbody():
                with html.Tr(v_for="g in rx_segments", key="g.id", raw_attrs=[':data-testid="`segment-row-${g.name}`"']):
                    with html.Td():
                        html.Span(style=("{ display: 'inline-block', width: '10px', height: '10px', background: g.color, marginRight: '6px' }",))
                        html.Span("{{ g.name }}")
                    html.Td("{{ g.voxels }}", classes="text-right", raw_attrs=[':data-testid="`segment-voxels-${g.name}`"'])

    def _card_compare(self) -> None:
        """The panel's compare card."""
        s = PREFIX
        with html.Div(v_if=(f"{s}comparison.rows.length > 1",)):
            self._section("Compare (organ volumes, mL)")
            with v3.VTable(density="compact", raw_attrs=tid("compare-table")):
                with html.Thead(), html.Tr():
                    html.Th("model")
                    html.Th("{{ o }}", v_for="o in rx_comparison.organs", key="o")
                with html.Tbody(), html.Tr(v_for="r in rx_comparison.rows", key="r.id"):
                    html.Td("{{ r.model }}")
                    html.Td("{{ v === null ? '-' : v.toFixed(0) }}", v_for="(v, i) in r.volumes", key="i")

    def _card_curate(self) -> None:
        """The panel's curate card."""
        s = PREFIX
        self._section("4. Curate (training set)")
        html.Div("{{ rx_training_set.path }}", classes="text-caption")
        with v3.VTable(density="compact", v_if=(f"{s}mapping.length",), raw_attrs=tid("mapping-table")):
            with html.Thead(), html.Tr():
                html.Th("segment")
                html.Th("class")
            with html.Tbody(), html.Tr(v_for="m in rx_mapping", key="m.segment_id"):
                html.Td("{{ m.segment }}")
                with html.Td():
                    v3.VSelect(
                        model_value=("m.target",),
                        items=(f"{s}mapping_targets",),
                        density="compact",
                        hide_details=True,
                        variant="plain",
                        update_modelValue=(self._on_mapping, "[m.segment_id, $event]"),
                        raw_attrs=[':data-testid="`mapping-target-${m.segment}`"'],
                    )
        with html.Div(classes="d-flex align-center"):
            v3.VBtn(
                "Add case",
                color="primary",
                size="small",
                disabled=(f"!{s}segmentation_id",),
                click=lambda: self._call(self.controller.add_case),
                raw_attrs=tid("case-add"),
            )
            html.Span("{{ rx_training_set.cases.length }} cases", classes="ml-2", raw_attrs=tid("case-count"))
        with v3.VTable(density="compact", v_if=(f"{s}training_set.cases.length",), raw_attrs=tid("case-table")):
            with html.Tbody(), html.Tr(v_for="c in rx_training_set.cases", key="c.id"):
                html.Td("{{ c.name }}")
                html.Td("{{ c.organs }}", classes="text-caption")

    def _card_finetune(self) -> None:
        """The panel's fine-tune card."""
        s = PREFIX
        self._section("5. Fine-tune")
        with html.Div(classes="d-flex"):
            v3.VTextField(
                label="Iterations",
                v_model=(f"{s}max_iterations",),
                type="number",
                density="compact",
                hide_details=True,
                classes="mr-1",
                raw_attrs=tid("train-iterations"),
            )
            v3.VSelect(
                label="Crop (roi_size)",
                v_model=(f"{s}roi_size",),
                items=(
                    "[{title: 'model default', value: 0}, {title: '32', value: 32}, {title: '48', value: 48},"
                    " {title: '64', value: 64}, {title: '96', value: 96}]",
                ),
                density="compact",
                hide_details=True,
                raw_attrs=tid("train-roi"),
            )
        with html.Div(classes="d-flex align-center mt-1"):
            running = f"['running', 'stopping'].includes({s}train.status)"
            v3.VBtn(
                "Fine-tune",
                color="primary",
                size="small",
                disabled=(f"{running} || {s}training_set.cases.length < 2",),
                click=lambda: self._call(self.controller.start_finetune),
                raw_attrs=tid("train-start"),
            )
            tool_button(
                "Stop",
                lambda: self._call(self.controller.stop_finetune),
                "train-stop",
                disabled=(f"{s}train.status !== 'running'",),
                size="small",
                classes="ml-1",
            )
            tool_button(
                "Resume", lambda: self._call(self.controller.resume_finetune), "train-resume", disabled=(f"!{s}train.can_resume",), size="small", classes="ml-1"
            )
        html.Div(
            "{{ rx_train.status }} {{ rx_train.model_id }} - iteration {{ rx_train.iteration }}/{{ rx_train.max_iterations }}"
            "{{ rx_train.loss !== null ? ', loss ' + rx_train.loss.toFixed(3) : '' }}"
            "{{ rx_train.mean_dice !== null ? ', Dice ' + rx_train.mean_dice.toFixed(3) : '' }} {{ rx_train.eta }}",
            classes="text-caption",
            raw_attrs=tid("train-status"),
        )
        html.Div(v_html=(f"{s}chart_svg",), raw_attrs=tid("train-chart"))
        html.Div("{{ rx_chart_points || 0 }} points", classes="text-caption", raw_attrs=tid("train-chart-points"))

    def _card_rank(self) -> None:
        """The panel's rank card."""
        s = PREFIX
        self._section("6. Next case (uncertainty)")
        v3.VBtn(
            "Rank volumes",
            size="small",
            color="primary",
            disabled=(f"!!{s}busy",),
            click=lambda: self._call(self.controller.start_ranking),
            raw_attrs=tid("rank-start"),
        )
        with v3.VTable(density="compact", v_if=(f"{s}ranking.length",), raw_attrs=tid("rank-table")):
            with html.Tbody():
                with html.Tr(
                    v_for="r in rx_ranking",
                    key="r.index",
                    click=(self._on_rank_row, "[r.index]"),
                    style="cursor: pointer;",
                    raw_attrs=[':data-testid="`rank-row-${r.index}`"'],
                ):
                    html.Td("{{ r.index + 1 }}. {{ r.name }}")
                    html.Td("{{ r.mean_entropy === null ? r.status : r.mean_entropy.toFixed(4) }}", classes="text-right")
        html.Div("overlay: {{ rx_overlay }}", v_if=(f"{s}overlay",), classes="text-caption")

    def _card_log(self) -> None:
        """The panel's log card."""
        with v3.VExpansionPanels(classes="mt-3"), v3.VExpansionPanel(title="Log"), v3.VExpansionPanelText():
            html.Pre("{{ rx_log.join('\\n') }}", style="white-space: pre-wrap; font-size: 11px;", raw_attrs=tid("log"))

    # ------------------------------------------------------- panel callbacks
    def _on_up(self, path: str) -> None:
        self._call(self.controller.browse, path)

    def _open_demo(self) -> None:
        self._call(self.controller.load_demo)

    def _on_entry(self, path: str, kind: str) -> None:
        if kind in ("folder",):
            self._call(self.controller.browse, path)
        else:
            self._call(self.controller.open_path, path)

    def _on_mapping(self, segment_id: str, target: str) -> None:
        self._call(self.controller.set_mapping, segment_id, target)

    def _on_rank_row(self, index: int) -> None:
        self._call(self.controller.show_uncertainty, int(index))


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)
