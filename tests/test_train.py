"""Tests for train.py: the command line, learning, exact resume, checkpoints, adaptation, DDP, folder data, one run
per out_dir and SIGTERM.

Everything uses a tiny model. The training runs of this file start at once, two at a time (see `runs`)."""
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import pytest
import torch
from PIL import Image

import data
import scenes
import train
from casa import VLM, VLMConfig
from common import UsageError, evaluate, lock_out_dir
from conftest import ENV, EXACT, ROOT, TINY, load, ok, one_clean_line, run, run_preloaded


def run_train(*args):
    """train.py in a preloaded process (see conftest.run_preloaded): the same run, 3 s sooner."""
    return run_preloaded("train.py", *args)


def train_log(out_dir):
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "eval"]


REPEATS = list(range(20)) + list(range(10))  # 20 examples, and again the first 10 of them


def folder_dataset(folder, rows=REPEATS):
    """A folder of one-colour images and its data.jsonl: example "image i" for every i of rows. By default 30
    examples, 10 of them twice: a held-out copy of one of those would only measure memory."""
    folder.mkdir()
    lines = []
    for i in rows:
        if not (folder / f"{i}.png").exists():
            Image.new("RGB", (20 + i, 30), (12 * i, 255 - 12 * i, 37 * i % 256)).save(folder / f"{i}.png")
        row = {"image": f"{i}.png", "answer": f"image {i}"}
        if i % 2:
            row["question"] = "which image is it?"
        lines.append(json.dumps(row))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


# ------------------------------------------------------------------------------------------------ command line

CLI_ERRORS = {  # arguments -> what the one line must say
    "unknown": (["--max_iter=3"], "did you mean --max_iters?"),
    "int": (["--batch_size=abc"], "--batch_size expects int, got 'abc'"),
    "bool": (["--compile=maybe"], "--compile expects true or false, got 'maybe'"),
    "fusion": (["--fusion=concat"], "concat"),
    "shifted_style": (["--style=shifted"], "--style is one of default, varied (shifted is never trained on), got "
                                          "'shifted'"),
    "no_data_jsonl": (["--data={empty}"], "data.jsonl"),
    "few_examples": (["--data={few}"], "has 4 examples; a held-out split (a tenth, at least one) and training need "
                                       "at least 10"),
    "image_above_the_folder": (["--data={parent_image}"], "image '../outside.png' is outside"),
    "absolute_image": (["--data={absolute_image}"], "is outside"),
    # nonsense numbers: refused before anything trains, naming the option
    "lr_nan": (["--lr=nan"], "lr must be a finite number, got nan"),
    "lr_inf": (["--lr=inf"], "lr must be a finite number, got inf"),
    "lr_negative": (["--lr=-1"], "lr must be >= 0.0, got -1.0"),
    "pretrained_vision_lr_inf": (["--pretrained_vision_lr=inf"], "pretrained_vision_lr must be a finite number, got inf"),
    "pretrained_vision_lr_negative": (["--pretrained_vision_lr=-1"], "pretrained_vision_lr must be >= 0.0, got -1.0"),
    "rope_base_0": (["--rope_base=0"], "rope_base must be > 0.0, got 0.0"),
    "n_head_0": (["--n_head=0"], "n_head must be >= 1, got 0"),
    "patch_size_0": (["--patch_size=0"], "patch_size must be >= 1, got 0"),
    "n_layer_0": (["--n_layer=0"], "n_layer must be >= 1, got 0"),
    "max_iters_negative": (["--max_iters=-1"], "max_iters must be >= 1, got -1"),
    "eval_per_task_negative": (["--eval_per_task=-1"], "eval_per_task must be >= 1, got -1"),
    "weight_decay_negative": (["--weight_decay=-1"], "weight_decay must be >= 0.0, got -1.0"),
    "grad_clip_negative": (["--grad_clip=-1"], "grad_clip must be > 0.0, got -1.0"),
    "warmup_iters_negative": (["--warmup_iters=-1"], "warmup_iters must be >= 0, got -1"),
    "min_lr_ratio_negative": (["--min_lr_ratio=-1"], "min_lr_ratio must be >= 0.0, got -1.0"),
    "workers_negative": (["--workers=-1"], "workers must be >= 0, got -1"),
    "log_interval_0": (["--log_interval=0"], "log_interval must be >= 1, got 0"),
}


