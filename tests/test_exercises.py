"""Tests for the exercises: exercises/vision_probe.py trains a probe on casa's ViT, on a small CNN, or on the frozen
encoder of a checkpoint (train.py's or pretrain_vision.py's); the mask picture; every grader of exercises/grade.py
fails on its stub, passes on the reference, and explains a typical mistake in one line; the teacher's guide."""
import json
import re
import sys

import pytest
import torch

import casa
from conftest import ROOT, TINY, ok, one_clean_line, run, run_preloaded

PROBE = "exercises/vision_probe.py"
PRINTOUT = r"iter 50: loss \d+\.\d{3}, held-out accuracy \d+% \(\d+ s\)\n"


def test_vision_probe_exercise_runs():
    r = run(PROBE, "--encoder=vit", "--vit_layers=1", "--max_iters=50", "--batch_size=4")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(PRINTOUT, r.stdout)


def test_vision_probe_on_frozen_trained_encoders(pool, encoder_ckpt, tiny_ckpt):
    """The exercise probes a pretrained (or any trained) encoder, frozen."""
    for r in pool.map(lambda ckpt: ok(run_preloaded(PROBE, f"--ckpt={ckpt}", "--max_iters=50", "--batch_size=4")),
                      [encoder_ckpt, tiny_ckpt]):
        assert re.fullmatch(PRINTOUT, r.stdout)


@pytest.mark.parametrize("args, says", [
    (["--iters=50"], "unknown option --iters; did you mean --max_iters?"),  # the options' old names
    (["--warmup=5"], "unknown option --warmup; did you mean --warmup_iters?"),
    (["--frozen_from=x.pt"], "unknown option --frozen_from"),
    (["--pool=sum"], "--pool expects max or mean, got 'sum'"),
    (["--max_iters=0"], "max_iters must be >= 1, got 0"),
    (["--lr=nan"], "lr must be a finite number, got nan"),
    (["--ckpt=nope.pt"], "no checkpoint at nope.pt"),
])
def test_vision_probe_bad_command_line_is_one_clean_line(args, says):
    assert says in one_clean_line(run_preloaded(PROBE, *args), PROBE)


def test_attention_mask_picture_is_may_attend(tmp_path):
    """exercises/attention_masks.py: the panels are casa.may_attend's masks for the example stream (checked against
    the paper's rules by hand here), and every drawn cell has the colour of its key's kind where the mask allows."""
    import sys
    from pathlib import Path

    from PIL import Image
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "exercises"))
    import attention_masks as am

    panels = am.masks()
    cross, q_kinds, k_kinds, q_win, k_win = panels["cross: fusion layer"]
    assert q_kinds == ["text", "text", "marker", "text", "text", "text", "marker", "text", "text"]
    assert q_win.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2] and k_win.tolist() == [1] * 4 + [2] * 4
    assert cross.tolist() == [[qw == kw for kw in k_win.tolist()] for qw in q_win.tolist()]  # the latest image
    casa, _, casa_keys, _, casa_win = panels["casa: fusion layer"]
    assert casa_keys == ["image"] * 8 + q_kinds
    for i, qw in enumerate(q_win.tolist()):  # that image, plus the own window's text up to the query
        assert casa[i].tolist() == [qw == kw and (j < 8 or j - 8 <= i) for j, kw in enumerate(casa_win.tolist())]
    insertion, kinds, _, _, _ = panels["insertion: self-attention over the stream"]
    assert kinds.count("image") == 8 and len(kinds) == len(am.EXAMPLE) + 8
    assert torch.equal(insertion, torch.ones_like(insertion).tril())  # causal over text and image tokens alike

    path = tmp_path / "masks.png"
    ok(run("exercises/attention_masks.py", f"--png={path}"))
    img = Image.open(path).convert("RGB")
    x0 = 40
    for mask, q_kinds, k_kinds, _, _ in panels.values():
        for i in range(len(q_kinds)):
            for j, k in enumerate(k_kinds):
                pixel = img.getpixel((x0 + j * 22 + 10, 40 + i * 22 + 10))
                assert pixel == (am.COLORS[k] if mask[i, j] else am.PALE), (i, j)
        x0 += len(k_kinds) * 22 + 60


# ------------------------------------------------------------------------------------------------ graded exercises

sys.path.insert(0, str(ROOT / "exercises"))
import grade  # noqa: E402


def cache_formula(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text=None):
    """Exercise 6's answer: the paper's cache sizes (insertion grows by the image per turn; cross keeps one
    image; casa one image and its window's text)."""
    text = turns * (1 + tokens_per_turn + (n_image_tokens if fusion == "insertion" else 0))
    text = min(text, max_text) if max_text else text
    window = {"insertion": 0, "cross": n_image_tokens, "casa": n_image_tokens + 1 + tokens_per_turn}[fusion]
    return {"tokens": text + window, "bytes": n_layer * (text + window) * 2 * n_embd * 4}


