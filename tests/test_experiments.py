"""Tests for experiments.py: the job runner (skip, resume), time to accuracy (learn) end to end on the tiny model,
the paper's comparison (--quick) with its tables and pictures, re-drawing from the JSON alone, and one-line errors
before any run starts."""
import json
import shutil

import pytest
import torch
from PIL import Image

import casa
import common
import experiments
import scenes
from conftest import MODEL, check_bad_option, load, ok, run, run_bad_options, run_preloaded


def test_first_reached_finds_the_first_eval_at_each_level():
    curve = [{"iter": 10, "train_s": 5.0, "text_tokens": 100, "accuracy": {"color": 0.4, "shape": 0.85}},
             {"iter": 20, "train_s": 9.0, "text_tokens": 200, "accuracy": {"color": 0.8, "shape": 0.5}},
             {"iter": 30, "train_s": 14.0, "text_tokens": 300, "accuracy": {"color": 0.95, "shape": 0.95}}]
    table = experiments.first_reached(curve, offset_s=100.0)
    assert table["color"] == {"50%": {"iter": 20, "train_s": 109.0, "text_tokens": 200},
                              "80%": {"iter": 20, "train_s": 109.0, "text_tokens": 200},
                              "90%": {"iter": 30, "train_s": 114.0, "text_tokens": 300}}
    assert table["shape"]["50%"]["iter"] == 10 and table["shape"]["90%"]["iter"] == 30
    assert list(table) == ["color", "shape"]  # the tasks the run evaluates


def test_learn_smoke_run_then_rerun_only_redraws(tmp_path):
    """experiments.py learn end to end on the tiny model: one shared pretrained encoder, two fusions, a curve each;
    run again, it trains nothing (every job is done) and gives the same results; --redraw needs only the JSON."""
    train_args = "--max_iters=4 --eval_interval=2 --batch_size=4 --eval_per_task=2 --progress=false " \
                 "--tasks=color,shape,count,position"
    argv = ["learn", "--fusions=insertion,casa", f"--out_dir={tmp_path / 'learn'}", "--vision_iters=2",
            "--vision_args=--text_share=0.25", "--jobs=2", f"--train_args={train_args}",
            f"--json={tmp_path / 'l.json'}", f"--png={tmp_path / 'l.png'}", *MODEL]
    r = ok(run("experiments.py", *argv))
    assert "to 90%" in r.stdout and r.stdout.count("training: ") == 3  # the encoder, then both fusions at once
    assert load(tmp_path / "learn" / "vision" / "ckpt.pt")["train_config"]["text_share"] == 0.25
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
    assert Image.open(tmp_path / "l.png").size == (1280, 800)

    ckpts = sorted((tmp_path / "learn").rglob("ckpt.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    again = ok(run_preloaded("experiments.py", *argv))
    assert "training:" not in again.stdout and [p.stat().st_mtime_ns for p in ckpts] == stamps
    assert {k: v for k, v in json.loads((tmp_path / "l.json").read_text()).items() if k != "machine"} == {
        k: v for k, v in result.items() if k != "machine"}

    (tmp_path / "l.png").unlink()
    redrawn = ok(run_preloaded("experiments.py", "learn", "--redraw", f"--json={tmp_path / 'l.json'}",
                               f"--png={tmp_path / 'l.png'}"))
    assert "to 90%" in redrawn.stdout and Image.open(tmp_path / "l.png").size == (1280, 800)


def test_run_jobs_resumes_an_interrupted_run_and_skips_a_finished_one(tmp_path, capsys):
    """A job whose checkpoint is short of its budget resumes from it; one at its budget is skipped."""
    job = experiments.Job("pretrain_vision.py", str(tmp_path / "v"), ["--max_iters=1", "--eval_interval=1",
                                                                      "--batch_size=2", "--eval_scenes=2", *MODEL], 1)
    experiments.run_jobs([job])
    assert experiments.finished(job) and load(tmp_path / "v" / "ckpt.pt")["iter"] == 1
    longer = experiments.Job(job.script, job.out_dir, [*job.argv, "--max_iters=2"], 2)
    assert not experiments.finished(longer)
    capsys.readouterr()
    experiments.run_jobs([job, longer])  # the first is done; the second resumes at iteration 1
    assert load(tmp_path / "v" / "ckpt.pt")["iter"] == 2
    assert capsys.readouterr().out == f"resuming: pretrain_vision.py --out_dir={tmp_path / 'v'}\n"



def test_a_run_keeps_the_threads_it_first_trained_on(tmp_path):
    """A training run's thread count is recorded at its start and read back ever after (resumed, or trained again
    for its checkpoint, it rounds its sums the same way); other jobs take their share."""
    job = experiments.Job("train.py", str(tmp_path), [])
    assert experiments.threads(job, 2) == 2 and (tmp_path / "threads").read_text() == "2\n"
    assert experiments.threads(job, 1) == 2
    sample = experiments.Job("sample.py", str(tmp_path / "gif"), [], trains=False)
    assert experiments.threads(sample, 1) == 1 and not (tmp_path / "gif").exists()


BAD = {  # arguments -> what the one line must say ({tmp}: a folder of the test)
    "learn_fusions_empty": (["learn", "--fusions="], "--fusions takes a comma-separated list"),
    "learn_unknown_fusion": (["learn", "--fusions=casa,concat"], "--fusions takes a comma-separated list"),
    "learn_unbalanced_quote": (["learn", "--train_args=--lr='3"], "--train_args: No closing quotation"),
    "learn_vision_args_unbalanced": (["learn", "--vision_args=--lr='3"], "--vision_args: No closing quotation"),
    "learn_no_jobs": (["learn", "--jobs=0"], "jobs must be >= 1, got 0"),
    "learn_png_is_a_folder": (["learn", "--png={tmp}"], "--png={tmp}: is a directory"),
    "paper_jobs_0": (["paper", "--jobs=0"], "jobs must be >= 1, got 0"),
    "paper_md_in_a_missing_folder": (["paper", "--md=/missing/p.md"], "--md=/missing/p.md: no such directory"),
    "paper_bad_model_option": (["paper", "--n_head=3"], "must split into 3 heads"),
    "redraw_missing_json": (["learn", "--redraw", "--json={tmp}/none.json"], "cannot read results from it"),
    "unknown_command": (["lern"], "unknown command 'lern'"),
    "captions_clips_0": (["captions", "--clips=0"], "clips must be >= 1, got 0"),
    "captions_max_text_0": (["captions", "--max_text=0"], "max_text must be >= 1, got 0"),
    "captions_unknown_style": (["captions", "--style=sketchy"],
                               "--style is one of default, shifted, varied, got 'sketchy'"),
    "captions_missing_ckpt": (["captions", "--ckpt={tmp}/none.pt"], "no checkpoint at {tmp}/none.pt"),
    "captions_model_option": (["captions", "--n_embd=64"], "unknown option --n_embd"),
    "captions_json_in_a_missing_folder": (["captions", "--json=/missing/c.json"], "no such directory /missing"),
    "score_n_0": (["score", "--n=0"], "n must be >= 1, got 0"),
    "score_missing_ckpt": (["score", "--ckpt={tmp}/none.pt"], "no checkpoint at {tmp}/none.pt"),
}


@pytest.fixture(scope="module")
def bad_runs(pool, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiments_bad")
    return tmp, run_bad_options(pool, "experiments.py", BAD, tmp)


@pytest.mark.parametrize("name", BAD)
def test_bad_options_are_one_line_before_any_run(bad_runs, name):
    check_bad_option(bad_runs, BAD, name, "experiments.py")


# ------------------------------------------------------------------------------------------------ captions

def test_caption_kind_names_each_change_a_clip_has():
    clips = [scenes.make_clip(scenes.EVAL_SEED0 + i, 64, 64) for i in range(4)]
    kinds = [[common.caption_kind(t.answer) for t in clip.turns] for clip in clips]
    assert all(k[0] == "full" for k in kinds)  # frame 0 describes the frame
    assert {k for clip in kinds for k in clip} == {"full", *common.CAPTION_KINDS}
    for clip, clip_kinds in zip(clips, kinds):
        for turn, kind in zip(clip.turns, clip_kinds):
            names_a_cell = any(turn.answer.endswith(cell) for cell in scenes.CELLS)
            assert names_a_cell == (kind in ("full", "moves", "appears")), turn.answer


def test_caption_scores_match_each_frame_with_its_caption(tiny_ckpt, monkeypatch):
    """A stream that says the right caption for every real frame of one kind ("moves") and nothing otherwise: exact
    is that kind's share of the frames, 100% for it and 0 for the others; gray frames get nothing (blind 0)."""
    truth, seeds = {}, []

    def make_clip(*args):
        seeds.append(args[0])
        clip = real_make_clip(*args)
        truth.update({id(t.images[0]): t.answer for t in clip.turns})
        return clip

    def stream(model, tok, frames, device, max_new_tokens, max_text):
        cache = model.new_cache(max_text)
        for frame in frames:
            said = truth.get(id(frame), "")
            yield (said if common.caption_kind(said) == "moves" else ""), 0.001, cache

    real_make_clip = scenes.make_clip
    monkeypatch.setattr(scenes, "make_clip", make_clip)
    monkeypatch.setattr(common, "caption_stream", stream)
    c = common.caption_scores(str(tiny_ckpt), 3, 20, max_text=40)
    kinds = c["by_kind"]
    assert list(kinds) == ["full", *common.CAPTION_KINDS] and c["frames"] == 60
    assert sum(k["frames"] for k in kinds.values()) == 60 and kinds["moves"]["frames"] > 0
    assert kinds["moves"]["exact"] == 1 and c["exact"] == kinds["moves"]["frames"] / 60
    assert all(k["exact"] in (0, None) for name, k in kinds.items() if name != "moves")
    assert c["blind_exact"] == 0 and c["soft"] >= c["exact"]
    assert list(c["cache_bytes_at"]) == [8, 16, 20] and seeds == [scenes.EVAL_SEED0 + i for i in range(3)]
    seeds.clear()  # the validation clips, for choices: other seeds
    common.caption_scores(str(tiny_ckpt), 2, 3, seed0=scenes.VALIDATION_SEED0)
    assert seeds == [scenes.VALIDATION_SEED0, scenes.VALIDATION_SEED0 + 1]


def test_validation_accuracy_scores_the_validation_seeds_once(tiny_ckpt, tmp_path, monkeypatch):
    """The choices' score: the run's tasks on conversations from VALIDATION_SEED0, written to validation.json and
    read back from it afterwards."""
    (tmp_path / "ckpt.pt").write_bytes(tiny_ckpt.read_bytes())
    seeds, real = [], scenes.eval_conversations
    monkeypatch.setattr(scenes, "eval_conversations", lambda *a, **k: seeds.append(k["seed0"]) or real(*a, **k))
    job = experiments.Job("train.py", str(tmp_path), [])
    acc = experiments.validation_accuracy(job, 2)
    tasks = scenes.parse_tasks(load(tmp_path / "ckpt.pt")["train_config"]["tasks"])
    assert seeds == [scenes.VALIDATION_SEED0] and sorted(acc) == sorted(tasks)
    assert all(0 <= a <= 1 for a in acc.values())
    (tmp_path / "validation.json").write_text(json.dumps({"color": 0.5}))
    assert experiments.validation_accuracy(job, 2) == {"color": 0.5} and seeds == [scenes.VALIDATION_SEED0]


def test_captions_command_prints_a_table_and_writes_json(tiny_ckpt, tmp_path):
    out = tmp_path / "c.json"
    r = ok(run_preloaded("experiments.py", "captions", f"--ckpt={tiny_ckpt}", "--clips=2", "--frames=9",
                         "--max_text=40", "--style=shifted", f"--json={out}"))
    c = json.loads(out.read_text())
    assert c["options"] == {"ckpt": str(tiny_ckpt), "clips": 2, "frames": 9, "max_text": 40, "style": "shifted",
                            "validation": False, "json": str(out)}
    assert c["fusion"] == "casa" and c["frames"] == 18 and list(c["cache_bytes_at"]) == ["8", "9"]
    assert {"exact", "soft", "blind_exact", "blind_soft", "ms_per_frame", "cache_tokens", "cache_bytes"} <= set(c)
    lines = r.stdout.splitlines()
    assert "2 held-out clips of 9 frames (shifted look), the cache keeping the latest 40 text tokens" in lines[0]
    assert [line.split()[0] for line in lines[2:8]] == ["all", "full", *common.CAPTION_KINDS]
    assert lines[-1].startswith("cache bytes after frame 8: ")


def test_score_command_scores_every_task_in_each_look_and_blind(tiny_ckpt, tmp_path):
    """train.py's exact match on more held-out conversations: the first n of the held-out seeds, per task the
    checkpoint trained on, in every look (scenes.STYLES) and on gray images; a table and the JSON."""
    out = tmp_path / "s.json"
    r = ok(run_preloaded("experiments.py", "score", f"--ckpt={tiny_ckpt}", "--n=3", f"--json={out}"))
    s = json.loads(out.read_text())
    tasks = sorted(scenes.parse_tasks(load(tiny_ckpt)["train_config"]["tasks"]))
    looks = ["default", "shifted", "varied", "blind"]
    assert [k for k in s if k not in ("machine", "options")] == looks
    assert all(sorted(s[look]) == tasks and all(a in (0, 1 / 3, 2 / 3, 1) for a in s[look].values()) for look in looks)
    lines = r.stdout.splitlines()
    assert "3 held-out conversations per task" in lines[0] and lines[1].split() == ["task", *looks]
    assert [line.split()[0] for line in lines[2:]] == tasks


# ------------------------------------------------------------------------------------------------ paper

@pytest.fixture(scope="module")
def quick_paper(tmp_path_factory):
    """`experiments.py paper --quick` once: its run folders and its four outputs."""
    out = tmp_path_factory.mktemp("paper")
    outputs = {kind: out / f"paper.{kind}" for kind in ("json", "md", "png", "gif")}
    argv = ["paper", "--quick", f"--out_dir={out / 'runs'}", *(f"--{k}={p}" for k, p in outputs.items())]
    first = ok(run("experiments.py", *argv, timeout=900))  # 32 runs: minutes on a busy 2-core machine
    return out / "runs", outputs, argv, first


def test_paper_quick_writes_every_table_key(quick_paper):
    runs, outputs, _, first = quick_paper
    r = json.loads(outputs["json"].read_text())
    assert {"machine", "options", "budget", "sweep", "setting_i", "setting_ii", "captioning"} <= set(r)
    columns = {*experiments.COARSE_TASKS, *experiments.FINE_TASKS, *experiments.VIDEO_TASKS, "coarse", "fine", "mean"}
    assert set(r["sweep"]) == set(casa.FUSIONS)
    for f, row in r["sweep"].items():  # each axis chooses its best, and the chosen rates are the ones used
        for scale, acc in row["scales"].items():  # scored on the validation set, not on the held-out one
            assert acc == experiments.summary(json.loads((runs / "sweep" / f"{f}_x{scale}" / "validation.json")
                                                         .read_text()))
        for x, acc in row["encoder_scales"].items():
            name = experiments.rate_name((float(row["chosen"]), float(x)))
            assert acc == experiments.summary(json.loads((runs / "sweep" / f"{f}_{name}" / "validation.json")
                                                         .read_text()))
        assert set(row["encoder_scales"]) >= {f"{x:.3g}" for x in experiments.ENCODER_SCALES}
        def picked(axis):  # the sweep's rule applied to the table's own numbers
            return experiments.chosen_scale({float(scale): acc for scale, acc in row[axis].items()})
        assert float(row["chosen"]) == picked("scales")
        assert row["encoder_scales"]["1"] == row["scales"][row["chosen"]]  # the second axis starts from the first's
        assert float(row["encoder_chosen"]) == picked("encoder_scales")
        rate = (float(row["chosen"]), float(row["encoder_chosen"]))
        assert row["rates"] == experiments.rates(rate)[:-1]
        run = load(runs / "i" / f"{f}_{experiments.rate_name(rate)}_s{experiments.SEEDS[0]}" / "ckpt.pt")
        config = run["train_config"]
        assert (config["lr"], config["pretrained_lr"]) == pytest.approx((6e-3 * rate[0], 2e-4 * rate[1]), rel=1e-2)
    assert set(r["setting_i"]) == set(experiments.VARIANTS)
    for v, row in r["setting_i"].items():
        assert set(row["mean"]) == columns and set(row["blind"]) == columns
        assert set(row["seeds"]) == {str(s) for s in experiments.seeds_of(v)}
        assert len(row["seeds"]) == (3 if v in casa.FUSIONS else 2)
        for seed in row["seeds"].values():
            assert columns <= set(seed) and set(seed["reached"]) == {"50%", "80%", "90%"}
            assert seed["last_20pct_gain"] is not None  # 5 evals: the 4th is at 80% of the run
    assert set(r["setting_ii"]) == {"insertion", *experiments.ADAPTED}
    validation = {s: json.loads(next((runs / "i").glob(f"insertion_x*_s{s}")).joinpath("validation.json").read_text())
                  for s in experiments.SEEDS}
    best_seed = max(experiments.SEEDS, key=lambda s: experiments.summary(validation[s])["mean"])
    assert r["setting_ii"]["insertion"]["seed"] == best_seed
    for f in experiments.ADAPTED:
        assert set(r["setting_ii"][f]["drop"]) == columns
    assert set(r["captioning"]) == set(casa.FUSIONS)
    for c in r["captioning"].values():
        assert {"exact", "soft", "blind_exact", "blind_soft", "ms_per_frame", "cache_tokens", "cache_bytes"} <= set(c)
        assert 0 <= c["exact"] <= c["soft"] <= 1  # an exact caption names the right colours and shapes too
    assert r["captioning"]["insertion"]["cache_tokens"] > r["captioning"]["cross"]["cache_tokens"]
    md = outputs["md"].read_text()
    assert all(h in md for h in ("### Learning rates", "### Setting (i)", "### Setting (ii)", "### Live captioning",
                                 "### The paper's claims"))
    assert all(f"| {v} |" in md for v in experiments.VARIANTS)
    verdicts = [line for line in md.splitlines() if line.startswith("- **")]
    assert len(verdicts) == len(experiments.claims(r)) and all(
        any(f"**: {v}" in line for v in ("agrees", "disagrees", experiments.UNSURE)) for line in verdicts)
    assert Image.open(outputs["png"]).size[0] > 600
    assert Image.open(outputs["gif"]).n_frames >= 8  # a held-out clip has 8 to 64 frames
    sweep = len(list((runs / "sweep").iterdir()))
    assert sweep >= len(casa.FUSIONS) * (len(experiments.RATE_SCALES) + len(experiments.ENCODER_SCALES) - 1)
    seeds = sum(len(experiments.seeds_of(v)) for v in experiments.VARIANTS)
    trained = sweep + seeds + len(experiments.ADAPTED)
    assert first.stdout.count("training: train.py") == trained


def test_paper_second_invocation_only_redraws(quick_paper, tmp_path):
    runs, outputs, argv, _ = quick_paper
    ckpts = sorted(runs.rglob("ckpt.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    before = json.loads(outputs["json"].read_text())
    outputs["md"].unlink()
    again = ok(run("experiments.py", *argv))
    assert "training:" not in again.stdout and "resuming:" not in again.stdout
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps
    after = json.loads(outputs["json"].read_text())
    assert after["setting_i"] == before["setting_i"] and after["captioning"] == before["captioning"]
    assert outputs["md"].exists()
    # from the JSON alone: the same tables, a picture, nothing trained or scored
    ok(run_preloaded("experiments.py", "paper", "--redraw", f"--json={outputs['json']}", f"--md={tmp_path / 'p.md'}",
                     f"--png={tmp_path / 'p.png'}", "--gif="))
    assert (tmp_path / "p.md").read_text() == outputs["md"].read_text()
    assert Image.open(tmp_path / "p.png").size == Image.open(outputs["png"]).size


def test_paper_encoder_starts_every_vlm_and_adapting_keeps_the_frozen_weights(quick_paper):
    runs = quick_paper[0]
    vision = str(runs / "vision" / "ckpt.pt")
    starts = {p.parent.parent.name: load(p)["train_config"]["init_from"] for p in runs.glob("*/*/ckpt.pt")}
    assert set(starts) == {"sweep", "i", "ii"} and starts["sweep"] == starts["i"] == vision
    # setting (ii): after training, every weight the adapted model shares with its insertion source is bit-identical
    seed = json.loads(quick_paper[1]["json"].read_text())["setting_ii"]["insertion"]["seed"]
    (source_dir,) = (runs / "i").glob(f"insertion_x*_s{seed}")  # the folder names the rates it ran at
    source = load(source_dir / "ckpt.pt")["model"]
    for f in experiments.ADAPTED:
        (adapted_dir,) = (runs / "ii").glob(f"{f}_x*")
        adapted = load(adapted_dir / "ckpt.pt")
        assert all(torch.equal(t, adapted["model"][name]) for name, t in source.items())
        trained = [name for name in adapted["model"] if name not in source]
        assert trained and all(".cross." in name or ".norm2." in name for name in trained)


def test_the_sweep_rule_and_the_verdicts():
    """The sweep picks the best mean when it beats the default's by more than MARGIN; a claim gets a verdict only
    when the seeds' ranges allow it."""
    assert experiments.chosen_scale({1 / 3: {"mean": 0.5}, 1: {"mean": 0.7}, 3: {"mean": 0.6}}) == 1
    assert experiments.chosen_scale({1 / 3: {"mean": 0.8}, 1: {"mean": 0.7}, 3: {"mean": 0.8}}) == 1 / 3
    assert experiments.chosen_scale({1 / 3: {"mean": 0.72}, 1: {"mean": 0.7}, 3: {"mean": 0.6}}) == 1  # the margin
    assert experiments.rates((3, 1)) == ["--lr=0.018", "--pretrained_lr=0.0002", "--warmup_iters=50"]
    assert experiments.rates((1, 3)) == ["--lr=0.006", "--pretrained_lr=0.0006", "--warmup_iters=50"]
    assert experiments.rate_name((1, 1)) == "x1" and experiments.rate_name((1 / 3, 3)) == "x0.333_enc3"
    # the second axis goes past a winning edge, and stops once the winner has neighbours on both sides
    assert experiments.past_edge({1 / 3: {"mean": 0.5}, 1: {"mean": 0.6}, 3: {"mean": 0.7}}) == 9
    assert experiments.past_edge({1 / 3: {"mean": 0.7}, 1: {"mean": 0.6}, 3: {"mean": 0.5}}) == pytest.approx(1 / 9)
    assert experiments.past_edge({1 / 3: {"mean": 0.5}, 1: {"mean": 0.7}, 3: {"mean": 0.5}}) is None
    assert experiments.past_edge({1 / 3: {"mean": 0.7}, 1: {"mean": 0.7}, 3: {"mean": 0.5}}) is None  # a tie
    high, low, overlapping = (0.9, 0.88, 0.92), (0.6, 0.5, 0.7), (0.85, 0.6, 0.95)
    assert experiments.ahead(high, low) == "agrees" and experiments.ahead(low, high) == "disagrees"
    assert experiments.ahead(overlapping, low) == experiments.UNSURE
    assert experiments.close((0.800, 0.7, 0.9), (0.812, 0.7, 0.9), 1.5) == "agrees"
    assert experiments.close(high, low, 1.5) == "disagrees"
    assert experiments.close(overlapping, (0.8, 0.75, 0.85), 1.5) == experiments.UNSURE


def test_curve_facts_read_crossings_and_the_last_fifth(tmp_path):
    """Crossing times of the mean over every task, and its gain since the last eval at or before 80% of the run."""
    tasks = experiments.COARSE_TASKS + experiments.FINE_TASKS + experiments.VIDEO_TASKS
    means = {100: 0.3, 200: 0.55, 300: 0.7, 400: 0.82, 500: 0.85}
    with open(tmp_path / "log.jsonl", "w") as f:
        for it, m in means.items():
            f.write(json.dumps({"kind": "eval", "iter": it, "train_s": it / 10, "text_tokens": it * 100,
                                "accuracy": {t: m for t in tasks}}) + "\n")
    facts = experiments.curve_facts(experiments.Job("train.py", str(tmp_path), []))
    assert [facts["reached"][k]["iter"] for k in ("50%", "80%")] == [200, 400] and facts["reached"]["90%"] is None
    assert facts["last_20pct_gain"] == pytest.approx(0.85 - 0.82)  # from iteration 400, 80% of 500


def test_claims_give_a_verdict_only_where_the_seeds_allow(tmp_path):
    def variant(*means):  # every column at these means, one value per seed
        return {"seeds": {str(i): {c: m for c in ("fine", "mean")} for i, m in enumerate(means)}}
    r = {"setting_i": {"insertion": variant(0.80, 0.82, 0.84), "cross": variant(0.60, 0.62, 0.64),
                       "casa": variant(0.78, 0.79, 0.81), "cross_gate": variant(0.70, 0.90)},
         "setting_ii": {"insertion": {"accuracy": {"mean": 0.82}, "seed": 1},
                        **{f: {"drop": {"mean": 0.05}} for f in experiments.ADAPTED}}}
    verdicts = [verdict for _, verdict, _ in experiments.claims(r)]
    # insertion ahead on fine (ranges apart); casa past half the gap (0.72) with its whole range; cross not within
    # 1.5 of insertion (ranges apart); casa not within 1.5 of cross (apart); casa below the gate's mean but inside
    # its range; the source under 85%
    assert verdicts[:5] == ["agrees", "agrees", "disagrees", "disagrees", experiments.UNSURE]
    assert verdicts[5].startswith(experiments.UNSURE) and "under 85%" in verdicts[5]
    r["setting_ii"]["insertion"]["accuracy"]["mean"] = 0.9
    assert [v for _, v, _ in experiments.claims(r)][5] == "agrees"


def test_paper_records_stand_in_for_removed_checkpoints(quick_paper, tmp_path):
    """With every checkpoint removed, the runs' records are enough to score and draw again; a score that needs a
    model (here casa's live captions) trains that run again, after the encoder it starts from, and gets the same
    numbers: training is deterministic."""
    runs, outputs, argv, _ = quick_paper
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for path in copy.rglob("ckpt.pt"):
        path.unlink()
    casa_first = next((copy / "i").glob(f"casa_x*_s{experiments.SEEDS[0]}"))
    (casa_first / "captions.json").unlink()
    mine = [f"--out_dir={copy}", f"--json={tmp_path / 'p.json'}", f"--md={tmp_path / 'p.md'}", "--png=", "--gif="]
    again = ok(run("experiments.py", "paper", "--quick", *mine))
    assert [line for line in again.stdout.splitlines() if line.startswith(("training", "resuming"))] == [
        f"training: pretrain_vision.py --out_dir={copy / 'vision'}", f"training: train.py --out_dir={casa_first}"]
    def untimed(x):  # a record without its seconds, the one thing a second training changes
        if isinstance(x, dict):
            return {k: untimed(v) for k, v in x.items() if k not in ("train_s", "data_s", "ms_per_frame")}
        return x
    before, after = json.loads(outputs["json"].read_text()), json.loads((tmp_path / "p.json").read_text())
    assert all(untimed(after[k]) == untimed(before[k]) for k in ("sweep", "setting_i", "setting_ii", "captioning"))


def test_paper_redraw_refuses_a_json_from_before_the_sweep(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"budget": {}, "setting_i": {}, "setting_ii": {}, "captioning": {}}))
    r = run_preloaded("experiments.py", "paper", "--redraw", f"--json={old}", f"--md={tmp_path / 'p.md'}",
                      f"--png={tmp_path / 'p.png'}", "--gif=")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "before it ran on the staged recipe" in r.stderr
