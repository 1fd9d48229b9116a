"""The trame-slicer 2.0.0 workaround (RepUXWeb/slicer_fixes.py): effect pipelines created without a view.

Without it, activating Paint raises ``AttributeError: 'NoneType' object has no attribute
'paint_interaction_stopped'`` (the pipelines counted here have no view); with it, a stroke sent to the
axial view's interactor paints voxels.
Real trame-slicer views (offscreen EGL), no browser.
"""

from __future__ import annotations

import os
import sys

import pytest
from helpers import SHARED_DATA

pytestmark = [pytest.mark.slicer, pytest.mark.web]


@pytest.fixture
def stockEditor(tmp_path):
    """trame-slicer's own pieces, wired like its SegmentationApp (views created by the layout grid)."""
    pytest.importorskip("trame_slicer", reason='trame-slicer is not installed (pip install -e ".[web]")')
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server
    from trame.ui.vuetify3 import SinglePageLayout
    from trame_slicer.app.logic import LayoutButtonLogic, SegmentEditorLogic
    from trame_slicer.core import SlicerApp
    from trame_slicer.rca_view import register_rca_factories

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        server = get_server(f"repux-fix-{tmp_path.name}", client_type="vue3")
        app = SlicerApp()
        register_rca_factories(app.view_manager, server)
        SegmentEditorLogic(server, app)
        layout_logic = LayoutButtonLogic(server, app)
        with SinglePageLayout(server) as layout:
            layout_logic.layout_manager.initialize_layout_grid(layout)
    finally:
        sys.argv = argv
    yield app


def test_effect_pipelines_get_their_views_and_paint_works(stockEditor, tmp_path):
    from trame_slicer.segmentation import SegmentationEffectPaint
    from vtkmodules.vtkCommonCore import vtkCommand

    from RepUXWeb.slicer_fixes import attach_effect_pipelines_to_views, pipelines_without_view

    app = stockEditor
    editor = app.segmentation_editor
    broken = len(pipelines_without_view(editor))
    assert broken > 0, "trame-slicer now gives the effect pipelines their views: remove RepUXWeb/slicer_fixes.py and this test"

    ct = SHARED_DATA / "ct-abdomen" / "example_ct_sm.nii.gz"
    if ct.is_file():
        volume = app.io_manager.load_volumes([str(ct)])[0]
    else:  # the fix does not depend on the data
        from repux.data.phantom import generate_phantom
        from repux.io.images import write_image

        path = write_image(generate_phantom(1, spacing=(4.0, 4.0, 4.0), orientation="axial").image, tmp_path / "phantom.nii.gz")
        volume = app.io_manager.load_volumes([str(path)])[0]
    app.display_manager.show_volume_in_slice_background(volume)
    segmentation = editor.create_empty_segmentation_node()
    editor.set_active_segmentation(segmentation, volume)
    segment_id = editor.add_empty_segment(segment_name="liver")

    assert attach_effect_pipelines_to_views(editor, app.view_manager) == broken
    assert pipelines_without_view(editor) == []
    assert attach_effect_pipelines_to_views(editor, app.view_manager) == 0, "idempotent"

    editor.set_active_effect_type(SegmentationEffectPaint)
    red = next(v for v in app.view_manager.get_slice_views() if v.get_singleton_tag() == "Red")
    red.render_window().SetSize(400, 400)
    red.reset_view()
    red.render_window().Render()
    interactor = red.interactor()

    def event(kind: int, x: int, y: int) -> None:
        interactor.SetEventInformation(x, y, 0, 0, "\0", 0)
        interactor.InvokeEvent(kind)

    event(vtkCommand.MouseMoveEvent, 150, 200)
    event(vtkCommand.LeftButtonPressEvent, 150, 200)
    for i in range(20):
        event(vtkCommand.MouseMoveEvent, 150 + 5 * i, 200)
    event(vtkCommand.LeftButtonReleaseEvent, 250, 200)
    painted = editor.get_segment_labelmap(segment_id, as_numpy_array=True)
    assert painted is not None and int((painted > 0).sum()) > 50
