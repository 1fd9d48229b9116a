"""Stand-in for ``slicer.ScriptedLoadableModule``, for the import smoke test of RepUXSegment.py only.

Written for the project (not Slicer's code).  It provides the four base classes with just what
the module file needs headless: the module class fills a parent object, the logic finds or
creates its ``vtkMRMLScriptedModuleNode`` parameter node in ``slicer.mrmlScene`` (the real MRML
class from slicer-core), the widget knows its resource folder, and the test class is a
``unittest.TestCase``.  No Qt.  Two behaviours of Slicer's classes are kept because module code
must cope with them: the logic's ``__init__`` calls ``super().__init__()`` (cooperative), and the
widget's ``__init__`` calls ``self.setup()`` itself when it gets no parent.
"""

import os
import sys
import unittest

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else type("TopLevelWidget", (), {"isEntered": False})()
        self.moduleName = type(self).__name__[: -len("Widget")]
        if parent is None:
            self.setup()

    def resourcePath(self, filename):
        folder = os.path.dirname(os.path.abspath(sys.modules[type(self).__module__].__file__))
        return os.path.join(folder, "Resources", filename)

    def setup(self):
        raise RuntimeError("widgets cannot be set up headless (test stand-in)")


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self):
        scene = slicer.mrmlScene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        print(message)
