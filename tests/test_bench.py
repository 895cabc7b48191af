"""Tests for bench.py: the smoke runs of stream and train (their JSON keys, the stream's picture drawn again from
its JSON), the analytic table, and one-line errors for bad options, checked in the main process before any worker
starts or any output is needed."""
import json

import pytest
from PIL import Image

import casa
from conftest import MODEL, check_bad_option, ok, run, run_bad_options, run_preloaded

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
    ok(run_preloaded("bench.py", "stream", "--redraw", f"--json={tmp_path / 's.json'}", f"--png={tmp_path / 'r.png'}"))
    assert Image.open(tmp_path / "r.png").tobytes() == Image.open(tmp_path / "s.png").tobytes()
    ok(train)
    result = json.loads((tmp_path / "t.json").read_text())
    for fusion in casa.FUSIONS:
        assert {"text_tok_s", "peak_mem_mb", "mfu"} <= set(result[fusion]) and 0 < result[fusion]["mfu"]
    r = run_preloaded("bench.py", "stream", "--fusions=concat")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_step_smoke_run_times_each_set_of_attention_kernels_and_way_of_batching_rows(tmp_path):
    ok(run("bench.py", "step", "--fusions=cross", "--steps=1", "--batch_size=2", "--frames=2", "--kernels=all,math",
           f"--json={tmp_path / 's.json'}", *MODEL))
    result = json.loads((tmp_path / "s.json").read_text())["cross"]
    assert result["dtype"] == "float32" and result["ms_per_step_all"] > 0 and result["ms_per_step_math"] > 0
    assert result["ms_per_step_all_by_length"] > 0 and result["ms_per_step_math_by_length"] > 0
    assert "ms_per_step_no_cudnn" not in result


def test_data_smoke_run_writes_rates_and_the_wait_share(tmp_path):
    r = ok(run("bench.py", "data", "--mixes=demo,video", "--workers=0,1", "--batches=2", "--steps=1",
               "--batch_size=2", "--frames=2", f"--json={tmp_path / 'd.json'}", *MODEL))
    result = json.loads((tmp_path / "d.json").read_text())
    for mix in ("demo", "video"):
        assert result["mixes"][mix]["ms_per_batch_one_core"] > 0
        assert set(result["mixes"][mix]["batches_per_s"]) == {"0", "1"}
    assert set(result["demo_step"]) == {"0", "1"}
    assert all(0 <= step["data_wait_share"] < 1 for step in result["demo_step"].values())
    assert "demo step with 1 worker(s):" in r.stdout


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
    "data_unknown_mix": (["data", "--mixes=demo,chess"], "--mixes takes a comma-separated list"),
    "data_workers_not_counts": (["data", "--workers=0,two"], "--workers takes comma-separated counts"),
    "data_workers_negative": (["data", "--workers=-1"], "--workers takes counts >= 0"),
    "train_frames_0": (["train", "--frames=0"], "frames must be >= 1, got 0"),
    "train_batch_size_0": (["train", "--batch_size=0"], "batch_size must be >= 1, got 0"),
    "train_max_iters_0": (["train", "--max_iters=0"], "max_iters must be >= 1, got 0"),
    "train_old_iters": (["train", "--iters=1"], "unknown option --iters; did you mean --max_iters?"),
    "step_unknown_kernels": (["step", "--kernels=all,cudnn"], "--kernels takes a comma-separated list"),
    "step_unknown_rows": (["step", "--rows=one,sorted"], "--rows takes a comma-separated list"),
    "step_steps_0": (["step", "--steps=0"], "steps must be >= 1, got 0"),
    "stream_max_text_0": (["stream", "--max_text=0"], "max_text must be >= 1, got 0"),
    "stream_json_in_a_missing_folder": (["stream", "--json=/missing/x.json"],
                                        "--json=/missing/x.json: no such directory /missing"),
    "stream_png_is_a_folder": (["stream", "--png={tmp}"], "--png={tmp}: is a directory"),
    "stream_takes_no_frames": (["stream", "--frames=2"], "unknown option --frames"),
    "stream_redraw_without_png": (["stream", "--redraw", "--json=results/stream_cpu.json"], "--redraw draws --png"),
    "learn_is_an_experiment_now": (["learn"], "unknown command 'learn'"),
    "table_fusions_empty": (["table", "--fusions="], "--fusions takes a comma-separated list"),
    "table_takes_no_device": (["table", "--device=cpu"], "unknown option --device"),
    "bad_model_option": (["stream", "--n_head=3"], "must split into 3 heads"),
    "unknown_command": (["strem"], "unknown command 'strem'"),
}


@pytest.fixture(scope="module")
def bad_runs(pool, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_bad")
    return tmp, run_bad_options(pool, "bench.py", BAD, tmp)


@pytest.mark.parametrize("name", BAD)
def test_bad_options_are_one_line_before_any_work(bad_runs, name):
    check_bad_option(bad_runs, BAD, name, "bench.py")
