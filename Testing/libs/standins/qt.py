"""Stand-in for PythonQt's ``qt`` module, for the import smoke test of RepUXSegment.py only.

Real Slicer provides ``qt`` (Qt bound through PythonQt).  The module file imports it at file
scope but only uses it inside widget methods, which the headless tests never call; these
placeholders only make the names exist.  Nothing here imitates Qt behaviour.
"""


class _Placeholder:
    """Any Qt class: using it outside real Slicer is an error."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is a test stand-in: Qt widgets cannot be created headless.")


class QTimer(_Placeholder):
    pass


class QFileDialog(_Placeholder):
    pass


class QInputDialog(_Placeholder):
    pass


class QLineEdit(_Placeholder):
    Normal = 0


class QDesktopServices(_Placeholder):
    pass


class QUrl(_Placeholder):
    pass


class QTableWidgetItem(_Placeholder):
    pass


class QWidget(_Placeholder):
    pass
