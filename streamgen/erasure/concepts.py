"""Concepts to erase from a ShapeWorld model, and the captions that ask for them.

A concept is one value of one appearance attribute the oracle reads per frame: a background (``white``), an object
colour (``red``) or a shape (``circle``). ``parse_concept`` takes ``attribute:value`` or a bare value when only one
attribute has it (``blue`` is both a colour and a background: say ``color:blue`` or ``background:blue``).

Paraphrases are caption *templates* over the world's grammar slots (``{c}`` colour, ``{s}`` shape, ``{m}`` motion,
``{d}`` direction, ``{b}`` background colour, ``{bp}`` a background phrase such as "over a {b} backdrop"). They come
in two disjoint lists: ``train`` (the fine-tune's states and prompts) and ``heldout`` (only the evaluation's
"paraphrase" condition). :data:`DEFAULT_PARAPHRASES` splits the world's own templates so; a file
(``--paraphrases FILE``, YAML or JSON ``{train: [...], heldout: [...]}``) replaces them. Training captions use the
concept's canonical word (``circle``); held-out captions use any of its synonyms (``disc``, ``ball``).

The *neutral* caption of a concept caption is the same template and words with the concept's slot made neutral
(colour dropped, shape "shape", background "plain"): the guidance direction ``e*(z, caption) - e*(z, neutral)`` is
then the concept's own, not the whole scene's (see :class:`~streamgen.erasure.objective.ErasurePrompts`).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

from ..world.scenes import (_BACKGROUND_PHRASES, _COLOR_WORDS, _DIRECTION_WORDS, _MOTION_WORDS, _SHAPE_WORDS,
                            BACKGROUNDS, DIRECTIONS, OBJECT_COLORS, SHAPES, SPEEDS, Attributes, Draws)

ERASABLE = {"background": BACKGROUNDS, "color": OBJECT_COLORS, "shape": SHAPES}
SLOT_OF = {"background": "b", "color": "c", "shape": "s"}  # {bp} holds {b}
SLOTS = {"c", "s", "m", "d", "b", "bp"}
NEUTRAL_WORD = {"background": "plain", "color": "", "shape": "shape"}


@dataclass(frozen=True)
class Concept:
    """One value of one appearance attribute (``attribute`` in background / color / shape)."""

    attribute: str
    value: str

    def __post_init__(self):
        if self.attribute not in ERASABLE or self.value not in ERASABLE[self.attribute]:
            raise ValueError(f"not an erasable concept: {self.attribute}:{self.value}")

    @property
    def name(self) -> str:
        """``color-red``: a folder / file name."""
        return f"{self.attribute}-{self.value}"

    @property
    def label(self) -> str:
        return f"{self.value} background" if self.attribute == "background" else self.value

    def present(self, attributes: Attributes) -> bool:
        return getattr(attributes, self.attribute) == self.value

    def words(self) -> tuple[str, ...]:
        """The words captions use for the concept (its canonical word first)."""
        return _SHAPE_WORDS[self.value] if self.attribute == "shape" else _COLOR_WORDS[self.value]

    def as_dict(self) -> dict:
        return {"attribute": self.attribute, "value": self.value, "name": self.name}


def parse_concept(text: str) -> Concept:
    """``color:red`` / ``color=red`` / ``red`` / ``white background`` / ``circle`` -> a :class:`Concept`."""
    raw = text.strip().lower()
    for sep in (":", "="):
        if sep in raw:
            attribute, value = (part.strip() for part in raw.split(sep, 1))
            attribute = {"colour": "color", "bg": "background"}.get(attribute, attribute)
            if attribute not in ERASABLE:
                raise ValueError(f"concept {text!r}: attribute must be one of {sorted(ERASABLE)}")
            value = _canonical_value(attribute, value)
            if value is None:
                raise ValueError(f"concept {text!r}: {attribute} is one of {', '.join(ERASABLE[attribute])}")
            return Concept(attribute, value)
    for suffix in (" background", " backdrop", " wall"):
        if raw.endswith(suffix):
            value = _canonical_value("background", raw[: -len(suffix)].strip())
            if value is None:
                raise ValueError(f"concept {text!r}: a background is one of {', '.join(BACKGROUNDS)}")
            return Concept("background", value)
    found = [Concept(attribute, value) for attribute in ERASABLE
             if (value := _canonical_value(attribute, raw)) is not None]
    if not found:
        raise ValueError(f"concept {text!r} is no background ({', '.join(BACKGROUNDS)}), object colour "
                         f"({', '.join(OBJECT_COLORS)}) or shape ({', '.join(SHAPES)})")
    if len(found) > 1:
        raise ValueError(f"concept {text!r} is ambiguous: say " + " or ".join(f"'{c.attribute}:{c.value}'"
                                                                             for c in found))
    return found[0]


def _canonical_value(attribute: str, word: str) -> str | None:
    for value in ERASABLE[attribute]:
        words = _SHAPE_WORDS[value] if attribute == "shape" else _COLOR_WORDS[value]
        if word == value or word in words:
            return value
    return None


# ---- paraphrases -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paraphrases:
    """Disjoint caption templates: ``train`` for fine-tuning, ``heldout`` for evaluation only."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    source: str = "default"

    def __post_init__(self):
        if not self.train or not self.heldout:
            raise ValueError(f"{self.source}: paraphrases need at least one 'train' and one 'heldout' template")
        shared = sorted(set(map(_normalise, self.train)) & set(map(_normalise, self.heldout)))
        if shared:
            raise ValueError(f"{self.source}: template {shared[0]!r} is both 'train' and 'heldout': the held-out "
                             "paraphrases must not be used in fine-tuning")
        for key, templates in (("train", self.train), ("heldout", self.heldout)):
            for template in templates:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
                unknown = sorted(fields - SLOTS)
                if unknown:
                    raise ValueError(f"{self.source}: {key} template {template!r} has unknown slot {{{unknown[0]}}} "
                                     f"(slots: {', '.join('{' + s + '}' for s in sorted(SLOTS))})")

    def check_covers(self, concept: Concept) -> None:
        """Every template must name the concept's slot (a caption without it would not ask for the concept)."""
        for key, templates in (("train", self.train), ("heldout", self.heldout)):
            for template in templates:
                if not _mentions(template, concept):
                    raise ValueError(f"{self.source}: {key} template {template!r} never names the {concept.attribute}"
                                     f" ({{{SLOT_OF[concept.attribute]}}}), so it cannot ask for {concept.label!r}")

    def as_dict(self) -> dict:
        return {"train": list(self.train), "heldout": list(self.heldout), "source": self.source}


