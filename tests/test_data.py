"""Tests for data.py: exact checks, fast (a few seconds)."""

import colorsys
import json
import re
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `pytest tests` works without installing anything

from conftest import run_preloaded  # noqa: E402
from data import ALPHABET, PIECE, Tokenizer, collate, encode_conversation, load_folder, load_image, to_tensor  # noqa: E402
from scenes import (  # noqa: E402
    COLORS, EVAL_SEED0, RADIUS, RESTATE, VALIDATION_SEED0, SHAPES, STYLES, TRAINING_STYLES, VARIED_CAMERA,
    VOCABULARY, FOLLOW_UP_QUESTIONS, TASKS, VIDEO_TASK,
    Conversation, DataError, Turn, _cell, _clear_cell, as_text, describe, draw_scene, eval_conversations, make_clip,
    make_conversation, object_labels, patch_chars, patch_objects, render_scene, sample_conversations, sample_scene,
    train_seed,
)
from show_data import main  # noqa: E402

GRAY = (128, 128, 128)


def fingerprint(conv):
    return conv.task, [(t.question, t.answer, [im.tobytes() for im in t.images]) for t in conv.turns]


def nearest_color(rgb):
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb)))


def nearest_hue(rgb):
    """The colour name of the nearest hue (white if unsaturated): what a name means when the light varies."""
    hue, saturation, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))
    hue_of = lambda c: colorsys.rgb_to_hsv(*(np.asarray(COLORS[c]) / 255))[0]
    return "white" if saturation < 0.35 else min(
        (c for c in COLORS if c != "white"), key=lambda c: min(abs(hue_of(c) - hue), 1 - abs(hue_of(c) - hue)))


# -----------------------------------------------------------------------------
# tokenizer

def test_tokenizer_round_trip():
    tok = Tokenizer()
    assert (tok.pad_id, tok.eos_id, tok.image_id, tok.user_id, tok.assistant_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 5 + len(ALPHABET) + 2 * len(VOCABULARY)
    chars = Tokenizer(words=())
    ids = chars.encode(ALPHABET)
    assert chars.vocab_size == 5 + len(ALPHABET) and ids == list(range(5, chars.vocab_size))
    assert chars.decode(ids) == ALPHABET
    for t in (tok, chars):
        assert t.decode(torch.tensor(t.encode('Hi, "you" (42%)!'))) == 'Hi, "you" (42%)!'
        ids = [t.image_id, t.user_id, *t.encode("q?"), t.assistant_id, *t.encode("a"), t.eos_id, t.pad_id]
        assert t.decode(ids) == "<image><user>q?<assistant>a<eos>"
        with pytest.raises(DataError):  # '<' is not in the alphabet: text can never spell a special token
            t.encode("<eos>")
        with pytest.raises(DataError, match="token ids must be in"):
            t.decode([t.vocab_size])


def test_vocabulary_words_are_single_tokens():
    """A known word is one token with or without its leading space; any other text is spelled by characters."""
    tok = Tokenizer()
    assert [tok.decode([i]) for i in tok.encode("what color is the star?")] == ["what", " color", " is", " the",
                                                                                 " star", "?"]
    assert tok.encode("stars") == [tok.stoi[c] for c in "stars"]  # not a vocabulary word
    assert tok.encode("Red") == [tok.stoi[c] for c in "Red"]  # only lowercase words are in the vocabulary


@pytest.mark.parametrize("task", TASKS + (VIDEO_TASK,))
def test_every_generated_word_is_in_the_vocabulary(task):
    """VOCABULARY lists the generator's words by hand: a new word in a question or answer must be added there."""
    tok = Tokenizer()
    for seed in range(30):
        for turn in make_conversation(task, seed, 64, questions=4).turns:
            for text in (turn.question or "", turn.answer):
                assert tok.decode(tok.encode(text)) == text
                words = [p for p in PIECE.findall(text) if p.strip().isalpha() and len(p.strip()) > 1]
                assert all(w in tok.stoi for w in words), (text, words)


def test_tokenizer_state_round_trip(tmp_path):
    for tok in (Tokenizer(), Tokenizer("abc "), Tokenizer(words=())):
        torch.save({"tokenizer": tok.state()}, tmp_path / "ckpt.pt")
        state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"]
        tok2 = Tokenizer.from_state(state)
        assert tok2.vocab_size == tok.vocab_size and tok2.encode("cab a") == tok.encode("cab a")
    old = {"alphabet": ALPHABET, "specials": ["<pad>", "<eos>", "<image>", "<user>", "<assistant>"]}
    assert Tokenizer.from_state(old).words == ()  # a checkpoint from before the vocabulary: characters only
    with pytest.raises(DataError):
        Tokenizer.from_state({"alphabet": "abc"})
    with pytest.raises(DataError):
        Tokenizer("abca")
    with pytest.raises(DataError):
        Tokenizer(words=("red", "red"))


def test_unsupported_characters_are_named():
    with pytest.raises(DataError) as e:
        Tokenizer().encode("café costs 5€, é\nok")
    msg = str(e.value)
    assert msg.startswith("unsupported characters in text: 'é', '€', '\\n' (supported: letters, digits, space")
    assert "\n" not in msg


# -----------------------------------------------------------------------------
# scenes, conversations and clips

def test_render_scene_is_deterministic():
    img, scene = render_scene(123)
    img2, scene2 = render_scene(123)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert img.tobytes() == img2.tobytes() and scene == scene2
    assert render_scene(124)[0].tobytes() != img.tobytes()
    assert render_scene(123, size=96)[0].size == (96, 96)
    with pytest.raises(DataError, match="size"):
        render_scene(1, size=8)


@pytest.mark.parametrize("task", TASKS + (VIDEO_TASK,))
def test_make_conversation_is_deterministic(task):
    a, b, c = make_conversation(task, 5), make_conversation(task, 5), make_conversation(task, 6)
    assert a.task == task
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)


