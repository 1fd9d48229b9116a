"""Which segment becomes which class of the training set (no Qt; no ``slicer`` import needed).

A user's segmentation rarely uses the model's exact names: "Liver", "liver_corrected",
"Segment_1" with a *Liver* terminology entry, "kidney left" for a model that only knows
"kidney".  :meth:`LabelMapping.build` matches every segment to a label of the label set:

1. by name: :meth:`repux.labels.LabelSet.find` (case, ``_``/``-`` and known aliases ignored);
2. by the SNOMED CT code of the segment's ``TerminologyEntry`` tag (type + modifier);
3. by code, ignoring laterality when the label has none ("left kidney" -> "kidney");
4. by the terminology's type meaning as a name (labels without codes).

Segments that match nothing are *unknown*: they are flagged, and either ignored
or added to the training set as new classes (``repux finetune`` gives new organs
new output channels).  The user can override any target with :meth:`LabelMapping.setTarget`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MATCH_CODE",
    "MATCH_CODE_IGNORING_SIDE",
    "MATCH_MANUAL",
    "MATCH_MEANING",
    "MATCH_NAME",
    "LabelMapping",
    "SegmentInfo",
    "SegmentMapping",
    "TerminologyCodes",
    "labelForNewSegment",
    "matchSegment",
    "parseTerminologyEntry",
    "segmentsOf",
]

MATCH_NAME = "name"
MATCH_CODE = "terminology"
MATCH_CODE_IGNORING_SIDE = "terminology (left/right ignored)"
MATCH_MEANING = "terminology name"
MATCH_MANUAL = "manual"

#: mapping states
MAPPED, NEW, UNKNOWN, IGNORED = "mapped", "new class", "unknown", "ignored"

TERMINOLOGY_TAG = "TerminologyEntry"


@dataclass(frozen=True)
class TerminologyCodes:
    """The codes of a serialized Slicer terminology entry (each a :class:`repux.labels.Code` or None)."""

    category: Any = None
    type: Any = None
    modifier: Any = None


def _code(text: str) -> Any:
    from repux.labels import Code

    parts = text.split("^")
    if len(parts) < 3 or not parts[1].strip():
        return None
    return Code(parts[1].strip(), parts[0].strip(), parts[2].strip())


def parseTerminologyEntry(tag: str | None) -> TerminologyCodes | None:
    """Codes of a ``TerminologyEntry`` tag, e.g.
    ``"...General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~..."``.

    Returns None for an empty or malformed tag.
    """
    if not tag or "~" not in tag:
        return None
    fields = tag.split("~")
    if len(fields) < 4:
        return None
    codes = TerminologyCodes(_code(fields[1]), _code(fields[2]), _code(fields[3]))
    return codes if codes.type is not None else None


@dataclass(frozen=True)
class SegmentInfo:
    """What the mapping needs of a segment.

    Attributes:
        id: segment id in the segmentation.
        name: segment name.
        color: RGB 0..1.
        terminology: the serialized ``TerminologyEntry`` tag ("" when none).
    """

    id: str
    name: str
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    terminology: str = ""

    @property
    def codes(self) -> TerminologyCodes | None:
        return parseTerminologyEntry(self.terminology)


def segmentsOf(segmentationNode: Any) -> list[SegmentInfo]:
    """The segments of a ``vtkMRMLSegmentationNode``, in their order."""
    import vtk

    segmentation = segmentationNode.GetSegmentation()
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        tag = vtk.reference("")
        terminology = str(tag) if segment.GetTag(TERMINOLOGY_TAG, tag) else ""
        out.append(SegmentInfo(segmentation.GetNthSegmentID(i), segment.GetName(), tuple(float(c) for c in segment.GetColor()), terminology))
    return out


def _sameValue(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a.value == b.value


def matchSegment(name: str, codes: TerminologyCodes | None, labels: Any) -> tuple[Any, str]:
    """``(label, how)`` for a segment name and its terminology codes; ``(None, "")`` when nothing matches."""
    label = labels.find(name)
    if label is not None:
        return label, MATCH_NAME
    if codes is None or codes.type is None:
        return None, ""
    for label in labels:
        sameSide = label.modifier is None if codes.modifier is None else _sameValue(label.modifier, codes.modifier)
        if _sameValue(label.type, codes.type) and sameSide:
            return label, MATCH_CODE
    if codes.modifier is not None:
        for label in labels:
            if _sameValue(label.type, codes.type) and label.modifier is None:
                return label, MATCH_CODE_IGNORING_SIDE
    meaning = codes.type.meaning
    if codes.modifier is not None:
        label = labels.find(f"{codes.modifier.meaning} {meaning}") or labels.find(f"{meaning} {codes.modifier.meaning}")
        if label is not None:
            return label, MATCH_MEANING
    label = labels.find(meaning)
    if label is not None:
        return label, MATCH_MEANING
    return None, ""


def labelForNewSegment(segment: SegmentInfo, value: int) -> Any:
    """A new class for an unknown segment: its name and colour, with the codes of its terminology
    entry (or of the known organ of that name), so the new model's segments are tagged too."""
    from repux.labels import ANATOMICAL_STRUCTURE, ORGANS, Label, normalize_name

    color = tuple(round(min(max(c, 0.0), 1.0) * 255) for c in segment.color)
    codes = segment.codes
    known = ORGANS.get(normalize_name(segment.name))
    if codes is not None and not _isGenericTissue(codes):
        return Label(value, segment.name, color, codes.category or ANATOMICAL_STRUCTURE, codes.type, codes.modifier)  # type: ignore[arg-type]
    if known is not None:
        return Label(value, segment.name, color, known.category, known.type, known.modifier)
    return Label(value, segment.name, color)