def _normalise(template: str) -> str:
    return " ".join(template.split()).lower()


def _mentions(template: str, concept: Concept) -> bool:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    slot = SLOT_OF[concept.attribute]
    return slot in fields or (slot == "b" and "bp" in fields)


# The world's four templates and four background phrases, split two / two (with the phrase spelled out).
DEFAULT_PARAPHRASES = Paraphrases(
    train=("a {c} {s} {m} {d} over a {b} backdrop", "{c} {s} {m} {d}, {b} background",
           "a {c} {s} {m} {d} on a {b} background"),
    heldout=("on a {b} background, a {c} {s} is {m} {d}", "a {b} backdrop with a {c} {s} {m} {d}",
             "a {c} {s} {m} {d} in front of a {b} wall", "a {c} {s} {m} {d} against a {b} background"),
)


def load_paraphrases(path: str | Path | None) -> Paraphrases:
    """The paraphrase file at ``path`` (YAML or JSON ``{train: [...], heldout: [...]}``), or the defaults."""
    if path is None:
        return DEFAULT_PARAPHRASES
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the paraphrase file ({err.strerror})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - one line naming the file
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({err})".replace("\n", " "))
    if not isinstance(data, dict) or set(data) - {"train", "heldout"}:
        raise ValueError(f"{path}: expected a mapping with keys 'train' and 'heldout' (lists of caption templates)")
    for key in ("train", "heldout"):
        if not isinstance(data.get(key), list) or not all(isinstance(t, str) and t.strip() for t in data[key]):
            raise ValueError(f"{path}: key {key!r} must be a non-empty list of caption templates")
    return Paraphrases(tuple(data["train"]), tuple(data["heldout"]), str(path))


def load_anchors(path: str | Path | None) -> list[str] | None:
    """Anchor prompts, one per line of a text file (blank lines and ``#`` comments skipped), or None."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the anchor file ({err.strerror})") from None
    anchors = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not anchors:
        raise ValueError(f"{path}: holds no anchor prompt")
    return anchors


# ---- captions ----------------------------------------------------------------------------------------------------
def _fill(template: str, words: dict[str, str]) -> str:
    b = words["b"]
    phrase = words.get("bp") or _BACKGROUND_PHRASES[0].format(b=b)
    text = template.format(c=words["c"], s=words["s"], m=words["m"], d=words["d"], b=b, bp=phrase)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+,", ",", text)


def caption_words(attributes: Attributes, rng: Draws, concept: Concept | None, synonyms: bool) -> dict[str, str]:
    """One word per slot for ``attributes``; the concept's slot takes its canonical word unless ``synonyms``."""
    a = attributes
    words = {"c": rng.choice(_COLOR_WORDS[a.color]), "s": rng.choice(_SHAPE_WORDS[a.shape]),
             "m": rng.choice(_MOTION_WORDS[a.speed]), "d": rng.choice(_DIRECTION_WORDS[a.direction]),
             "b": rng.choice(_COLOR_WORDS[a.background])}
    words["bp"] = rng.choice(_BACKGROUND_PHRASES).format(b=words["b"])
    if concept is not None and not synonyms:
        words[SLOT_OF[concept.attribute]] = concept.words()[0]
        words["bp"] = _BACKGROUND_PHRASES[0].format(b=words["b"])
    return words


def concept_caption(template: str, attributes: Attributes, rng: Draws, concept: Concept | None = None,
                    synonyms: bool = False) -> tuple[str, str]:
    """(caption, neutral caption) of ``attributes`` through ``template``; the neutral one empties the concept's slot
    (colour dropped, shape "shape", background "plain")."""
    words = caption_words(attributes, rng, concept, synonyms)
    text = _fill(template, words)
    if concept is None:
        return text, text
    neutral = dict(words)
    slot = SLOT_OF[concept.attribute]
    neutral[slot] = NEUTRAL_WORD[concept.attribute]
    if slot == "b":
        neutral["bp"] = words["bp"].replace(words["b"], NEUTRAL_WORD["background"])
    return text, _fill(template, neutral)


def attributes_with(concepts: list[Concept], rng: Draws, avoid: list[Concept] = ()) -> Attributes:
    """Random valid attributes holding every concept of ``concepts`` and none of ``avoid``."""
    for _ in range(1000):
        values = {"shape": rng.choice(SHAPES), "color": rng.choice(OBJECT_COLORS),
                  "background": rng.choice(BACKGROUNDS), "direction": rng.choice(DIRECTIONS),
                  "speed": rng.choice(SPEEDS)}
        for concept in concepts:
            values[concept.attribute] = concept.value
        if values["color"] == values["background"]:
            continue
        attributes = Attributes(**values)
        if not any(c.present(attributes) for c in avoid):
            return attributes
    raise ValueError(f"no scene holds {[c.name for c in concepts]} without {[c.name for c in avoid]}")
