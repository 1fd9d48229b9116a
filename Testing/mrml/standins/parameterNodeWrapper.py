"""Stand-in for ``slicer.parameterNodeWrapper``, for the import smoke test of RepUXSegment.py only.

Written for the project (not Slicer's code).  ``@parameterNodeWrapper`` turns the annotated class
into a wrapper of a real ``vtkMRMLScriptedModuleNode``: ``str``/``bool``/``Enum`` fields are stored
with ``SetParameter``, MRML-node fields as node references, defaults come from the class body.
``connectGui``/``disconnectGui`` do nothing (there is no GUI headless).
"""

import enum
import typing


def _baseType(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _isNodeType(annotation):
    return isinstance(annotation, type) and annotation.__name__.startswith("vtkMRML")


def parameterNodeWrapper(cls):
    fields = {name: _baseType(annotation) for name, annotation in cls.__annotations__.items()}
    defaults = {name: cls.__dict__.get(name) for name in fields}

    def makeProperty(name, kind):
        def getter(self):
            node = self.parameterNode
            if _isNodeType(kind):
                return node.GetNodeReference(name)
            if not node.HasParameter(name):
                return defaults[name]
            text = node.GetParameter(name)
            if kind is bool:
                return text == "true"
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                return kind[text]
            return kind(text)

        def setter(self, value):
            node = self.parameterNode
            if _isNodeType(kind):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            elif kind is bool:
                node.SetParameter(name, "true" if value else "false")
            elif isinstance(value, enum.Enum):
                node.SetParameter(name, value.name)
            else:
                node.SetParameter(name, str(value))

        return property(getter, setter)

    namespace = {name: makeProperty(name, kind) for name, kind in fields.items()}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode

    def connectGui(self, gui):
        return object()

    def disconnectGui(self, tag):
        return None

    namespace.update(__init__=__init__, connectGui=connectGui, disconnectGui=disconnectGui, __doc__=cls.__doc__, allParameters=dict(fields))
    return type(cls.__name__, (), namespace)