def _isGenericTissue(codes: TerminologyCodes) -> bool:
    """Slicer's default for new segments ("Tissue"/"Tissue") says nothing about the structure."""
    return codes.type is not None and codes.type.value == "85756007"


@dataclass
class SegmentMapping:
    """Where one segment goes.

    Attributes:
        segment: the segment.
        label: name of the target class, or None (ignored / unknown).
        matchedBy: how the target was found (``name``, ``terminology``... or ``manual``).
        known: False for segments no label matched (flagged to the user).
        addAsNew: add this unknown segment as a new class.
    """

    segment: SegmentInfo
    label: str | None = None
    matchedBy: str = ""
    known: bool = True
    addAsNew: bool = False

    @property
    def status(self) -> str:
        if self.label is not None:
            return MAPPED
        if not self.known:
            return NEW if self.addAsNew else UNKNOWN
        return IGNORED


@dataclass
class LabelMapping:
    """The mapping of all segments of one segmentation onto a label set."""

    entries: list[SegmentMapping] = field(default_factory=list)

    @classmethod
    def build(cls, segments: Iterable[SegmentInfo], labels: Any) -> LabelMapping:
        entries = []
        for segment in segments:
            label, how = matchSegment(segment.name, segment.codes, labels)
            if label is not None:
                entries.append(SegmentMapping(segment, label.name, how, True))
            else:
                entries.append(SegmentMapping(segment, None, "", False))
        return cls(entries)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, segmentId: str) -> SegmentMapping:
        """The entry of ``segmentId``.

        Raises:
            ValueError: no such segment.
        """
        for e in self.entries:
            if e.segment.id == segmentId:
                return e
        raise ValueError(f"the segmentation has no segment with id {segmentId!r}.")

    def matches(self, segments: Iterable[SegmentInfo]) -> bool:
        """True when ``segments`` (ids and names) are still the ones this mapping was made for."""
        return [(s.id, s.name) for s in segments] == [(e.segment.id, e.segment.name) for e in self.entries]

    def unknown(self) -> list[SegmentMapping]:
        """Segments no label matched (whether or not they are added as new classes)."""
        return [e for e in self.entries if not e.known]

    def mapped(self) -> list[SegmentMapping]:
        return [e for e in self.entries if e.label is not None]

    def newClasses(self) -> list[SegmentMapping]:
        return [e for e in self.entries if e.status == NEW]

    def ignored(self) -> list[SegmentMapping]:
        return [e for e in self.entries if e.status in (UNKNOWN, IGNORED)]

    def setTarget(self, segmentId: str, labelName: str | None, labels: Any = None) -> None:
        """Send a segment to ``labelName`` (None: ignore it).

        Raises:
            ValueError: no such segment, or ``labels`` is given and has no such class.
        """
        entry = self.entry(segmentId)
        if labelName is not None and labels is not None:
            label = labels.find(labelName)
            if label is None:
                raise ValueError(f"the label set has no class {labelName!r}; its classes are: {', '.join(labels.names)}.")
            labelName = label.name
        entry.label = labelName
        entry.matchedBy = MATCH_MANUAL
        entry.addAsNew = False

    def addUnknownAsNewClasses(self, add: bool = True) -> None:
        """Mark every unknown segment to be added as a new class (or to be ignored)."""
        for e in self.entries:
            if not e.known and e.label is None:
                e.addAsNew = add

    def segmentIdsByLabel(self, labelNames: Sequence[str] = ()) -> dict[str, list[str]]:
        """``{label name: [segment ids]}`` of the mapped segments (several segments may share a label)."""
        out: dict[str, list[str]] = {}
        for e in self.entries:
            if e.label is not None:
                out.setdefault(e.label, []).append(e.segment.id)
        if labelNames:
            order = {n: i for i, n in enumerate(labelNames)}
            out = dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))
        return out

    def summary(self) -> list[str]:
        """One line per segment: ``"Segment_2 -> kidney (terminology)"``, ``"Tumor: unknown (ignored)"``..."""
        lines = []
        for e in self.entries:
            if e.status == MAPPED:
                lines.append(f"{e.segment.name} -> {e.label} ({e.matchedBy})")
            elif e.status == NEW:
                lines.append(f"{e.segment.name}: unknown, added as a new class")
            elif e.status == UNKNOWN:
                lines.append(f"{e.segment.name}: unknown, ignored")
            else:
                lines.append(f"{e.segment.name}: ignored")
        return lines
