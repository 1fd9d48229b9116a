"""RepUX Web: the segment -> edit -> curate -> fine-tune -> re-segment loop in a browser.

The web app layer (like the Slicer modules): it runs Kitware's trame-slicer on the same
Qt-free Libs as the Slicer modules (``RepUXSegmentLib``, ``RepUXTrainerLib``).

* :mod:`.files` - the server-side file browser confined to a root folder, upload checks (plain Python);
* :mod:`.controller` - :class:`~RepUXWeb.controller.WebController`, the browser-free state machine
  (needs the ``slicer`` MRML classes, no trame, no browser);
* :mod:`.slicer_fixes` - the small trame-slicer 2.0.0 workaround (effect pipelines without a view);
* :mod:`.app` - the trame UI (needs ``pip install -e ".[web]"``).

``import repux`` never imports this package, and importing this package imports nothing heavy.
"""

from __future__ import annotations

__all__: list[str] = []
