"""What every test file shares: the repository root, the environment scripts run in, two ways to run a script, the
checks of a clean run and of a one-line error, the tiny model's options and two tiny checkpoints.

Every run uses one thread (OMP_NUM_THREADS=1) and the CPU, even on a GPU machine: runs are reproducible, and the two
that often run at once (a ThreadPoolExecutor of 2) do not fight over the cores."""
import multiprocessing
import multiprocessing.connection
import os
import runpy
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in every process started from here
# The suite checks exact CPU behaviour, as CI runs it. On a GPU machine --device=auto would pick the GPU, with bf16
# autocast and kernels that are not bitwise reproducible (a resumed run's losses, say); `make gpu` checks the GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                         "MASTER_PORT")}  # a test run under torchrun is not DDP

MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--vit_layers=1", "--vit_dim=32", "--vit_heads=2",
         "--image_size=32", "--patch_size=8"]
TINY = MODEL + ["--batch_size=4", "--eval_per_task=2", "--progress=false", "--log_interval=1"]  # train.py, tiny
EXACT = ["--warmup_iters=0", "--min_lr_ratio=1.0"]  # a constant LR: the schedule does not depend on max_iters
PRETRAIN = MODEL + ["--batch_size=4", "--eval_scenes=4", "--warmup_iters=0", "--min_lr_ratio=1.0"]


def run(*args, module=None, timeout=300):
    """`python SCRIPT ARGS...` (or `python -m MODULE ARGS...`) in a fresh interpreter, at the repository root."""
    cmd = [sys.executable] + (["-m", module] if module else []) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def run_preloaded(script, *args, timeout=120):
    """The same as run(script, *args), but in a process forked from one that has already imported torch and the
    project's modules: about 0.05 s to start instead of 3 s, for the many short runs that stop at an error. The
    script runs as __main__, with its own stdout, stderr and exit code, exactly as from a shell."""
    with tempfile.TemporaryDirectory() as d:
        out, err = Path(d, "stdout"), Path(d, "stderr")
        out.touch()
        err.touch()
        process = _PRELOADED.Process(target=_run_as_main, args=(str(script), [str(a) for a in args], out, err))
        with _POLLING:
            process.start()
        finished = multiprocessing.connection.wait([process.sentinel], timeout)
        with _POLLING:
            if not finished:
                process.kill()
            process.join()
        if not finished:
            raise subprocess.TimeoutExpired([script, *args], timeout)
        return subprocess.CompletedProcess([script, *args], process.exitcode, out.read_text(), err.read_text())


def _run_as_main(script, args, out, err):  # in the forked process
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(ENV)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY), fd)
    sys.argv = [script, *args]
    sys.path.insert(0, str((ROOT / script).parent))
    runpy.run_path(str(ROOT / script), run_name="__main__")


# the fork server starts (at the first run_preloaded) with this environment: PYTHONPATH lets it preload this file
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT),
                                                         os.environ.get("PYTHONPATH")]))
_PRELOADED = multiprocessing.get_context("forkserver")
# start() polls every running child for its exit code, which can be read once: two threads must not poll at once
_POLLING = threading.Lock()
_PRELOADED.set_forkserver_preload(["conftest", "torch", "common", "casa", "data", "tqdm", "torch.distributed",
                                   "torch.utils.flop_counter"])


def ok(r):
    """A run that succeeded: exit 0, no traceback."""
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_clean_line(r, script, code=2):
    """A refused run: this exit code and exactly one line on stderr, 'SCRIPT: error: ...' for a usage error (exit 2)
    or 'SCRIPT: ...' otherwise (Ctrl-C, SIGTERM). Returns the line."""
    name = Path(script).name
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr
    assert r.stderr.startswith(f"{name}: error: " if code == 2 else f"{name}: "), r.stderr
    return r.stderr.strip()


def run_bad_options(pool, script, cases, tmp):
    """Every command line of cases (name -> (arguments, what the error says); {tmp} in an argument: tmp), two at a
    time: {name: its CompletedProcess}."""
    jobs = {name: pool.submit(run_preloaded, script, *[a.format(tmp=tmp) for a in args])
            for name, (args, _) in cases.items()}
    return {name: job.result() for name, job in jobs.items()}


def check_bad_option(bad_runs, cases, name, script):
    """One of run_bad_options' runs: one line naming the mistake, nothing printed or written before it."""
    tmp, results = bad_runs
    assert cases[name][1].format(tmp=tmp) in one_clean_line(results[name], script)
    assert results[name].stdout == ""
    assert list(tmp.iterdir()) == []


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no pickled code


@pytest.fixture(scope="session")
def pool():
    """Two runs at a time: most of a short run is importing torch, on one core."""
    with ThreadPoolExecutor(2) as ex:
        yield ex


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny casa model trained 2 iterations by train.py (options as `--key value`): its checkpoint."""
    out = tmp_path_factory.mktemp("tiny")
    ok(run("train.py", *TINY, "--out_dir", out, "--max_iters", "2"))
    return out / "ckpt.pt"


@pytest.fixture(scope="session")
def encoder_ckpt(tmp_path_factory):
    """A tiny vision encoder pretrained 2 iterations by pretrain_vision.py: its checkpoint."""
    out = tmp_path_factory.mktemp("encoder")
    ok(run("pretrain_vision.py", *PRETRAIN, f"--out_dir={out}", "--max_iters=2", "--eval_interval=2"))
    return out / "ckpt.pt"
