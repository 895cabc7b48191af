"""
scenes.py: the procedural generator. Scenes of shapes and text drawn with pillow, the questions asked about them,
and video clips, each a pure function of (task, seed, size): the same triple always gives the same pixels and
text, so the held-out set is simply a range of seeds that training never draws (training seeds are in
[0, 2**31), held-out seeds start at 2**31). It imports nothing of the project's: data.py turns its conversations
into tokens and batches.

Scenes hold 1-4 shapes on a dark, noisy background. Positions in answers use a 3x3 grid of the
image: "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
"bottom right" (cell of the object's centre pixel).

Look at samples with:  python show_data.py --out_dir=out-data --n=16     (--help: every option)
"""

import functools
import math
import random
import string
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TASKS = ("caption", "color", "shape", "count", "position", "relation", "reading", "multi_image")
VIDEO_TASK = "video"
CAPTION_QUESTION = "describe the image."


class DataError(ValueError):
    """A problem with data or arguments that the user can fix; the message is one line."""


# -----------------------------------------------------------------------------
# scenes: sample a description (a plain dict), then draw it

# Well separated colours: the closest pair (orange, yellow) is ~85 apart in RGB, far more than
# the colour jitter and pixel noise added below, so the centre pixel always names the colour.
COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 90, 230), "yellow": (240, 220, 40),
    "purple": (150, 60, 210), "orange": (245, 135, 25), "white": (240, 240, 240), "cyan": (40, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
RADIUS = {"small": 0.1, "big": 0.16}  # half the object's extent, as a fraction of the image size (times a look's
# size_jitter, drawn per object)
WORDS = ("cat", "dog", "sun", "car", "hat", "box", "map", "cup", "key",
         "fish", "bird", "tree", "moon", "boat", "cake")  # for the reading task, with 1-3 digit numbers
GRID = (("top left", "top", "top right"),
        ("left", "center", "right"),
        ("bottom left", "bottom", "bottom right"))
CELLS = tuple(cell for row in GRID for cell in row)
SIDES = {"x": ("left", "right"), "y": ("above", "below")}  # a relation question's two answers, along each axis
# every word the generated questions and answers use (tests/test_data.py checks that none is missing)
VOCABULARY = tuple(sorted(set(" ".join(
    ["what color is the how many shapes are there where written describe image of one shape and small big",
     "left right above below or moves to at appears turns disappears an", *COLORS, *SHAPES, *WORDS,
     *CELLS]).split())))
MIN_SIZE = 32  # below this the shapes and text are no longer recognisable
SS = 4  # draw at 4x and average down: anti-aliased edges, while the centre pixel keeps the pure colour
COLOR_JITTER = 10  # per channel, so the model can't key on exact RGB values
NOISE = 4.0  # std of per-pixel noise, so that no pixel value is a shortcut
BG_RANGE = (15, 85)  # background channels: dark and muted, >= 95 away from every object colour
# How scenes look. Training sees "default" (or "varied", below); "shifted" is a look no training draws, for checking
# that a model reads the images and not quirks of the generator: other object sizes (yet at 64 px every small one
# smaller than any big one of any look, so a caption's "small" and "big" keep their meaning), darker shades with
# stronger jitter, more noise, and stripes across the background. Same vocabulary, same questions.
# A look's camera is what it does to the whole image: per-pixel noise (std), exposure (every channel times light),
# a colour cast (added per channel) and stripes (amplitude, direction dx, dy, period in px). The default and
# shifted looks have one camera; "varied" draws one per scene (a clip's frames share it) from VARIED_CAMERA's
# ranges, and shades each object (a factor per object), jitters its colour and the text's ink and box more than
# the default look. Every range stops short of the shifted look on its axis (lighter objects, less jitter, less
# noise, fainter stripes never in its 6 px diagonals, inks far from its blue), so a model trained on it learns to
# see past a camera and a palette, and the shifted look still shows one it never saw.
# Sizes are the one axis the varied look covers rather than stops short of: "small" and "big" are defined by
# example, and the default look leaves a gap between them (at 64 px radii 5-7 and 9-12), so a shifted big object
# of 8 px had no size word that training determined. The varied look draws big objects from 8 px, which teaches
# where the words part (notebook, "Where small ends and big begins").
# Text is drawn in varied sizes (font px as a fraction of the image), weights (pillow's stroke width in the 4x
# drawing's pixels), slants (horizontal shear, either way) and shades of dark ink on a light box (+-text_jitter per
# channel), so that the encoder learns glyphs rather than one font's pixels; the shifted look draws it more slanted
# than training ever does (and at its boldest), in blue ink (a blue channel far above any training ink's) on a
# cream box (bolder still would be illegible). At 64x64 the smallest size, 16 px, makes a digit 9 px wide: every
# glyph spans a patch of 8 px.
STYLES = {
    "default": {"radius": RADIUS, "size_jitter": (0.85, 1.15), "shade": (1.0, 1.0), "jitter": COLOR_JITTER,
                "camera": {"noise": NOISE, "light": 1.0, "cast": (0.0, 0.0, 0.0), "stripes": (0.0, 1.0, 0.0, 6.0)},
                "text_size": (0.25, 0.31), "weight": (0, 3), "slant": (0.0, 0.3),
                "ink": (20, 20, 30), "paper": (235, 235, 225), "text_jitter": 40},
    "shifted": {"radius": {"small": 0.09, "big": 0.145}, "size_jitter": (0.85, 1.15), "shade": (0.88, 0.88),
                "jitter": 20,
                "camera": {"noise": 9.0, "light": 1.0, "cast": (0.0, 0.0, 0.0), "stripes": (16.0, 1.0, -1.0, 6.0)},
                "text_size": (0.25, 0.31), "weight": (3, 3), "slant": (0.3, 0.35),
                "ink": (30, 40, 140), "paper": (250, 235, 200), "text_jitter": 0},
}
STYLES["varied"] = {**STYLES["default"], "size_jitter": (0.78, 1.15), "camera": None, "shade": (0.92, 1.0),
                    "jitter": 15, "text_jitter": 70}
VARIED_CAMERA = {"noise": (0.0, 7.0), "light": (0.9, 1.1), "cast": 8.0, "stripes": (0.0, 12.0), "period": (8.0, 16.0),
                 "striped": 0.5}  # ranges (uniform), the cast's bound per channel, the share of scenes with stripes
TRAINING_STYLES = ("default", "varied")
CHARS = string.digits + string.ascii_lowercase  # what the reading task's text is made of


def _article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _jitter(rng, color, style="default"):
    """The RGB an object of this colour is drawn in: shaded by a factor from the look's range, jittered per channel."""
    (lo, hi), j = STYLES[style]["shade"], STYLES[style]["jitter"]
    shade = lo if lo == hi else rng.uniform(lo, hi)  # the fixed looks draw nothing here
    return tuple(min(255, max(0, round(c * shade) + rng.randint(-j, j))) for c in COLORS[color])


def _moved(o, x, y):
    return {**o, "x": x, "y": y, "bbox": (x - o["r"], y - o["r"], x + o["r"], y + o["r"])}


def _random_camera(rng):
    """A camera for one scene of the varied look, drawn from VARIED_CAMERA's ranges (see STYLES)."""
    r, angle = VARIED_CAMERA, rng.uniform(0, math.pi)
    amplitude = rng.uniform(*r["stripes"]) if rng.random() < r["striped"] else 0.0
    return {"noise": rng.uniform(*r["noise"]), "light": rng.uniform(*r["light"]),
            "cast": tuple(rng.uniform(-r["cast"], r["cast"]) for _ in range(3)),
            "stripes": (amplitude, math.cos(angle), math.sin(angle), rng.uniform(*r["period"]))}


def _apart(a, b, gap):
    """True if boxes a and b (x0, y0, x1, y1) are at least gap pixels apart along some axis."""
    return a[0] - b[2] >= gap or b[0] - a[2] >= gap or a[1] - b[3] >= gap or b[1] - a[3] >= gap


def _place(rng, size, objects, text_box=None, style="default"):
    """A new random object that is fully visible and clear of the others, or None if none fits.
    Every (colour, shape) pair appears at most once, so "the red circle" always names one object,
    and centres differ by >= size/16 horizontally, so "left to right" captions are well defined."""
    gap = max(2, size // 32)
    for _ in range(100):
        shape, color, size_name = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(tuple(RADIUS))
        scale = rng.uniform(*STYLES[style]["size_jitter"])  # no two exact sizes
        r = round(size * STYLES[style]["radius"][size_name] * scale)
        o = {"shape": shape, "color": color, "size": size_name, "r": r, "rgb": _jitter(rng, color, style)}
        o = _moved(o, rng.randint(r + 1, size - 2 - r), rng.randint(r + 1, size - 2 - r))
        if any(p["shape"] == shape and p["color"] == color for p in objects):
            continue
        if all(_apart(o["bbox"], p["bbox"], gap) and abs(o["x"] - p["x"]) >= size // 16 for p in objects) \
                and (text_box is None or _apart(o["bbox"], text_box, gap)):
            return o
    return None


@functools.lru_cache(maxsize=16)
def _font(px):
    """Pillow's bundled font (works offline), px pixels tall in the image, for drawing at SS x."""
    return ImageFont.load_default(size=px * SS)


def _text_layout(scene):
    """Where the text goes, in the SS x drawing: (font, its stroke width, the drawing origin of the unslanted text,
    the vertical centre the slant shears around, and the ink's box (x0, y0, x1, y1) before the slant)."""
    font, weight = _font(scene["text_size"]), scene["text_weight"]
    left, top, right, bottom = font.getbbox(scene["text"], stroke_width=weight)
    x0, y0, x1, y1 = scene["text_bbox"]
    cx, cy = (x0 + x1) * SS / 2, (y0 + y1) * SS / 2
    origin = (cx - (left + right) / 2, cy - (top + bottom) / 2)  # centre the ink in the box
    return font, weight, origin, cy, (origin[0] + left, origin[1] + top, origin[0] + right, origin[1] + bottom)


def sample_scene(rng, size, text=False, n_objects=None, style="default"):
    """Describe a random scene as a plain dict (draw it with draw_scene):
    size, background {from, to, angle}, noise_seed, objects: list of {shape, color, size ('small'
    or 'big'), x, y (centre pixel), r, bbox (x0, y0, x1, y1), rgb (the jittered colour drawn)},
    and with text=True also text (1-3 digits or a short word), text_bbox (its box), and how it is drawn: text_size
    (font px), text_weight (stroke width at SS x), text_slant (shear), ink and paper (RGB); style and camera (see
    STYLES)."""
    if not isinstance(size, int) or size < MIN_SIZE:
        raise DataError(f"image size must be an integer >= {MIN_SIZE}, got {size!r}")
    lo, hi = BG_RANGE
    c0 = tuple(rng.randint(lo, hi) for _ in range(3))
    c1 = c0 if rng.random() < 0.4 else tuple(rng.randint(lo, hi) for _ in range(3))  # flat or gradient
    scene = {"size": size, "background": {"from": c0, "to": c1, "angle": rng.uniform(0, 2 * math.pi)},
             "noise_seed": rng.randrange(2**32), "objects": [], "style": style}
    scene["camera"] = STYLES[style]["camera"] or _random_camera(rng)  # the fixed looks draw nothing here
    text_box = None
    if text:
        look = STYLES[style]
        digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(1, 3)))
        scene["text"] = rng.choice(WORDS) if rng.random() < 0.5 else digits
        scene["text_size"] = round(size * rng.uniform(*look["text_size"]))
        scene["text_weight"] = rng.randint(*look["weight"])
        scene["text_slant"] = rng.choice((-1, 1)) * rng.uniform(*look["slant"])
        j = look["text_jitter"]
        scene["ink"], scene["paper"] = (tuple(min(255, max(0, c + rng.randint(-j, j))) for c in look[part])
                                        for part in ("ink", "paper"))
        pad, w = max(2, size // 32), size
        while w > size - 3:  # a long word, big, bold and slanted may not fit: a smaller size then
            left, top, right, bottom = _font(scene["text_size"]).getbbox(scene["text"],
                                                                         stroke_width=scene["text_weight"])
            h = (bottom - top) / SS
            w = math.ceil((right - left) / SS + abs(scene["text_slant"]) * h) + 2 * pad  # the slant widens the ink
            scene["text_size"] -= w > size - 3
        h = math.ceil(h) + 2 * pad
        x0, y0 = rng.randint(1, size - 2 - w), rng.randint(1, size - 2 - h)
        text_box = scene["text_bbox"] = (x0, y0, x0 + w, y0 + h)
    if n_objects is None:
        n_objects = rng.randint(0, 2) if text else rng.randint(1, 4)
    for _ in range(n_objects):
        o = _place(rng, size, scene["objects"], text_box, style)
        if o is None:
            break  # too crowded: keep fewer objects (answers are computed from what was placed)
        scene["objects"].append(o)
    return scene


def _polygon(shape, cx, cy, r):
    """Corner points of a shape centred at (cx, cy) that fits in the square of half-width r."""
    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "star":  # five points; a fat inner radius so small stars still read as stars
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        return [(cx + rr * math.cos(a), cy + rr * math.sin(a)) for rr, a in zip(radii, angles)]
    if shape == "cross":
        w = 0.33 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
                (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
                (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]
    raise DataError(f"unknown shape {shape!r}")


def _draw_text(img, scene):
    """Draw the scene's text into img (the SS x drawing): its box, then the ink, slanted by shearing around the
    text's vertical centre (a positive slant leans the tops of the glyphs right)."""
    x0, y0, x1, y1 = scene["text_bbox"]
    ImageDraw.Draw(img).rectangle((x0 * SS, y0 * SS, x1 * SS - 1, y1 * SS - 1), fill=scene["paper"])
    font, weight, origin, cy, _ = _text_layout(scene)
    ink = Image.new("L", img.size, 0)
    ImageDraw.Draw(ink).text(origin, scene["text"], font=font, fill=255, stroke_width=weight, stroke_fill=255)
    slant = scene["text_slant"]  # output pixel (x, y) takes the ink at (x + slant * (y - cy), y)
    ink = ink.transform(img.size, Image.Transform.AFFINE, (1, slant, -slant * cy, 0, 1, 0), Image.Resampling.BILINEAR)
    img.paste(scene["ink"], mask=ink)


def patch_chars(scene, grid):
    """Which character of the scene's text each patch of a grid x grid split shows, for pretraining the encoder to
    read glyphs (pretrain_vision.py): the index in scene["text"] of the character whose advance (its slot in the
    line, slanted with the ink) holds the patch centre, or -1 (no text there, or a patch above or below the ink).
    (grid * grid,) long tensor, patches row-major like the ViT's tokens."""
    owner = torch.full((grid, grid), -1)
    if "text" not in scene:
        return owner.flatten()
    font, _, origin, cy, (_, top, _, bottom) = _text_layout(scene)
    edges = torch.tensor([origin[0] + font.getlength(scene["text"][:i]) for i in range(len(scene["text"]) + 1)])
    centres = (torch.arange(grid) + 0.5) * scene["size"] * SS / grid
    x = centres[None, :] + scene["text_slant"] * (centres[:, None] - cy)  # undo the slant: where the ink came from
    char = torch.bucketize(x, edges, right=True) - 1  # edges[i] <= x < edges[i + 1]: character i
    inside = (char >= 0) & (char < len(scene["text"])) & (centres[:, None] >= top) & (centres[:, None] < bottom)
    owner[inside] = char[inside]
    return owner.flatten()


def draw_scene(scene):
    """Render a scene dict from sample_scene to an RGB PIL image."""
    size = scene["size"]
    big = size * SS
    bg = scene["background"]
    u = np.arange(size, dtype=np.float32)
    t = u[None, :] * math.cos(bg["angle"]) + u[:, None] * math.sin(bg["angle"])  # position along the gradient
    t = (t - t.min()) / (t.max() - t.min())
    c0, c1 = np.array(bg["from"], np.float32), np.array(bg["to"], np.float32)
    camera = scene["camera"]
    amplitude, dx, dy, period = camera["stripes"]
    stripes = amplitude * np.sin(2 * math.pi * (dx * u[None, :] + dy * u[:, None]) / period)[..., None]
    img = Image.fromarray(np.clip(c0 + t[..., None] * (c1 - c0) + stripes, 0, 255).astype(np.uint8))
    img = img.resize((big, big), Image.Resampling.NEAREST)  # the background is smooth: no need to compute it at 4x
    if "text" in scene:
        _draw_text(img, scene)
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        cx, cy, r = (o["x"] + 0.5) * SS, (o["y"] + 0.5) * SS, o["r"] * SS  # pixel x spans [x, x+1)
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=o["rgb"])
        else:
            draw.polygon(_polygon(o["shape"], cx, cy, r), fill=o["rgb"])
    img = img.reduce(SS)
    noise = np.random.default_rng(scene["noise_seed"]).normal(0.0, camera["noise"], (size, size, 3))
    pixels = np.asarray(img, np.float32) * camera["light"] + np.array(camera["cast"], np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def render_scene(seed, size=64, text=False):
    """A random scene for this seed: (RGB image of size x size, description dict; see sample_scene)."""
    scene = sample_scene(random.Random(seed), size, text=text)
    return draw_scene(scene), scene


# -----------------------------------------------------------------------------
# conversations: questions with short, exact answers about generated scenes

@dataclass
class Turn:
    images: list  # PIL.Image.Image (RGB), 0 or more, shown before the question
    question: str | None  # None = bare streaming turn (video): no <user>/<assistant> separators
    answer: str


@dataclass
class Conversation:
    task: str
    turns: list  # of Turn
    scenes: list = field(default_factory=list)  # description of every generated image in order ([] from disk)


def _cell(o, size):
    return GRID[min(2, 3 * o["y"] // size)][min(2, 3 * o["x"] // size)]


def _clear_cell(o, size):
    """Is the centre >= size/32 px from every grid line? (Questions near a line would be coin flips.)"""
    return all(abs(v - size * k / 3) >= size / 32 for v in (o["x"], o["y"]) for k in (1, 2))


def _unique(objects, key, o):
    return sum(p[key] == o[key] for p in objects) == 1


def _name(o, objects):
    """The shortest unambiguous name: 'circle' if it is the only circle, else 'red circle'."""
    return o["shape"] if _unique(objects, "shape", o) else f"{o['color']} {o['shape']}"


def _list(phrases):
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _question(task, scene, rng):
    """(question, answer) about one scene for a single-image task, or None if the scene doesn't allow
    an unambiguous one (e.g. no shape that occurs only once, for the color question)."""
    objects, size = scene["objects"], scene["size"]
    if task == "caption":
        left_to_right = sorted(objects, key=lambda o: o["x"])
        return CAPTION_QUESTION, _list([f"a {o['size']} {o['color']} {o['shape']}" for o in left_to_right])
    if task == "count":
        return "how many shapes are there?", str(len(objects))
    if task == "reading":
        return "what is written?", scene["text"]
    if task == "color":
        candidates = [o for o in objects if _unique(objects, "shape", o)]
    elif task == "shape":
        candidates = [o for o in objects if _unique(objects, "color", o)]
    elif task == "position":
        candidates = [o for o in objects if _clear_cell(o, size)]
    elif task == "relation":
        axis = rng.choice("xy")
        candidates = [(a, b) for a in objects for b in objects if abs(a[axis] - b[axis]) > size / 8]
    else:
        raise DataError(f"no single-image question for task {task!r}")
    if not candidates:
        return None
    o = rng.choice(candidates)
    if task == "color":
        return f"what color is the {o['shape']}?", o["color"]
    if task == "shape":
        return f"what shape is the {o['color']} one?", o["shape"]
    if task == "position":
        return f"where is the {o['color']} {o['shape']}?", _cell(o, size)
    # relation: the question offers both sides and the answer names one. (A yes/no question, "is the A left of the
    # B?", makes the answer the XOR of the word and the comparison: neither alone predicts it, so no gradient leads
    # to either, and every fusion sat at chance; this form learns: results/accuracy_notebook.md.) Both orders of a
    # pair are candidates, so each side is the answer half the time.
    a, b = o
    before, after = SIDES[axis]  # y grows downwards: "above" is the smaller y
    return (f"is the {_name(a, objects)} {before} or {after}{' of' if axis == 'x' else ''} the {_name(b, objects)}?",
            before if a[axis] < b[axis] else after)


def patch_objects(scene, grid):
    """Which object each patch of a grid x grid split of the scene shows, for pretraining the vision encoder
    (pretrain_vision.py): the index in scene["objects"] of the object whose box holds the patch centre, or -1.
    (grid * grid,) long tensor, patches row-major like the ViT's tokens."""
    size = scene["size"]
    owner = torch.full((grid, grid), -1)
    centres = (torch.arange(grid) + 0.5) * size / grid
    for i, o in enumerate(scene["objects"]):  # boxes never overlap (_place keeps them apart)
        x0, y0, x1, y1 = o["bbox"]  # pixel x spans [x, x + 1), so the box's pixels span [x0, x1 + 1)
        inside_x = (centres >= x0) & (centres < x1 + 1)
        inside_y = (centres >= y0) & (centres < y1 + 1)
        owner[inside_y[:, None] & inside_x[None, :]] = i
    return owner.flatten()


def object_labels(o, size):
    """An object's shape, colour, size (small or big) and cell as indices into SHAPES, COLORS, RADIUS and CELLS: what
    pretraining predicts (every property a scene caption names)."""
    return (SHAPES.index(o["shape"]), list(COLORS).index(o["color"]), tuple(RADIUS).index(o["size"]),
            CELLS.index(_cell(o, size)))


MULTI_IMAGE_QUESTIONS = ("color", "shape", "count", "position")
FOLLOW_UP_QUESTIONS = MULTI_IMAGE_QUESTIONS + ("relation",)


def make_conversation(task, seed, size=64, questions=1, style="default", frames=None):
    """A conversation for one of TASKS (or VIDEO_TASK: make_clip, of `frames` frames); deterministic for (task,
    seed, size, questions). multi_image: 2-4 turns, each showing one new scene and asking about that latest scene only.
    questions > 1 (training): a single-scene question task goes on with 1 to questions - 1 follow-up questions of
    random kinds about the same scene, so every image the encoder sees teaches it several answers."""
    if task == VIDEO_TASK:
        return make_clip(seed, size, frames, style)
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} (choose from {', '.join(TASKS + (VIDEO_TASK,))})")
    rng = random.Random(f"{task}:{seed}")  # str seeds hash with sha512: stable across runs and machines
    turns, scenes = [], []
    for _ in range(rng.randint(2, 4) if task == "multi_image" else 1):
        kind = rng.choice(MULTI_IMAGE_QUESTIONS) if task == "multi_image" else task
        qa = None
        while qa is None:  # a fresh scene until it supports the question: one or two tries in practice
            scene = sample_scene(rng, size, text=kind == "reading", style=style)
            qa = _question(kind, scene, rng)
        turns.append(Turn([draw_scene(scene)], *qa))
        scenes.append(scene)
    if questions > 1 and task in FOLLOW_UP_QUESTIONS:
        for _ in range(rng.randint(1, questions - 1)):
            qa = _question(rng.choice(FOLLOW_UP_QUESTIONS), scene, rng)
            # none when the scene allows none (every shape twice, for colour); never a repeat, whose answer
            # could be copied from the conversation instead of read from the image
            if qa is not None and all(qa[0] != turn.question for turn in turns):
                turns.append(Turn([], *qa))
    return Conversation(task, turns, scenes)


VIDEO_OBJECTS = 2  # at most this many objects in a frame: a caption naming both with their cells is <= 16 tokens
# (a third would make it 25, past the 24 that bench.py's caption_scores lets a caption have)
RESTATE = 8  # a frame is described in full at least every RESTATE frames: the last RESTATE captions always hold
# every object's cell, so a rolling text window of that many captions is all the memory a stream needs


def _in_cell(rng, o, cell, others, size):
    """o moved to a random spot of a cell (one of CELLS) where its centre is clear of the grid lines (_clear_cell),
    it is fully visible and apart from the others; None if no spot tried fits."""
    row, col = divmod(CELLS.index(cell), 3)
    margin = size / 32  # as in _clear_cell
    lo = [max(o["r"] + 1, math.ceil(k * size / 3 + margin)) for k in (col, row)]
    hi = [min(size - 2 - o["r"], math.floor((k + 1) * size / 3 - margin)) for k in (col, row)]
    if lo[0] > hi[0] or lo[1] > hi[1]:
        return None
    for _ in range(20):
        p = _moved(o, rng.randint(lo[0], hi[0]), rng.randint(lo[1], hi[1]))
        if all(_apart(p["bbox"], q["bbox"], 1) for q in others):
            return p
    return None


def _free_cells(objects, size):
    taken = {_cell(o, size) for o in objects}
    return [c for c in CELLS if c not in taken]


def _new_object(rng, objects, size, style):
    """A new object, its (colour, shape) unlike every other's, alone in a free cell; None if none fits."""
    o = _place(rng, size, objects, style=style)  # draws the shape, colour and size (and a spot we don't use)
    return o and _in_cell(rng, o, rng.choice(_free_cells(objects, size)), objects, size)


def _frame_caption(objects, size):
    """The whole frame in words, in reading order of the cells: "a red circle at the top left and a blue star at
    the center"."""
    in_order = sorted(objects, key=lambda o: CELLS.index(_cell(o, size)))
    return _list([_article(f"{o['color']} {o['shape']} at the {_cell(o, size)}") for o in in_order])


def _video_step(rng, objects, size, restate, style):
    """One frame after the first: (its objects, its caption). At most one thing changes, at the granularity the
    captions record, cells: an object moves to another cell, appears in a free one, disappears or turns another
    colour. The caption names that change; a frame without one is described in full (with `restate`, nothing
    changes: RESTATE). So the caption follows from the frame and the state the captions so far imply, the memory
    a cross or casa model has. Objects also wander inside their cells, which no caption mentions."""
    wandered = []
    for i, o in enumerate(objects):
        wandered.append(_in_cell(rng, o, _cell(o, size), wandered + objects[i + 1:], size) or o)
    objects = wandered
    i = rng.randrange(len(objects))
    o, others = objects[i], objects[:i] + objects[i + 1:]
    moved = _in_cell(rng, o, rng.choice(_free_cells(objects, size)), others, size)
    new = _new_object(rng, objects, size, style) if len(objects) < VIDEO_OBJECTS else None
    weights = {"move": 4 if moved else 0, "recolor": 1.5, "appear": 1.5 if new else 0,
               "disappear": 1 if len(objects) > 1 else 0, "still": 2}
    event = "still" if restate else rng.choices(list(weights), weights=list(weights.values()))[0]
    name = f"the {o['color']} {o['shape']}"
    if event == "still":
        return objects, _frame_caption(objects, size)
    if event == "appear":
        return objects + [new], _article(f"{new['color']} {new['shape']} appears at the {_cell(new, size)}")
    if event == "move":
        return others[:i] + [moved] + others[i:], f"{name} moves to the {_cell(moved, size)}"
    if event == "disappear":
        return others, f"{name} disappears"
    taken = {p["color"] for p in objects if p["shape"] == o["shape"]}  # keep (colour, shape) unique
    color = rng.choice([c for c in COLORS if c not in taken])
    recolored = {**o, "color": color, "rgb": _jitter(rng, color, style)}
    return others[:i] + [recolored] + others[i:], f"{name} turns {color}"


def make_clip(seed, size=64, n_frames=None, style="default"):
    """A video (task "video"): one Turn per frame with question None and a live caption as the answer. Frame 0
    names its 1-2 objects and their cells ("a red circle at the top left and a blue star at the center"); every
    later frame says what changed since (_video_step): "the red circle moves to the center", "a blue square appears
    at the bottom", "the green star turns yellow", "the red circle disappears", or, when nothing did, describes
    the frame in full again. Every centre stays clear of the grid lines and every (colour, shape) is unique."""
    rng = random.Random(f"{VIDEO_TASK}:{seed}")
    if n_frames is None:
        n_frames = rng.randint(8, 64)
    if not isinstance(n_frames, int) or n_frames < 1:
        raise DataError(f"n_frames must be a positive integer, got {n_frames!r}")
    scene = sample_scene(rng, size, n_objects=0, style=style)  # the background; the objects are placed by cell
    objects, n_objects = [], rng.randint(1, 2)
    while len(objects) < n_objects:
        objects += [o] if (o := _new_object(rng, objects, size, style)) else []
    turns, scenes, since_full = [], [], 0  # frames since the last caption that described the whole frame
    for f in range(n_frames):
        if f == 0:
            caption = _frame_caption(objects, size)
        else:
            objects, caption = _video_step(rng, objects, size, since_full >= RESTATE - 1, style)
            since_full = 0 if caption == _frame_caption(objects, size) else since_full + 1
        frame = {**scene, "objects": objects, "noise_seed": rng.randrange(2**32)}  # fresh noise every frame
        turns.append(Turn([draw_scene(frame)], None, caption))
        scenes.append(frame)
    return Conversation(VIDEO_TASK, turns, scenes)


def describe(scene):
    """A scene in words, everything its questions ask about: "a big red circle at the top left and cat is
    written." (objects left to right, then the text)."""
    size = scene["size"]
    parts = [f"a {o['size']} {o['color']} {o['shape']} at the {_cell(o, size)}"
             for o in sorted(scene["objects"], key=lambda o: o["x"])]
    return _list(parts + ([f"{scene['text']} is written"] if "text" in scene else [])) + "."


def as_text(conv):
    """The conversation for a text-only language model: each image replaced by its description in words, put
    before the turn's question (train.py --text_only pretrains the LM alone on these). A clip's frame becomes a
    turn whose question is the frame's description and whose answer is its caption."""
    if len(conv.scenes) != sum(len(t.images) for t in conv.turns):
        raise DataError(f"a {conv.task!r} conversation has no scene description for every image")
    scenes, turns = iter(conv.scenes), []
    for turn in conv.turns:
        words = [describe(next(scenes)) for _ in turn.images] + ([turn.question] if turn.question is not None else [])
        turns.append(Turn([], " ".join(words), turn.answer))
    return Conversation(conv.task, turns, conv.scenes)


# -----------------------------------------------------------------------------
# seeds: training and held-out conversations never share a seed

EVAL_SEED0 = 2**31  # training seeds are in [0, EVAL_SEED0), held-out seeds are EVAL_SEED0 + i
VALIDATION_SEED0 = EVAL_SEED0 + 2**30  # a third set, for choices (experiments.py): so the held-out set stays unseen


def train_seed(rng):
    return rng.randrange(EVAL_SEED0)


def parse_tasks(text):
    """A --tasks option: "all" (the question tasks) or a comma-separated list, checked against TASKS and video."""
    if text == "all":
        return TASKS
    tasks = tuple(t.strip() for t in text.split(","))
    unknown = [t for t in tasks if t not in TASKS + (VIDEO_TASK,)]
    if unknown:
        raise DataError(f"unknown task {unknown[0]!r} (choose from {', '.join(TASKS + (VIDEO_TASK,))} or all)")
    return tasks


def eval_conversations(n_per_task, size, tasks=TASKS, style="default", frames=None, part=slice(None),
                       seed0=EVAL_SEED0):
    """The fixed held-out set: n_per_task conversations of every task, in task order (drawn in `style`);
    `part`: a slice of it, to draw it in pieces; seed0=VALIDATION_SEED0: the validation set instead."""
    pairs = [(task, i) for task in tasks for i in range(n_per_task)][part]
    return [make_conversation(task, seed0 + i, size, style=style, frames=frames) for task, i in pairs]


def check_style(style, training=False):
    """A --style option: one of STYLES, or for a training script one of TRAINING_STYLES (the shifted look tests
    what training never showed)."""
    styles = TRAINING_STYLES if training else tuple(STYLES)
    if style not in styles:
        why = " (shifted is never trained on)" if training else ""
        raise DataError(f"--style is one of {', '.join(styles)}{why}, got {style!r}")


def sample_conversations(rng, n, size, tasks=TASKS, questions=1, frames=None, style="default"):
    """n fresh training conversations, each of a uniformly drawn task (see make_conversation: questions, frames,
    style)."""
    return [make_conversation(rng.choice(tasks), train_seed(rng), size, questions, style, frames) for _ in range(n)]

