"""Solvability: every answer is determined by what a fusion can attend to when it writes it.

For every task and fusion an oracle gets only what that fusion can reach at the answer (the descriptions of the
images it sees, as scene dicts, and the words before the answer) and must produce the exact answer:
    insertion      every image so far and all the text
    cross, casa    the latest image and all the text (earlier questions and answers, earlier captions)
The oracles are written from the scene dicts (cells, colours, x and y, counts) without the generator's own question
or caption code, so they check it. An oracle says None where what it is given does not settle the answer (a centre
too near a grid line to read its cell, two objects of one name, a caption that follows from nothing it sees).
"""

import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so `pytest tests` works without installing

from scenes import (  # noqa: E402
    EVAL_SEED0, RESTATE, TASKS, VIDEO_TASK, eval_conversations, make_clip, sample_conversations,
)

FUSIONS = ("insertion", "cross", "casa")
ROWS, COLUMNS = ("top", "", "bottom"), ("left", "", "right")
CELL_NAMES = [f"{row} {col}".strip() or "center" for row in ROWS for col in COLUMNS]  # reading order


def cell(o, size):
    """The 3x3 cell of an object's centre, or None when the centre is within size/32 of a grid line."""
    if any(abs(v - size * k / 3) < size / 32 for v in (o["x"], o["y"]) for k in (1, 2)):
        return None
    return CELL_NAMES[3 * int(3 * o["y"] // size) + int(3 * o["x"] // size)]


def clearly(a, b, size):
    """Is a < b by a visible margin (size/32 px)? None when the two are too close to tell."""
    return None if abs(a - b) < size / 32 else a < b


def find(objects, name):
    """The one object a name ("circle" or "red circle") names, or None."""
    *color, shape = name.split()
    found = [o for o in objects if o["shape"] == shape and color in ([], [o["color"]])]
    return found[0] if len(found) == 1 else None


def answer(scene, question):
    """The answer to a question about a scene, from its description alone."""
    objects, size = scene["objects"], scene["size"]
    if question == "describe the image.":
        xs = sorted(o["x"] for o in objects)
        if any(clearly(a, b, size) is None for a, b in zip(xs, xs[1:])):
            return None  # left to right is not visible
        words = [f"a {o['size']} {o['color']} {o['shape']}" for o in sorted(objects, key=lambda o: o["x"])]
        return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
    if question == "how many shapes are there?":
        return str(len(objects))
    if question == "what is written?":
        return scene.get("text")
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        o = find(objects, m[1])
        return o and o["color"]
    if m := re.fullmatch(r"what shape is the (\w+) one\?", question):
        found = [o for o in objects if o["color"] == m[1]]
        return found[0]["shape"] if len(found) == 1 else None
    if m := re.fullmatch(r"where is the (\w+ \w+)\?", question):
        o = find(objects, m[1])
        return o and cell(o, size)
    if m := re.fullmatch(r"is the (.+) (left or right of|above or below) the (.+)\?", question):
        a, b = find(objects, m[1]), find(objects, m[3])
        if a is None or b is None:
            return None
        before, after = m[2].removesuffix(" of").split(" or ")  # y grows downwards: "above" is the smaller y
        axis = "x" if before == "left" else "y"
        holds = clearly(a[axis], b[axis], size)
        return None if holds is None else (before if holds else after)
    raise AssertionError(f"no oracle for the question {question!r}")


def visible(conv, t, fusion):
    """(scene dicts, words) that `fusion` can attend to when it answers turn t: the question (if any) is the last
    of the words, after every earlier turn's question and answer."""
    shown = sum(len(turn.images) for turn in conv.turns[:t + 1])
    words = [w for turn in conv.turns[:t] for w in (turn.question, turn.answer) if w is not None]
    words += [conv.turns[t].question] if conv.turns[t].question is not None else []
    scenes = conv.scenes[:shown] if fusion == "insertion" else conv.scenes[shown - 1:shown]
    return scenes, words


# ------------------------------------------------------------------------------------------------ video


def frame_state(scene):
    """{(colour, shape): cell} of a frame, None if a cell is unreadable or a (colour, shape) repeats."""
    state = {(o["color"], o["shape"]): cell(o, scene["size"]) for o in scene["objects"]}
    return state if len(state) == len(scene["objects"]) and None not in state.values() else None


def full_caption(state):
    parts = sorted(state.items(), key=lambda item: CELL_NAMES.index(item[1]))
    return " and ".join(f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s} at the {where}" for (c, s), where in parts)


def implied_state(captions):
    """{(colour, shape): cell} that a list of captions implies: the last full description and every change after
    it; None when they hold no full description."""
    state = None
    for caption in captions:
        parts = [re.fullmatch(r"an? (\w+) (\w+) at the ([a-z ]+)", p) for p in caption.split(" and ")]
        if all(parts):
            state = {(m[1], m[2]): m[3] for m in parts}
        elif state is None:
            continue
        elif m := re.fullmatch(r"the (\w+) (\w+) moves to the ([a-z ]+)", caption):
            state[m[1], m[2]] = m[3]
        elif m := re.fullmatch(r"an? (\w+) (\w+) appears at the ([a-z ]+)", caption):
            state[m[1], m[2]] = m[3]
        elif m := re.fullmatch(r"the (\w+) (\w+) disappears", caption):
            del state[m[1], m[2]]
        elif m := re.fullmatch(r"the (\w+) (\w+) turns (\w+)", caption):
            state[m[3], m[2]] = state.pop((m[1], m[2]))
        else:
            raise AssertionError(f"no oracle for the caption {caption!r}")
    return state


def change(before, now):
    """The caption of a frame in state `now` after state `before` (None: unknown): the one change between them,
    or the full frame when there is none; None when they differ by more than one change."""
    if now is None:
        return None
    if before is None or before == now:
        return full_caption(now)
    gone, new = before.keys() - now.keys(), now.keys() - before.keys()
    moved = [k for k in before.keys() & now.keys() if before[k] != now[k]]
    if moved == [] and len(gone) == 1 and len(new) == 1:
        (c0, s0), (c1, s1) = *gone, *new
        if s0 == s1 and before[c0, s0] == now[c1, s1]:
            return f"the {c0} {s0} turns {c1}"
    if len(moved) == 1 and not gone and not new:
        return f"the {' '.join(moved[0])} moves to the {now[moved[0]]}"
    if not moved and len(new) == 1 and not gone:
        (c, s), = new
        return f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s} appears at the {now[c, s]}"
    if not moved and len(gone) == 1 and not new:
        return f"the {' '.join(*gone)} disappears"
    return None


def live_caption(scenes, words, fusion):
    """Insertion compares the frame with the one before it; cross and casa see only the latest frame, so they
    compare it with the state the captions imply, and only the latest RESTATE captions (a rolling text window)."""
    if fusion == "insertion":
        return change(frame_state(scenes[-2]) if len(scenes) > 1 else None, frame_state(scenes[-1]))
    return change(implied_state(words[-RESTATE:]), frame_state(scenes[-1]))


# ------------------------------------------------------------------------------------------------ tests


def oracle(conv, t, fusion):
    scenes, words = visible(conv, t, fusion)
    if conv.task == VIDEO_TASK:
        return live_caption(scenes, words, fusion)
    return answer(scenes[-1], words[-1])


HELD_OUT = {"default": eval_conversations(64, 64), "shifted": eval_conversations(64, 64, style="shifted")}
CLIPS = {frames: [make_clip(EVAL_SEED0 + i, 64, frames) for i in range(16 if frames > 8 else 64)]
         for frames in (8, 64)}
TRAINING = sample_conversations(random.Random(0), 256, 64, questions=4)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("task", TASKS)
def test_every_question_is_answered_by_what_the_fusion_sees(task, fusion):
    convs = [c for c in HELD_OUT["default"] + HELD_OUT["shifted"] + TRAINING if c.task == task]
    assert len(convs) >= 128
    for conv in convs:
        for t, turn in enumerate(conv.turns):
            assert oracle(conv, t, fusion) == turn.answer, (conv.task, t, turn.question)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("frames", [8, 64])
def test_every_live_caption_is_determined_by_what_the_fusion_sees(frames, fusion):
    training = [make_clip(seed, 64, frames) for seed in range(16)]
    for clip in CLIPS[frames] + training + [make_clip(seed, 32, frames, style="shifted") for seed in range(8)]:
        for t, turn in enumerate(clip.turns):
            assert oracle(clip, t, fusion) == turn.answer, (clip.scenes[0]["size"], t, turn.answer)


def test_live_captions_need_the_text_so_far():
    """The latest frame alone does not settle a caption: a model that describes every frame in full is wrong on
    every frame that changed, most of them. And the changes it must name are all there, each often."""
    later = [(clip, t) for clip in CLIPS[64] for t in range(1, len(clip.turns))]
    blind_to_text = [change(None, frame_state(clip.scenes[t])) == clip.turns[t].answer for clip, t in later]
    assert sum(blind_to_text) / len(later) < 0.4
    kinds = [re.search(r"moves|appears|disappears|turns| at the ", clip.turns[t].answer)[0] for clip, t in later]
    assert all(kinds.count(k) >= 0.05 * len(later) for k in ("moves", "appears", "disappears", "turns", " at the "))
