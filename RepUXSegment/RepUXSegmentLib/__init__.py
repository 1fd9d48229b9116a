"""Qt-free logic of the RepUXSegment module.

* :mod:`.process` - background ``repux`` processes with streamed progress and
  tree-kill cancel (shared with other RepUX modules);
* :mod:`.mrml` - volume to NRRD, label map to named/coloured/SNOMED-tagged segments;
* :mod:`.segmentation` - :class:`SegmentationJob` and the blocking :func:`segmentVolume`;
* :mod:`.models` - model store listing and the ``repux models ...`` commands;
* :mod:`.dependencies` - PyTorch through the PyTorch extension, the rest through pip;
* :mod:`.testing` - synthetic CT and tiny model for the self-test.

Importing this package imports neither Qt nor torch; :mod:`.mrml` and
:mod:`.segmentation` need the ``slicer`` MRML classes (Slicer or slicer-core).
"""

from __future__ import annotations

from .process import ProcessRunner, ProcessStartError, childEnvironment, findPythonExecutable, repuxCommand

__all__ = [
    "ProcessRunner",
    "ProcessStartError",
    "childEnvironment",
    "findPythonExecutable",
    "repuxCommand",
]
