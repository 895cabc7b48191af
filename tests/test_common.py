"""Tests for common.py, what every script stands on: the option parser, devices and dtypes, the out_dir lock, output
paths, checkpoints (atomic writes; every unusable checkpoint refused in one line on every path that loads one), and
the layering: which module may import which."""
import ast
import os
import re
import signal
from contextlib import contextmanager
from dataclasses import fields

import pytest
import torch

from casa import VLMConfig
from common import (UsageError, build, build_model, check_writable, load_checkpoint, load_model, load_weights,
                    lock_out_dir, lr_factor, parse_options, pick_device, pick_dtype, save_checkpoint)
from conftest import ROOT, TINY, load, one_clean_line, run, run_preloaded
from train import TrainConfig

CONFIGS = [("training options", TrainConfig), ("model options", VLMConfig)]  # what train.py parses


def parse(argv):
    _, (train_options, model_options) = parse_options(argv, CONFIGS, "doc")
    return train_options, model_options


# ------------------------------------------------------------------------------------------------ options


def test_bools():
    for text in ("1", "true", "True", "YES", "on"):
        assert parse([f"--compile={text}"])[0] == {"compile": True}
    for text in ("0", "false", "FALSE", "no", "Off"):
        assert parse([f"--progress={text}"])[0] == {"progress": False}
    _, model = parse(["--gate=yes", "--block_wise=0"])
    assert model == {"gate": True, "block_wise": False}
    for text in ("maybe", "", "2", "truee"):
        with pytest.raises(UsageError, match="--compile expects true or false"):
            parse([f"--compile={text}"])
    # a bool alone means true; followed by a value, it takes it
    assert parse(["--compile", "--progress", "off"])[0] == {"compile": True, "progress": False}
    assert parse(["--progress"])[0] == {"progress": True}


def test_types_and_both_forms():
    given, model = parse(["--batch_size=8", "--lr=1", "--out_dir=x=y", "--n_embd=64", "--fusion=cross",
                          "--rope_base=500"])
    cfg = build(TrainConfig, given)
    assert cfg.batch_size == 8 and type(cfg.batch_size) is int
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.out_dir == "x=y"  # only the first '=' separates key and value
    assert model == {"n_embd": 64, "fusion": "cross", "rope_base": 500.0} and type(model["rope_base"]) is float
    assert cfg.max_iters == TrainConfig().max_iters  # untouched options keep their defaults
    assert parse([]) == ({}, {}) and build(TrainConfig, {}) == TrainConfig()
    # --key value is the same as --key=value, and a value may start with '-'
    assert parse(["--batch_size", "8", "--lr", "-1", "--out_dir", "x=y", "--n_embd", "64", "--fusion", "cross",
                  "--rope_base", "500"]) == (given | {"lr": -1.0}, model)
    assert parse(["--max_iters=3", "--max_iters", "5"])[0] == {"max_iters": 5}  # the last one counts


def test_repeatable_options_collect_a_list():
    from sample import SampleConfig
    _, (options,) = parse_options(["--image", "a.png", "--image=b.png", "--prompt", "what?"],
                                  [("options", SampleConfig)], "doc")
    assert options == {"image": ["a.png", "b.png"], "prompt": ["what?"]}
    assert build(SampleConfig, options).image == ["a.png", "b.png"]


