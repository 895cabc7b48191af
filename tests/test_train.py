"""Tests for train.py: the command line, learning, exact resume, checkpoints, adaptation, DDP and folder data.

Everything uses a tiny model. The scripts run as subprocesses, two at a time (the slow part is importing torch), with
OMP_NUM_THREADS=1 so that runs are reproducible and do not fight over the cores."""
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from PIL import Image

import data
import train
from casa import VLM, VLMConfig

ROOT = Path(__file__).resolve().parent.parent
MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--vit_layers=1", "--vit_dim=32", "--vit_heads=2",
         "--image_size=32", "--patch_size=8"]
TINY = MODEL + ["--batch_size=4", "--eval_per_task=2", "--progress=false"]
EXACT = ["--warmup_iters=0", "--min_lr_ratio=1.0"]  # a constant LR: the schedule does not depend on max_iters
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                         "MASTER_PORT")}
ENV["OMP_NUM_THREADS"] = "1"


def run(*args, module=None):
    cmd = [sys.executable] + (["-m", module] if module else []) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def run_train(*args):
    return run("train.py", *args)


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def one_clean_line(r, code=2):
    """A usage error: the given exit code and exactly one line on stderr, 'train.py: error: ...'."""
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr
    assert r.stderr.startswith("train.py: error: "), r.stderr
    return r.stderr.strip()


def train_log(out_dir):
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "eval"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as ex:
        yield ex


# ------------------------------------------------------------------------------------------------ command line


def test_parse_args_bools():
    for text in ("1", "true", "True", "YES", "on"):
        assert train.parse_args([f"--compile={text}"])[0] == {"compile": True}
    for text in ("0", "false", "FALSE", "no", "Off"):
        assert train.parse_args([f"--progress={text}"])[0] == {"progress": False}
    _, model = train.parse_args(["--gate=yes", "--block_wise=0"])
    assert model == {"gate": True, "block_wise": False}
    for text in ("maybe", "", "2", "truee"):
        with pytest.raises(train.UsageError, match="--compile expects true or false"):
            train.parse_args([f"--compile={text}"])


def test_parse_args_types():
    given, model = train.parse_args(["--batch_size=8", "--lr=1", "--out_dir=x=y", "--n_embd=64", "--fusion=cross",
                                   "--rope_base=500"])
    cfg = train.train_config(given)
    assert cfg.batch_size == 8 and type(cfg.batch_size) is int
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.out_dir == "x=y"  # only the first '=' separates key and value
    assert model == {"n_embd": 64, "fusion": "cross", "rope_base": 500.0} and type(model["rope_base"]) is float
    assert cfg.max_iters == train.TrainConfig().max_iters  # untouched options keep their defaults
    assert train.parse_args([]) == ({}, {}) and train.train_config({}) == train.TrainConfig()
    for arg, message in [("--batch_size=abc", "--batch_size expects int, got 'abc'"),
                         ("--batch_size=1.5", "--batch_size expects int"),
                         ("--lr=fast", "--lr expects float, got 'fast'"),
                         ("--n_layer=", "--n_layer expects int"),
                         ("--max_iter=3", "unknown option --max_iter; did you mean --max_iters?"),
                         ("--vocab_size=10", "unknown option --vocab_size"),  # comes from the tokenizer
                         ("--max_iters", "expected --key=value"),
                         ("max_iters=3", "expected --key=value"),
                         ("-max_iters=3", "expected --key=value"),
                         ("--eval_interval=0", "--eval_interval must be >= 1"),
                         ("--grad_accum=0", "--grad_accum must be >= 1"),
                         ("--batch_size=-1", "--batch_size must be >= 1")]:
        with pytest.raises(train.UsageError) as e:
            train.train_config(train.parse_args([arg])[0])
        assert str(e.value).startswith(message), (arg, str(e.value))
        assert "\n" not in str(e.value)


