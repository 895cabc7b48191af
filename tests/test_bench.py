"""Tests for bench.py: the smoke runs of stream and train (their JSON keys), the analytic table, and one-line errors
for bad options, checked in the main process before any worker starts or any output is needed."""
import json

import pytest
import torch
from PIL import Image

import bench
import casa
from conftest import MODEL, load, ok, one_clean_line, run, run_preloaded

FRAME_KEYS = {"ttft_ms_first", "ttft_ms_last", "decode_tok_s_first", "decode_tok_s_last", "kv_tokens_final",
              "kv_bytes_final", "peak_mem_mb"}


def test_bench_smoke_runs_write_the_json_keys(pool, tmp_path):
    stream, train = pool.map(lambda args: run("bench.py", *args, *MODEL), [
        ["stream", "--turns=3", "--tokens=2", f"--json={tmp_path / 's.json'}", f"--png={tmp_path / 's.png'}"],
        ["train", "--frames=2", "--batch_size=2", "--max_iters=1", f"--json={tmp_path / 't.json'}"]])
    ok(stream)
    result = json.loads((tmp_path / "s.json").read_text())
    assert "machine" in result
    for fusion in casa.FUSIONS:
        assert FRAME_KEYS <= set(result[fusion])
    assert result["insertion"]["kv_tokens_final"] > result["casa"]["kv_tokens_final"]
    assert Image.open(tmp_path / "s.png").size == (900, 600)
    ok(train)
    result = json.loads((tmp_path / "t.json").read_text())
    for fusion in casa.FUSIONS:
        assert {"text_tok_s", "peak_mem_mb", "mfu"} <= set(result[fusion]) and 0 < result[fusion]["mfu"]
    r = run_preloaded("bench.py", "stream", "--fusions=concat")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_table_with_model_options_as_key_space_value():
    """`python bench.py table --n_embd 64`, from a shell."""
    r = ok(run("bench.py", "table", "--n_embd", "64"))
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fusion") and [line.split()[0] for line in lines[1:]] == list(casa.FUSIONS)
    wide, narrow = ok(run_preloaded("bench.py", "table", "--fusions=casa")), ok(
        run_preloaded("bench.py", "table", "--fusions=casa", "--n_embd=64"))
    params = lambda r: int(r.stdout.splitlines()[1].split()[1].replace(",", ""))
    assert params(narrow) == int(lines[3].split()[1].replace(",", "")) and params(narrow) < params(wide)


BAD = {  # arguments -> what the one line must say ({tmp}: a folder of the test)
    "train_frames_0": (["train", "--frames=0"], "frames must be >= 1, got 0"),
    "train_batch_size_0": (["train", "--batch_size=0"], "batch_size must be >= 1, got 0"),
    "train_max_iters_0": (["train", "--max_iters=0"], "max_iters must be >= 1, got 0"),
    "train_old_iters": (["train", "--iters=1"], "unknown option --iters; did you mean --max_iters?"),
    "stream_max_text_0": (["stream", "--max_text=0"], "max_text must be >= 1, got 0"),
    "stream_json_in_a_missing_folder": (["stream", "--json=/missing/x.json"],
                                        "--json=/missing/x.json: no such directory /missing"),
    "stream_png_is_a_folder": (["stream", "--png={tmp}"], "--png={tmp}: is a directory"),
    "stream_takes_no_frames": (["stream", "--frames=2"], "unknown option --frames"),
    "table_fusions_empty": (["table", "--fusions="], "--fusions takes a comma-separated list"),
    "table_takes_no_device": (["table", "--device=cpu"], "unknown option --device"),
    "bad_model_option": (["stream", "--n_head=3"], "must split into 3 heads"),
    "unknown_command": (["strem"], "unknown command 'strem'"),
}


