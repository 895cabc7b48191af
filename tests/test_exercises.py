"""Tests for the exercises: exercises/vision_probe.py trains a probe on casa's ViT, on a small CNN, or on the frozen
encoder of a checkpoint (train.py's or pretrain_vision.py's)."""
import re

import pytest
import torch

from conftest import ok, one_clean_line, run, run_preloaded

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