def test_parse_args_help(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--batch_size=8", "-h"])
    assert e.value.code == 0
    assert "--max_iters=1500" in capsys.readouterr().out


def test_device_and_dtype_names_are_checked():
    assert train.pick_device("cpu") == "cpu" and train.pick_device("cuda:1") == "cuda:1"
    assert train.pick_dtype("float16", "cpu") is torch.float16
    assert train.pick_dtype("auto", "cpu") is torch.float32
    with pytest.raises(train.UsageError, match="--device expects"):
        train.pick_device("gpu")
    for name in ("float64", "bogus", "Tensor"):
        with pytest.raises(train.UsageError, match="--dtype expects"):
            train.pick_dtype(name, "cpu")


CLI_ERRORS = {  # arguments -> what the one line must say
    "unknown": (["--max_iter=3"], "did you mean --max_iters?"),
    "int": (["--batch_size=abc"], "--batch_size expects int, got 'abc'"),
    "bool": (["--compile=maybe"], "--compile expects true or false, got 'maybe'"),
    "fusion": (["--fusion=concat"], "concat"),
    "no_data_jsonl": (["--data={empty}"], "data.jsonl"),
}


@pytest.fixture(scope="module")
def cli(pool, tmp_path_factory):
    """--help and every bad command line of CLI_ERRORS, run in parallel."""
    empty = tmp_path_factory.mktemp("folder_without_data_jsonl")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(empty / "a.png")
    out = tmp_path_factory.mktemp("cli_out")
    jobs = {"help": pool.submit(run_train, "--help")}
    for name, (args, _) in CLI_ERRORS.items():
        args = [a.format(empty=empty) for a in args]
        jobs[name] = pool.submit(run_train, *TINY, f"--out_dir={out / name}", "--max_iters=2", *args)
    return {name: job.result() for name, job in jobs.items()} | {"out": out}


def test_help_lists_every_option_with_its_default(cli):
    r = ok(cli["help"])
    lines = r.stdout.splitlines()
    for f in fields(train.TrainConfig):
        assert f"  --{f.name}={f.default}" in lines, f.name
    for f in fields(VLMConfig):
        listed = f"  --{f.name}={f.default}" in lines
        assert listed == (f.name not in ("vocab_size", "image_token_id")), f.name
    assert r.stderr == ""


@pytest.mark.parametrize("name", CLI_ERRORS)
def test_bad_command_line_is_one_clean_line(cli, name):
    line = one_clean_line(cli[name])
    assert CLI_ERRORS[name][1] in line
    assert not (cli["out"] / name / "ckpt.pt").exists()


# ------------------------------------------------------------------------------------------------ learning


def tiny_model(fusion="casa"):
    tok = data.Tokenizer()
    torch.manual_seed(0)
    cfg = VLMConfig(image_size=32, patch_size=8, vit_layers=1, vit_dim=32, vit_heads=2, n_layer=2, n_head=2,
                    n_embd=32, fusion=fusion, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    return VLM(cfg), tok


def optimizer_for(model, **overrides):
    cfg = train.TrainConfig(**overrides)
    opt = train.make_optimizer(model, {name for name, _ in model.named_parameters()}, cfg, fused=False)
    for group in opt.param_groups:
        group["lr"] = group["base_lr"]
    return opt


def step(model, opt, batch):
    _, loss = model(batch.idx, batch.images, batch.targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("fusion", ["insertion", "casa"])
def test_a_few_steps_reduce_the_loss(fusion):
    model, tok = tiny_model(fusion)
    batch = data.collate(data.sample_conversations(random.Random(0), 4, 32), tok, 32)
    opt = optimizer_for(model, lr=3e-3)
    before, _ = train.evaluate(model, [batch], "cpu", nullcontext())
    losses = [step(model, opt, batch) for _ in range(8)]
    after, _ = train.evaluate(model, [batch], "cpu", nullcontext())
    assert losses[0] == pytest.approx(before, rel=1e-5)  # evaluate's loss is the training loss
    assert after < before - 0.5, (before, after)
    assert losses[-1] < losses[0]


def test_a_tiny_batch_can_be_overfit():
    """4 conversations, at most 150 AdamW steps: loss < 0.05 and every last answer exactly right."""
    model, tok = tiny_model("casa")
    convs = data.sample_conversations(random.Random(0), 4, 32)
    batch = data.collate(convs, tok, 32)
    opt = optimizer_for(model, lr=1e-2, weight_decay=0.0)
    for i in range(150):
        step(model, opt, batch)
        if i % 10 == 9:
            loss, accuracy = train.evaluate(model, [batch], "cpu", nullcontext())
            if loss < 0.05 and set(accuracy.values()) == {1.0}:
                break
    assert loss < 0.05 and set(accuracy.values()) == {1.0}, (i, loss, accuracy)
    assert sorted(accuracy) == sorted({c.task for c in convs})
    # the accuracy claims to be what greedy decoding produces: check that on the single-turn conversations
    model.eval()
    for conv in convs:
        if len(conv.turns) == 1:
            turn = conv.turns[0]
            prompt = [tok.image_id] * len(turn.images) + [tok.user_id] + tok.encode(turn.question) \
                + [tok.assistant_id]
            pixels = torch.stack([data.to_tensor(im) for im in turn.images])
            out = model.generate(torch.tensor([prompt]), pixels, 60, stop_token=tok.eos_id)
            assert tok.decode(out[0]) == turn.answer + "<eos>"


def test_lr_schedule():
    cfg = train.TrainConfig(lr=1.0, warmup_iters=10, max_iters=110, min_lr_ratio=0.1)
    assert train.lr_factor(0, cfg) == pytest.approx(0.1)
    assert train.lr_factor(9, cfg) == pytest.approx(1.0)
    assert train.lr_factor(10, cfg) == pytest.approx(1.0)
    assert train.lr_factor(60, cfg) == pytest.approx(0.55)
    assert train.lr_factor(110, cfg) == pytest.approx(0.1) and train.lr_factor(500, cfg) == pytest.approx(0.1)
    factors = [train.lr_factor(it, cfg) for it in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    flat = train.TrainConfig(warmup_iters=0, min_lr_ratio=1.0, max_iters=3)
    assert {train.lr_factor(it, flat) for it in range(10)} == {1.0}  # what the resume test relies on


def test_optimizer_groups():
    model, _ = tiny_model("casa")
    names = {name for name, _ in model.named_parameters()}
    new = {name for name in names if ".cross." in name or ".norm2." in name}
    assert new
    opt = train.make_optimizer(model, new, train.TrainConfig(lr=1e-3, pretrained_lr=1e-4, weight_decay=0.1), False)
    by_id = {id(p): name for name, p in model.named_parameters()}
    for group in opt.param_groups:
        group_names = {by_id[id(p)] for p in group["params"]}
        dims = {p.dim() >= 2 for p in group["params"]}
        assert len(dims) == 1 and group["weight_decay"] == (0.1 if dims == {True} else 0.0)
        assert group["base_lr"] == (1e-3 if group_names <= new else 1e-4)
        assert group_names <= new or not group_names & new
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    frozen = train.make_optimizer(model, new, train.TrainConfig(pretrained_lr=0), False)
    assert {by_id[id(p)] for g in frozen.param_groups for p in g["params"]} == new
    assert {name for name, p in model.named_parameters() if p.requires_grad} == new
    with pytest.raises(train.UsageError, match="nothing to train"):
        train.make_optimizer(model, set(), train.TrainConfig(pretrained_lr=0), False)
    # from scratch every weight is new, and a new vision encoder gets its own learning rate
    scratch = train.make_optimizer(model, names, train.TrainConfig(lr=1e-3, vision_lr=3e-4), False)
    for group in scratch.param_groups:
        vision = {by_id[id(p)].startswith("vision.") for p in group["params"]}
        assert vision in ({True}, {False}) and group["base_lr"] == (3e-4 if vision == {True} else 1e-3)


def test_ranks_iterations_and_micro_batches_get_different_data():
    cfg = train.TrainConfig(batch_size=3, eval_per_task=1, seed=5)
    source = train.Conversations(cfg, 32)

    def fingerprint(convs):
        return [(c.task, [(t.question, t.answer, [im.tobytes() for im in t.images]) for t in c.turns])
                for c in convs]

    base = fingerprint(source.batch(7, rank=0, micro=0))
    assert len(base) == 3
    assert base == fingerprint(train.Conversations(cfg, 32).batch(7, rank=0, micro=0))  # a pure function
    for other in [(7, 1, 0), (8, 0, 0), (7, 0, 1)]:
        assert fingerprint(source.batch(*other)) != base, other
    ranks = [fingerprint(source.batch(it, rank=r, micro=0)) for r in range(2) for it in range(4)]
    assert len({repr(b) for b in ranks}) == len(ranks)
    assert len(source.held_out) == len(data.TASKS)


# ------------------------------------------------------------------------------------------------ training runs


def folder_dataset(folder):
    folder.mkdir()
    lines = []
    for i, (size, color) in enumerate([((40, 30), (255, 0, 0)), ((20, 50), (0, 0, 255)), ((32, 32), (0, 255, 0)),
                                       ((7, 9), (255, 255, 255))]):
        Image.new("RGB", size, color).save(folder / f"{i}.png")
        row = {"image": f"{i}.png", "answer": f"image {i}"}
        if i % 2:
            row["question"] = "which image is it?"
        lines.append(json.dumps(row))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def runs(pool, tmp_path_factory):
    """Every training run of this file, started at once (two at a time); dependent runs are chained."""
    d = tmp_path_factory.mktemp("runs")

    def exact():  # run A, uninterrupted; then a resume of a copy of it that tries to change the fusion
        a = run_train(*TINY, *EXACT, f"--out_dir={d / 'A'}", "--max_iters=6", "--eval_interval=3")
        ok(a)
        shutil.copytree(d / "A", d / "A_copy")
        return a, run_train(*TINY, f"--out_dir={d / 'A_copy'}", "--init_from=resume", "--fusion=cross",
                            "--max_iters=8")

    def interrupted():  # run B: 3 iterations, then resumed to 6
        first = run_train(*TINY, *EXACT, f"--out_dir={d / 'B'}", "--max_iters=3", "--eval_interval=3")
        ok(first)
        shutil.copy(d / "B" / "ckpt.pt", d / "B_ckpt_at_3.pt")
        return first, run_train(*TINY, *EXACT, f"--out_dir={d / 'B'}", "--init_from=resume", "--max_iters=6",
                                "--eval_interval=3")

    def adaptation():  # an insertion model, adapted into a casa one with frozen weights, then resumed
        source = run_train(*TINY, "--fusion=insertion", f"--out_dir={d / 'ins'}", "--max_iters=3")
        ok(source)
        common = ["--batch_size=4", "--eval_per_task=2", "--progress=false", "--max_iters=3", "--eval_interval=3"]
        adapt = run_train(*common, f"--out_dir={d / 'adapt'}", f"--init_from={d / 'ins' / 'ckpt.pt'}",
                          "--fusion=casa", "--pretrained_lr=0")
        ok(adapt)
        shutil.copy(d / "adapt" / "ckpt.pt", d / "adapt_ckpt_at_3.pt")
        resumed = run_train(*common[:-2], f"--out_dir={d / 'adapt'}", "--init_from=resume", "--pretrained_lr=0",
                            "--max_iters=5", "--eval_interval=5")
        return source, adapt, resumed

    def ddp():
        cmd = ["--standalone", "--nproc_per_node=2", "train.py", "--device=cpu", *TINY, f"--out_dir={d / 'ddp'}",
               "--max_iters=2"]
        return run(*cmd, module="torch.distributed.run")

    def folder():
        return run_train(*TINY, f"--data={folder_dataset(d / 'folder_data')}", f"--out_dir={d / 'folder'}",
                         "--max_iters=3")

    jobs = {name: pool.submit(fn) for name, fn in
            [("ddp", ddp), ("adaptation", adaptation), ("interrupted", interrupted), ("exact", exact),
             ("folder", folder)]}
    return d, {name: job.result() for name, job in jobs.items()}


def test_resume_gives_exactly_the_same_losses(runs):
    d, results = runs
    a = results["exact"][0]
    first, resumed = results["interrupted"]
    ok(resumed)
    assert "iter 3:" in first.stdout and "iter 6:" in resumed.stdout and "iter 3:" not in resumed.stdout
    train_a, eval_a = train_log(d / "A")
    train_b, eval_b = train_log(d / "B")
    assert [r["iter"] for r in train_a] == [1, 2, 3, 4, 5, 6]
    assert [r["iter"] for r in train_b] == [1, 2, 3, 4, 5, 6]  # the resumed run appends iterations 4..6
    losses_a = [r["loss"] for r in train_a]
    losses_b = [r["loss"] for r in train_b]
    assert all(math.isfinite(x) for x in losses_a)
    assert losses_b[3:] == losses_a[3:]  # exact float equality
    assert losses_b[:3] == losses_a[:3]
    assert [r["lr"] for r in train_b] == [r["lr"] for r in train_a]
    assert [(r["iter"], r["val_loss"]) for r in eval_b] == [(r["iter"], r["val_loss"]) for r in eval_a] \
        and [r["iter"] for r in eval_a] == [3, 6]
    assert a.stdout.splitlines()[-1] == f"checkpoint: {d / 'A' / 'ckpt.pt'}"
    ckpt_a, ckpt_b = load(d / "A" / "ckpt.pt"), load(d / "B" / "ckpt.pt")
    assert ckpt_a["iter"] == ckpt_b["iter"] == 6
    assert ckpt_a["model"].keys() == ckpt_b["model"].keys()
    for name, t in ckpt_a["model"].items():
        assert torch.equal(t, ckpt_b["model"][name]), name
    assert load(d / "B_ckpt_at_3.pt")["iter"] == 3


def test_checkpoint_contents(runs):
    d, _ = runs
    ckpt = load(d / "A" / "ckpt.pt")  # weights_only=True: no pickled code
    assert {"model", "optimizer", "scaler", "iter", "rng", "model_config", "train_config", "tokenizer"} <= set(ckpt)
    assert ckpt["iter"] == 6
    assert not [name for name in ckpt["model"] if name.startswith(("_orig_mod.", "module."))]
    assert not [name for name in ckpt["model"] if "_orig_mod" in name or "module." in name]
    cfg = ckpt["model_config"]
    assert (cfg["n_layer"], cfg["n_embd"], cfg["image_size"], cfg["fusion"]) == (2, 32, 32, "casa")
    assert ckpt["train_config"]["max_iters"] == 6 and ckpt["train_config"]["batch_size"] == 4
    tok = data.Tokenizer.from_state(ckpt["tokenizer"])
    assert (tok.vocab_size, tok.image_id) == (cfg["vocab_size"], cfg["image_token_id"])
    model = VLM(VLMConfig(**cfg))
    model.load_state_dict(ckpt["model"])  # strict
    assert set(ckpt["rng"]) == {"python", "torch"}
    assert len(ckpt["optimizer"]["state"]) == len(list(model.parameters()))
    assert not (d / "A" / "ckpt.pt.tmp").exists()

    result = json.loads((d / "A" / "eval.json").read_text())
    assert set(result) == {"iter", "val_loss", "accuracy", "blind_accuracy"}
    assert result["iter"] == 6 and math.isfinite(result["val_loss"]) and result["val_loss"] > 0
    for key in ("accuracy", "blind_accuracy"):
        assert sorted(result[key]) == sorted(data.TASKS)
        assert all(0.0 <= v <= 1.0 for v in result[key].values())
    assert result == {k: v for k, v in train_log(d / "A")[1][-1].items() if k != "kind"}


def test_resume_refuses_to_change_the_fusion(runs):
    d, results = runs
    _, refuse = results["exact"]
    line = one_clean_line(refuse)
    assert "--fusion" in line and "casa" in line
    assert (d / "A_copy" / "ckpt.pt").read_bytes() == (d / "A" / "ckpt.pt").read_bytes()
    assert (d / "A_copy" / "log.jsonl").read_text() == (d / "A" / "log.jsonl").read_text()


def test_adapting_an_insertion_model_into_casa_with_frozen_weights(runs):
    d, results = runs
    _, adapt, resumed = results["adaptation"]
    assert adapt.stdout.startswith("casa model")
    source = load(d / "ins" / "ckpt.pt")
    assert source["model_config"]["fusion"] == "insertion"
    for path in (d / "adapt_ckpt_at_3.pt", d / "adapt" / "ckpt.pt"):  # after adapting, and after resuming that
        adapted = load(path)
        assert adapted["model_config"] == {**source["model_config"], "fusion": "casa"}
        assert adapted["tokenizer"] == source["tokenizer"]
        shared = source["model"].keys() & adapted["model"].keys()
        assert shared == source["model"].keys()
        for name in shared:  # pretrained_lr=0: what came from the source has not moved
            assert torch.equal(adapted["model"][name], source["model"][name]), name
        # the fusion layers started as copies of their block's self-attention and have learned since
        start = VLM(VLMConfig(**adapted["model_config"]))
        new = set(start.load_pretrained(source["model"]))
        assert new == adapted["model"].keys() - shared
        assert new and all(".cross." in name or ".norm2." in name for name in new)
        initial = start.state_dict()
        for name in new:
            assert not torch.equal(adapted["model"][name], initial[name]), name
    ok(resumed)
    assert load(d / "adapt" / "ckpt.pt")["iter"] == 5
    at_3, at_5 = load(d / "adapt_ckpt_at_3.pt")["model"], load(d / "adapt" / "ckpt.pt")["model"]
    assert not torch.equal(at_3["blocks.1.cross.q_proj.weight"], at_5["blocks.1.cross.q_proj.weight"])


def test_adapting_refuses_bad_combinations(runs, tmp_path):
    """UsageErrors (one line, exit 2 from the command line), raised before anything is written."""
    d, _ = runs
    out = f"--out_dir={tmp_path / 'out'}"
    with pytest.raises(train.UsageError, match="model sizes differ"):  # a 64-wide model from a 32-wide one
        train.main([*TINY, out, f"--init_from={d / 'ins' / 'ckpt.pt'}", "--fusion=casa", "--n_embd=64"])
    with pytest.raises(train.UsageError, match="nothing to train"):  # casa -> casa: no new weights, all frozen
        train.main([*TINY, out, f"--init_from={d / 'A' / 'ckpt.pt'}", "--pretrained_lr=0"])
    with pytest.raises(train.UsageError, match="--pretrained_lr of the run that wrote it"):
        train.main([*TINY, f"--out_dir={d / 'adapt'}", "--init_from=resume", "--max_iters=9",
                    "--pretrained_lr=2e-4"])  # the run was frozen (0): its optimizer has no such groups
    assert not (tmp_path / "out").exists()
    assert load(d / "adapt" / "ckpt.pt")["iter"] == 5


def test_init_from_a_checkpoint_that_is_not_usable(runs, tmp_path):
    d, _ = runs
    real = load(d / "ins" / "ckpt.pt")
    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(2000))
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({**real, "model_config": {**real["model_config"], "colour": 1}}, tmp_path / "newer.pt")
    for name, message in [("random.pt", "cannot read checkpoint"), ("list.pt", "is not a casa checkpoint"),
                          ("newer.pt", "colour"), ("nope.pt", "no checkpoint at")]:
        with pytest.raises(train.UsageError, match=message):
            train.main([*TINY, f"--out_dir={tmp_path / 'out'}", f"--init_from={tmp_path / name}"])
    assert not (tmp_path / "out").exists()


def test_ddp_two_processes_on_cpu(runs):
    d, results = runs
    ok(results["ddp"])
    assert "2 process(es)" in results["ddp"].stdout
    ckpt = load(d / "ddp" / "ckpt.pt")
    assert ckpt["iter"] == 2
    assert not [name for name in ckpt["model"] if name.startswith(("module.", "_orig_mod."))]
    VLM(VLMConfig(**ckpt["model_config"])).load_state_dict(ckpt["model"])
    train_rows, eval_rows = train_log(d / "ddp")
    assert [r["iter"] for r in train_rows] == [1, 2]  # only rank 0 writes the log
    assert [r["iter"] for r in eval_rows] == [2]


def test_training_from_a_folder(runs):
    d, results = runs
    ok(results["folder"])
    ckpt = load(d / "folder" / "ckpt.pt")
    assert ckpt["iter"] == 3 and ckpt["train_config"]["data"] == str(d / "folder_data")
    train_rows, _ = train_log(d / "folder")
    assert [r["iter"] for r in train_rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in train_rows)
    # every training batch is drawn from the folder's 4 conversations
    cfg = train.TrainConfig(data=str(d / "folder_data"), batch_size=6)
    source = train.Conversations(cfg, 32)
    assert source.held_out == [] and len(source.train) == 4  # too few examples to hold any out
    answers = {c.turns[0].answer for it in range(5) for c in source.batch(it, 0, 0)}
    assert answers <= {f"image {i}" for i in range(4)} and len(answers) > 1


def test_vision_probe_exercise_runs():
    r = run("exercises/vision_probe.py", "--encoder=vit", "--vit_layers=1", "--iters=50", "--batch_size=4")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"iter 50: loss \d+\.\d{3}, held-out accuracy \d+% \(\d+ s\)\n", r.stdout)


# ------------------------------------------------------------------------------------------------ pretrain_vision.py

PRETRAIN = MODEL + ["--batch_size=4", "--eval_scenes=4", "--warmup_iters=0", "--min_lr_ratio=1.0"]


def test_pretrained_encoder_starts_a_vlm_and_resumes_exactly(pool, tmp_path):
    """pretrain_vision.py writes an encoder-only checkpoint that train.py --init_from builds a VLM on (every vision
    weight copied, the rest new); stopping at 2 and resuming to 4 gives exactly the weights of a straight 4."""
    straight, first = pool.map(lambda a: ok(run("pretrain_vision.py", *PRETRAIN, *a)), [
        [f"--out_dir={tmp_path / 'A'}", "--max_iters=4", "--eval_interval=2"],
        [f"--out_dir={tmp_path / 'B'}", "--max_iters=2", "--eval_interval=2"]])
    assert re.search(r"iter 4: loss \d+\.\d{3}, held-out patches right: shape \d+%, color \d+%, cell \d+%",
                     straight.stdout)
    ok(run("pretrain_vision.py", f"--out_dir={tmp_path / 'B'}", "--init_from=resume", "--max_iters=4"))
    a, b = load(tmp_path / "A" / "ckpt.pt"), load(tmp_path / "B" / "ckpt.pt")
    assert a["iter"] == b["iter"] == 4 and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(k.startswith("vision.") for k in a["model"])

    vlm = VLM(VLMConfig(**a["model_config"]))
    new = vlm.load_pretrained(a["model"])
    assert set(new) == {name for name, _ in vlm.named_parameters() if not name.startswith("vision.")}
    assert all(torch.equal(vlm.state_dict()[k], v) for k, v in a["model"].items())
    r = ok(run_train(*TINY, f"--out_dir={tmp_path / 'vlm'}", f"--init_from={tmp_path / 'A' / 'ckpt.pt'}",
                     "--max_iters=2", "--eval_interval=2", "--tasks=shape"))
    assert "checkpoint:" in r.stdout
    r = ok(run("exercises/vision_probe.py", f"--frozen_from={tmp_path / 'A' / 'ckpt.pt'}", "--iters=50",
               "--batch_size=4"))  # the exercise probes a pretrained (or any trained) encoder, frozen
    assert re.fullmatch(r"iter 50: loss \d+\.\d{3}, held-out accuracy \d+% \(\d+ s\)\n", r.stdout)
    for args, says in (([f"--out_dir={tmp_path / 'vlm'}"], "was not written by pretrain_vision.py"),
                       ([f"--out_dir={tmp_path / 'A'}", "--vit_dim=64"], "--vit_dim cannot change when resuming")):
        r = run("pretrain_vision.py", "--init_from=resume", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def test_pretrain_vision_labels_every_patch_with_the_object_under_it():
    import pretrain_vision
    images, labels = pretrain_vision.scenes(3, 8, 64, 8)
    scene = data.sample_scene(random.Random(3), 64)  # the first scene, drawn again
    assert images.shape == (8, 3, 64, 64) and labels.shape == (8, 64, 3)
    owner = data.patch_objects(scene, 8)
    for k in range(64):
        o = scene["objects"][owner[k]] if owner[k] >= 0 else None
        assert tuple(labels[0, k].tolist()) == (data.object_labels(o, 64) if o else pretrain_vision.NONE)


@pytest.mark.parametrize("args, says", [
    (["--max_iter=3"], "unknown option --max_iter; did you mean --max_iters?"),
    (["--batch_size=0"], "--batch_size must be >= 1, got 0"),
    (["--init_from=out/ckpt.pt"], "--init_from expects scratch or resume, got 'out/ckpt.pt'"),
    (["--init_from=resume", "--out_dir=/nonexistent"], "no checkpoint at /nonexistent/ckpt.pt"),
])
def test_pretrain_vision_bad_command_line_is_one_clean_line(args, says):
    r = run("pretrain_vision.py", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == f"pretrain_vision.py: error: {says}\n"
