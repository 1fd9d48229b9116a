"""A tiny stand-in for the ``self.ui`` widget namespace of a module widget (tests of widget methods only).

Slicer builds ``self.ui`` from the .ui file with ``slicer.util.childWidgetVariables``; here every
widget name gives a :class:`FakeWidget` that stores the attributes set on it and records method
calls (which return None; ``selectedIndexes()`` returns no selection).  Nothing here imitates Qt behaviour.
"""

from __future__ import annotations


class FakeWidget:
    RETURNS = {"selectedIndexes": ()}
    #: Qt properties that PythonQt exposes as attributes (not methods): empty lists and tables
    count = 0
    rowCount = 0

    def __init__(self, name: str) -> None:
        self.__dict__.update(name=name, calls=[])

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)

        def method(*args, **kwargs):
            self.calls.append((attribute, args, kwargs))
            return self.RETURNS.get(attribute)

        return method

    def called(self, method: str) -> list:
        return [c for c in self.calls if c[0] == method]


class FakeUi:
    def __getattr__(self, name: str) -> FakeWidget:
        if name.startswith("__"):
            raise AttributeError(name)
        widget = FakeWidget(name)
        setattr(self, name, widget)
        return widget