def filled_answers(eval_json):
    """Exercise 7's answer, read off a real eval.json."""
    with open(eval_json) as f:
        result = json.load(f)
    blind = result["blind_accuracy"]
    return lambda: {"eval_json": str(eval_json), "count_accuracy": result["accuracy"]["count"],
                    "count_blind": blind["count"], "best_blind_task": max(blind, key=blind.get),
                    "why": "its answers are few and skewed, so guessing the most common one scores without looking"}


def references(eval_json):
    """Every exercise's reference solution: the project's own function (exercise 6: the formula above, checked
    against the real KVCache; 7: the numbers of a real run)."""
    return {1: casa.may_attend, 2: casa.rope, 3: casa.stream_slots, 4: casa.LayerCache.extend_window,
            5: casa.group_by_window, 6: cache_formula, 7: filled_answers(eval_json)}


@pytest.fixture(scope="module")
def count_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("ex7")
    ok(run_preloaded("train.py", *TINY, f"--out_dir={out}", "--max_iters=1", "--tasks=color,count"))
    return out / "eval.json"


@pytest.mark.parametrize("number", sorted(grade.EXERCISES))
def test_every_grader_fails_on_its_stub_and_passes_on_the_reference(number, count_eval):
    passed, line = grade.grade(number)
    assert not passed and "not yet" in line and "\n" not in line
    passed, line = grade.grade(number, references(count_eval)[number])
    assert passed, line


def interleaved_rope(x, pos, base):  # a rotation, but of pairs (2i, 2i + 1) instead of (i, i + D/2)
    half = x.size(-1) // 2
    angles = pos[:, None, :, None].float() * base ** (-torch.arange(half) / half)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], -1).flatten(-2)


def keep_everything(self, kv, latest_window):
    return self.window.append(kv)


MISTAKES = {  # a typical wrong answer -> what its one line must say
    "casa_without_causal": (1, lambda kind, qp, qw, kp, kw: (kw[:, None] == qw[:, :, None])[:, None]
                            if kind != "self" else (kp[:, None] <= qp[:, :, None])[:, None],
                            "saw a later key"),
    "casa_as_self": (1, lambda kind, qp, qw, kp, kw: (kp[:, None] <= qp[:, :, None])[:, None]
                     if kind in ("self", "casa") else (kw[:, None] == qw[:, :, None])[:, None],
                     "text of an earlier window reached a casa query"),
    "no_value_error": (1, lambda kind, *a: casa.may_attend(kind if kind in ("self", "cross", "casa") else "self", *a),
                       "must raise ValueError"),
    "interleaved_rope": (2, interleaved_rope, "rotate the channel pairs (i, i + D/2)"),
    "slow_rope": (2, lambda x, pos, base: casa.rope(x, pos, base ** 2), "a rotation, but not RoPE's"),
    "marker_before_image": (3, lambda is_image, n: casa.stream_slots(is_image, n) - is_image.long() * n,
                            "the marker at index 1 must land right after its image's 4 tokens"),
    "cache_keeps_every_window": (4, keep_everything, "still holds keys of an earlier window"),
    "cache_returns_nothing": (4, lambda self, kv, latest_window: None, "must return a casa.KV"),
    "rope_does_nothing": (2, lambda x, pos, base: x, "rope returned x unchanged"),
    "slot_never_restarts": (5, lambda win: (casa.group_by_window(win)[0], torch.arange(win.size(1)).expand_as(win),
                                            casa.group_by_window(win)[2]), "slots count from 0"),
    "insertion_forgets_images": (6, lambda fusion, *a: cache_formula("cross" if fusion == "insertion" else fusion,
                                                                     *a), "insertion after 4 turns"),
    "wrong_blind_number": (7, None, "count_blind is"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_typical_mistake_gets_a_one_line_explanation(name, count_eval):
    number, fn, says = MISTAKES[name]
    if fn is None:  # exercise 7 with one number copied wrong
        fn = lambda: {**filled_answers(count_eval)(), "count_blind": 1.5}  # noqa: E731
    passed, line = grade.grade(number, fn)
    assert not passed and says in line and "\n" not in line, line


def test_grade_command_line(tmp_path):
    r = run_preloaded("exercises/grade.py", "--ex=rope")
    assert r.returncode == 1 and r.stdout == "exercise 2 (ex2_rope.py): not yet: rope still raises " \
        "NotImplementedError; fill it in\n"
    r = run_preloaded("exercises/grade.py")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == len(grade.EXERCISES)
    assert "no such exercise" in one_clean_line(run_preloaded("exercises/grade.py", "--ex=9"), "grade.py")


def test_teachers_guide_names_exactly_the_exercise_files():
    guide = (ROOT / "exercises" / "README.md").read_text()
    # every file name it gives, bare or under exercises/ (not casa.py, train.py, ..., nor tests/...)
    named = {name for folder, name in re.findall(r"([\w/]*?)([a-z0-9_]+\.py)\b", guide)
             if folder in ("", "exercises/")} - {p.name for p in ROOT.glob("*.py")}
    assert named == {p.name for p in (ROOT / "exercises").glob("*.py")}
    for number, (file, _, _) in grade.EXERCISES.items():
        assert f"make grade EX={number}" in guide, file
