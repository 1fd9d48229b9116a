"""Registers the stand-ins of this folder under the names RepUXSegment.py imports.

``installStandins(setitem)`` loads ``qt``, ``ctk``, ``slicer.i18n``,
``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` from the files next to
this one into ``sys.modules`` through ``setitem`` (pytest's ``monkeypatch.setitem``, so they are
removed after the test; a plain ``sys.modules.__setitem__`` in a throw-away subprocess).
``sys.path`` is not changed.
"""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

STANDINS = {
    "qt": "qt.py",
    "ctk": "ctk.py",
    "slicer.i18n": "i18n.py",
    "slicer.ScriptedLoadableModule": "ScriptedLoadableModule.py",
    "slicer.parameterNodeWrapper": "parameterNodeWrapper.py",
}


def installStandins(setitem=None):
    setitem = setitem or (lambda mapping, key, value: mapping.__setitem__(key, value))
    modules = {}
    for name, filename in STANDINS.items():
        spec = importlib.util.spec_from_file_location(name, HERE / filename)
        module = importlib.util.module_from_spec(spec)
        setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules
