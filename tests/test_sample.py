"""Tests for sample.py: answers from a tiny trained checkpoint, clean one-line errors for every bad input, and odd
but valid images. The script runs as a subprocess, two at a time (most of the time goes into importing torch)."""
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--vit_layers=1", "--vit_dim=32", "--vit_heads=2",
        "--image_size=32", "--patch_size=8", "--batch_size=4", "--eval_per_task=1", "--progress=false"]
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
ENV["OMP_NUM_THREADS"] = "1"
SHORT = ["--max_new_tokens=12"]


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def ok(r, lines=1):
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.count("\n") == lines and r.stdout.endswith("\n"), r.stdout
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Image files, good and bad, and foreign checkpoints."""
    d = tmp_path_factory.mktemp("sample_files")
    scene, _ = data.render_scene(5, 32)
    scene.save(d / "scene.png")
    data.render_scene(6, 48)[0].save(d / "scene48.png")
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
    return d


def train_checkpoint(out):
    """One tiny casa checkpoint, trained for 2 iterations: enough for everything here."""
    r = run("train.py", *TINY, f"--out_dir={out}", "--max_iters=2")
    assert r.returncode == 0, r.stderr
    return out / "ckpt.pt"


def write_bad_checkpoints(ckpt, files):
    real = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.save({**real, "model": {"blocks.0.nope": torch.zeros(3)}}, files / "wrong_weights.pt")
    size = ckpt.stat().st_size
    (files / "half.pt").write_bytes(ckpt.read_bytes()[:size // 2])


GOOD = {  # name -> arguments after --ckpt CKPT (F = the files folder), expected number of output lines
    "scene": (["--scene", "3", "--save", "{F}/saved.png"], 1),
    "image_prompt": (["--image", "{F}/scene.png", "--prompt", "how many shapes are there?"] + SHORT, 1),
    "two_images_two_prompts": (["--image", "{F}/scene.png", "--image", "{F}/scene48.png", "--prompt",
                                "what color is the circle?", "--prompt", "how many shapes are there?"] + SHORT, 2),
    "prompt_of_200_chars": (["--scene", "1", "--prompt", "a" * 200] + SHORT, 1),
    "sampled": (["--scene", "2", "--temperature=0.8", "--top_k=5", "--seed=1", "--max_new_tokens=30"], 1),
    "sampled_again": (["--scene", "2", "--temperature=0.8", "--top_k=5", "--seed=1", "--max_new_tokens=30"], 1),
    "sampled_other_seed": (["--scene", "2", "--temperature=0.8", "--top_k=5", "--seed=2", "--max_new_tokens=30"], 1),
}
ODD_IMAGES = ["1x1.png", "6000x6000.jpg", "gray_L.png", "rgba.png", "palette_P.png", "16bit_I16.png"]
GOOD["odd_images"] = ([a for name in ODD_IMAGES for a in ("--image", "{F}/" + name, "--prompt", "what is it?")]
                      + SHORT, len(ODD_IMAGES))  # one turn per image: one line each

BAD = {  # name -> arguments after --ckpt CKPT (or with their own --ckpt), a phrase the error line must hold
    "missing_image": (["--image", "{F}/nope.png"], "no such file"),
    "directory": (["--image", "{F}/folder.png"], "directory"),
    "empty_file": (["--image", "{F}/empty.png"], "empty"),
    "truncated_png": (["--image", "{F}/truncated.png"], "truncated.png"),
    "text_as_png": (["--image", "{F}/text.png"], "text.png"),
    "unsupported_char": (["--scene", "1", "--prompt", "what color is the é?"], "'é'"),
    "prompt_too_long": (["--scene", "1", "--prompt", "a" * 201], "201"),
    "missing_ckpt": (["--ckpt", "{F}/nope.pt", "--scene", "1"], "nope.pt"),
    "random_bytes_ckpt": (["--ckpt", "{F}/random.pt", "--scene", "1"], "random.pt"),
    "half_ckpt": (["--ckpt", "{F}/half.pt", "--scene", "1"], "half.pt"),
    "foreign_dict_ckpt": (["--ckpt", "{F}/tensors.pt", "--scene", "1"], "tensors.pt"),
    "foreign_list_ckpt": (["--ckpt", "{F}/list.pt", "--scene", "1"], "list.pt"),
    "wrong_weights_ckpt": (["--ckpt", "{F}/wrong_weights.pt", "--scene", "1"], "wrong_weights.pt"),
    "2_prompts_3_images": (["--image", "{F}/scene.png", "--image", "{F}/1x1.png", "--image", "{F}/gray_L.png",
                            "--prompt", "what is it?", "--prompt", "what is written?"], "2 prompts for 3 images"),
    "negative_temperature": (["--scene", "1", "--temperature=-1"], "--temperature must be >= 0"),
}
NO_TRAINED_CKPT = ["missing_ckpt", "random_bytes_ckpt", "foreign_dict_ckpt", "foreign_list_ckpt"]

@pytest.fixture(scope="module")
def results(files, tmp_path_factory):
    """Train the checkpoint, then run every GOOD and BAD command, two processes at a time. The commands that do not
    need the trained checkpoint run while it trains (the pool starts jobs in the order they were submitted)."""
    with ThreadPoolExecutor(2) as pool:
        trained = pool.submit(train_checkpoint, tmp_path_factory.mktemp("sample_ckpt"))
        cases = {("good", name): args for name, (args, _) in GOOD.items()}
        cases |= {("bad", name): args for name, (args, _) in BAD.items()}
        independent = {("bad", name) for name in NO_TRAINED_CKPT}
        jobs = {key: pool.submit(run, "sample.py", *command(args, files, None)) for key, args in cases.items()
                if key in independent}
        ready = pool.submit(lambda: write_bad_checkpoints(trained.result(), files) or trained.result())

        def dependent(args):
            return run("sample.py", *command(args, files, ready.result()))

        jobs |= {key: pool.submit(dependent, args) for key, args in cases.items() if key not in independent}
        return {key: job.result() for key, job in jobs.items()}


def command(args, files, ckpt):
    args = [a.format(F=files) for a in args]
    return (["--ckpt", str(ckpt)] if "--ckpt" not in args else []) + args


# ------------------------------------------------------------------------------------------------ happy paths


def test_scene_is_answered_and_saved(results, files):
    [answer] = ok(results["good", "scene"])
    saved = Image.open(files / "saved.png")
    assert saved.size == (32, 32) and saved.mode == "RGB"  # the checkpoint's image size
    assert saved.tobytes() == data.render_scene(3, 32)[0].tobytes()


def test_image_with_a_prompt(results):
    ok(results["good", "image_prompt"])


def test_one_prompt_per_image_gives_one_line_per_image(results):
    ok(results["good", "two_images_two_prompts"], lines=2)


def test_prompt_of_exactly_the_maximum_length(results):
    ok(results["good", "prompt_of_200_chars"])


def test_sampling_is_reproducible_with_a_seed(results):
    first = ok(results["good", "sampled"])
    assert ok(results["good", "sampled_again"]) == first
    assert ok(results["good", "sampled_other_seed"]) != first  # the seed is used


def test_odd_but_valid_images_just_work(results, files):
    """1x1, a 6000x6000 JPEG, L, RGBA, P and 16-bit I;16, in one run (an error would name the file)."""
    modes = [Image.open(files / name).mode for name in ODD_IMAGES]
    assert modes[2:] == ["L", "RGBA", "P", "I;16"] and Image.open(files / "6000x6000.jpg").size == (6000, 6000)
    ok(results["good", "odd_images"], lines=len(ODD_IMAGES))


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_clean_line(results, name):
    r = results["bad", name]
    phrase = BAD[name][1]
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr
    assert r.stderr.startswith("sample.py: error: "), r.stderr
    assert phrase in r.stderr, r.stderr