def bad_folders(d):
    """Folders of data that train.py refuses: no data.jsonl, 4 examples, an image outside the folder."""
    (d / "empty").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(d / "empty" / "a.png")
    few = folder_dataset(d / "few", range(4))
    Image.new("RGB", (8, 8)).save(d / "outside.png")
    for name, image in (("parent_image", "../outside.png"), ("absolute_image", str(d / "outside.png"))):
        shutil.copytree(few, d / name)
        lines = (d / name / "data.jsonl").read_text().splitlines()
        lines += [json.dumps({"image": image, "answer": "out"})] + lines * 2  # with 10 examples or more
        (d / name / "data.jsonl").write_text("\n".join(lines) + "\n")
    return {"empty": d / "empty", "few": few, "parent_image": d / "parent_image",
            "absolute_image": d / "absolute_image"}


@pytest.fixture(scope="module")
def cli(pool, tmp_path_factory):
    """--help and every bad command line of CLI_ERRORS, two at a time."""
    folders = bad_folders(tmp_path_factory.mktemp("bad_folders"))
    out = tmp_path_factory.mktemp("cli_out")
    jobs = {"help": pool.submit(run_preloaded, "train.py", "--help")}
    for name, (args, _) in CLI_ERRORS.items():
        args = [a.format(**folders) for a in args]
        jobs[name] = pool.submit(run_preloaded, "train.py", *TINY, f"--out_dir={out / name}", "--max_iters=2", *args)
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
    line = one_clean_line(cli[name], "train.py")
    assert CLI_ERRORS[name][1] in line
    assert not (cli["out"] / name).exists()  # refused before the out_dir was made


def test_a_second_run_into_the_same_out_dir_is_refused(tmp_path):
    lock = lock_out_dir(tmp_path / "out")  # as a running train.py holds it
    try:
        r = run_preloaded("train.py", *TINY, f"--out_dir={tmp_path / 'out'}", "--max_iters=2")
    finally:
        lock.close()
    line = one_clean_line(r, "train.py")
    assert f"--out_dir='{tmp_path / 'out'}' is in use by another run" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock"]