@pytest.fixture(scope="module")
def bad_runs(pool, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_bad")
    jobs = {name: pool.submit(run_preloaded, "bench.py", *[a.format(tmp=tmp) for a in args])
            for name, (args, _) in BAD.items()}
    return tmp, {name: job.result() for name, job in jobs.items()}


@pytest.mark.parametrize("name", BAD)
def test_bad_options_are_one_line_before_any_work(bad_runs, name):
    tmp, results = bad_runs
    assert BAD[name][1].format(tmp=tmp) in one_clean_line(results[name], "bench.py")
    assert results[name].stdout == ""  # no fusion was measured first
    assert list(tmp.iterdir()) == []


def test_first_reached_finds_the_first_eval_at_each_level():
    import bench
    curve = [{"iter": 10, "train_s": 5.0, "text_tokens": 100, "accuracy": {"color": 0.4, "shape": 0.85}},
             {"iter": 20, "train_s": 9.0, "text_tokens": 200, "accuracy": {"color": 0.8, "shape": 0.5}},
             {"iter": 30, "train_s": 14.0, "text_tokens": 300, "accuracy": {"color": 0.95, "shape": 0.95}}]
    table = bench.first_reached(curve, offset_s=100.0)
    assert table["color"] == {"50%": {"iter": 20, "train_s": 109.0, "text_tokens": 200},
                              "80%": {"iter": 20, "train_s": 109.0, "text_tokens": 200},
                              "90%": {"iter": 30, "train_s": 114.0, "text_tokens": 300}}
    assert table["shape"]["50%"]["iter"] == 10 and table["shape"]["90%"]["iter"] == 30
    assert table["count"] == {"50%": None, "80%": None, "90%": None}  # a task never evaluated never reached


def test_learn_smoke_run_writes_curves_thresholds_and_png(tmp_path):
    """bench.py learn end to end on the tiny model: one shared pretrained encoder, two fusions, a curve each."""
    train_args = "--max_iters=4 --eval_interval=2 --batch_size=4 --eval_per_task=2 --progress=false " \
                 "--tasks=color,shape,count,position"
    r = ok(run("bench.py", "learn", "--fusions=insertion,casa", f"--out_dir={tmp_path / 'learn'}", "--vision_iters=2",
               f"--train_args={train_args}", f"--json={tmp_path / 'l.json'}", f"--png={tmp_path / 'l.png'}",
               *MODEL))
    assert "to 90%" in r.stdout
    result = json.loads((tmp_path / "l.json").read_text())
    assert set(result) == {"machine", "options", "insertion", "casa"}
    for fusion in ("insertion", "casa"):
        res = result[fusion]
        assert res["vision_pretrain_s"] > 0
        assert [e["iter"] for e in res["curve"]] == [2, 4]
        assert {"train_s", "data_s", "text_tokens", "accuracy", "blind_accuracy", "shifted_accuracy"} <= set(
            res["curve"][0])
        assert set(res["reached"]) == {"color", "shape", "count", "position"}
        assert all(set(levels) == {"50%", "80%", "90%"} for levels in res["reached"].values())
    assert (tmp_path / "learn" / "vision" / "ckpt.pt").exists()  # one encoder, shared by both fusions
    assert Image.open(tmp_path / "l.png").size == (900, 4 * 300)


# ------------------------------------------------------------------------------------------------ paper

@pytest.fixture(scope="module")
def quick_paper(tmp_path_factory):
    """`bench.py paper --quick` once: its run folders and its four outputs."""
    out = tmp_path_factory.mktemp("paper")
    outputs = {kind: out / f"paper.{kind}" for kind in ("json", "md", "png", "gif")}
    argv = ["paper", "--quick", f"--out_dir={out / 'runs'}", *(f"--{k}={p}" for k, p in outputs.items())]
    first = ok(run("bench.py", *argv))
    return out / "runs", outputs, argv, first


def test_paper_quick_writes_every_table_key(quick_paper):
    runs, outputs, _, first = quick_paper
    r = json.loads(outputs["json"].read_text())
    assert {"machine", "options", "budget", "lm_on_descriptions", "setting_i", "setting_ii", "captioning"} <= set(r)
    columns = {*bench.COARSE_TASKS, *bench.FINE_TASKS, "coarse", "fine", "mean"}
    assert set(r["setting_i"]) == set(bench.VARIANTS)
    for row in r["setting_i"].values():
        assert set(row["mean"]) == columns and set(row["blind"]) == columns
        assert set(row["seeds"]) == {str(s) for s in bench.SEEDS}
        assert all(columns <= set(seed) for seed in row["seeds"].values())
    assert set(r["setting_ii"]) == {"insertion", *bench.ADAPTED}
    for f in bench.ADAPTED:
        assert set(r["setting_ii"][f]["drop"]) == columns
    assert set(r["captioning"]) == set(casa.FUSIONS)
    for c in r["captioning"].values():
        assert {"exact", "soft", "blind_exact", "blind_soft", "ms_per_frame", "cache_tokens", "cache_bytes"} <= set(c)
        assert 0 <= c["exact"] <= c["soft"] <= 1  # an exact caption names the right colours and shapes too
    assert r["captioning"]["insertion"]["cache_tokens"] > r["captioning"]["cross"]["cache_tokens"]
    md = outputs["md"].read_text()
    assert all(h in md for h in ("### Setting (i)", "### Setting (ii)", "### Live captioning"))
    assert all(f"| {v} |" in md for v in bench.VARIANTS)
    assert Image.open(outputs["png"]).size[0] > 600
    assert Image.open(outputs["gif"]).n_frames >= 8  # a held-out clip has 8 to 64 frames
    assert first.stdout.count("training: train.py") == 1 + 2 * len(bench.VARIANTS) + 3 + len(bench.ADAPTED)


def test_paper_second_invocation_only_redraws(quick_paper):
    runs, outputs, argv, _ = quick_paper
    ckpts = sorted(runs.rglob("ckpt.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    before = json.loads(outputs["json"].read_text())
    outputs["md"].unlink()
    again = ok(run("bench.py", *argv))
    assert "training:" not in again.stdout and "resuming:" not in again.stdout
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps
    after = json.loads(outputs["json"].read_text())
    assert after["setting_i"] == before["setting_i"] and after["captioning"] == before["captioning"]
    assert outputs["md"].exists()


def test_paper_lm_starts_every_vlm_and_adapting_keeps_the_frozen_weights(quick_paper):
    runs = quick_paper[0]
    vision, lm = load(runs / "vision" / "ckpt.pt"), load(runs / "lm" / "ckpt.pt")
    assert lm["train_config"]["text_only"] and lm["model_config"]["fusion"] == "insertion"
    # the text-only LM passed the pretrained encoder through untouched: it never saw an image
    assert all(torch.equal(t, lm["model"][name]) for name, t in vision["model"].items() if name.startswith("vision."))
    # a VLM of setting (i) starts with exactly the LM's weights (fusion layers: copies of self-attention)
    cfg = dict(lm["model_config"], fusion="casa")
    model = casa.VLM(casa.VLMConfig(**cfg))
    new = model.load_pretrained(lm["model"])
    own = model.state_dict()
    assert all(torch.equal(t, own[name]) for name, t in lm["model"].items())
    assert new and all(".cross." in name or ".norm2." in name for name in new)
    # setting (ii): after training, every weight the adapted model shares with its insertion source is bit-identical
    source = load(runs / "i" / f"insertion_s{bench.SEEDS[0]}" / "ckpt.pt")["model"]
    for f in bench.ADAPTED:
        adapted = load(runs / "ii" / f / "ckpt.pt")
        assert all(torch.equal(t, adapted["model"][name]) for name, t in source.items())
        trained = [name for name in adapted["model"] if name not in source]
        assert trained and all(".cross." in name or ".norm2." in name for name in trained)
