"""Tests for pretrain_vision.py: an encoder-only checkpoint that train.py builds a VLM on, an exact resume, the
labels of every patch, and one-line errors."""
import random
import re
import shutil

import pytest
import torch

import scenes
import pretrain_vision
from casa import VLM, VLMConfig
from conftest import PRETRAIN, TINY, load, ok, one_clean_line, run, run_preloaded


def test_pretrained_encoder_starts_a_vlm_and_resumes_exactly(pool, encoder_ckpt, tmp_path):
    """pretrain_vision.py writes an encoder-only checkpoint that train.py --init_from builds a VLM on (every vision
    weight copied, the rest new); stopping at 2 (encoder_ckpt) and resuming to 4 gives exactly the weights of a
    straight 4."""
    shutil.copytree(encoder_ckpt.parent, tmp_path / "B")
    straight, _ = pool.map(lambda args: ok(run_preloaded("pretrain_vision.py", *args)), [
        [*PRETRAIN, f"--out_dir={tmp_path / 'A'}", "--max_iters=4", "--eval_interval=2"],
        [f"--out_dir={tmp_path / 'B'}", "--init_from=resume", "--max_iters=4"]])
    assert re.search(r"iter 4: loss \d+\.\d{3}, held-out patches right: shape \d+%, color \d+%, size \d+%, cell \d+%",
                     straight.stdout)
    a, b = load(tmp_path / "A" / "ckpt.pt"), load(tmp_path / "B" / "ckpt.pt")
    assert a["iter"] == b["iter"] == 4 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(k.startswith("vision.") for k in a["model"])

    vlm = VLM(VLMConfig(**a["model_config"]))
    new = vlm.load_pretrained(a["model"])
    assert set(new) == {name for name, _ in vlm.named_parameters() if not name.startswith("vision.")}
    assert all(torch.equal(vlm.state_dict()[k], v) for k, v in a["model"].items())
    r = ok(run("train.py", *TINY, f"--out_dir={tmp_path / 'vlm'}", f"--init_from={tmp_path / 'A' / 'ckpt.pt'}",
               "--max_iters=2", "--eval_interval=2", "--tasks=shape"))
    assert "checkpoint:" in r.stdout
    for args, says in (([f"--out_dir={tmp_path / 'vlm'}"], "is not a casa checkpoint of this kind (it has no heads)"),
                       ([f"--out_dir={tmp_path / 'A'}", "--vit_dim=64"], "--vit_dim cannot change when resuming")):
        r = run_preloaded("pretrain_vision.py", "--init_from=resume", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def test_pretrain_vision_labels_every_patch_with_the_object_or_glyph_under_it():
    share = 1 / 3  # of the scenes with text
    images, labels = pretrain_vision.labelled_scenes(3, 16, 64, 8, share)
    assert images.shape == (16, 3, 64, 64) and labels.shape == (16, 64, len(pretrain_vision.LABELS))
    rng, none, objects = random.Random(3), pretrain_vision.NONE, pretrain_vision.OBJECT_LABELS
    for n in range(16):  # the scenes, drawn again
        scene = scenes.sample_scene(rng, 64, text=rng.random() < share)
        owner, char = scenes.patch_objects(scene, 8), scenes.patch_chars(scene, 8)
        for k in range(64):
            o = scene["objects"][owner[k]] if owner[k] >= 0 else None
            glyph = (scenes.CHARS.index(scene["text"][char[k]]), char[k].item()) if char[k] >= 0 else none[objects:]
            assert tuple(labels[n, k].tolist()) == (scenes.object_labels(o, 64) if o else none[:objects]) + glyph
    assert (labels[..., objects] < none[objects]).any()  # some scenes show text


@pytest.mark.parametrize("args, says", [
    (["--max_iter=3"], "unknown option --max_iter; did you mean --max_iters? (see --help)"),
    (["--batch_size=0"], "batch_size must be >= 1, got 0"),
    (["--lr=nan"], "lr must be a finite number, got nan"),
    (["--init_from=out/ckpt.pt"], "--init_from expects scratch or resume, got 'out/ckpt.pt'"),
    (["--style=shifted"], "--style is one of default, varied (shifted is never trained on), got 'shifted'"),
    (["--init_from=resume", "--out_dir={tmp}/nonexistent"], "no checkpoint at {tmp}/nonexistent/ckpt.pt"),
])
def test_pretrain_vision_bad_command_line_is_one_clean_line(tmp_path, args, says):
    r = run_preloaded("pretrain_vision.py", *[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == f"pretrain_vision.py: error: {says.format(tmp=tmp_path)}\n"
    one_clean_line(r, "pretrain_vision.py")
    assert not (tmp_path / "nonexistent").exists()  # refused before an out_dir was made
