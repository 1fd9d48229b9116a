"""Stand-in for CTK's ``ctk`` Python module, for the import smoke test of RepUXSegment.py only.

Real Slicer provides ``ctk`` (CTK widgets through PythonQt).  Slicer's own ScriptedLoadableModule
imports it; the project's stand-in of that module does not need anything from it.
"""


class ctkCollapsibleButton:
    """Placeholder: CTK widgets cannot be created headless."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("ctkCollapsibleButton is a test stand-in: CTK widgets cannot be created headless.")
