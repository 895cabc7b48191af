"""Tests for sample.py: answers from a tiny trained checkpoint, clean one-line errors for every bad input, odd but
valid images, and --video (live captions through one cache, SRT and GIF, outputs checked before the clip streams)."""
import json
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

import data
import figures
import scenes
import sample
from casa import VLM, Attention, VLMConfig, attend, rope
from conftest import MODEL, load, ok, one_clean_line, run, run_preloaded

SHORT = ["--max_new_tokens=12"]


def answers(r, lines=1):
    """The answer lines of a run that succeeded: exactly `lines` of them."""
    ok(r)
    assert r.stdout.count("\n") == lines and r.stdout.endswith("\n"), r.stdout
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt):
    """Image files, good and bad, and foreign or broken checkpoints."""
    d = tmp_path_factory.mktemp("sample_files")
    scene, _ = scenes.render_scene(5, 32)
    scene.save(d / "scene.png")
    scenes.render_scene(6, 48)[0].save(d / "scene48.png")
    # bad images
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    (d / "folder.png").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "full.png")
    (d / "truncated.png").write_bytes((d / "full.png").read_bytes()[:(d / "full.png").stat().st_size // 2])
    # odd but valid images
    Image.new("RGB", (1, 1), (200, 30, 30)).save(d / "1x1.png")
    big = Image.new("RGB", (6000, 6000), (30, 30, 60))
    big.paste((240, 220, 40), (1500, 1500, 4500, 4500))
    big.save(d / "6000x6000.jpg", quality=50)
    Image.fromarray(np.linspace(0, 255, 50 * 40, dtype=np.uint8).reshape(40, 50), "L").save(d / "gray_L.png")
    rgba = np.zeros((30, 50, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, np.linspace(0, 255, 50, dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    scene.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(d / "palette_P.png")
    Image.fromarray(np.linspace(0, 65535, 40 * 60).astype(np.uint16).reshape(40, 60)).save(d / "16bit_I16.png")
    # bad checkpoints
    (d / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    torch.save({"wte": torch.randn(4, 4), "head": torch.randn(4)}, d / "tensors.pt")
    torch.save([torch.randn(2), 3, "x"], d / "list.pt")
    torch.save({**load(tiny_ckpt), "model": {"blocks.0.nope": torch.zeros(3)}}, d / "wrong_weights.pt")
    (d / "half.pt").write_bytes(tiny_ckpt.read_bytes()[:tiny_ckpt.stat().st_size // 2])
    return d


GOOD = {  # name -> arguments (F = the files folder, C = the checkpoint), expected number of output lines
    "scene": (["--ckpt", "{C}", "--scene", "3", "--save", "{F}/saved.png"], 1),
    "scene_equals": (["--ckpt={C}", "--scene=3"], 1),
    "image_prompt": (["--ckpt", "{C}", "--image", "{F}/scene.png", "--prompt", "how many shapes are there?"]
                     + SHORT, 1),
    "two_images_two_prompts": (["--ckpt", "{C}", "--image", "{F}/scene.png", "--image", "{F}/scene48.png",
                                "--prompt", "what color is the circle?", "--prompt", "how many shapes are there?"]
                               + SHORT, 2),
    "prompt_of_200_chars": (["--ckpt", "{C}", "--scene", "1", "--prompt", "a" * 200] + SHORT, 1),
    "sampled": (["--ckpt", "{C}", "--scene", "2", "--temperature=0.8", "--top_k=5", "--seed=1",
                 "--max_new_tokens=30"], 1),
    "sampled_again": (["--ckpt", "{C}", "--scene", "2", "--temperature=0.8", "--top_k=5", "--seed=1",
                       "--max_new_tokens=30"], 1),
    "sampled_other_seed": (["--ckpt", "{C}", "--scene", "2", "--temperature=0.8", "--top_k=5", "--seed=2",
                            "--max_new_tokens=30"], 1),
}
ODD_IMAGES = ["1x1.png", "6000x6000.jpg", "gray_L.png", "rgba.png", "palette_P.png", "16bit_I16.png"]
GOOD["odd_images"] = (["--ckpt", "{C}"] + [a for name in ODD_IMAGES for a in ("--image", "{F}/" + name, "--prompt",
                                                                              "what is it?")]
                      + SHORT, len(ODD_IMAGES))  # one turn per image: one line each

BAD = {  # name -> arguments (F = the files folder, C = the checkpoint), a phrase the error line must hold
    "missing_image": (["--ckpt={C}", "--image", "{F}/nope.png"], "no such file"),
    "directory": (["--ckpt={C}", "--image", "{F}/folder.png"], "directory"),
    "empty_file": (["--ckpt={C}", "--image", "{F}/empty.png"], "empty"),
    "truncated_png": (["--ckpt={C}", "--image", "{F}/truncated.png"], "truncated.png"),
    "text_as_png": (["--ckpt={C}", "--image", "{F}/text.png"], "text.png"),
    "unsupported_char": (["--ckpt={C}", "--scene", "1", "--prompt", "what color is the é?"], "'é'"),
    "prompt_too_long": (["--ckpt={C}", "--scene", "1", "--prompt", "a" * 201], "201"),
    "missing_ckpt": (["--ckpt", "{F}/nope.pt", "--scene", "1"], "nope.pt"),
    "random_bytes_ckpt": (["--ckpt", "{F}/random.pt", "--scene", "1"], "random.pt"),
    "half_ckpt": (["--ckpt", "{F}/half.pt", "--scene", "1"], "half.pt"),
    "foreign_dict_ckpt": (["--ckpt", "{F}/tensors.pt", "--scene", "1"], "tensors.pt"),
    "foreign_list_ckpt": (["--ckpt", "{F}/list.pt", "--scene", "1"], "list.pt"),
    "wrong_weights_ckpt": (["--ckpt", "{F}/wrong_weights.pt", "--scene", "1"], "wrong_weights.pt"),
    "2_prompts_3_images": (["--ckpt={C}", "--image", "{F}/scene.png", "--image", "{F}/1x1.png", "--image",
                            "{F}/gray_L.png", "--prompt", "what is it?", "--prompt", "what is written?"],
                           "2 prompts for 3 images"),
    "negative_temperature": (["--ckpt={C}", "--scene", "1", "--temperature=-1"], "temperature must be >= 0.0"),
    "temperature_nan": (["--ckpt={C}", "--scene", "1", "--temperature=nan"], "temperature must be a finite number"),
    "fps_nan": (["--ckpt={C}", "--video=synthetic:1", "--fps=nan"], "fps must be a finite number, got nan"),
    "image_and_scene": (["--ckpt={C}", "--scene", "1", "--image", "{F}/scene.png"], "give one of"),
    "save_without_scene": (["--ckpt={C}", "--image", "{F}/scene.png", "--save={F}/x.png"], "--save goes with"),
    # outputs are checked before the clip streams: no caption line comes out
    "srt_in_a_missing_folder": (["--ckpt={C}", "--video=synthetic:1", "--srt=/missing_dir/x.srt"],
                                "--srt=/missing_dir/x.srt: no such directory /missing_dir"),
    "gif_is_a_folder": (["--ckpt={C}", "--video=synthetic:1", "--gif={F}/folder.png"], "is a directory"),
    "attention_png_of_a_video": (["--ckpt={C}", "--video=synthetic:1", "--attention_png={F}/a.png"],
                                 "--attention_png goes with one question"),
    "attention_png_of_two_questions": (["--ckpt={C}", "--image", "{F}/scene.png", "--image", "{F}/1x1.png",
                                        "--prompt", "a?", "--prompt", "b?", "--attention_png={F}/a.png"],
                                       "--attention_png goes with one question"),
    "attention_png_in_a_missing_folder": (["--ckpt={C}", "--scene=1", "--attention_png=/missing_dir/a.png"],
                                          "no such directory /missing_dir"),
}


FROM_A_SHELL = {("good", "scene")}  # `python sample.py --ckpt X --scene 3 ...` in a fresh interpreter; the others
                                   # preloaded (conftest.run_preloaded)


@pytest.fixture(scope="module")
def results(pool, files, tiny_ckpt):
    """Every GOOD and BAD command, two at a time."""
    cases = {("good", name): args for name, (args, _) in GOOD.items()}
    cases |= {("bad", name): args for name, (args, _) in BAD.items()}
    jobs = {key: pool.submit(run if key in FROM_A_SHELL else run_preloaded, "sample.py",
                             *[a.format(F=files, C=tiny_ckpt) for a in args])
            for key, args in cases.items()}
    return {key: job.result() for key, job in jobs.items()}


# ------------------------------------------------------------------------------------------------ happy paths


def test_scene_is_answered_and_saved(results, files):
    [answer] = answers(results["good", "scene"])
    saved = Image.open(files / "saved.png")
    assert saved.size == (32, 32) and saved.mode == "RGB"  # the checkpoint's image size
    assert saved.tobytes() == scenes.render_scene(3, 32)[0].tobytes()


def test_both_option_forms_give_the_same_answer(results):
    """`--ckpt X --scene 3` and `--ckpt=X --scene=3`."""
    assert answers(results["good", "scene_equals"]) == answers(results["good", "scene"])


def test_image_with_a_prompt(results):
    answers(results["good", "image_prompt"])


def test_one_prompt_per_image_gives_one_line_per_image(results):
    answers(results["good", "two_images_two_prompts"], lines=2)


def test_prompt_of_exactly_the_maximum_length(results):
    answers(results["good", "prompt_of_200_chars"])


def test_sampling_is_reproducible_with_a_seed(results):
    first = answers(results["good", "sampled"])
    assert answers(results["good", "sampled_again"]) == first
    assert answers(results["good", "sampled_other_seed"]) != first  # the seed is used


def test_odd_but_valid_images_just_work(results, files):
    """1x1, a 6000x6000 JPEG, L, RGBA, P and 16-bit I;16, in one run (an error would name the file)."""
    modes = [Image.open(files / name).mode for name in ODD_IMAGES]
    assert modes[2:] == ["L", "RGBA", "P", "I;16"] and Image.open(files / "6000x6000.jpg").size == (6000, 6000)
    answers(results["good", "odd_images"], lines=len(ODD_IMAGES))


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_clean_line(results, name):
    r = results["bad", name]
    assert r.returncode != 0
    assert BAD[name][1] in one_clean_line(r, "sample.py")
    assert r.stdout == ""  # nothing was answered or captioned first


# ------------------------------------------------------------------------------------------------ video


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    """A tiny model trained two steps on the video task through train.py."""
    out = tmp_path_factory.mktemp("video")
    ok(run_preloaded("train.py", *MODEL, "--tasks=video", "--batch_size=2", "--max_iters=2", "--eval_interval=2",
                     "--eval_per_task=1", "--progress=false", f"--out_dir={out}"))
    assert set(json.loads((out / "eval.json").read_text())["accuracy"]) == {"video"}
    return out / "ckpt.pt"


def test_sample_video_synthetic_writes_srt_and_gif(video_ckpt, tmp_path):
    srt, gif = tmp_path / "c.srt", tmp_path / "c.gif"
    r = ok(run("sample.py", f"--ckpt={video_ckpt}", "--video=synthetic:4", "--fps=4", "--max_new_tokens=6",
               f"--srt={srt}", f"--gif={gif}", "--max_text=64"))
    n = len(scenes.make_clip(4, 32).turns)
    lines = r.stdout.splitlines()
    assert len(lines) == n and all(re.match(r"\s*\d+\.\d\ds\s+\d+\.\d ms ", line) for line in lines)
    blocks = srt.read_text().strip().split("\n\n")
    assert len(blocks) == n
    for i, block in enumerate(blocks):
        number, times, text = block.split("\n", 2)
        assert number == str(i + 1) and text
        start, end = times.split(" --> ")
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d", start) and re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d", end)
        assert start == f"00:00:{i // 4:02d},{i % 4 * 250:03d}" and start < end
    with Image.open(gif) as im:
        assert im.n_frames == n


def test_gif_captions_wrap_to_the_frame_and_every_page_has_one_size(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    captions = ["a red circle at the top left and a blue star at the center and a green cross", "-"]
    sample.write_captioned_gif(tmp_path / "c.gif", frames, [0, 1], [1, 2], captions)
    with Image.open(tmp_path / "c.gif") as im:
        sizes = set()
        for i in range(im.n_frames):
            im.seek(i)
            sizes.add(im.size)
    lines = figures.wrap(captions[0], 32 * 4)
    assert len(lines) >= 3 and sizes == {(32 * 4 + 8, 32 * 4 + 8 + len(lines) * figures.line_height(14))}


def test_sample_video_from_gif_and_folder(video_ckpt, tmp_path):
    frames = [turn.images[0] for turn in scenes.make_clip(2, 32, 8).turns]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=250)
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames[:3]):
        frame.save(tmp_path / "frames" / f"{i:03d}.png")
    r = run_preloaded("sample.py", f"--ckpt={video_ckpt}", f"--video={tmp_path / 'clip.gif'}", "--max_new_tokens=4")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 8, r.stderr
    assert r.stdout.splitlines()[1].strip().startswith("0.25s")
    r = run_preloaded("sample.py", f"--ckpt={video_ckpt}", f"--video={tmp_path / 'frames'}", "--max_new_tokens=4")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3, r.stderr


@pytest.mark.parametrize("video", ["missing.gif", "corrupt.gif", "empty_folder", "synthetic:x"])
def test_sample_video_bad_input_is_one_clean_line(video_ckpt, tmp_path, video):
    (tmp_path / "corrupt.gif").write_bytes(b"GIF89a" + bytes(range(200)))
    (tmp_path / "empty_folder").mkdir()
    path = video if video.startswith("synthetic") else tmp_path / video
    r = run_preloaded("sample.py", f"--ckpt={video_ckpt}", f"--video={path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    one_clean_line(r, "sample.py")


# ------------------------------------------------------------------------------------------------ attention maps


@pytest.mark.parametrize("fusion", ["casa", "cross", "insertion"])
def test_attention_png_has_a_panel_per_looking_layer(tmp_path, tiny_ckpt, fusion):
    """A 256 px panel per layer that looks at the image (fusion layers; every layer under insertion): the picture
    is (16 + n * 272) x 366 pixels, whatever the answer."""
    ckpt = tiny_ckpt
    if fusion != "casa":  # the tiny casa model, adapted (untrained new layers are fine for the picture)
        state = load(tiny_ckpt)
        state["model_config"]["fusion"] = fusion
        model = VLM(VLMConfig(**state["model_config"]))
        model.load_pretrained(state["model"])
        state["model"] = model.state_dict()
        ckpt = tmp_path / "ckpt.pt"
        torch.save(state, ckpt)
    path = tmp_path / "attention.png"
    answers(run_preloaded("sample.py", f"--ckpt={ckpt}", "--scene=3", "--prompt=how many shapes are there?",
                          *SHORT, f"--attention_png={path}"))
    n = load(ckpt)["model_config"]["n_layer"]
    assert Image.open(path).size == (16 + n * 272, 366)


def test_attention_weights_are_the_ones_attend_applies():
    """answer_attention recomputes the softmax outside casa.attend: the weights times the values must give attend's
    output exactly, and cross-attention's queries after an image give it all their attention."""
    torch.manual_seed(0)
    layer = Attention(32, 2, 10000.0)
    x, keys = torch.randn(1, 5, 32), torch.randn(1, 7, 32)
    pos = torch.arange(7)[None]
    kv = layer.kv(keys, pos, pos * 0, rotate=True)
    mask = torch.rand(1, 1, 5, 7) > 0.4
    mask[..., 0] = True
    w = sample.attention_weights(layer, x, kv, mask, pos[:, :5], True)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 5)) and not w[~mask.expand_as(w)].any()
    q = rope(layer.heads(layer.q_proj(x)), pos[:, :5], 10000.0)
    assert torch.allclose(w @ kv.v, attend(q, kv.k, kv.v, mask), atol=1e-5)
    tok, image = data.Tokenizer(), torch.rand(1, 3, 32, 32)
    idx = torch.tensor([sample.prompt_ids(tok, 1, "what color is the star?")])
    for fusion in ("cross", "casa", "insertion"):
        model = VLM(VLMConfig(n_layer=2, n_head=2, n_embd=32, image_size=32, vit_layers=1, vit_dim=32, vit_heads=2,
                              vocab_size=tok.vocab_size, image_token_id=tok.image_id, fusion=fusion)).eval()
        panels = sample.answer_attention(model, idx, image, tok.encode(" red") + [tok.eos_id])
        assert len(panels) == 2 and all(p[1].shape == (model.config.n_image_tokens,) for p in panels)
        shares = [share for *_, share in panels]
        assert all(abs(s - 1) < 1e-5 for s in shares) if fusion == "cross" else all(0 < s < 1 for s in shares)
