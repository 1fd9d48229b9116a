"""Label sets with names, colours and standard (SNOMED CT) terminology.

A label set maps output channel values to organs.  Each organ carries the
DICOM/SNOMED CT codes that 3D Slicer's terminology module uses
(category "Anatomical Structure", a property type and an optional
left/right modifier), and the colour of Slicer's ``GenericAnatomyColors``
table, so segments come out named and coloured as clinicians expect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repux.errors import ConfigError, did_you_mean

__all__ = [
    "BTCV",
    "LABEL_SETS",
    "ORGANS",
    "Code",
    "Label",
    "LabelSet",
    "get_label_set",
    "normalize_name",
    "organ",
    "resolve_organs",
]


@dataclass(frozen=True)
class Code:
    """A coded concept: ``(value, scheme, meaning)``, e.g. ``("10200004", "SCT", "Liver")``."""

    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> Code:
        return cls(str(d["value"]), str(d["scheme"]), str(d["meaning"]))


ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")


@dataclass(frozen=True)
class Label:
    """One output class of a model.

    Attributes:
        value: the label value (output channel index, 1..N; 0 is background).
        name: display name, e.g. ``"liver"``.
        color: RGB in 0..255.
        category: terminology category code.
        type: terminology property type code.
        modifier: optional left/right modifier code.
    """

    value: int
    name: str
    color: tuple[int, int, int]
    category: Code = ANATOMICAL_STRUCTURE
    type: Code | None = None
    modifier: Code | None = None
    aliases: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "name": self.name, "color": list(self.color), "category": self.category.to_dict()}
        if self.type is not None:
            d["type"] = self.type.to_dict()
        if self.modifier is not None:
            d["modifier"] = self.modifier.to_dict()
        if self.aliases:
            d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Label:
        try:
            value = int(d["value"])
            name = str(d["name"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"a label needs an integer 'value' and a 'name'; got {dict(d)!r}.") from err
        color = d.get("color")
        if color is None:
            known = ORGANS.get(normalize_name(name))
            color = known.color if known else _fallback_color(value)
        color_t = tuple(int(c) for c in color)
        if len(color_t) != 3 or not all(0 <= c <= 255 for c in color_t):
            raise ConfigError(f"label {name!r}: color must be 3 integers in 0..255; got {color!r}.")
        known = ORGANS.get(normalize_name(name))
        category = Code.from_dict(d["category"]) if "category" in d else (known.category if known else ANATOMICAL_STRUCTURE)
        type_ = Code.from_dict(d["type"]) if "type" in d else (known.type if known else None)
        modifier = Code.from_dict(d["modifier"]) if "modifier" in d else (known.modifier if known else None)
        return cls(value, name, color_t, category, type_, modifier, tuple(d.get("aliases", ())))  # type: ignore[arg-type]

    def with_value(self, value: int) -> Label:
        return Label(value, self.name, self.color, self.category, self.type, self.modifier, self.aliases)

    @property
    def color_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]

    def slicer_terminology(self) -> str:
        """The serialized terminology entry Slicer stores in a segment's ``TerminologyEntry`` tag."""

        def code(c: Code | None) -> str:
            return f"{c.scheme}^{c.value}^{c.meaning}" if c is not None else "^^"

        return (
            "Segmentation category and type - 3D Slicer General Anatomy list"
            f"~{code(self.category)}~{code(self.type)}~{code(self.modifier)}"
            "~Anatomic codes - DICOM master list~^^~^^"
        )


def normalize_name(name: str) -> str:
    """Lower-case, underscores/dashes to spaces, collapse spaces: ``"Kidney_Left"`` -> ``"kidney left"``."""
    s = re.sub(r"[_\-/]+", " ", str(name).strip().lower())
    return re.sub(r"\s+", " ", s)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _o(
    name: str, color: tuple[int, int, int], code: Code, modifier: Code | None = None, aliases: Iterable[str] = (), category: Code = ANATOMICAL_STRUCTURE
) -> Label:
    return Label(0, name, color, category, code, modifier, tuple(aliases))