@pytest.mark.parametrize("arg, message", [
    ("--batch_size=abc", "--batch_size expects int, got 'abc'"),
    ("--batch_size=1.5", "--batch_size expects int"),
    ("--lr=fast", "--lr expects a number, got 'fast'"),
    ("--n_layer=", "--n_layer expects int"),
    ("--max_iter=3", "unknown option --max_iter; did you mean --max_iters?"),
    ("--vocab_size=10", "unknown option --vocab_size"),  # comes from the tokenizer
    ("--max_iters", "--max_iters needs a value"),
    ("max_iters=3", "expected an option --key=value or --key value, got 'max_iters=3'"),
    ("-max_iters=3", "expected an option --key=value"),
    ("--eval_interval=0", "eval_interval must be >= 1, got 0"),
    ("--grad_accum=0", "grad_accum must be >= 1, got 0"),
    ("--batch_size=-1", "batch_size must be >= 1, got -1"),
    ("--lr=nan", "lr must be a finite number, got nan"),
    ("--lr=-inf", "lr must be a finite number, got -inf"),
    ("--grad_clip=0", "grad_clip must be > 0.0, got 0.0"),
])
def test_bad_options_are_one_line_naming_the_option(arg, message):
    with pytest.raises(UsageError) as e:
        build(TrainConfig, parse([arg])[0])
    assert str(e.value).startswith(message), (arg, str(e.value))
    assert "\n" not in str(e.value)


def test_build_names_where_options_came_from():
    with pytest.raises(UsageError, match=r"^ckpt.pt: unknown option 'colour'$"):
        build(TrainConfig, {"colour": 1}, "ckpt.pt: ")
    with pytest.raises(UsageError, match=r"^ckpt.pt: n_head must be >= 1, got 0$"):
        build(VLMConfig, {"n_head": 0}, "ckpt.pt: ")
    with pytest.raises(UsageError, match="n_embd must be int, got '32'"):
        build(VLMConfig, {"n_embd": "32"})


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--batch_size=8", "-h"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "doc" and "--max_iters=1500" in "\n".join(lines)
    for f in fields(VLMConfig):
        assert (f"  --{f.name}={f.default}" in lines) == (f.name not in ("vocab_size", "image_token_id")), f.name


def test_commands(capsys):
    from bench import COMMANDS
    assert parse_options(["stream", "--turns", "3", "--n_embd=64"], None, "doc", COMMANDS) == \
        ("stream", [{"turns": 3}, {"n_embd": 64}])
    with pytest.raises(UsageError, match=re.escape(f"unknown command 'strem'; commands are {', '.join(COMMANDS)} "
                                                   "(did you mean stream?)")):
        parse_options(["strem"], None, "doc", COMMANDS)
    with pytest.raises(UsageError, match="unknown option --device"):  # each command takes its own options only
        parse_options(["table", "--device=cpu"], None, "doc", COMMANDS)
    with pytest.raises(UsageError, match="unknown option --iters; did you mean --max_iters?"):
        parse_options(["train", "--iters=1"], None, "doc", COMMANDS)
    with pytest.raises(SystemExit) as e:
        parse_options([], None, "doc", COMMANDS)
    assert e.value.code == 2 and "commands: stream, train, step, table" in capsys.readouterr().out


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_iters=10, max_iters=110, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)
    assert lr_factor(110, cfg) == pytest.approx(0.1) and lr_factor(500, cfg) == pytest.approx(0.1)
    factors = [lr_factor(it, cfg) for it in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    flat = TrainConfig(warmup_iters=0, min_lr_ratio=1.0, max_iters=3)
    assert {lr_factor(it, flat) for it in range(10)} == {1.0}  # what the resume tests rely on


# ------------------------------------------------------------------------------------------------ system


def test_device_and_dtype_names_are_checked():
    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cuda", "mps", "cpu")
    assert pick_dtype("float16", "cpu") is torch.float16
    assert pick_dtype("auto", "cpu") is torch.float32
    for name in ("gpu", "xla", "cuda:x"):
        with pytest.raises(UsageError, match="--device expects"):
            pick_device(name)
    for name in ("float64", "bogus", "Tensor"):
        with pytest.raises(UsageError, match="--dtype expects"):
            pick_dtype(name, "cpu")


def test_a_device_this_machine_lacks_is_refused(monkeypatch):
    """Both sides on every machine (the suite hides any real GPU: conftest.py)."""
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match=f"--device={name}: this machine has no CUDA GPU"):
            pick_device(name)
    if not torch.backends.mps.is_available():
        with pytest.raises(UsageError, match="MPS is not available"):
            pick_device("mps")
    with one_fake_gpu(monkeypatch):
        assert pick_device("cuda") == "cuda"
        with pytest.raises(UsageError, match=r"--device=cuda:1: this machine has 1 CUDA GPU"):
            pick_device("cuda:1")


