"""Prerequisites: the runs a config needs (a trained classifier, an RTS masker), made or reused first.

A config lists them as ``prerequisites: [{config, provides, checkpoint, args}]``. Each one is the named
config run with what the parent run chose passed on (:func:`inherited`): its data block (keeping the
prerequisite's own batch size), seed, accelerator, devices, precision and strategy, the classifier's
architecture keys of its model, and the checkpoints earlier prerequisites provided. Its run folder then
follows from that (:mod:`aid.runs.identity`), so a second dataset or another architecture never meets the
first one's checkpoints. The path of its ``best`` or ``last`` checkpoint is set at the parent's
``provides`` key (``model.init_args.classifier_ckpt``); when that key is already set (a checkpoint given
explicitly), the prerequisite is not made.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aid.runs.record import read_record, record_checkpoint, record_matches

#: Trainer keys a prerequisite takes from its parent (how it computes; they never define a run's folder).
INHERITED_TRAINER = ("accelerator", "devices", "precision", "strategy")
#: Model keys a prerequisite takes from its parent when its model accepts them: the classifier's definition.
INHERITED_MODEL = ("arch", "pretrained", "num_classes", "output_stride", "channels", "in_chans", "classifier_ckpt")
CHECKPOINT_KINDS = ("best", "last")
#: Environment variables of multi-process launchers (torchrun, SLURM, LSF, MPI): a prerequisite that rank
#: zero trains alone must not believe it is one rank of the parent's launch.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK",
                "MASTER_ADDR", "MASTER_PORT")
LAUNCHER_PREFIXES = ("TORCHELASTIC_", "SLURM_", "JSM_", "LSB_", "OMPI_", "PMI_")


@dataclass
class Prerequisite:
    """One item of a config's ``prerequisites`` list.

    Attributes:
        config: the config that makes it (a path, or a name under ``configs/``).
        provides: dotted key of the parent's config that receives its checkpoint path.
        checkpoint: which of its checkpoints: ``best`` (of the monitored metric) or ``last`` (the newest).
        args: extra command-line arguments for it (they come after what is passed on).
    """

    config: str
    provides: str
    checkpoint: str = "last"
    args: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: Any, index: int) -> Prerequisite:
        """An item from the config's dict; ValueError naming ``prerequisites[index]`` and the key otherwise."""
        where = f"prerequisites[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping with keys config, provides, checkpoint, args; got {raw!r}")
        allowed = {"config", "provides", "checkpoint", "args"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        for key in ("config", "provides"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ValueError(f"{where}.{key} must be a non-empty string, got {raw.get(key)!r}")
        kind = raw.get("checkpoint", "last")
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"{where}.checkpoint must be one of {list(CHECKPOINT_KINDS)}, got {kind!r}")
        args = raw.get("args") or []
        if not isinstance(args, list):
            raise ValueError(f"{where}.args must be a list of command-line arguments, got {args!r}")
        return cls(raw["config"], raw["provides"], kind, [str(a) for a in args])


def get_dotted(config: dict[str, Any], dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"`` (None where a level is missing)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def accepted_arguments(class_path: str) -> set[str] | None:
    """Names of the constructor arguments of the class at ``class_path``, following ``**kwargs`` up the MRO;
    None when any class accepts every keyword (or the class cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def inherited(
    parent: dict[str, Any], child_config: dict[str, Any], passed_model_keys: tuple[str, ...]
) -> dict[str, Any]:
    """The config overrides a prerequisite takes from its parent's resolved config.

    Args:
        parent: the parent's resolved config (nested dict).
        child_config: the prerequisite's own config file, as loaded YAML (for its batch size and model class).
        passed_model_keys: model ``init_args`` keys to pass on when the parent has them set and the child's
            model accepts them (:data:`INHERITED_MODEL` and the keys that earlier prerequisites provided).
    """
    out: dict[str, Any] = {}
    for key in ("seed_everything", "runs_root"):
        if parent.get(key) is not None:
            out[key] = parent[key]
    trainer = {k: parent.get("trainer", {}).get(k) for k in INHERITED_TRAINER}
    trainer = {k: v for k, v in trainer.items() if v is not None}
    if trainer:
        out["trainer"] = trainer
    data = parent.get("data")
    if isinstance(data, dict) and data.get("class_path"):
        data = {"class_path": data["class_path"], "init_args": dict(data.get("init_args") or {})}
        own_batch = get_dotted(child_config, "data.init_args.batch_size")
        if own_batch is not None and "batch_size" in data["init_args"]:
            data["init_args"]["batch_size"] = own_batch  # each stage keeps the batch size of its recipe
        out["data"] = data
    child_model = (child_config.get("model") or {}).get("class_path")
    accepted = accepted_arguments(child_model) if child_model else set()
    parent_args = get_dotted(parent, "model.init_args") or {}
    model = {
        k: parent_args[k] for k in passed_model_keys
        if parent_args.get(k) is not None and (accepted is None or k in accepted)
    }
    if model:
        out["model"] = {"init_args": model}
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict; ValueError naming the file when it is not a YAML mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            value = yaml.safe_load(f)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config {path} is not a readable YAML file: {err}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"config {path} must hold a YAML mapping, got {type(value).__name__}")
    return value


@dataclass
class Plan:
    """What is known of one prerequisite before anything is trained.

    Attributes:
        item: the prerequisite.
        args: its command line (after ``train.py``).
        run_dir: its run folder.
        identity: its run identity.
        record: its completion record (None when unfinished).
        reason: why it is reused or made.
    """

    item: Prerequisite
    args: list[str]
    run_dir: Path
    identity: dict[str, Any]
    record: dict[str, Any] | None
    reason: str

    @property
    def finished(self) -> bool:
        """True when its completion record matches its identity (reuse it)."""
        return record_matches(self.record, self.identity)[0]

    def checkpoint(self) -> Path:
        """The checkpoint it provides: from its record when finished, else where it will be written."""
        if self.record is not None and self.finished:
            return record_checkpoint(self.run_dir, self.record, self.item.checkpoint)
        return self.run_dir / "checkpoints" / f"{self.item.checkpoint}.ckpt"

    def refresh(self) -> Plan:
        """Read its completion record again (another process may have finished it)."""
        self.record = read_record(self.run_dir)
        ok, why = record_matches(self.record, self.identity)
        if ok:
            self.reason = "finished run found"
        elif not self.run_dir.exists():
            self.reason = "no such run yet"
        elif self.record is None and (self.run_dir / "checkpoints" / "last.ckpt").is_file():
            self.reason = "unfinished: no completion record; resumes from its checkpoints/last.ckpt"
        else:
            self.reason = why
        return self


def launch_free_environment() -> dict[str, str]:
    """This process's environment without the variables of multi-process launchers (:data:`LAUNCHER_ENV`)."""
    return {
        k: v for k, v in os.environ.items()
        if k not in LAUNCHER_ENV and not k.startswith(LAUNCHER_PREFIXES)
    }


def train_in_child(script: Path, plan: Plan, env: dict[str, str] | None = None) -> None:
    """Run ``script`` with the plan's command line in a child process (launcher variables removed, ``env``
    added); resume from the folder's ``last.ckpt`` when an unfinished run left one. CalledProcessError when it
    fails."""
    args = list(plan.args)
    last = plan.run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and "--ckpt_path" not in args:
        args += ["--ckpt_path", str(last)]
    subprocess.run([sys.executable, str(script), *args], check=True, cwd=os.getcwd(),
                   env={**launch_free_environment(), **(env or {})})