def test_unknown_task():
    with pytest.raises(DataError, match="unknown task 'colour'"):
        make_conversation("colour", 0)


def test_scene_pixels_match_description():
    for seed in range(60):
        img, scene = render_scene(seed, text=seed % 3 == 0)
        px = np.asarray(img).astype(int)
        objects = scene["objects"]
        assert 1 <= len(objects) <= 4 or "text" in scene
        for o in objects:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 and 0 <= y0 and x1 < 64 and y1 < 64  # fully visible
            assert nearest_color(px[o["y"], o["x"]]) == o["color"]
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                assert (a["color"], a["shape"]) != (b["color"], b["shape"])
                ax0, ay0, ax1, ay1 = a["bbox"]
                bx0, by0, bx1, by1 = b["bbox"]
                assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0  # no overlap
        # the background corner is far from every object colour
        covered = [o["bbox"] for o in objects] + ([scene["text_bbox"]] if "text" in scene else [])
        for x, y in ((0, 0), (63, 0), (0, 63), (63, 63)):
            if not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in covered):
                assert min(np.linalg.norm(px[y, x] - COLORS[c]) for c in COLORS) > 60
        if "text" in scene:
            x0, y0, x1, y1 = scene["text_bbox"]
            box = px[y0:y1, x0:x1].mean(axis=2)
            assert box.max() > 200 and box.min() < 80  # dark ink on a light box