def test_cuda_attention_runs_without_cudnn_kernels(monkeypatch):
    """cuDNN's attention builds a plan per new shape: a training step 2-12x slower on an H200 (results/gpu.md)."""
    with one_fake_gpu(monkeypatch):
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert pick_device("cpu") == "cpu" and torch.backends.cuda.cudnn_sdp_enabled()
        assert pick_device("cuda") == "cuda" and not torch.backends.cuda.cudnn_sdp_enabled()


@contextmanager
def one_fake_gpu(monkeypatch):
    """torch reports one CUDA GPU; the global attention-kernel switch pick_device turns is put back afterwards."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


@pytest.mark.parametrize("script, args", [
    ("train.py", ["--out_dir={tmp}/out"]),
    ("sample.py", ["--ckpt={ckpt}", "--scene=1"]),
    ("bench.py", ["stream", "--turns=1"]),
    ("pretrain_vision.py", ["--out_dir={tmp}/out"]),
])
def test_device_cuda_without_a_gpu_is_one_line(tiny_ckpt, tmp_path, script, args):
    args = [a.format(tmp=tmp_path, ckpt=tiny_ckpt) for a in args]
    line = one_clean_line(run_preloaded(script, *args, "--device=cuda"), script)
    assert "--device=cuda: this machine has no CUDA GPU" in line
    assert not (tmp_path / "out").exists()


def test_lock_out_dir_admits_one_run_at_a_time(tmp_path):
    lock = lock_out_dir(tmp_path / "out")
    with pytest.raises(UsageError, match="is in use by another run"):
        lock_out_dir(tmp_path / "out")
    lock.close()
    lock_out_dir(tmp_path / "out").close()  # free again
    (tmp_path / "file").touch()
    with pytest.raises(UsageError, match="cannot use --out_dir"):
        lock_out_dir(tmp_path / "file")


def test_check_writable(tmp_path):
    check_writable("", "json")  # not asked for
    check_writable(str(tmp_path / "x.json"), "json")
    check_writable("x.json", "json")  # the current folder
    with pytest.raises(UsageError, match=f"--json={tmp_path}/missing/x.json: no such directory {tmp_path}/missing"):
        check_writable(str(tmp_path / "missing" / "x.json"), "json")
    with pytest.raises(UsageError, match=f"--png={tmp_path}: is a directory"):
        check_writable(str(tmp_path), "png")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ checkpoints


def test_save_checkpoint_is_atomic(tmp_path):
    """A save that fails half-way (here: something torch cannot save) leaves the previous checkpoint intact."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"iter": 1, "w": torch.ones(3)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"iter": 2, "w": torch.zeros(1000), "bad": lambda: 0})
    assert load(path)["iter"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_an_interrupt_waits_for_the_checkpoint_write(tmp_path, monkeypatch):
    """Ctrl-C landing inside torch.save: the write finishes (the file is whole, no temporary left), then the
    interrupt takes effect as a plain KeyboardInterrupt, which run_script turns into one line and exit 130."""
    path, real_save = tmp_path / "ckpt.pt", torch.save

    def interrupted_save(state, f):
        os.kill(os.getpid(), signal.SIGINT)  # delivered now, in the middle of the write
        real_save(state, f)
    monkeypatch.setattr(torch, "save", interrupted_save)
    # Ctrl-C's usual handler, even where this process was started ignoring SIGINT (a background job of a script)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"iter": 7, "w": torch.arange(1000)})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert load(path)["iter"] == 7 and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_an_interrupted_script_is_one_line_even_inside_a_write(tmp_path):
    """The same through a whole script: train.py, interrupted by SIGTERM while it writes eval.json."""
    code = ("import os, signal, sys, common, train\n"
            "def write(f):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)  # lands inside the write\n"
            "    f.write(b'{}')\n"
            "train.save_json = lambda path, obj: common.write_atomic(path, write)\n"
            "sys.argv = ['train.py'] + sys.argv[1:]\n"
            "common.run_script(train.main, 'train.py')")
    r = run("-c", code, f"--out_dir={tmp_path}", "--max_iters=1", *TINY)
    assert r.returncode == 143 and r.stderr == "train.py: terminated (the last checkpoint is intact)\n", r.stderr
    assert (tmp_path / "eval.json").read_text() == "{}" and not list(tmp_path.glob("*.tmp"))


def test_load_model_from_a_checkpoint(tiny_ckpt):
    model, tok, ckpt = load_model(str(tiny_ckpt), "cpu")
    assert not model.training and model.config.n_embd == 32 and ckpt["iter"] == 2
    assert (tok.vocab_size, tok.image_id) == (model.config.vocab_size, model.config.image_token_id)


def test_unusable_checkpoints_raise_one_line(tiny_ckpt, tmp_path):
    real = load(tiny_ckpt)
    cases = {  # file -> what the message says
        "nope.pt": (None, "no checkpoint at"),
        "empty.pt": (b"", "is empty (0 bytes): not a checkpoint"),
        "text.pt": (b"not a checkpoint\n", "cannot read checkpoint"),
        "list.pt": ([1, 2], "is not a casa checkpoint of this kind (it has no model)"),
        "no_tokenizer.pt": ({k: v for k, v in real.items() if k != "tokenizer"}, "(it has no tokenizer)"),
        "config_list.pt": ({**real, "model_config": [1]}, "its model or model_config is not a dict"),
        "bad_tokenizer.pt": ({**real, "tokenizer": {"alphabet": "ab"}}, "unusable tokenizer"),
        "absurd.pt": ({**real, "model_config": {**real["model_config"], "n_layer": -1}},
                      "n_layer must be >= 1, got -1"),
        "vocab.pt": ({**real, "model_config": {**real["model_config"], "vocab_size": 7}},
                     "does not match its tokenizer"),
        "shapes.pt": ({**real, "model": {k: torch.zeros(*(n + 1 for n in v.shape)) for k, v in real["model"].items()}},
                      "its weights do not fit its model_config"),
    }
    for name, (content, says) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(UsageError, match=re.escape(says)) as e:
            load_model(str(path), "cpu")
        assert str(path) in str(e.value) and "\n" not in str(e.value), name
    with pytest.raises(UsageError, match=re.escape("(it has no heads)")):
        load_checkpoint(str(tiny_ckpt), needs=("heads",))
    model, _ = build_model(real, "x")
    with pytest.raises(UsageError, match="^y: its weights do not fit"):
        load_weights(model, {"blocks.0.nope": torch.zeros(1)}, "y")


# Every path that loads a checkpoint, and what is wrong with the checkpoint. The train.py checkpoint (tiny_ckpt)
# is the base of every broken one, but for pretrain_vision.py --init_from=resume, which needs its own (encoder_ckpt).

def with_config(**changes):
    return lambda ckpt: {**ckpt, "model_config": {**ckpt["model_config"], **changes}}


DEFECTS = {
    "empty_file": None,  # 0 bytes
    "wrong_shapes": lambda ckpt: {**ckpt, "model": {k: torch.zeros(*(n + 1 for n in v.shape))
                                                    for k, v in ckpt["model"].items()}},
    "n_head_0": with_config(n_head=0),
    "n_layer_negative": with_config(n_layer=-1),
    "n_embd_string": with_config(n_embd="32"),
    "too_big": with_config(n_embd=2 ** 28),  # a 100 GiB embedding: refused before anything is allocated
    "n_embd_missing": lambda ckpt: {**ckpt, "model_config": {k: v for k, v in ckpt["model_config"].items()
                                                             if k != "n_embd"}},
}
RESUME_DEFECTS = {  # what only resuming relies on
    "train_config_unknown_key": lambda ckpt: {**ckpt, "train_config": {**ckpt["train_config"], "colour": 1}},
    "no_iter": lambda ckpt: {k: v for k, v in ckpt.items() if k != "iter"},
}
LOADERS = {  # name -> script, its arguments ({ckpt}: the broken file; {out}: the out_dir it is in, as ckpt.pt)
    "sample": ("sample.py", ["--ckpt={ckpt}", "--scene=1", "--max_new_tokens=2"]),
    "train_init_from": ("train.py", ["--init_from={ckpt}", "--out_dir={out}/new", "--max_iters=1", "--batch_size=2",
                                     "--eval_per_task=1", "--progress=false"]),
    "train_resume": ("train.py", ["--init_from=resume", "--out_dir={out}"]),
    "pretrain_resume": ("pretrain_vision.py", ["--init_from=resume", "--out_dir={out}"]),
    "probe": ("exercises/vision_probe.py", ["--ckpt={ckpt}", "--max_iters=1", "--batch_size=2"]),
}
CASES = [(loader, defect) for loader in LOADERS for defect in DEFECTS] + \
        [(loader, defect) for loader in ("train_resume", "pretrain_resume") for defect in RESUME_DEFECTS]


def broken_checkpoint(base, defect, out):
    """out/ckpt.pt: the checkpoint at base, broken in this way."""
    out.mkdir(parents=True)
    path = out / "ckpt.pt"
    if defect == "empty_file":
        path.write_bytes(b"")
    else:
        torch.save({**DEFECTS, **RESUME_DEFECTS}[defect](load(base)), path)
    return path


@pytest.fixture(scope="module")
def broken_runs(pool, tiny_ckpt, encoder_ckpt, tmp_path_factory):
    """Every loader on every broken checkpoint, run two at a time."""
    d = tmp_path_factory.mktemp("broken")
    jobs = {}
    for loader, defect in CASES:
        out = d / loader / defect
        path = broken_checkpoint(encoder_ckpt if loader == "pretrain_resume" else tiny_ckpt, defect, out)
        script, args = LOADERS[loader]
        jobs[loader, defect] = pool.submit(run_preloaded, script, *[a.format(ckpt=path, out=out) for a in args])
    return d, {case: job.result() for case, job in jobs.items()}


@pytest.mark.parametrize("loader, defect", CASES)
def test_an_unusable_checkpoint_is_one_line_on_every_path(broken_runs, loader, defect):
    d, results = broken_runs
    out = d / loader / defect
    script = LOADERS[loader][0]
    line = one_clean_line(results[loader, defect], script)
    assert str(out / "ckpt.pt") in line, line  # it names the file
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["ckpt.pt"]  # nothing else written


# Which of the project's modules each module may import: the model and the generator stand alone, data.py stands on
# the generator, common.py on those. No module imports a script (a file with a __main__ block), so the scripts are
# peers and there is no import circle.
LAYERS = {"casa": set(), "scenes": set(), "figures": set(), "data": {"scenes"}, "common": {"casa", "scenes", "data"}}


def project_imports(path, modules):
    """The project modules `path` imports anywhere in it (at the top or inside a function)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & modules


def test_layering():
    sources = sorted(ROOT.glob("*.py")) + sorted((ROOT / "exercises").glob("*.py"))
    modules = {p.stem for p in sources}
    scripts = {p.stem for p in sources if 'if __name__ == "__main__":' in p.read_text()}
    assert set(LAYERS) - {"figures"} <= modules - scripts and {"train", "sample", "show_data"} <= scripts
    for path in sources:
        imported = project_imports(path, modules)
        assert not imported & scripts, (path.name, "imports a script", imported & scripts)
        if path.stem in LAYERS:
            assert imported <= LAYERS[path.stem], (path.name, imported - LAYERS[path.stem])
