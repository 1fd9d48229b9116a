"""Workaround for trame-slicer 2.0.0: segment editor effect pipelines created without a view.

Symptom (stock ``SegmentationApp``): Paint, Erase and Smoothing raise
``AttributeError: 'NoneType' object has no attribute 'paint_interaction_stopped'``.

Cause: ``SegmentationEditor._try_create_effect_pipeline`` calls
``pipeline.SetView(view_manager.get_view(view_node))`` while the view factory is still building the
view (the displayable managers create the pipelines during the view's construction, before the factory
has stored it), so ``get_view`` returns None and the pipeline keeps no view.

Fix: after the views exist, give every pipeline without a view the view of its view node
(:func:`attach_effect_pipelines_to_views`).  Upstream: the factory could register the view before
creating its displayable managers, or the pipeline could look its view up lazily (report to
Kitware/trame-slicer; remove this module once fixed).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["attach_effect_pipelines_to_views", "pipelines_without_view"]

logger = logging.getLogger(__name__)


def _pipelines(segmentation_editor: Any) -> list[Any]:
    from trame_slicer.core.segmentation_editor import SegmentationEditor

    out = []
    for effect_type in SegmentationEditor.builtin_effects:
        effect = segmentation_editor.get_effect(effect_type)
        for ref in effect.pipelines:
            pipeline = ref()
            if pipeline is not None:
                out.append(pipeline)
    return out


def pipelines_without_view(segmentation_editor: Any) -> list[Any]:
    """The segment editor effect pipelines that have no view (the trame-slicer 2.0.0 bug)."""
    return [p for p in _pipelines(segmentation_editor) if getattr(p, "_view", None) is None]


def attach_effect_pipelines_to_views(segmentation_editor: Any, view_manager: Any) -> int:
    """Give each effect pipeline without a view the view of its view node; returns how many were fixed."""
    fixed = 0
    for pipeline in pipelines_without_view(segmentation_editor):
        view_node = pipeline.GetViewNode()
        view = view_manager.get_view(view_node) if view_node is not None else None
        if view is not None:
            pipeline.SetView(view)
            fixed += 1
    if fixed:
        logger.debug("attached %d segment editor effect pipelines to their views (trame-slicer 2.0.0 workaround)", fixed)
    return fixed
