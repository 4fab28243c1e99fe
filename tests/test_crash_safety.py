"""Crash safety: a kill -9 at any moment of a training or a prediction, then a rerun (``nnUNetv2_train ... --c``,
``nnunet_mtl predict --continue_prediction``), trusts nothing half-written and finishes with the outputs of an
uninterrupted run.

- checkpoints are written atomically (our save_checkpoint around nnU-Net's): a save that fails or is killed midway
  leaves the previous checkpoint where nnU-Net looks, and only a hidden temporary file, removed by the next save or
  start;
- a checkpoint that cannot be read (cut short before saves were atomic, a full disk, a cut copy) is refused by
  ``--c`` in one line that names it and the intact ones beside it;
- the augmentation workers nnU-Net forks die with the trainer (PR_SET_PDEATHSIG), even under SIGKILL;
- ``--continue_prediction`` predicts again what a kill left unfinished: a mask cut short, a mask without its class row.

In-process trainings run on a tiny planned phantom (2 epochs x 3 iterations, nnUNetTrainerMTL_tiny's schedule); the
e2e test kills the real ``nnUNetv2_train`` at a random moment (``CRASH_KILL_AFTER_S`` fixes the moment to
reproduce one).
"""
from __future__ import annotations

import csv
import ctypes
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from nnunetv2.run.run_training import maybe_load_checkpoint
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mtl.trainers import nnUNetTrainerMTL_tiny
from nnunet_mtl.processes import children_die_with_this_process
from tests.process_helpers import cmdline, descendants

pytestmark = pytest.mark.slow  # trains or starts processes (the fast subset leaves it out)

DATASET = "587"
needs_fork = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and PR_SET_PDEATHSIG: Linux")


class nnUNetTrainerMTL_crashsafety(nnUNetTrainerMTL_tiny):
    """nnUNetTrainerMTL_tiny under a name of its own: its results folder belongs to this module."""


# ================================================================================================ fixtures
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from tests.e2e_helpers import nnunet_env as environment, planned_phantom
    root = tmp_path_factory.mktemp("crash_safety")
    planned_phantom(environment(root), DATASET, seed=5)
    return root


@pytest.fixture
def nnunet_env(phantom, monkeypatch):
    from tests.e2e_helpers import use_in_process
    use_in_process(monkeypatch, phantom)
    return phantom


def make_trainer(root: Path, cls=nnUNetTrainerMTL_crashsafety, fold=0):
    from tests.e2e_helpers import in_process_trainer
    return in_process_trainer(root, DATASET, cls, fold)


