"""Colour palette, shape names and the caption grammar of the toy world.

Grammar (objects are named in order of visible area, largest = the salient object first):

    caption   := objects " " place
    objects   := phrase | phrase " " relation " " phrase | phrase " " relation " " phrase " and " phrase
    phrase    := article " " colour " " shape          (article: "an" before a vowel, else "a")
    relation  := "left of" | "right of" | "in front of" | "behind"      (first object relative to the second)
    place     := "on " article " " colour " " floor_texture " floor"               (open ground under a sky)
               | "in a room with " article " " colour " " floor_texture " floor"   (floor, walls and ceiling)

e.g. "a red sphere left of a blue cube on a grey checkered floor".
"""

from __future__ import annotations

from dataclasses import dataclass

# Named colours (sRGB in [0, 1]). Objects and floors draw from the same palette on purpose: no colour channel
# separates objects from the floor.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10),
    "green": (0.15, 0.62, 0.20),
    "blue": (0.12, 0.25, 0.80),
    "yellow": (0.90, 0.80, 0.15),
    "purple": (0.50, 0.20, 0.65),
    "orange": (0.92, 0.48, 0.10),
    "white": (0.88, 0.88, 0.86),
    "black": (0.10, 0.10, 0.11),
    "grey": (0.50, 0.50, 0.50),
    "brown": (0.48, 0.30, 0.15),
    "pink": (0.92, 0.50, 0.65),
    "cyan": (0.15, 0.72, 0.78),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone")
FLOOR_TEXTURES: tuple[str, ...] = ("plain", "checkered", "striped", "tiled", "marbled")
RELATIONS: tuple[str, ...] = ("left of", "right of", "in front of", "behind")

_FUNCTION_WORDS = ("a", "an", "on", "in", "room", "with", "floor", "and")
VOCABULARY: frozenset[str] = frozenset(
    w for phrase in (*_FUNCTION_WORDS, *COLOURS, *SHAPES, *FLOOR_TEXTURES, *RELATIONS) for w in phrase.split()
)


@dataclass(frozen=True)
class CaptionObject:
    """What the caption needs to know about one visible object (image-space measurements from its mask)."""

    colour: str
    shape: str
    area: int  # visible pixels
    centre_x: float  # mask centroid column / image width, in [0, 1]
    depth: float  # median depth over the visible mask


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def relation(a: CaptionObject, b: CaptionObject) -> str:
    """Where `a` is relative to `b`: left/right when clearly apart across the image, else front/behind."""
    dx = a.centre_x - b.centre_x
    if abs(dx) >= 0.12:
        return "left of" if dx < 0 else "right of"
    return "in front of" if a.depth < b.depth else "behind"


def make_caption(objects: list[CaptionObject], floor_colour: str, floor_texture: str, room: bool) -> str:
    """Caption for the visible objects, listed largest first; objects beyond the third are ignored."""
    objs = sorted(objects, key=lambda o: -o.area)[:3]
    phrases = [f"{article(o.colour)} {o.colour} {o.shape}" for o in objs]
    if len(objs) == 1:
        subject = phrases[0]
    elif len(objs) == 2:
        subject = f"{phrases[0]} {relation(objs[0], objs[1])} {phrases[1]}"
    elif len(objs) == 3:
        subject = f"{phrases[0]} {relation(objs[0], objs[1])} {phrases[1]} and {phrases[2]}"
    else:
        subject = ""  # no visible object (rare: the sampler keeps objects in view): the caption names the place
    floor = f"{floor_colour} {floor_texture} floor"
    place = f"in a room with {article(floor)} {floor}" if room else f"on {article(floor)} {floor}"
    return f"{subject} {place}".strip()
