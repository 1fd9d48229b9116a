"""Stand-in for ``slicer.parameterNodeWrapper``, for the import smoke test of RepUXSegment.py only.

Written for the project (not Slicer's code).  ``@parameterNodeWrapper`` turns the annotated class
into a wrapper of a real ``vtkMRMLScriptedModuleNode``: ``str``/``bool``/``Enum`` fields are stored
with ``SetParameter``, MRML-node fields as node references, defaults come from the class body.
``WithinRange``/``Minimum``/``Maximum`` in ``Annotated[...]`` are checked on assignment (``ValueError``,
as in Slicer) and listed in ``ranges`` (what Slicer's spin-box connectors apply to the widget).
``connectGui``/``disconnectGui`` do nothing (there is no GUI headless); observers go to the node.
"""

import enum
import typing


class _Bound:
    def __init__(self, minimum=None, maximum=None):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise ValueError(f"{value!r} is outside [{self.minimum}, {self.maximum}]")


def WithinRange(minimum, maximum):
    return _Bound(minimum, maximum)


def Minimum(minimum):
    return _Bound(minimum=minimum)


def Maximum(maximum):
    return _Bound(maximum=maximum)


def _validators(annotation):
    return [a for a in typing.get_args(annotation)[1:] if isinstance(a, _Bound)] if typing.get_origin(annotation) is typing.Annotated else []


def _baseType(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _isNodeType(annotation):
    return isinstance(annotation, type) and annotation.__name__.startswith("vtkMRML")


def parameterNodeWrapper(cls):
    fields = {name: _baseType(annotation) for name, annotation in cls.__annotations__.items()}
    validators = {name: _validators(annotation) for name, annotation in cls.__annotations__.items()}
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
            for validator in validators[name]:
                validator.validate(value)
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

    def AddObserver(self, event, callback, priority=0.0):  # Slicer's wrapper forwards observers to the node
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    ranges = {
        name: (max((v.minimum for v in vs if v.minimum is not None), default=None), min((v.maximum for v in vs if v.maximum is not None), default=None))
        for name, vs in validators.items()
        if vs
    }
    methods = dict(__init__=__init__, connectGui=connectGui, disconnectGui=disconnectGui, AddObserver=AddObserver, RemoveObserver=RemoveObserver)
    namespace.update(methods, __doc__=cls.__doc__, allParameters=dict(fields), ranges=ranges)
    return type(cls.__name__, (), namespace)