@pytest.fixture
def trainer(nnunet_env):
    """An initialized trainer (network, optimizer) and an empty fold folder."""
    t = make_trainer(nnunet_env)
    folder = Path(t.output_folder)
    for f in folder.glob("*.pth"):
        f.unlink()
    for f in folder.glob(".*.tmp"):
        f.unlink()
    t.initialize()
    return t


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def dead_pid() -> int:
    """The process id of a process that has ended."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ================================================================================================ saving
def test_a_failed_save_leaves_the_previous_checkpoint(trainer, monkeypatch):
    folder = Path(trainer.output_folder)
    target = folder / "checkpoint_best.pth"
    trainer.save_checkpoint(str(target))
    # the content is nnU-Net's own: the same keys and values as nnU-Net's save_checkpoint writes
    nnUNetTrainer.save_checkpoint(trainer, str(folder / "nnunet.pth"))
    ours, theirs = load(target), load(folder / "nnunet.pth")
    (folder / "nnunet.pth").unlink()
    assert ours.keys() == theirs.keys() and ours["current_epoch"] == theirs["current_epoch"] == 1
    assert all(torch.equal(ours["network_weights"][k], v) for k, v in theirs["network_weights"].items())
    good = target.read_bytes()

    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out:  # the bytes land in the file nnU-Net was given, as in its torch.save
            out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        raise OSError("No space left on device")

    trainer.current_epoch = 1
    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(str(target))
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == good  # the previous checkpoint, untouched
    assert sorted(p.name for p in folder.glob("*.pth")) == ["checkpoint_best.pth"]
    assert temporaries(folder) == []  # a failed save cleans up after itself

    trainer.local_rank = 1  # nnU-Net's other ranks write nothing
    trainer.save_checkpoint(str(folder / "checkpoint_latest.pth"))
    assert not (folder / "checkpoint_latest.pth").exists() and temporaries(folder) == []


@needs_fork
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_for_c(trainer, nnunet_env, monkeypatch):
    folder = Path(trainer.output_folder)
    target = folder / "checkpoint_best.pth"
    trainer.save_checkpoint(str(target))  # 1 epoch done
    good = target.read_bytes()

    real_save = torch.save
    ready_r, ready_w = os.pipe()

    def half_then_hang(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        os.write(ready_w, b"x")  # half written: kill me now
        time.sleep(120)

    trainer.current_epoch = 1
    monkeypatch.setattr(torch, "save", half_then_hang)
    pid = os.fork()
    if pid == 0:  # the trainer's process, killed with SIGKILL inside nnU-Net's torch.save
        try:
            trainer.save_checkpoint(str(target))
        finally:
            os._exit(1)
    try:
        assert os.read(ready_r, 1) == b"x"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)
    monkeypatch.setattr(torch, "save", real_save)

    assert target.read_bytes() == good
    left = temporaries(folder)
    assert [p.name.split(".")[1:4] for p in left] == [["checkpoint_best", "pth", str(pid)]]
    # nnUNetv2_train --c: nnU-Net's choice of file, our load: the previous checkpoint, and the leftover is removed
    resumed = make_trainer(nnunet_env)
    maybe_load_checkpoint(resumed, True, False)
    assert resumed.current_epoch == 1 and temporaries(folder) == []

    # a leftover of another killed process is removed by the next save too; a running writer's is kept
    stale = folder / f".checkpoint_latest.pth.{dead_pid()}.0123abcd.tmp"
    running = folder / f".checkpoint_latest.pth.{os.getppid()}.0123abcd.tmp"
    stale.write_bytes(b"half")
    running.write_bytes(b"half")
    resumed.save_checkpoint(str(folder / "checkpoint_latest.pth"))
    assert not stale.exists() and running.exists()
    running.unlink()
    assert load(folder / "checkpoint_latest.pth")["current_epoch"] == 2


# ================================================================================================ loading
def test_a_truncated_checkpoint_is_refused_in_one_line_and_c_resumes_without_it(trainer, nnunet_env):
    folder = Path(trainer.output_folder)
    trainer.save_checkpoint(str(folder / "checkpoint_best.pth"))  # 1 epoch done
    trainer.current_epoch = 1
    trainer.save_checkpoint(str(folder / "checkpoint_latest.pth"))
    latest = folder / "checkpoint_latest.pth"
    latest.write_bytes(latest.read_bytes()[:latest.stat().st_size // 2])  # cut short, as by a non-atomic save

    resumed = make_trainer(nnunet_env)
    with pytest.raises(SystemExit) as refused:
        maybe_load_checkpoint(resumed, True, False)  # what nnUNetv2_train --c does
    message = str(refused.value)
    assert message.startswith("nnunet_mtl: error: checkpoint ") and "\n" not in message
    assert f"{latest} cannot be read" in message and "not loaded" in message
    assert "intact beside it: checkpoint_best.pth (1 epoch done)" in message and "Delete it" in message
    assert not resumed.was_initialized  # refused before anything was built or loaded

    latest.unlink()  # what the line says to do: --c then resumes from checkpoint_best and finishes
    resumed = make_trainer(nnunet_env)
    maybe_load_checkpoint(resumed, True, False)
    assert resumed.current_epoch == 1
    resumed.run_training()
    final = load(folder / "checkpoint_final.pth")
    # epoch 1 trained after the resume (checkpoint_best here was saved before any epoch was logged)
    assert final["current_epoch"] == 2 and len(final["logging"]["train_losses"]) == 1

    (folder / "checkpoint_best.pth").write_bytes(b"")  # nothing readable beside a damaged final
    final_path = folder / "checkpoint_final.pth"
    final_path.write_bytes(final_path.read_bytes()[:1000])
    with pytest.raises(SystemExit) as refused:
        maybe_load_checkpoint(make_trainer(nnunet_env), True, False)
    assert f"{final_path} cannot be read" in str(refused.value)
    assert "no other checkpoint beside it can be read" in str(refused.value)


# ================================================================================================ workers
def _death_signal(queue) -> None:
    value = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    queue.put(value.value)


def _forked_child_death_signal() -> int:
    context = multiprocessing.get_context("fork")  # batchgenerators' workers: multiprocessing's default on Linux
    queue = context.Queue()
    worker = context.Process(target=_death_signal, args=(queue,), daemon=True)
    worker.start()
    value = queue.get(timeout=30)
    worker.join(30)
    return value


@needs_fork
def test_forked_workers_die_with_the_process():
    assert children_die_with_this_process()
    assert _forked_child_death_signal() == signal.SIGKILL
    from_thread = []  # PR_SET_PDEATHSIG follows the forking thread: only the main thread's children get it
    thread = threading.Thread(target=lambda: from_thread.append(_forked_child_death_signal()))
    thread.start()
    thread.join(60)
    assert from_thread == [0]


# ================================================================================================ prediction
def _predictor(trainer):
    from nnunet_mtl.inference.predictor import MultitaskPredictor
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = MultitaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                   perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False, cpu_amp="off")
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                    trainer.inference_allowed_mirroring_axes)
    return predictor


def _predict(trainer, images: Path, out: Path, overwrite: bool) -> set[str]:
    """nnunet_mtl predict's sequence (-npp 0 -nps 0): masks, then class_predictions.csv; the cases predicted."""
    predictor = _predictor(trainer)
    out.mkdir(exist_ok=True)
    predictor.predict_from_files_sequential(str(images), str(out), overwrite=overwrite)
    predictor.write_class_predictions(out / "class_predictions.csv")
    return set(predictor.class_probabilities)


