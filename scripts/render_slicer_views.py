#!/usr/bin/env python
"""Render a RepUX segmentation the way 3D Slicer shows it, headless, for the README and the ExtensionsIndex.

The picture is made by Slicer's own code from the ``slicer-core`` wheel (no Qt, no GUI): the CT and the
``.seg.nrrd`` are loaded by Slicer's storage nodes, the axial and coronal panels are the output of
``vtkMRMLSliceLogic`` (Slicer's slice reslicing, window/level and label-layer blending), and the 3D panel shows
the closed surfaces made by Slicer's segmentation converter, drawn offscreen with VTK in the segments' colours.

Usage (the committed Resources/Screenshots/RepUXSegment.png was made by exactly this)::

    repux demo --output runs/demo
    python scripts/render_slicer_views.py --volume runs/demo/phantom_ct.nii.gz \\
        --segmentation runs/demo/phantom_segmentation.seg.nrrd --out Resources/Screenshots/RepUXSegment.png
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def slice_panel(slicer, scene, app_logic, volume, labelmap, layout_name: str, orientation: str, size: int) -> Image.Image:
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    node = logic.AddSliceNode(layout_name)
    node.SetOrientation(orientation)
    node.SetDimensions(size, size, 1)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(volume.GetID())
    composite.SetLabelVolumeID(labelmap.GetID())
    composite.SetLabelOpacity(0.55)
    logic.FitSliceToBackground(size, size)
    logic.StartSliceOffsetInteraction()
    logic.SetSliceOffset(logic.GetSliceOffset())
    logic.EndSliceOffsetInteraction()
    port = logic.GetImageDataConnection()
    port.GetProducer().Update()
    img = port.GetProducer().GetOutputDataObject(0)
    from vtk.util.numpy_support import vtk_to_numpy

    w, h, _ = img.GetDimensions()
    arr = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))


def surface_panel(segmentation_node, size: int) -> Image.Image:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation_node.CreateClosedSurfaceRepresentation()
    seg = segmentation_node.GetSegmentation()
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.09, 0.16)
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        poly = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(sid, poly)
        if poly.GetNumberOfPoints() == 0:
            continue
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(poly)
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(seg.GetNthSegment(i).GetColor())
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetPosition(0, 1, 0)  # Slicer's default anterior view: patient's right on the left, superior up
    camera.SetFocalPoint(0, 0, 0)
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    arr = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    return Image.fromarray(np.ascontiguousarray(arr))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", required=True)
    p.add_argument("--segmentation", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=420)
    p.add_argument("--title", default="RepUX Segment: built-in model on a synthetic CT phantom (rendered by Slicer's MRML logic, headless)")
    args = p.parse_args(argv)

    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()  # Grey, Labels, ... as Slicer's Colors module creates them
    app_logic.SetModuleLogic("Colors", color_logic)

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    volumes = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    volume = volumes.AddArchetypeVolume(args.volume, "CT")
    if volume is None:
        p.error(f"--volume: Slicer could not read {args.volume}")
    display = volume.GetDisplayNode()
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(400, 50)  # abdomen window

    seg_logic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    segmentation = seg_logic.LoadSegmentationFromFile(args.segmentation, False)
    if segmentation is None:
        p.error(f"--segmentation: Slicer could not read {args.segmentation}")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    if not seg_logic.ExportVisibleSegmentsToLabelmapNode(segmentation, labelmap, volume):
        p.error("could not export the segmentation to a label map")
    if labelmap.GetDisplayNode() is None:
        labelmap.CreateDefaultDisplayNodes()

    panels = [
        slice_panel(slicer, scene, app_logic, volume, labelmap, "Red", "Axial", args.size),
        slice_panel(slicer, scene, app_logic, volume, labelmap, "Green", "Coronal", args.size),
        surface_panel(segmentation, args.size),
    ]
    bar = 34
    canvas = Image.new("RGB", (args.size * 3 + 8, args.size + bar + 4), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 10), args.title, fill=(235, 235, 235))
    for i, panel in enumerate(panels):
        canvas.paste(panel.resize((args.size, args.size)), (2 + i * (args.size + 2), bar))
    tmp = args.out + ".tmp.png"
    canvas.save(tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