#: Known organs (value 0 placeholder), keyed by normalized name.  Colours from
#: Slicer's GenericAnatomyColors; codes from SNOMED CT.
ORGANS: dict[str, Label] = {
    lab.name: lab
    for lab in [
        _o("liver", (221, 130, 101), _sct("10200004", "Liver"), aliases=["hepar"]),
        _o("spleen", (157, 108, 162), _sct("78961009", "Spleen")),
        _o("kidney", (185, 102, 83), _sct("64033007", "Kidney"), aliases=["kidneys", "kidney (left+right)", "kidney left+right"]),
        _o("right kidney", (185, 102, 83), _sct("64033007", "Kidney"), RIGHT, aliases=["kidney right", "kidney r"]),
        _o("left kidney", (185, 102, 83), _sct("64033007", "Kidney"), LEFT, aliases=["kidney left", "kidney l"]),
        _o("pancreas", (249, 180, 111), _sct("15776009", "Pancreas")),
        _o("gallbladder", (139, 150, 98), _sct("28231008", "Gallbladder"), aliases=["gall bladder"]),
        _o("esophagus", (211, 171, 143), _sct("32849002", "Esophagus"), aliases=["oesophagus"]),
        _o("stomach", (216, 132, 105), _sct("69695003", "Stomach")),
        _o("aorta", (224, 97, 76), _sct("15825003", "Aorta")),
        _o(
            "inferior vena cava",
            (0, 151, 206),
            _sct("64131007", "Inferior vena cava"),
            aliases=["postcava", "postcava (inferior vena cava)", "ivc", "vena cava inferior"],
        ),
        _o(
            "portal vein and splenic vein",
            (0, 122, 171),
            _sct("32764006", "Portal vein"),
            aliases=["portal vein", "portal and splenic vein", "portal splenic vein", "portal vein splenic vein"],
        ),
        _o("right adrenal gland", (220, 245, 20), _sct("23451007", "Adrenal gland"), RIGHT, aliases=["adrenal gland right"]),
        _o("left adrenal gland", (220, 245, 20), _sct("23451007", "Adrenal gland"), LEFT, aliases=["adrenal gland left"]),
        _o("duodenum", (255, 253, 229), _sct("38848004", "Duodenum")),
        _o("urinary bladder", (222, 154, 132), _sct("89837001", "Urinary bladder"), aliases=["bladder"]),
        _o("prostate/uterus", (230, 158, 140), _sct("41216001", "Prostate"), aliases=["prostate", "prostate uterus", "uterus"]),
        _o("vertebral column", (241, 214, 145), _sct("421060004", "Vertebral column"), aliases=["spine", "vertebrae"]),
        _o("skeletal muscle", (192, 104, 88), _sct("127954009", "Skeletal muscle"), aliases=["muscle"], category=TISSUE),
        _o("adipose tissue", (230, 220, 70), _sct("55603005", "Adipose tissue"), aliases=["fat"], category=TISSUE),
    ]
}
_ALIASES: dict[str, str] = {normalize_name(a): lab.name for lab in ORGANS.values() for a in lab.aliases}


def organ(name: str, value: int) -> Label:
    """The known organ called ``name`` (or an alias) with label ``value``."""
    key = normalize_name(name)
    key = _ALIASES.get(key, key)
    if key not in ORGANS:
        raise ConfigError(f"unknown organ {name!r}.{did_you_mean(key, ORGANS)}")
    return ORGANS[key].with_value(value)