def test_continue_prediction_predicts_again_what_a_kill_left_unfinished(trainer, nnunet_env, tmp_path):
    images = next((nnunet_env / "nnUNet_raw").glob(f"Dataset{DATASET}_*")) / "imagesTs"
    reference, continued = tmp_path / "reference", tmp_path / "continued"
    cases = _predict(trainer, images, reference, overwrite=True)
    assert len(cases) >= 4
    shutil.copytree(reference, continued)  # the same run, then the kill's damage
    cut, missing, no_row, *done = sorted(cases)
    # what a kill leaves: a mask cut short by nnU-Net's in-place export, a row whose mask was not exported yet, a
    # mask whose class row was not written yet (the CSV is rewritten every 10 s and at the end)
    mask = continued / f"{cut}.png"
    mask.write_bytes(mask.read_bytes()[:len(mask.read_bytes()) // 2])
    (continued / f"{missing}.png").unlink()
    with open(continued / "class_predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    with open(continued / "class_predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["case_id"] != no_row)

    predicted = _predict(trainer, images, continued, overwrite=False)  # --continue_prediction
    assert predicted == {cut, missing, no_row}
    for name in [f"{c}.png" for c in cases] + ["class_predictions.csv"]:
        assert (continued / name).read_bytes() == (reference / name).read_bytes(), name


# ================================================================================================ e2e: kill -9
@pytest.mark.e2e
@needs_fork
def test_kill_9_at_a_random_moment_then_c_finishes(phantom):
    from tests.e2e_helpers import BIN, nnunet_env as environment, run
    env = environment(phantom)
    trainer = "nnUNetTrainerMTL_tiny"
    cmd = [str(BIN / "nnUNetv2_train"), DATASET, "2d", "0", "-tr", trainer, "-device", "cpu"]
    delay = float(os.environ.get("CRASH_KILL_AFTER_S") or random.uniform(3.0, 20.0))
    context = f"(killed after {delay:.2f} s; CRASH_KILL_AFTER_S={delay:.2f} reproduces it)"
    started = time.monotonic()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    seen: set[int] = set()
    try:
        while time.monotonic() - started < delay and process.poll() is None:
            seen |= descendants(process.pid)
            time.sleep(0.05)
        seen |= descendants(process.pid)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        else:
            context += " (it had finished by then)"
        process.wait()
        # nnU-Net's forked augmentation workers (their command line is the trainer's) die with it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            survivors = [p for p in seen if "nnUNetv2_train" in cmdline(p)]
            if not survivors:
                break
            time.sleep(0.1)
        assert not survivors, f"augmentation workers outlived the trainer: {survivors} {context}"
    finally:
        try:  # anything else of this run (nnU-Net's spawned export workers end by themselves within seconds)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    run(cmd + ["--c"], env)  # the rerun finishes
    fold = next((phantom / "nnUNet_results").glob(f"Dataset{DATASET}_*")) / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    assert temporaries(fold) == [], context
    assert load(fold / "checkpoint_final.pth")["current_epoch"] == 2, context
    assert not (fold / "checkpoint_latest.pth").exists()
    names = {p.name for p in fold.iterdir() if not p.name.startswith("training_log_")}
    assert {"checkpoint_final.pth", "debug.json", "progress.png", "validation"} <= names, context
    splits = json.loads(next((phantom / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
                        .joinpath("splits_final.json").read_text())
    val = sorted(splits[0]["val"])
    validation = fold / "validation"
    assert sorted(p.stem for p in validation.glob("*.png")) == val, context
    with open(validation / "class_predictions.csv", newline="") as f:
        assert sorted(r["case_id"] for r in csv.DictReader(f)) == val, context
    assert json.loads((validation / "summary.json").read_text())["metric_per_case"], context
