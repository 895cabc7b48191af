"""Tests for the exercises: exercises/vision_probe.py trains a probe on casa's ViT, on a small CNN, or on the frozen
encoder of a checkpoint (train.py's or pretrain_vision.py's); the mask picture; every grader of exercises/grade.py
fails on its stub, passes on the reference, and explains a typical mistake in one line; the teacher's guide."""
import importlib
import json
import re
import shlex
import subprocess
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
    # causal over the stream, but an image's tokens and its marker share the marker's position: they see one another
    image_of = [next(j for j in range(i, len(kinds)) if kinds[j] == "marker") if kinds[i] in ("image", "marker")
                else None for i in range(len(kinds))]
    want = [[j <= i or (image_of[i] is not None and image_of[i] == image_of[j]) for j in range(len(kinds))]
            for i in range(len(kinds))]
    assert insertion.tolist() == want and not torch.equal(insertion, torch.ones_like(insertion).tril())

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

# exercises/mistakes: per exercise, wrong answers (each with what its grader's one line must say) and right ones
CATALOGUE = {int(p.name[2]): importlib.import_module(f"mistakes.{p.stem}")
             for p in sorted((ROOT / "exercises" / "mistakes").glob("ex*.py"))}


def filled_answers(eval_json):
    """Exercise 7's answer, read off a real eval.json."""
    with open(eval_json) as f:
        result = json.load(f)
    blind = result["blind_accuracy"]
    best = max(blind, key=blind.get)
    return lambda: {"eval_json": str(eval_json), "count_accuracy": result["accuracy"]["count"],
                    "count_blind": blind["count"], "best_blind_task": best,
                    "why": f"{best} has few possible answers, one far more common: a blind model guesses it"}


def references(eval_json):
    """Every exercise's reference solution: the project's own function (exercise 6: the paper's formula, checked
    against the real KVCache; 7: the numbers of a real run)."""
    return {1: casa.may_attend, 2: casa.rope, 3: casa.stream_slots, 4: casa.LayerCache.extend_window,
            5: casa.group_by_window, 6: CATALOGUE[6].RIGHT["formula"], 7: filled_answers(eval_json)}


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


def test_the_catalogue_has_six_wrong_and_a_right_answer_per_exercise():
    assert sorted(CATALOGUE) == sorted(grade.EXERCISES)
    for module in CATALOGUE.values():
        assert len(module.WRONG) >= 6 and len(module.RIGHT) >= 1, module.__name__


@pytest.mark.parametrize("number, name", [(n, name) for n, m in CATALOGUE.items() for name in m.WRONG])
def test_every_wrong_answer_fails_with_its_own_line(number, name):
    """Mutation testing of the graders: each wrong answer is refused, in one line that says what its mistake is
    and where (the batch row, the call, the model)."""
    fn, says = CATALOGUE[number].WRONG[name]
    passed, line = grade.grade(number, fn)
    assert not passed and says in line and "\n" not in line, line


@pytest.mark.parametrize("number, name", [(n, name) for n, m in CATALOGUE.items() for name in m.RIGHT])
def test_every_right_answer_passes(number, name):
    """Right answers written differently from the reference (loops, another layout of RoPE's pairs) pass."""
    passed, line = grade.grade(number, CATALOGUE[number].RIGHT[name])
    assert passed, line


def test_grade_command_line():
    r = run_preloaded("exercises/grade.py", "--ex=rope")
    assert r.returncode == 1 and r.stdout == "exercise 2 (ex2_rope.py): not yet: rope still raises " \
        "NotImplementedError; fill it in\n"
    assert run_preloaded("exercises/grade.py", "rope").stdout == r.stdout  # the first argument alone
    r = run_preloaded("exercises/grade.py")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == len(grade.EXERCISES)
    for args in (["--ex=9"], ["9"], ["1", "2"]):
        line = one_clean_line(run_preloaded("exercises/grade.py", *args), "grade.py")
        assert "no such exercise" in line or "expected an option" in line, line


# A command in a stub or the guide: make TARGET [VAR=value], or python SCRIPT.py [args] (an option with a quoted
# value; a first bare word is a command, bench.py's)
COMMAND = re.compile(r"\b(make \w+(?: [A-Z]+=\w+)?|git checkout \S+?\.py|python \S+\.py"
                     r"(?: (?:--\w+=\"[^\"]*\"|--[^\s`)]+|\d+\b|[a-z]+(?= --)))*)")


def commands(path):
    return COMMAND.findall(" ".join(path.read_text().split()))


def test_every_command_in_the_stubs_and_the_guide_runs(tmp_path):
    """Each command a student or teacher is told to type: make targets print what they run (make -n) and each
    script runs with those options and --help (the options exist); grade.py runs for real, on the stubs."""
    files = [ROOT / "exercises" / "README.md"] + sorted((ROOT / "exercises").glob("ex*.py"))
    found = {cmd for path in files for cmd in commands(path)}
    assert {"make grade EX=1", "python exercises/grade.py 1", "make demo"} <= found, found
    scripts = []
    for cmd in sorted(found):
        words = shlex.split(cmd)
        if words[0] == "make":
            r = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
            assert r.returncode == 0, (cmd, r.stderr)
            scripts += [shlex.split(line)[1:] for line in r.stdout.splitlines() if line.startswith(".venv/bin/python ")]
        elif words[0] == "git":  # git checkout FILE starts an exercise again: the file must be tracked
            assert subprocess.run(["git", "ls-files", "--error-unmatch", words[2]], cwd=ROOT,
                                  capture_output=True).returncode == 0, cmd
        else:
            scripts.append(words[1:])
    for script, *args in scripts:
        if script == "exercises/grade.py":  # cheap for real: every stub is still a stub
            r = run_preloaded(script, *args)
            assert r.returncode == 1 and "not yet" in r.stdout and not r.stderr, (script, args, r.stderr)
        else:
            r = run_preloaded(script, *args, "--help")
            assert r.returncode == 0 and not r.stderr, (script, args, r.stderr)


def test_teachers_guide_names_exactly_the_exercise_files():
    guide = (ROOT / "exercises" / "README.md").read_text()
    # every file name it gives, bare or under exercises/ (not casa.py, train.py, ..., nor tests/...)
    named = {name for folder, name in re.findall(r"([\w/]*?)([a-z0-9_]+\.py)\b", guide)
             if folder in ("", "exercises/")} - {p.name for p in ROOT.glob("*.py")}
    assert named == {p.name for p in (ROOT / "exercises").glob("*.py")}
    for number, (file, _, _) in grade.EXERCISES.items():
        assert f"make grade EX={number}" in guide, file