def _fallback_color(value: int) -> tuple[int, int, int]:
    palette = [(128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (221, 130, 101), (144, 238, 144), (192, 104, 88)]
    return palette[value % len(palette)]


class LabelSet:
    """An ordered set of labels with values 1..N (0 is background)."""

    def __init__(self, labels: Iterable[Label], name: str = "custom") -> None:
        self.labels = sorted(labels, key=lambda lab: lab.value)
        self.name = name
        values = [lab.value for lab in self.labels]
        if values != list(range(1, len(values) + 1)):
            raise ConfigError(f"label values must be 1..N without gaps (0 is background); got {values}.")
        names = [normalize_name(lab.name) for lab in self.labels]
        if len(set(names)) != len(names):
            raise ConfigError(f"label names must be unique; got {[lab.name for lab in self.labels]}.")
        if not self.labels:
            raise ConfigError("a label set needs at least one label besides background.")

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter(self.labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.to_list() == other.to_list()

    @property
    def num_classes(self) -> int:
        """Number of output channels including background."""
        return len(self.labels) + 1

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def by_value(self, value: int) -> Label:
        for lab in self.labels:
            if lab.value == value:
                return lab
        raise KeyError(value)

    def find(self, name: str) -> Label | None:
        """The label whose name or alias matches ``name`` (normalized), or None."""
        key = normalize_name(name)
        canonical = _ALIASES.get(key, key)
        for lab in self.labels:
            n = normalize_name(lab.name)
            if n in (key, canonical) or key in {normalize_name(a) for a in lab.aliases}:
                return lab
        return None

    def to_list(self) -> list[dict[str, Any]]:
        return [lab.to_dict() for lab in self.labels]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]], name: str = "custom") -> LabelSet:
        return cls([Label.from_dict(d) for d in items], name=name)

    @classmethod
    def from_names(cls, names: Iterable[str], name: str = "custom") -> LabelSet:
        """Labels 1..N from organ names (known organs get their codes and colours)."""
        out = []
        for i, n in enumerate(names, start=1):
            key = normalize_name(n)
            key = _ALIASES.get(key, key)
            out.append(ORGANS[key].with_value(i) if key in ORGANS else Label(i, n, _fallback_color(i)))
        return cls(out, name=name)

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """Read a label set from JSON: a list of label dicts, ``{"labels": [...]}`` or ``{"1": "liver", ...}``."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read label file {str(p)!r}: {err}") from err
        if isinstance(data, dict) and "labels" in data:
            data = data["labels"]
        if isinstance(data, dict):
            items = sorted(((int(k), v) for k, v in data.items() if int(k) != 0), key=lambda kv: kv[0])
            return cls([Label.from_dict({"value": k, "name": v}) for k, v in items], name=p.stem)
        if isinstance(data, list):
            return cls.from_list(data, name=p.stem)
        raise ConfigError(f"label file {str(p)!r} must hold a list of labels or a {{value: name}} mapping.")


FLARE = LabelSet.from_names(["liver", "kidney", "spleen", "pancreas"], name="flare")
AMOS = LabelSet.from_names(
    [
        "spleen",
        "right kidney",
        "left kidney",
        "gallbladder",
        "esophagus",
        "liver",
        "stomach",
        "aorta",
        "inferior vena cava",
        "pancreas",
        "right adrenal gland",
        "left adrenal gland",
        "duodenum",
        "urinary bladder",
        "prostate/uterus",
    ],
    name="amos",
)
#: The 13 organs of the BTCV label maps (values 1..13 as in the files): the built-in abdomen model's labels.
BTCV = LabelSet.from_names(
    [
        "spleen",
        "right kidney",
        "left kidney",
        "gallbladder",
        "esophagus",
        "liver",
        "stomach",
        "aorta",
        "inferior vena cava",
        "portal vein and splenic vein",
        "pancreas",
        "right adrenal gland",
        "left adrenal gland",
    ],
    name="btcv",
)
LABEL_SETS: dict[str, LabelSet] = {"flare": FLARE, "amos": AMOS}


def resolve_organs(labels: LabelSet, organs: Iterable[str] | str | None) -> list[Label]:
    """The labels of ``organs`` (names or aliases, case-insensitive; a comma-separated string or a list), in the set's order.

    An empty or None ``organs`` means all labels.

    Raises:
        ConfigError: a name the set does not have (the message lists the set's organs).
    """
    if organs is None:
        return list(labels)
    names = [str(n).strip() for n in (organs.split(",") if isinstance(organs, str) else organs) if str(n).strip()]
    if not names:
        return list(labels)
    chosen: set[int] = set()
    for n in names:
        lab = labels.find(n)
        if lab is None:
            raise ConfigError(f"--organs: {n!r} is not an organ of this model; choose among {', '.join(labels.names)}.")
        chosen.add(lab.value)
    return [lab for lab in labels if lab.value in chosen]


def get_label_set(spec: str | Path) -> LabelSet:
    """``"flare"``, ``"amos"`` or a path to a label JSON file."""
    key = str(spec).lower()
    if key in LABEL_SETS:
        return LABEL_SETS[key]
    p = Path(spec)
    if p.suffix.lower() == ".json" or p.exists():
        if not p.is_file():
            raise ConfigError(f"label file {str(p)!r} does not exist.")
        return LabelSet.load(p)
    raise ConfigError(f"--labels must be 'flare', 'amos' or a JSON file; got {str(spec)!r}.{did_you_mean(key, LABEL_SETS)}")