def test_output_to_a_file_has_no_bar_and_a_line_per_eval(tmp_path):
    """--progress asks for a bar, but stdout and stderr are files here (as under CI, nohup or `> log`): no bar
    redraws, one line per eval."""
    r = run_preloaded("train.py", *TINY, "--progress=true", f"--out_dir={tmp_path}", "--max_iters=7",
                      "--eval_interval=5", "--log_interval=3")
    assert r.returncode == 0 and "\r" not in r.stdout + r.stderr and "it/s" not in r.stderr, r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("iter ")] == ["iter 5", "iter 7"]
    # the loss is read back (a wait for the device) every --log_interval steps and at evals, not every step
    assert [r["iter"] for r in train_log(tmp_path)[0]] == [3, 5, 6, 7]


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_stops_cleanly_and_the_checkpoint_stays_loadable(tmp_path, workers):
    """What schedulers and `docker stop` send: exit 143, one line, and the last checkpoint loads. `timeout` and
    schedulers signal the whole process group, the workers that draw batches too: still one line, none left."""
    out = tmp_path / "out"
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        p = subprocess.Popen([sys.executable, "train.py", *TINY, f"--out_dir={out}", "--max_iters=100000",
                              "--eval_interval=1", f"--workers={workers}"], cwd=ROOT, env=ENV, stdout=stdout,
                             stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + 120  # a safety net, not a measurement
            while not (out / "ckpt.pt").exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert p.poll() is None, "train.py ended before its first checkpoint"
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
            while time.monotonic() < deadline and group_alive(p.pid):
                time.sleep(0.05)
            assert not group_alive(p.pid), "a worker outlived train.py"
        finally:
            p.kill()
    r = subprocess.CompletedProcess(p.args, p.returncode, (tmp_path / "stdout").read_text(),
                                    (tmp_path / "stderr").read_text())
    assert one_clean_line(r, "train.py", code=143) == "train.py: terminated (the last checkpoint is intact)"
    ckpt = load(out / "ckpt.pt")
    assert ckpt["iter"] >= 1 and ckpt["train_config"]["max_iters"] == 100000
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


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
    batch = data.collate(scenes.sample_conversations(random.Random(0), 4, 32), tok, 32)
    opt = optimizer_for(model, lr=3e-3)
    before, _ = evaluate(model, [batch], "cpu", nullcontext())
    losses = [step(model, opt, batch) for _ in range(8)]
    after, _ = evaluate(model, [batch], "cpu", nullcontext())
    assert losses[0] == pytest.approx(before, rel=1e-5)  # evaluate's loss is the training loss
    assert after < before - 0.5, (before, after)
    assert losses[-1] < losses[0]


def test_a_tiny_batch_can_be_overfit():
    """4 conversations, at most 150 AdamW steps: loss < 0.05 and every last answer exactly right."""
    model, tok = tiny_model("casa")
    convs = scenes.sample_conversations(random.Random(0), 4, 32)
    batch = data.collate(convs, tok, 32)
    opt = optimizer_for(model, lr=1e-2, weight_decay=0.0)
    for i in range(150):
        step(model, opt, batch)
        if i % 10 == 9:
            loss, accuracy = evaluate(model, [batch], "cpu", nullcontext())
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
    # a pretrained vision encoder may get a rate of its own; the other pretrained weights keep theirs
    apart = train.make_optimizer(model, new, train.TrainConfig(lr=1e-3, pretrained_lr=1e-4,
                                                                pretrained_vision_lr=5e-5), False)
    for group in apart.param_groups:
        group_names = {by_id[id(p)] for p in group["params"]}
        vision = {name.startswith("vision.") for name in group_names}
        assert group["base_lr"] == (1e-3 if group_names <= new else 5e-5 if vision == {True} else 1e-4)
    frozen = train.make_optimizer(model, new, train.TrainConfig(pretrained_lr=0), False)
    assert {by_id[id(p)] for g in frozen.param_groups for p in g["params"]} == new
    assert {name for name, p in model.named_parameters() if p.requires_grad} == new
    with pytest.raises(UsageError, match="nothing to train"):
        train.make_optimizer(model, set(), train.TrainConfig(pretrained_lr=0), False)
    # from scratch every weight is new, and a new vision encoder gets its own learning rate
    scratch = train.make_optimizer(model, names, train.TrainConfig(lr=1e-3, vision_lr=3e-4), False)
    for group in scratch.param_groups:
        vision = {by_id[id(p)].startswith("vision.") for p in group["params"]}
        assert vision in ({True}, {False}) and group["base_lr"] == (3e-4 if vision == {True} else 1e-3)
    # Muon takes exactly the LM blocks' weight matrices; --optimizer=adamw leaves one AdamW for everything
    adamw, muon = scratch.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = {by_id[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {name for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("blocks.")}
    plain = train.make_optimizer(model, names, train.TrainConfig(optimizer="adamw"), False)
    assert [type(o) for o in plain.optimizers] == [torch.optim.AdamW]
    assert sum(len(g["params"]) for g in plain.param_groups) == len(names)


def test_ranks_iterations_and_micro_batches_get_different_data():
    cfg = train.TrainConfig(batch_size=3, eval_per_task=1, seed=5)
    source = data.Conversations(cfg, 32)

    def fingerprint(convs):
        return [(c.task, [(t.question, t.answer, [im.tobytes() for im in t.images]) for t in c.turns])
                for c in convs]

    base = fingerprint(source.batch(7, rank=0, micro=0))
    assert len(base) == 3
    assert base == fingerprint(data.Conversations(cfg, 32).batch(7, rank=0, micro=0))  # a pure function
    for other in [(7, 1, 0), (8, 0, 0), (7, 0, 1)]:
        assert fingerprint(source.batch(*other)) != base, other
    ranks = [fingerprint(source.batch(it, rank=r, micro=0)) for r in range(2) for it in range(4)]
    assert len({repr(b) for b in ranks}) == len(ranks)
    assert len(source.held_out) == len(scenes.TASKS)


def test_held_out_copies_of_training_examples_are_dropped(tmp_path):
    folder = folder_dataset(tmp_path / "data")
    source = data.Conversations(train.TrainConfig(data=str(folder), eval_per_task=2), 32)
    seen = {data.fingerprint(c) for c in source.train}
    assert source.held_out and not [c for c in source.held_out if data.fingerprint(c) in seen]
    assert source.dropped >= 1 and len(source.held_out) + source.dropped == 2  # 30 examples: a tenth, at most 2
    assert len(source.train) == 28
    with pytest.raises(data.DataError, match="has 4 examples"):
        data.Conversations(train.TrainConfig(data=str(folder_dataset(tmp_path / "few", range(4)))), 32)
    with pytest.raises(data.DataError, match="every held-out example also occurs in training"):
        data.Conversations(train.TrainConfig(data=str(folder_dataset(tmp_path / "same", [0] * 10))), 32)


# ------------------------------------------------------------------------------------------------ training runs
# Each function below is one chain of train.py runs, in its own folders under d; `runs` starts them all at once.


def straight(d):
    """Run A, 6 iterations uninterrupted, its batches drawn in-process; then a resume of a copy of it that tries to
    change the fusion."""
    a = ok(run_train(*TINY, *EXACT, f"--out_dir={d / 'A'}", "--max_iters=6", "--eval_interval=3", "--workers=0"))
    shutil.copytree(d / "A", d / "A_copy")
    return a, run_preloaded("train.py", *TINY, f"--out_dir={d / 'A_copy'}", "--init_from=resume",
                            "--fusion=cross", "--max_iters=8")


def interrupted(d):
    """Run B: 3 iterations, then resumed to 6, its batches drawn by worker processes (2, then 1). Then C: B's folder
    with the checkpoint of iteration 3 put back (a run that had logged iterations after its last checkpoint),
    resumed to 6 again."""
    first = ok(run_train(*TINY, *EXACT, f"--out_dir={d / 'B'}", "--max_iters=3", "--eval_interval=3",
                         "--workers=2"))
    shutil.copy(d / "B" / "ckpt.pt", d / "B_ckpt_at_3.pt")
    resumed = run_train(*TINY, *EXACT, f"--out_dir={d / 'B'}", "--init_from=resume", "--max_iters=6",
                        "--eval_interval=3", "--workers=1")
    ok(resumed)
    shutil.copytree(d / "B", d / "C")
    shutil.copy(d / "B_ckpt_at_3.pt", d / "C" / "ckpt.pt")
    again = run_train(*TINY, *EXACT, f"--out_dir={d / 'C'}", "--init_from=resume", "--max_iters=6",
                      "--eval_interval=3")
    return first, resumed, again


def adaptation(d):
    """An insertion model, adapted into a casa one with frozen weights, then resumed."""
    source = ok(run_train(*TINY, "--fusion=insertion", f"--out_dir={d / 'ins'}", "--max_iters=3"))
    options = ["--batch_size=4", "--eval_per_task=2", "--progress=false", "--max_iters=3", "--eval_interval=3"]
    adapt = ok(run_train(*options, f"--out_dir={d / 'adapt'}", f"--init_from={d / 'ins' / 'ckpt.pt'}",
                         "--fusion=casa", "--pretrained_lr=0"))
    shutil.copy(d / "adapt" / "ckpt.pt", d / "adapt_ckpt_at_3.pt")
    resumed = run_train(*options[:-2], f"--out_dir={d / 'adapt'}", "--init_from=resume", "--pretrained_lr=0",
                        "--max_iters=5", "--eval_interval=5")
    return source, adapt, resumed


def ddp(d):
    return run("--standalone", "--nproc_per_node=2", "train.py", "--device=cpu", *TINY,
               f"--out_dir={d / 'ddp'}", "--max_iters=2", module="torch.distributed.run")


def folder(d):
    return run_train(*TINY, f"--data={folder_dataset(d / 'folder_data')}", f"--out_dir={d / 'folder'}",
                     "--max_iters=3")


def equals_form(d):
    """What tiny_ckpt ran with `--max_iters 2` and `--out_dir DIR`, as --key=value, from a shell."""
    return run("train.py", *TINY, f"--out_dir={d / 'equals'}", "--max_iters=2")


@pytest.fixture(scope="module")
def runs(pool, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    chains = [ddp, adaptation, interrupted, straight, folder, equals_form]
    jobs = {chain.__name__: pool.submit(chain, d) for chain in chains}
    return d, {name: job.result() for name, job in jobs.items()}


def test_resume_gives_exactly_the_same_losses(runs):
    d, results = runs
    a = results["straight"][0]
    first, resumed, _ = results["interrupted"]
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


def test_after_a_resume_the_log_holds_every_iteration_once(runs):
    """C logged iterations 1..6, then resumed from its checkpoint of iteration 3: the lines of 4..6 are replaced,
    not repeated, and they are the same as before (the resume is exact)."""
    d, results = runs
    ok(results["interrupted"][2])
    train_c, eval_c = train_log(d / "C")
    assert [r["iter"] for r in train_c] == [1, 2, 3, 4, 5, 6]
    assert [r["iter"] for r in eval_c] == [3, 6]
    assert [r["loss"] for r in train_c] == [r["loss"] for r in train_log(d / "A")[0]]
    assert load(d / "C" / "ckpt.pt")["iter"] == 6


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
    assert sum(len(opt["state"]) for opt in ckpt["optimizer"]["optimizers"]) == len(list(model.parameters()))
    assert not [p.name for p in (d / "A").iterdir() if p.name.endswith(".tmp")]

    result = json.loads((d / "A" / "eval.json").read_text())
    assert {"iter", "val_loss", "accuracy", "blind_accuracy"} <= set(result)
    assert result["iter"] == 6 and math.isfinite(result["val_loss"]) and result["val_loss"] > 0
    for key in ("accuracy", "blind_accuracy"):
        assert sorted(result[key]) == sorted(scenes.TASKS)
        assert all(0.0 <= v <= 1.0 for v in result[key].values())
    assert result == {k: v for k, v in train_log(d / "A")[1][-1].items() if k != "kind"}


def test_both_option_forms_train_the_same_run(runs, tiny_ckpt):
    """`--max_iters 2 --out_dir DIR` (tiny_ckpt) and `--max_iters=2 --out_dir=DIR`: the same run."""
    d, results = runs
    ok(results["equals_form"])
    spaced, equals = load(tiny_ckpt), load(d / "equals" / "ckpt.pt")
    assert spaced["iter"] == equals["iter"] == 2
    assert {**spaced["train_config"], "out_dir": ""} == {**equals["train_config"], "out_dir": ""}
    assert spaced["train_config"]["out_dir"] == str(tiny_ckpt.parent)
    assert [r["loss"] for r in train_log(tiny_ckpt.parent)[0]] == [r["loss"] for r in train_log(d / "equals")[0]]


def test_resume_refuses_to_change_the_fusion(runs):
    d, results = runs
    _, refuse = results["straight"]
    line = one_clean_line(refuse, "train.py")
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
    with pytest.raises(UsageError, match="model sizes differ"):  # a 64-wide model from a 32-wide one
        train.main([*TINY, out, f"--init_from={d / 'ins' / 'ckpt.pt'}", "--fusion=casa", "--n_embd=64"])
    with pytest.raises(UsageError, match="nothing to train"):  # casa -> casa: no new weights, all frozen
        train.main([*TINY, out, f"--init_from={d / 'A' / 'ckpt.pt'}", "--pretrained_lr=0"])
    with pytest.raises(UsageError, match="--pretrained_lr of the run that wrote it"):
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
        with pytest.raises(UsageError, match=message):
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
    # every training batch is drawn from the folder's examples; a held-out copy of a training one is dropped
    cfg = train.TrainConfig(data=str(d / "folder_data"), batch_size=6, eval_per_task=2)
    source = data.Conversations(cfg, 32)
    assert f"{source.dropped} held-out example(s) dropped: they also occur in the training data" \
        in results["folder"].stdout
    assert len(source.held_out) + source.dropped == 2 and len(source.train) == 28
    answers = {c.turns[0].answer for it in range(5) for c in source.batch(it, 0, 0)}
    assert answers <= {f"image {i}" for i in range(20)} and len(answers) > 1


def test_a_training_batch_mixes_tasks_row_by_row():
    # a batch of one task would make every optimiser step a full-size update for that task alone (Muon and AdamW
    # normalise the step), undoing what the other tasks' steps learned: each row draws its own task
    source = data.Conversations(train.TrainConfig(batch_size=12, eval_per_task=1, tasks="color,shape,video",
                                                  frames=2), 32)
    for it in range(3):
        assert len({c.task for c in source.batch(it, 0, 0)}) > 1


def test_split_by_length_pads_least_and_keeps_one_group_when_splitting_saves_nothing():
    assert data.split_by_length([7, 7, 7, 7]) == [[0, 1, 2, 3]]
    assert data.split_by_length([50, 9, 10, 8, 11]) == [[3, 1, 2, 4], [0]]  # 4 x 11 + 1 x 50 < 5 x 50
    assert data.split_by_length([10, 30, 20]) == [[0, 2], [1]]  # 2 x 20 + 30 = 70 < 3 x 30
    assert data.split_by_length([5]) == [[0]]


@pytest.mark.parametrize("fusion", ["insertion", "cross", "casa"])
def test_a_micro_batch_in_parts_gives_the_padded_batch_s_loss_and_gradient(fusion):
    """data.in_parts's parts by length hold every row once with its images, their weights are their shares of the
    answer tokens, and the weighted sum of their losses is the one padded batch's loss, with the same gradient."""
    cfg = train.TrainConfig(batch_size=12, eval_per_task=1, tasks="color,multi_image,video", frames=3, questions=2)
    source, tok = data.Conversations(cfg, 32), data.Tokenizer()
    torch.manual_seed(0)
    model = VLM(VLMConfig(image_size=32, patch_size=8, vit_layers=1, vit_dim=32, vit_heads=2, n_layer=2, n_head=2,
                          n_embd=32, vocab_size=tok.vocab_size, image_token_id=tok.image_id, fusion=fusion))
    image_tokens = model.config.n_image_tokens if fusion == "insertion" else 0
    whole = data.training_batch(source, tok, 0, 0, 1, 0)
    parts = data.in_parts(whole, tok, image_tokens)
    assert data.in_parts(whole, tok, None) == [whole] and whole.weight == 1
    assert len(parts) == 2 and sum(len(p.tasks) for p in parts) == 12
    assert sum(len(p.images) for p in parts) == len(whole.images)
    rows = lambda b: [tuple(row[row != tok.pad_id].tolist()) for row in b.idx]
    assert sorted(rows(parts[0]) + rows(parts[1])) == sorted(rows(whole))
    assert sum(p.weight for p in parts) == pytest.approx(1) and all(0 < p.weight < 1 for p in parts)
    assert parts[0].idx.numel() + parts[1].idx.numel() < whole.idx.numel()  # less padding

    def loss_and_grads(batches):
        model.zero_grad()
        total = 0.0
        for b in batches:
            _, loss = model(b.idx, b.images, b.targets)
            (loss * b.weight).backward()
            total += loss.item() * b.weight
        return total, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (loss_whole, grads_whole), (loss_parts, grads_parts) = loss_and_grads([whole]), loss_and_grads(parts)
    assert loss_parts == pytest.approx(loss_whole, rel=1e-5)
    assert len(grads_parts) == len(grads_whole)
    for a, b in zip(grads_parts, grads_whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_text_only_batches_hold_no_image():
    cfg = train.TrainConfig(batch_size=6, eval_per_task=2, text_only=True, tasks="color,reading,multi_image,video",
                            frames=3)
    source = data.Conversations(cfg, 32)
    tok = data.Tokenizer()
    for it in range(8):
        batch = data.collate(source.batch(it, 0, 0), tok, 32)
        assert batch.images.shape[0] == 0 and not (batch.idx == tok.image_id).any()
    assert source.shifted == [] and all(not t.images for c in source.held_out for t in c.turns)


def test_frames_sets_the_length_of_every_clip():
    source = data.Conversations(train.TrainConfig(batch_size=3, eval_per_task=2, tasks="video", frames=5), 32)
    assert all(len(c.turns) == 5 for c in source.batch(0, 0, 0) + source.held_out)
