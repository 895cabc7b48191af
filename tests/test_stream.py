"""Streaming video: the cache over many frames, train.py on clips, sample.py --video (SRT, GIF, errors) and the
bench.py smoke runs (their JSON keys)."""
import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

import casa
import data
from test_train import ENV, MODEL, ROOT

FRAME_KEYS = {"ttft_ms_first", "ttft_ms_last", "decode_tok_s_first", "decode_tok_s_last", "kv_tokens_final",
              "kv_bytes_final", "peak_mem_mb"}


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("fusion", casa.FUSIONS)
def test_streaming_many_frames_cache_equals_recomputation(fusion):
    """Frame after frame through one cache (marker + frame, then greedy tokens until the stop token), against
    recomputing the whole stream from scratch at every frame."""
    torch.manual_seed(0)
    model = casa.VLM(casa.VLMConfig(fusion=fusion, image_size=32, patch_size=8, vit_layers=1, vit_dim=32,
                                    vit_heads=2, n_layer=4, n_head=2, n_embd=32, vocab_size=40)).eval()
    frames = [data.to_tensor(turn.images[0])[None] for turn in data.make_clip(1, 32, 6).turns]
    marker = torch.tensor([[model.config.image_token_id]])
    cache, stream = model.new_cache(), torch.zeros(1, 0, dtype=torch.long)
    for i, frame in enumerate(frames):
        cached = model.generate(marker, frame, max_new_tokens=5, stop_token=7, cache=cache)
        stream = torch.cat([stream, marker], 1)
        fresh = model.generate(stream, torch.cat(frames[:i + 1]), max_new_tokens=5, stop_token=7, use_cache=False)
        assert torch.equal(cached, fresh), f"frame {i}"
        stream = torch.cat([stream, cached], 1)
    assert cache.pos == stream.size(1) + (len(frames) * 16 if fusion == "insertion" else 0)


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    """A tiny model trained two steps on the video task through train.py."""
    out = tmp_path_factory.mktemp("video")
    r = run("train.py", *MODEL, "--tasks=video", "--batch_size=2", "--max_iters=2", "--eval_interval=2",
            "--eval_per_task=1", "--progress=false", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    assert set(json.loads((out / "eval.json").read_text())["accuracy"]) == {"video"}
    return out / "ckpt.pt"


def test_sample_video_synthetic_writes_srt_and_gif(video_ckpt, tmp_path):
    srt, gif = tmp_path / "c.srt", tmp_path / "c.gif"
    r = run("sample.py", f"--ckpt={video_ckpt}", "--video=synthetic:4", "--fps=4", "--max_new_tokens=6",
            f"--srt={srt}", f"--gif={gif}", "--max_text=64")
    assert r.returncode == 0, r.stderr
    n = len(data.make_clip(4, 32).turns)
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


def test_sample_video_from_gif_and_folder(video_ckpt, tmp_path):
    frames = [turn.images[0] for turn in data.make_clip(2, 32, 8).turns]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=250)
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames[:3]):
        frame.save(tmp_path / "frames" / f"{i:03d}.png")
    r = run("sample.py", f"--ckpt={video_ckpt}", f"--video={tmp_path / 'clip.gif'}", "--max_new_tokens=4")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 8, r.stderr
    assert r.stdout.splitlines()[1].strip().startswith("0.25s")
    r = run("sample.py", f"--ckpt={video_ckpt}", f"--video={tmp_path / 'frames'}", "--max_new_tokens=4")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3, r.stderr


@pytest.mark.parametrize("video", ["missing.gif", "corrupt.gif", "empty_folder", "synthetic:x"])
def test_sample_video_bad_input_is_one_clean_line(video_ckpt, tmp_path, video):
    (tmp_path / "corrupt.gif").write_bytes(b"GIF89a" + bytes(range(200)))
    (tmp_path / "empty_folder").mkdir()
    path = video if video.startswith("synthetic") else tmp_path / video
    r = run("sample.py", f"--ckpt={video_ckpt}", f"--video={path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_smoke_runs_write_the_json_keys(tmp_path):
    r = run("bench.py", "stream", "--turns=3", "--tokens=2", f"--json={tmp_path / 's.json'}",
            f"--png={tmp_path / 's.png'}", *MODEL)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert "machine" in result
    for fusion in casa.FUSIONS:
        assert FRAME_KEYS <= set(result[fusion])
    assert result["insertion"]["kv_tokens_final"] > result["casa"]["kv_tokens_final"]
    assert Image.open(tmp_path / "s.png").size == (900, 600)
    r = run("bench.py", "train", "--frames=2", "--batch_size=2", "--iters=1", f"--json={tmp_path / 't.json'}", *MODEL)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    for fusion in casa.FUSIONS:
        assert {"text_tok_s", "peak_mem_mb", "mfu"} <= set(result[fusion]) and 0 < result[fusion]["mfu"]
    r = run("bench.py", "stream", "--fusions=concat")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
