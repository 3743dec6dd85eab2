"""Checkpoints are untrusted input: safe loading, clear errors, atomic writes."""

import os
import pickle

import pytest
import torch

from aid.checkpoints import AtomicCheckpointIO, UnsafeCheckpointError, load_checkpoint, load_classifier


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_crafted_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _RunsCode()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_checkpoint(path)


def test_missing_checkpoint_path_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "half.ckpt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnsafeCheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_atomic_checkpoint_io_leaves_no_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    # the old checkpoint is intact under the real name
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))


def test_class_count_mismatch_between_checkpoint_and_config_is_reported(tmp_path):
    from aid.modules.classifier import ClassifierModule

    module = ClassifierModule(num_classes=3, channels=[8, 16, 32, 64])
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    path = tmp_path / "c.ckpt"
    torch.save(ckpt, path)
    assert load_classifier(path).num_classes == 3
    with pytest.raises(ValueError, match="class-count mismatch"):
        load_classifier(path, num_classes=5)
