"""Tests for the exercises: exercises/vision_probe.py trains a probe on casa's ViT, on a small CNN, or on the frozen
encoder of a checkpoint (train.py's or pretrain_vision.py's)."""
import re

import pytest

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