def test_patch_objects_and_object_labels_match_the_scene():
    """What pretrain_vision.py learns from: the patch holding an object's centre belongs to that object, a patch whose
    centre pixel shows background belongs to none, and an object's labels are its shape, colour, size and the ninth
    of the image that holds its centre (its cell)."""
    for seed in range(40):
        img, scene = render_scene(seed)
        px = np.asarray(img).astype(int)
        owner = patch_objects(scene, 8)  # 8 x 8 patches of 8 px
        assert owner.shape == (64,) and owner.dtype == torch.long
        for i, o in enumerate(scene["objects"]):
            assert owner[(o["y"] // 8) * 8 + o["x"] // 8] == i
            assert 1 <= int((owner == i).sum()) <= 9  # a box spans 1 to 3 x 3 patches
            shape, color, size, cell = object_labels(o, 64)
            assert (SHAPES[shape], list(COLORS)[color], tuple(RADIUS)[size]) == (o["shape"], o["color"], o["size"])
            row, column = divmod(cell, 3)  # CELLS reads row by row, like the grid of the image
            assert row * 64 / 3 <= o["y"] < (row + 1) * 64 / 3 and column * 64 / 3 <= o["x"] < (column + 1) * 64 / 3
        for k in torch.nonzero(owner == -1).flatten().tolist():
            y, x = (k // 8) * 8 + 4, (k % 8) * 8 + 4
            assert min(np.linalg.norm(px[y, x] - COLORS[c]) for c in COLORS) > 60

def check_answer(question, answer, scene):
    """Recompute the answer to a generated question from the scene description."""
    objects, size = scene["objects"], scene["size"]

    def find(name):
        words = name.split()
        found = [o for o in objects if o["shape"] == words[-1] and (len(words) == 1 or o["color"] == words[0])]
        assert len(found) == 1, f"{name!r} is ambiguous or missing"
        return found[0]

    if question == "describe the image.":
        parts = [f"a {o['size']} {o['color']} {o['shape']}" for o in sorted(objects, key=lambda o: o["x"])]
        assert answer == (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
    elif question == "how many shapes are there?":
        assert answer == str(len(objects)) and 1 <= len(objects) <= 4
    elif question == "what is written?":
        assert answer == scene["text"] and re.fullmatch(r"[a-z]{3,4}|[0-9]{1,3}", answer)
    elif m := re.fullmatch(r"what color is the (\w+)\?", question):
        assert answer == find(m[1])["color"]
    elif m := re.fullmatch(r"what shape is the (\w+) one\?", question):
        (o,) = [o for o in objects if o["color"] == m[1]]
        assert answer == o["shape"]
    elif m := re.fullmatch(r"where is the (\w+ \w+)\?", question):
        o = find(m[1])
        row = ("top", "", "bottom")[o["y"] * 3 // size]
        col = ("left", "", "right")[o["x"] * 3 // size]
        assert answer == (f"{row} {col}".strip() or "center")
    elif m := re.fullmatch(r"is the (.+) (left or right of|above or below) the (.+)\?", question):
        a, b = find(m[1]), find(m[3])
        axis = "x" if m[2] == "left or right of" else "y"
        assert abs(a[axis] - b[axis]) > size / 8  # only clear relations are asked
        if axis == "x":
            assert answer == ("left" if a["x"] < b["x"] else "right")
        else:
            assert answer == ("above" if a["y"] < b["y"] else "below")  # y grows downwards
    else:
        raise AssertionError(f"unexpected question {question!r}")


def test_patch_chars_label_the_glyphs_left_to_right():
    """What pretrain_vision.py learns to read from: patches labelled with a character lie on the text's box, on its
    ink, in the text's order along every row; every character of a digit's width (the narrowest text) gets one."""
    for seed in range(60):
        img, scene = render_scene(seed, text=True)
        owner = patch_chars(scene, 8).view(8, 8)
        x0, y0, x1, y1 = scene["text_bbox"]
        ink = np.asarray(img).astype(int).mean(axis=2) < 150
        for (row, col) in torch.nonzero(owner >= 0).tolist():
            assert x0 <= col * 8 + 4 < x1 and y0 <= row * 8 + 4 < y1
            assert ink[row * 8:row * 8 + 8, col * 8:col * 8 + 8].any()  # the patch shows ink
        for row in owner:
            labelled = row[row >= 0].tolist()
            assert labelled == sorted(labelled)
        if scene["text"].isdigit():
            assert set(owner[owner >= 0].tolist()) == set(range(len(scene["text"])))
        assert len(patch_chars(render_scene(seed)[1], 8)) == 64 and (patch_chars(render_scene(seed)[1], 8) < 0).all()


def test_text_styles():
    """Text comes in several sizes, weights and slants (either way); the shifted look draws it in ways training never
    does (more slanted, in coloured ink on another box), and the whole text stays legible: its box inside the
    image."""
    for style in STYLES:
        look, drawn = STYLES[style], [sample_scene(random.Random(s), 64, text=True, style=style) for s in range(80)]
        assert {d["text_weight"] for d in drawn} == set(range(look["weight"][0], look["weight"][1] + 1))
        assert {d["text_slant"] > 0 for d in drawn} == {True, False}
        assert all(look["slant"][0] <= abs(d["text_slant"]) <= look["slant"][1] for d in drawn)
        inks = len({d["ink"] for d in drawn})
        assert len({d["text_size"] for d in drawn}) > 2 and (inks == 1 if look["text_jitter"] == 0 else inks > 70)
        assert all(0 < d["text_bbox"][0] and d["text_bbox"][2] < 63 and d["text_bbox"][3] < 63 for d in drawn)
    default, shifted = STYLES["default"], STYLES["shifted"]
    assert shifted["slant"][0] >= default["slant"][1]
    assert shifted["ink"] != default["ink"] and shifted["paper"] != default["paper"]


def test_small_and_big_mean_the_same_in_every_look_and_training_draws_every_size():
    """The shifted look draws other sizes, but a scene caption names sizes: every small object of any look is smaller
    than every big one, after each look's spread and the rounding to whole pixels; and the training looks together
    draw every radius any look gives a size word, so no held-out object's word lies in a gap training left open."""
    def radius_range(style, name):  # every whole-pixel radius the look can draw for that size word, at 64 px
        low, high = (round(64 * STYLES[style]["radius"][name] * f) for f in STYLES[style]["size_jitter"])
        return range(low, high + 1)
    radii = {(style, name): radius_range(style, name) for style in STYLES for name in ("small", "big")}
    assert max(radii[s, "small"][-1] for s in STYLES) < min(radii[s, "big"][0] for s in STYLES)
    for name in ("small", "big"):
        trained = {r for s in TRAINING_STYLES for r in radii[s, name]}
        assert all(set(radii[s, name]) <= trained for s in STYLES), name
    drawn = {(o["size"], o["r"]) for seed in range(300)
             for o in sample_scene(random.Random(seed), 64, style="varied")["objects"]}
    assert ("big", 8) in drawn and max(r for name, r in drawn if name == "small") == 7


def test_the_varied_look_draws_a_camera_per_scene_short_of_the_shifted_one():
    """The default and shifted looks have one camera each (and draw nothing for it, so their scenes are those of
    before the varied look); the varied look draws one per scene, within VARIED_CAMERA's ranges, and shades and
    jitters objects and inks more, every axis short of the shifted look's; a clip's frames share a camera; and each
    object's colour still reads as its name (by hue: light and shade vary), each text as dark on light."""
    def drawn(style):
        rng = random.Random(5)
        return sample_scene(rng, 64, style=style), rng.random()
    (default, after_default), (varied, after_varied) = drawn("default"), drawn("varied")
    assert default["camera"] == STYLES["default"]["camera"] and after_default == drawn("shifted")[1] != after_varied
    cameras = [sample_scene(random.Random(s), 64, style="varied")["camera"] for s in range(200)]
    shifted, r = STYLES["shifted"]["camera"], VARIED_CAMERA
    assert len({c["noise"] for c in cameras}) == 200
    assert all(r["noise"][0] <= c["noise"] <= r["noise"][1] < shifted["noise"] for c in cameras)
    assert all(r["light"][0] <= c["light"] <= r["light"][1] and max(map(abs, c["cast"])) <= r["cast"]
               for c in cameras)
    amplitudes = [c["stripes"][0] for c in cameras]
    assert 0.3 < amplitudes.count(0.0) / 200 < 0.7 and max(amplitudes) <= r["stripes"][1] < shifted["stripes"][0]
    assert all(c["stripes"][3] >= r["period"][0] > shifted["stripes"][3] for c in cameras)
    varied, shifted_look = STYLES["varied"], STYLES["shifted"]
    assert shifted_look["shade"][1] < varied["shade"][0] and varied["jitter"] < shifted_look["jitter"]
    texts = [sample_scene(random.Random(s), 64, text=True, style="varied") for s in range(200)]
    assert max(d["ink"][2] for d in texts) < shifted_look["ink"][2] - 30  # no ink near the shifted blue
    assert all(min(d["paper"]) - max(d["ink"]) >= 60 for d in texts)  # still dark on light
    clip = make_clip(4, n_frames=3, style="varied")
    assert len({repr(s["camera"]) for s in clip.scenes}) == 1 and clip.scenes[0]["style"] == "varied"
    for s in range(100):
        scene = sample_scene(random.Random(s), 64, style="varied")
        pixels = np.asarray(draw_scene(scene), np.float32)
        for o in scene["objects"]:
            assert nearest_hue(pixels[o["y"] - 1:o["y"] + 2, o["x"] - 1:o["x"] + 2].mean((0, 1))) == o["color"]


@pytest.mark.parametrize("task", TASKS)
def test_answers_match_scenes(task):
    for seed in range(25):
        conv = make_conversation(task, seed)
        assert len(conv.turns) == len(conv.scenes)
        assert 2 <= len(conv.turns) <= 4 if task == "multi_image" else len(conv.turns) == 1
        for turn, scene in zip(conv.turns, conv.scenes):
            assert len(turn.images) == 1 and turn.images[0].tobytes() == draw_scene(scene).tobytes()
            assert len(turn.question) < 64 and len(turn.answer) < 100
            check_answer(turn.question, turn.answer, scene)
            if task == "multi_image":
                assert re.match(r"what color|what shape|how many|where", turn.question)
            m = re.fullmatch(r"what color is the (\w+)\?", turn.question)
            if m:  # the pixel at the centre of the object shows the answer colour
                (o,) = [o for o in scene["objects"] if o["shape"] == m[1]]
                assert nearest_color(turn.images[0].getpixel((o["x"], o["y"]))) == turn.answer


@pytest.mark.parametrize("task", TASKS + (VIDEO_TASK,))
def test_as_text_describes_every_image_before_its_question(task):
    """The text-only LM's data: the same turns, each image replaced by its scene in words (a clip's frame becomes
    its description as the question, its caption as the answer)."""
    tok = Tokenizer()
    for seed in range(10):
        conv = make_conversation(task, seed, questions=3)
        text = as_text(conv)
        assert [t.answer for t in text.turns] == [t.answer for t in conv.turns]
        scenes = iter(conv.scenes)
        for turn, original in zip(text.turns, conv.turns):
            assert turn.images == []
            if not original.images:
                assert turn.question == original.question
                continue
            scene = next(scenes)
            words = describe(scene)
            assert turn.question == (words if original.question is None else f"{words} {original.question}")
            for o in scene["objects"]:
                assert f"a {o['size']} {o['color']} {o['shape']} at the {_cell(o, scene['size'])}" in words
            assert ("text" in scene) == (" is written." in words)
            tok.encode(turn.question)  # every character is in the tokenizer's alphabet


@pytest.mark.parametrize("task", TASKS)
def test_follow_up_questions_ask_about_the_same_scene(task):
    n_turns = []
    for seed in range(25):
        one, conv = make_conversation(task, seed), make_conversation(task, seed, questions=4)
        assert fingerprint(make_conversation(task, seed, questions=4)) == fingerprint(conv)  # deterministic
        if task not in FOLLOW_UP_QUESTIONS:  # no follow-ups: unchanged
            assert fingerprint(conv) == fingerprint(one)
            continue
        first, *follow_ups = conv.turns
        assert (first.question, first.answer) == (one.turns[0].question, one.turns[0].answer)
        assert conv.scenes == one.scenes and len(follow_ups) <= 3
        questions = [turn.question for turn in conv.turns]
        assert len(set(questions)) == len(questions)  # never a repeat: its answer could be copied
        for turn in follow_ups:
            assert turn.images == []
            check_answer(turn.question, turn.answer, conv.scenes[0])
        n_turns.append(len(conv.turns))
    assert not n_turns or max(n_turns) > 2


def test_relation_answers_are_balanced_on_each_axis():
    """The words do not tell the answer: each of an axis's two sides is the answer about half the time, so a blind
    model gets 50%."""
    answers = {}
    for s in range(800):
        turn = make_conversation("relation", s).turns[0]
        answers.setdefault(re.search(r"left or right|above or below", turn.question)[0], []).append(turn.answer)
    assert set(answers) == {"left or right", "above or below"}
    for sides, said in answers.items():
        assert set(said) == set(sides.split(" or "))
        assert 0.4 < said.count(sides.split()[0]) / len(said) < 0.6, sides


def test_clip_frames_show_what_the_captions_need():
    """Every frame of a clip: each object's colour at its centre pixel, its centre clear of the grid lines (its cell
    can be read), one object per cell, (colour, shape) unique, and a full description at least every RESTATE frames;
    each caption fits the 24 tokens bench.py's caption_scores lets it have. (tests/test_solvability.py derives every
    caption from the frames and from the captions before it.)"""
    tok, events = Tokenizer(), set()
    for seed in range(8):
        clip = make_clip(seed)
        assert clip.task == VIDEO_TASK and 8 <= len(clip.turns) <= 64 and len(clip.scenes) == len(clip.turns)
        since_full = 0
        for turn, scene in zip(clip.turns, clip.scenes):
            assert turn.question is None and len(turn.images) == 1 and len(tok.encode(turn.answer)) < 24
            objects = scene["objects"]
            for o in objects:
                assert nearest_color(turn.images[0].getpixel((o["x"], o["y"]))) == o["color"] and _clear_cell(o, 64)
            cells, names = {_cell(o, 64) for o in objects}, {(o["color"], o["shape"]) for o in objects}
            assert 1 <= len(objects) <= 2 and len(cells) == len(names) == len(objects)
            event = re.search(r"moves|disappears|turns|appears|$", turn.answer)[0] or "full"
            since_full = 0 if event == "full" else since_full + 1
            assert since_full < RESTATE
            events.add(event)
    assert events == {"full", "moves", "appears", "disappears", "turns"}
    assert len(make_clip(3, n_frames=10).turns) == 10
    assert make_clip(3, n_frames=2, style="shifted").scenes[1]["style"] == "shifted"
    with pytest.raises(DataError):
        make_clip(3, n_frames=0)


# -----------------------------------------------------------------------------
# encoding and batching

def test_encode_conversation_layout():
    tok = Tokenizer()
    img = Image.new("RGB", (64, 64))
    conv = Conversation("x", [Turn([img, img], "hi?", "ok"), Turn([img], None, "go")])
    ids, targets = encode_conversation(tok, conv)
    c = tok.stoi
    assert ids == [2, 2, 3, c["h"], c["i"], c["?"], 4, c["o"], c["k"], 1, 2, c["g"], c["o"], 1]
    assert targets == [-100] * 6 + [c["o"], c["k"], 1, -100, c["g"], c["o"], 1, -100]
    batch = collate([conv], tok, 64)
    assert batch.last_answer[0].nonzero().flatten().tolist() == [10, 11, 12]


def test_collate_every_task():
    tok = Tokenizer()
    convs = [make_conversation(t, 11) for t in TASKS] + [make_clip(2, n_frames=6)]
    b = collate(convs, tok, 64)
    lengths = [len(encode_conversation(tok, c)[0]) for c in convs]
    B, T = len(convs), max(lengths)
    assert b.idx.shape == b.targets.shape == b.last_answer.shape == (B, T)
    assert b.idx.dtype == b.targets.dtype == torch.long and b.last_answer.dtype == torch.bool
    assert b.tasks == list(TASKS) + [VIDEO_TASK]
    all_images = [im for c in convs for t in c.turns for im in t.images]
    assert b.images.shape == (len(all_images), 3, 64, 64) and b.images.dtype == torch.float32
    assert (b.idx == tok.image_id).sum() == len(all_images)
    for k, im in enumerate(all_images):  # row-major, in order of the <image> markers
        assert torch.equal(b.images[k], to_tensor(im))
    assert 0 <= b.images.min() and b.images.max() <= 1
    for r, (conv, n) in enumerate(zip(convs, lengths)):
        assert (b.idx[r, n:] == tok.pad_id).all() and (b.targets[r, n:] == -100).all()
        assert (b.idx[r, :n] != tok.pad_id).all()
        sup = (b.targets[r] != -100).nonzero().flatten()
        assert torch.equal(b.targets[r, sup], b.idx[r, sup + 1])  # targets are the next tokens
        # exactly the answer tokens and the <eos> of every turn are supervised
        assert tok.decode(b.targets[r, sup]) == "".join(t.answer + "<eos>" for t in conv.turns)
        assert b.last_answer[r].sum() == len(tok.encode(conv.turns[-1].answer)) + 1
        assert (b.targets[r][b.last_answer[r]] != -100).all()
        assert tok.decode(b.targets[r][b.last_answer[r]]) == conv.turns[-1].answer + "<eos>"
    with pytest.raises(DataError, match="expected 32x32"):
        collate(convs, tok, 32)
    with pytest.raises(DataError):
        collate([], tok, 64)


def test_blank_images():
    tok = Tokenizer()
    convs = [make_conversation(t, 3) for t in ("color", "multi_image")]
    real, blank = collate(convs, tok, 64), collate(convs, tok, 64, blank_images=True)
    assert blank.images.shape == real.images.shape
    assert (blank.images == 128 / 255).all()
    assert torch.equal(real.idx, blank.idx) and torch.equal(real.targets, blank.targets)
    text_only = collate([Conversation("t", [Turn([], "hi?", "yo")])], tok, 64)
    assert text_only.images.shape == (0, 3, 64, 64)


def test_train_and_eval_seeds_are_disjoint():
    rng = random.Random(0)
    assert all(0 <= train_seed(rng) < EVAL_SEED0 for _ in range(10000))
    evals = eval_conversations(2, 64)
    assert [c.task for c in evals] == [t for t in TASKS for _ in range(2)]
    assert fingerprint(evals[0]) == fingerprint(make_conversation(TASKS[0], EVAL_SEED0, 64))
    assert [fingerprint(c) for c in evals] == [fingerprint(c) for c in eval_conversations(2, 64)]
    # the validation set (choices are made on it) is a third range of seeds, and other conversations
    assert EVAL_SEED0 + 10**6 < VALIDATION_SEED0 and VALIDATION_SEED0 + 10**6 < 2**32
    validation = eval_conversations(2, 64, seed0=VALIDATION_SEED0)
    assert fingerprint(validation[0]) == fingerprint(make_conversation(TASKS[0], VALIDATION_SEED0, 64))
    assert not any(fingerprint(v) == fingerprint(e) for v in validation for e in evals)
    train = sample_conversations(random.Random(1), 40, 64)
    assert len({c.task for c in train}) >= 6 and {c.task for c in train} <= set(TASKS)
    assert [fingerprint(c) for c in train] == [fingerprint(c) for c in sample_conversations(random.Random(1), 40, 64)]
    assert {c.task for c in sample_conversations(random.Random(2), 3, 64, tasks=("count",))} == {"count"}


# -----------------------------------------------------------------------------
# loading images and folders from disk

def written(img, suffix=".png", **kwargs):
    """A writer for ODD_IMAGES: saves img next to the given path stem and returns the file's path."""
    def write(stem):
        img.save(stem.with_suffix(suffix), **kwargs)
        return stem.with_suffix(suffix)
    return write


def exif_rotated():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display -> red top, blue bottom
    return written(img, ".jpg", exif=exif.tobytes(), quality=95)


def p_transparent():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 16, 8))  # top half red, bottom half index 0 = transparent
    return written(img, transparency=0)


def gray16(value):
    return written(Image.fromarray(np.full((30, 30), value, np.uint16)))  # mode I;16


# (name, writer, {pixel (x, y) of the 64x64 result: expected RGB}); letterboxing pads with mid-gray
ODD_IMAGES = [
    ("1x1", written(Image.new("RGB", (1, 1), (10, 200, 30))), {(0, 0): (10, 200, 30), (63, 63): (10, 200, 30)}),
    ("2000x500", written(Image.new("RGB", (2000, 500), (200, 0, 0))), {(32, 32): (200, 0, 0), (32, 5): GRAY, (32, 58): GRAY}),
    ("L", written(Image.new("L", (30, 30), 200)), {(32, 32): (200, 200, 200)}),
    ("LA", written(Image.new("LA", (30, 30), (255, 0))), {(32, 32): GRAY}),
    ("P-transparency", p_transparent(), {(32, 10): (255, 0, 0), (32, 54): GRAY}),
    ("RGBA", written(Image.new("RGBA", (30, 30), (255, 0, 0, 128))), {(32, 32): (192, 64, 64)}),
    ("I;16", gray16(32896), {(32, 32): (128, 128, 128)}),  # scaled, not clipped to 255
    ("I;16-white", gray16(65535), {(32, 32): (255, 255, 255)}),
    ("CMYK-jpeg", written(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), ".jpg"), {(32, 32): (255, 0, 0)}),
    ("exif-rotated", exif_rotated(), {(32, 10): (255, 0, 0), (32, 54): (0, 0, 255), (4, 32): GRAY}),
]


@pytest.mark.parametrize("name,write,expected", ODD_IMAGES, ids=[c[0] for c in ODD_IMAGES])
def test_load_image_odd_images(tmp_path, name, write, expected):
    img = load_image(write(tmp_path / "img"), 64)
    assert img.mode == "RGB" and img.size == (64, 64)
    for xy, rgb in expected.items():
        assert np.abs(np.subtract(img.getpixel(xy), rgb)).max() <= 6, (xy, img.getpixel(xy), rgb)


def test_load_image_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (tmp_path / "folder.png").mkdir()
    cases = {"missing.png": "no such file", "empty.png": "empty", "text.png": "cannot read image",
             "truncated.png": "cannot read image", "folder.png": "directory"}
    for name, message in cases.items():
        with pytest.raises(DataError, match=message) as e:
            load_image(tmp_path / name, 64)
        assert "\n" not in str(e.value)


def make_folder(tmp_path, lines):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir(exist_ok=True)
    Image.new("RGB", (30, 40), (0, 0, 255)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_load_folder(tmp_path):
    lines = [json.dumps({"image": "a.png", "question": "what color is it?", "answer": "red"}), "",
             json.dumps({"image": "sub/b.jpg", "answer": "a blue box"}),
             json.dumps({"image": "a.png", "question": None, "answer": "a red box"})]
    convs = load_folder(make_folder(tmp_path, lines), size=32)
    assert [c.task for c in convs] == ["folder"] * 3
    assert [(c.turns[0].question, c.turns[0].answer) for c in convs] == [
        ("what color is it?", "red"), ("describe the image.", "a blue box"), ("describe the image.", "a red box")]
    assert all(len(c.turns) == 1 and c.turns[0].images[0].size == (32, 32) for c in convs)
    assert collate(convs, Tokenizer(), 32).images.shape == (3, 3, 32, 32)


GOOD = json.dumps({"image": "a.png", "answer": "red"})
BAD_LINES = [
    ('{"image": "a.png", "answer": "red"', "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"image": "a.png"}', "'answer' is missing"),
    ('{"answer": "red"}', "'image' is missing"),
    ('{"image": "", "answer": "red"}', "'image' is empty"),
    ('{"image": "a.png", "answer": 3}', "'answer' is 3, expected a non-empty string"),
    ('{"image": "a.png", "question": [], "answer": "red"}', "'question' is [], expected a non-empty string"),
    ('{"image": "a.png", "questoin": "what?", "answer": "red"}', "unknown key 'questoin'"),
    ('{"image": "nope.png", "answer": "red"}', "no such image file"),
    ('{"image": "a.png", "answer": "rouge fonc\\u00e9"}', "unsupported characters in text: 'é'"),
    ('{"image": "data.jsonl", "answer": "red"}', "cannot read image"),
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_load_folder_errors(tmp_path, line, message):
    folder = make_folder(tmp_path, [GOOD, "", line])  # the bad line is line 3, after a blank line
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_folder(folder)
    assert "data.jsonl, line 3: " in str(e.value) and "\n" not in str(e.value)


def test_load_folder_refuses_images_outside_the_folder(tmp_path):
    """Image paths are relative to the folder and stay inside it: a shared data.jsonl cannot read other files."""
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (tmp_path / "folder").mkdir()
    for image in ("../outside.png", str(tmp_path / "outside.png"), "sub/../../outside.png"):
        folder = make_folder(tmp_path / "folder", [GOOD, json.dumps({"image": image, "answer": "red"})])
        with pytest.raises(DataError, match=re.escape(f"line 2: image {image!r} is outside")):
            load_folder(folder)
    assert len(load_folder(make_folder(tmp_path / "folder", [GOOD, json.dumps({"image": "sub/../a.png",
                                                                               "answer": "red"})]))) == 2


def test_load_folder_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no such file: .*data.jsonl"):
        load_folder(tmp_path)
    (tmp_path / "data.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        load_folder(tmp_path)


# -----------------------------------------------------------------------------
# command line

def test_cli_writes_samples(tmp_path):
    r = run_preloaded("show_data.py", "--out_dir", tmp_path / "demo", "--n", "10", "--seed", "1")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    names = sorted(p.name for p in (tmp_path / "demo").iterdir())
    tasks = TASKS + (VIDEO_TASK, TASKS[0])  # "all" cycles through every task, video included
    assert names == sorted([f"{i:03d}_{t}.png" for i, t in enumerate(tasks)] + ["conversations.txt"])
    listing = (tmp_path / "demo" / "conversations.txt").read_text()
    assert "000 caption: 000_caption.png (1 image)" in listing and "Q: describe the image.  A: a " in listing
    assert "frame 0: a" in listing
    assert Image.open(tmp_path / "demo" / "000_caption.png").size == (64, 64)
    r = run_preloaded("show_data.py", f"--out_dir={tmp_path / 'two'}", "--n=2", "--tasks=count,video", "--image_size=32")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["000_count.png", "001_video.png",
                                                                     "conversations.txt"]
    assert Image.open(tmp_path / "two" / "000_count.png").size == (32, 32)
    for style in ("default", "varied"):
        r = run_preloaded("show_data.py", f"--out_dir={tmp_path / style}", "--n=1", "--tasks=count", f"--style={style}")
        assert r.returncode == 0, r.stderr
    default, varied = (Image.open(tmp_path / style / "000_count.png").tobytes() for style in ("default", "varied"))
    assert default != varied  # the same seed, another look (and another scene: the varied camera draws from it)


@pytest.mark.parametrize("args, says", [
    (["--out_dir", "{tmp}", "--n", "0"], "--n must be an integer >= 1, got 0"),
    (["--out_dir", "{tmp}", "--tasks", "nope"], "unknown task 'nope'"),
    (["--out_dir", "{tmp}", "--style", "sketchy"], "--style is one of default, shifted, varied, got 'sketchy'"),
    (["--out_dir", "{tmp}", "--image_size", "big"], "--image_size expects int, got 'big'"),
    (["--out_dir", "{tmp}", "--image_size", "8"], "--image_size must be an integer >= 32, got 8"),
    (["--out_dir", "{tmp}", "--out", "x"], "unknown option --out; did you mean --out_dir?"),  # the old names
    (["--out_dir", "{tmp}", "--task", "count"], "unknown option --task; did you mean --tasks?"),
    (["--out_dir"], "--out_dir needs a value"),
])
def test_cli_bad_arguments(tmp_path, args, says):
    r = run_preloaded("show_data.py", *[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("show_data.py: error: "), r.stderr
    assert says in r.stderr
    assert not list(tmp_path.iterdir())


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--out_dir" in capsys.readouterr().out
