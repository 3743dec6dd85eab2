"""Run folders, completion records, locks and rank zero's heartbeat (aid.runs), without training."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

from aid.checkpoints import AtomicCheckpointIO
from aid.runs import RunLock, RunLockedError, RunStatus, run_folder, run_identity, wait_for_record
from aid.runs.prerequisites import Prerequisite, inherited, launch_free_environment
from aid.runs.record import read_record, record_matches, remove_record, write_record
from aid.runs.status import RankZeroFailed
from tests.conftest import ROOT

CONFIG = {
    "seed_everything": 0,
    "runs_root": "runs",
    "config": ["configs/rts.yaml"],
    "trainer": {"max_epochs": 3, "default_root_dir": "runs/x", "logger": {"class_path": "L"},
                "callbacks": [{"class_path": "C", "init_args": {"num_images": 8, "progress": True}}]},
    "model": {"class_path": "aid.modules.rts.RTSModule",
              "init_args": {"classifier_ckpt": "runs/classifier-1a2b3c4d/checkpoints/best.ckpt", "lr": 0.001}},
    "data": {"class_path": "datamodules.ShapesDataModule", "init_args": {"image_size": 32, "batch_size": 64}},
}
DATA = {"classes": ["a", "b", "c"], "image_size": 32, "sizes": {"train": 180, "val": 120}}


def test_run_folder_follows_config_and_data_but_not_where_or_how_the_run_is_shown():
    base = run_folder("runs", "rts", run_identity(CONFIG, DATA))
    assert base.parent.name == "runs" and base.name.startswith("rts-") and len(base.name) == len("rts-") + 8
    shown = {**CONFIG, "config": ["other.yaml"], "report_dir": "elsewhere",
             "trainer": {**CONFIG["trainer"], "default_root_dir": "z", "logger": None}}
    shown["trainer"]["callbacks"] = [{"class_path": "C", "init_args": {"num_images": 8, "progress": False}}]
    assert run_folder("runs", "rts", run_identity(shown, DATA)) == base
    other_data = {**DATA, "classes": ["a", "b", "c", "d"]}
    assert run_folder("runs", "rts", run_identity(CONFIG, other_data)) != base
    other_lr = {**CONFIG, "model": {**CONFIG["model"], "init_args": {**CONFIG["model"]["init_args"], "lr": 0.01}}}
    assert run_folder("runs", "rts", run_identity(other_lr, DATA)) != base
    other_seed = {**CONFIG, "seed_everything": 1}
    assert run_folder("runs", "rts", run_identity(other_seed, DATA)) != base


def test_checkpoints_inside_the_runs_folder_count_relative_to_it():
    moved = {**CONFIG, "runs_root": "/data/all_runs", "model": {**CONFIG["model"], "init_args": {
        "classifier_ckpt": "/data/all_runs/classifier-1a2b3c4d/checkpoints/best.ckpt", "lr": 0.001}}}
    assert run_identity(moved, DATA) == run_identity(CONFIG, DATA)


def test_a_run_is_finished_only_by_a_matching_completion_record(tmp_path):
    identity = run_identity(CONFIG, DATA)
    run = run_folder(tmp_path, "rts", identity)
    assert record_matches(read_record(run), identity) == (False, "no completion record (never finished, killed or "
                                                                 "failed)")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    write_record(run, identity, {"last": str(run / "checkpoints" / "last.ckpt"), "best": None})
    record = read_record(run)
    assert record_matches(record, identity) == (True, "")
    assert record["checkpoints"] == {"last": "checkpoints/last.ckpt"}
    ok, why = record_matches(record, run_identity(CONFIG, {**DATA, "sizes": {"train": 181, "val": 120}}))
    assert not ok and "data" in why and "181" in why
    remove_record(run)
    assert read_record(run) is None


def test_an_unreadable_completion_record_counts_as_unfinished(tmp_path):
    (tmp_path / "complete.json").write_text("{half")
    assert read_record(tmp_path) is None


HOLD = """
import sys, time
from aid.runs import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_process_is_refused_a_run_folder_in_use_with_the_holder_named(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by process {proc.pid} on"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    # the OS frees the lock of a killed process: no stale lock
    RunLock(tmp_path).acquire().release()


def test_waiting_for_a_lock_calls_back_until_the_holder_ends(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD.replace("60", "2"), str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    seen = []
    lock = RunLock(tmp_path).acquire(wait=True, on_wait=seen.append, poll=0.5)
    lock.release()
    proc.wait()
    assert seen and "process" in seen[0]


def test_other_ranks_leave_with_rank_zeros_error_soon_after_its_failure_record(tmp_path):
    identity = run_identity(CONFIG, DATA)
    start = time.time()

    def rank_zero():
        try:
            with RunStatus(tmp_path, every=0.2).beating("training"):
                time.sleep(0.5)
                raise RuntimeError("out of memory in epoch 1")
        except RuntimeError:
            pass

    thread = threading.Thread(target=rank_zero)
    thread.start()
    with pytest.raises(RankZeroFailed, match="out of memory in epoch 1"):
        wait_for_record(tmp_path, identity, since=start, poll=0.1)
    thread.join()
    assert time.time() - start < 10


def test_other_ranks_leave_when_rank_zeros_heartbeat_stops(tmp_path):
    identity = run_identity(CONFIG, DATA)
    RunStatus(tmp_path).write("training")  # one heartbeat, then silence (rank zero was killed)
    with pytest.raises(RankZeroFailed, match="stopped its heartbeat"):
        wait_for_record(tmp_path, identity, since=time.time(), poll=0.1, stale_after=0.5)


def test_other_ranks_ignore_a_failure_record_of_an_earlier_launch_and_take_the_new_record(tmp_path):
    identity = run_identity(CONFIG, DATA)
    RunStatus(tmp_path).write("failed", error="an old failure")
    since = time.time() + 30  # this rank started waiting long after that failure

    def finish():
        time.sleep(0.3)
        write_record(tmp_path, identity, {})

    threading.Thread(target=finish).start()
    assert wait_for_record(tmp_path, identity, since=since, poll=0.1)["identity"] == identity


def test_rank_zero_status_file_goes_when_it_succeeds_and_says_failed_when_it_fails(tmp_path):
    with RunStatus(tmp_path, every=0.1).beating("training"):
        time.sleep(0.25)
        assert (tmp_path / "status.json").is_file()
    assert not (tmp_path / "status.json").exists()


def test_prerequisites_take_data_seed_devices_and_classifier_but_keep_their_batch_size():
    parent = {
        "seed_everything": 3, "runs_root": "r",
        "trainer": {"accelerator": "gpu", "devices": 2, "precision": "bf16-mixed", "strategy": "ddp",
                    "max_epochs": 9, "num_nodes": 2},
        "data": {"class_path": "datamodules.ImageFolderDataModule",
                 "init_args": {"root": "/d", "image_size": 32, "batch_size": 16}},
        "model": {"class_path": "aid.modules.aid.AIDModule",
                  "init_args": {"arch": "resnet18", "pretrained": None, "channels": None, "lr": 0.1,
                                "classifier_ckpt": "r/c/last.ckpt", "rts_ckpt": "r/rts/last.ckpt"}},
    }
    child = {"model": {"class_path": "aid.modules.classifier.ClassifierModule"},
             "data": {"init_args": {"batch_size": 128}}}
    out = inherited(parent, child, ("arch", "pretrained", "channels", "classifier_ckpt", "rts_ckpt"))
    assert out["seed_everything"] == 3 and out["runs_root"] == "r"
    assert out["trainer"] == {"accelerator": "gpu", "devices": 2, "precision": "bf16-mixed", "strategy": "ddp"}
    assert out["data"] == {"class_path": "datamodules.ImageFolderDataModule",
                           "init_args": {"root": "/d", "image_size": 32, "batch_size": 128}}
    # ClassifierModule takes the architecture, not checkpoints it does not know; unset keys are not passed
    assert out["model"] == {"init_args": {"arch": "resnet18"}}
    rts_child = {"model": {"class_path": "aid.modules.rts.RTSModule"}}
    assert inherited(parent, rts_child, ("arch", "classifier_ckpt"))["model"]["init_args"] == {
        "arch": "resnet18", "classifier_ckpt": "r/c/last.ckpt"}


@pytest.mark.parametrize("raw, words", [
    ({"config": "c.yaml"}, ["prerequisites[0].provides"]),
    ({"config": "c.yaml", "provides": "model.init_args.x", "checkpoint": "first"}, ["checkpoint", "best", "last"]),
    ({"config": "c.yaml", "provides": "p", "checkpont": "best"}, ["checkpont", "allowed"]),
])
def test_a_malformed_prerequisite_is_refused_naming_the_key(raw, words):
    with pytest.raises(ValueError) as err:
        Prerequisite.parse(raw, 0)
    for w in words:
        assert w in str(err.value)


def test_a_prerequisite_trained_by_rank_zero_alone_does_not_see_the_launchers_variables(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "8", "MASTER_PORT": "29500", "SLURM_NTASKS": "8",
                       "TORCHELASTIC_RUN_ID": "x", "HOME_DIR_OK": "1"}.items():
        monkeypatch.setenv(key, value)
    env = launch_free_environment()
    assert "HOME_DIR_OK" in env
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"} & set(env)


def test_concurrent_atomic_checkpoint_saves_to_one_path_never_collide(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    errors = []

    def save(i):
        try:
            for _ in range(5):
                io.save_checkpoint({"state_dict": {"w": torch.full((64,), float(i))}}, path)
        except Exception as err:  # noqa: BLE001  (collected for the assertion)
            errors.append(err)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert io.load_checkpoint(path)["state_dict"]["w"].unique().numel() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
