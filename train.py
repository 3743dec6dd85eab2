"""LightningCLI entry point: ``python train.py --config rts_aid.yaml`` (the ``fit`` subcommand is implied).

Bare config names are looked up under ``configs/``. Besides Lightning's own arguments the CLI has:

- ``--runs_root DIR`` (default ``runs``): where run folders live. A run's folder is
  ``<runs_root>/<run_name>-<hash>``, the hash taken over what defines the run (its resolved config and a
  description of its data; :mod:`aid.runs`), so runs on other data or other models never share a folder;
- ``--run_name NAME`` (default: the config's file name) and ``--run_dir DIR`` (a fixed folder instead);
- ``--report_dir DIR``: where ``summary.json``, ``report.md`` and figures go (default ``<run folder>/report``);
- ``--prerequisites``: a list of ``{config, provides, checkpoint, args}``: runs made (or reused, when a
  finished one matches) before this one, with this run's data, seed, devices and classifier passed on; the
  path of each one's ``best`` or ``last`` checkpoint goes to this run's ``provides`` key;
- ``--best_checkpoint {monitor: val/acc, mode: max}``: also keep ``checkpoints/best.ckpt`` (``last.ckpt``,
  the newest, is always kept; ``--last_checkpoint {every_n_train_steps: N}`` saves it more often).

Before anything runs, glibc's malloc is told to keep freed memory for reuse (:mod:`aid.cpu_allocator`;
CPU tensors then stop paying page faults every step; ``AID_KEEP_FREED_MEMORY=0`` turns it off).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities.seed import isolate_rng

from aid.checkpoints import UnsafeCheckpointError, load_checkpoint
from aid.cpu_allocator import keep_freed_memory
from aid.runs import RunLock, RunLockedError, RunStatus, data_description, run_folder, run_identity, wait_for_record
from aid.runs.prerequisites import (
    INHERITED_MODEL,
    Plan,
    Prerequisite,
    inherited,
    load_yaml,
    train_in_child,
)
from aid.runs.record import read_record, record_matches, remove_record, write_record
from aid.runs.status import RankZeroFailed

ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: ``--ckpt_path`` values that Lightning resolves itself.
SPECIAL_CKPT = ("last", "best", "hpc", "registry")
#: Model hyper-parameters that must agree between ``--ckpt_path`` and the config (the architecture).
ARCH_KEYS = ("arch", "in_chans", "output_stride", "channels")
#: Set for a prerequisite's child process: the run folder whose lock its parent holds for it.
LOCK_HELD_ENV = "AID_RUN_LOCK_HELD"


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace bare config names after ``--config`` / ``-c`` by their path under ``configs/``."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("--config", "-c"):
            out[i + 1] = str(resolve_config(out[i + 1]))
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + str(resolve_config(arg.split("=", 1)[1]))
    return out


def resolve_config(name: str) -> Path:
    """A config path as given if it exists, else ``configs/<name>`` (``.yaml`` optional); the file must be
    a YAML mapping (SystemExit naming it otherwise)."""
    path = Path(name)
    if not path.exists():
        for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
            if candidate.exists():
                path = candidate
                break
        else:
            available = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
            raise SystemExit(
                f"config {name!r} not found (as a path or under {CONFIG_DIR}); available: {', '.join(available)}"
            )
    try:
        load_yaml(path)
    except (ValueError, OSError) as err:
        raise SystemExit(str(err)) from None
    return path


def global_rank() -> int:
    """This process's rank from the launcher's environment (torchrun, SLURM's srun, LSF's jsrun), 0 alone.

    Read before Lightning starts, so from the same variables it reads: a global rank first, a node-local
    one last."""
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").strip().isdigit():
            return int(os.environ[key])
    return 0


#: When this process started its command (the wall time printed at the end counts from here).
_STARTED = time.perf_counter()


def format_duration(seconds: float) -> str:
    """``'1 h 02 min 05 s'``, ``'12 min 05 s'`` or ``'42 s'``."""
    s = round(seconds)
    h, m, s = s // 3600, s // 60 % 60, s % 60
    if h:
        return f"{h} h {m:02d} min {s:02d} s"
    return f"{m} min {s:02d} s" if m else f"{s} s"


def say(message: str) -> None:
    """A line of the CLI's own output (rank zero only)."""
    if global_rank() == 0:
        print(message, flush=True)


class Planned(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a planning parse: the run's identity and folder, known before anything is built."""

    def __init__(self, identity: dict[str, Any], run_dir: Path, plans: list[Plan]) -> None:
        super().__init__(str(run_dir))
        self.identity = identity
        self.run_dir = run_dir
        self.plans = plans


def _instantiate(namespace: Any) -> Any:
    """An object from a ``class_path`` / ``init_args`` config node (plain arguments only)."""
    module, _, name = namespace["class_path"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    args = namespace.get("init_args") or {}
    return cls(**(args.as_dict() if hasattr(args, "as_dict") else dict(args)))


class RunRecordKeeper(Callback):
    """Marks the run folder unfinished once training starts changing its checkpoints (rank zero)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            remove_record(self.run_dir)


class AIDCLI(LightningCLI):
    """LightningCLI with run folders, prerequisites, the report folder and the framework's defaults."""

    #: set by the planning parse of a prerequisite: stop once the run's identity is known.
    plan_only = False

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--report_dir", type=str | None, default=None, help="folder of the run's report")
        parser.add_argument("--runs_root", type=str, default="runs", help="folder that holds the run folders")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="readable part of the run folder's name (default: the config's file name)")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="a fixed run folder instead of <runs_root>/<run_name>-<hash>")
        parser.add_argument(
            "--prerequisites",
            type=list[dict[str, Any]],
            default=[],
            help="list of {config, provides, checkpoint (best|last), args}: runs made or reused first; the "
            "checkpoint's path goes to the 'provides' key",
        )
        parser.add_argument("--best_checkpoint", type=dict[str, str] | None, default=None,
                            help="{monitor: METRIC, mode: max|min}: also keep checkpoints/best.ckpt")
        parser.add_argument("--last_checkpoint", type=dict[str, Any] | None, default=None,
                            help="ModelCheckpoint arguments of checkpoints/last.ckpt, e.g. {every_n_train_steps: 500}")

    # ------------------------------------------------------------------ --ckpt_path
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` against the config without letting it change the config.

        Lightning's own version merges the checkpoint's hyper-parameters into the config, so a checkpoint
        could choose the model class (and import any module it names). Here the config builds the model and
        the checkpoint only restores state: a checkpoint of another class or architecture is refused, naming
        both, and nothing it names is imported."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        path = cfg.get("ckpt_path")
        if not path or str(path) in SPECIAL_CKPT:
            return
        try:
            ckpt = load_checkpoint(path)
        except (FileNotFoundError, UnsafeCheckpointError) as err:
            raise SystemExit(f"--ckpt_path: {err}") from None
        hp = ckpt.get("hyper_parameters") or {}
        ours = cfg.model.class_path if cfg.get("model") is not None else None
        theirs = hp.get("_class_path")
        if theirs is not None and ours is not None and theirs != ours:
            raise SystemExit(
                f"--ckpt_path {path} is a checkpoint of {theirs}, but the config builds {ours}; give a checkpoint "
                f"of {ours} (the checkpoint restores state, it does not choose the model)"
            )
        args = cfg.model.get("init_args") if ours is not None else None
        for key in ARCH_KEYS:
            mine = args.get(key) if args is not None else None
            if key in hp and mine is not None and _norm(hp[key]) != _norm(mine):
                raise SystemExit(
                    f"--ckpt_path {path} was trained with model.{key}={hp[key]!r}, the config builds "
                    f"model.{key}={mine!r}; set model.init_args.{key} to {hp[key]!r} or give another checkpoint"
                )
        self._ckpt_classes = hp.get("num_classes")

    def _check_ckpt_classes(self) -> None:
        k = getattr(self, "_ckpt_classes", None)
        data = getattr(self.datamodule, "num_classes", None) if self.datamodule is not None else None
        if k is not None and data is not None and int(k) != int(data):
            sub = self.config[self.subcommand]
            raise SystemExit(
                f"--ckpt_path {sub.ckpt_path} has {k} classes, the data ({sub.data.class_path}) has {data}; "
                "give a checkpoint trained on this data"
            )

    def before_fit(self) -> None:
        self._check_ckpt_classes()

    def before_validate(self) -> None:
        self._check_ckpt_classes()

    def before_test(self) -> None:
        self._check_ckpt_classes()

    # ------------------------------------------------------------------ run folder and prerequisites
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        sub = self.subcommand or "fit"
        if sub == "fit":
            _check_training_length(cfg)
        if not self.plan_only:
            _check_callbacks(cfg)
        plans = self._plan_prerequisites(cfg)
        self.identity = run_identity(cfg.as_dict(), self._describe_data(cfg), sub)
        if cfg.get("run_dir"):
            self.run_dir = Path(cfg.run_dir)
        else:
            configs = cfg.get("config") or []
            name = cfg.get("run_name") or (Path(str(configs[0])).stem if configs else "run")
            self.run_dir = run_folder(cfg.get("runs_root") or "runs", name, self.identity)
        if self.plan_only:
            raise Planned(self.identity, self.run_dir, plans)
        if global_rank() == 0 and os.environ.get(LOCK_HELD_ENV) != str(self.run_dir.resolve()):
            try:
                self._lock = RunLock(self.run_dir).acquire(wait=False)
            except RunLockedError as err:
                raise SystemExit(str(err)) from None
        for plan in plans:
            say(f"[prerequisite] {plan.item.config}: "
                + (f"reuse {plan.run_dir} ({plan.item.checkpoint} checkpoint)" if plan.finished
                   else f"make in {plan.run_dir} ({plan.reason})"))
        say(f"[run] {self.run_dir}")
        for plan in plans:
            self._make(plan)
            cfg[plan.item.provides] = str(plan.checkpoint())
        self._place(cfg)
        if sub == "fit":
            # Passed as persistent callbacks, so that Lightning adds no checkpoint callback of its own.
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": self._run_callbacks(cfg)}

    def _run_callbacks(self, cfg: Any) -> list[Callback]:
        """``checkpoints/last.ckpt`` (the newest, every epoch), ``checkpoints/best.ckpt`` with
        ``best_checkpoint``, and the keeper of the completion record."""
        ckpts = str(self.run_dir / "checkpoints")
        last = dict(cfg.get("last_checkpoint") or {})
        try:
            out: list[Callback] = [
                ModelCheckpoint(dirpath=ckpts, filename="last", enable_version_counter=False, **last)
            ]
        except TypeError as err:
            raise SystemExit(f"last_checkpoint: {err}") from None
        best = cfg.get("best_checkpoint")
        if best:
            if "monitor" not in best:
                raise SystemExit(f"best_checkpoint needs a 'monitor' metric (and 'mode': max or min), got {dict(best)}")
            out.append(ModelCheckpoint(dirpath=ckpts, filename="best", monitor=best["monitor"],
                                       mode=best.get("mode", "min"), enable_version_counter=False))
        out.append(RunRecordKeeper(self.run_dir))
        return out

    def _plan_prerequisites(self, cfg: Any) -> list[Plan]:
        """Plan every prerequisite (nothing is trained here) and set the checkpoint paths they provide."""
        plans = []
        passed = list(INHERITED_MODEL)
        for i, raw in enumerate(cfg.get("prerequisites") or []):
            try:
                item = Prerequisite.parse(raw, i)
            except ValueError as err:
                raise SystemExit(str(err)) from None
            if cfg.get(item.provides) is not None:
                if not self.plan_only:
                    say(f"[prerequisite] {item.config}: not made, {item.provides} is set ({cfg.get(item.provides)})")
                continue
            plan = self._plan(item, cfg, tuple(passed))
            cfg[item.provides] = str(plan.checkpoint())
            if item.provides.startswith("model.init_args."):
                passed.append(item.provides.rsplit(".", 1)[1])
            plans.append(plan)
        return plans

    def _plan(self, item: Prerequisite, cfg: Any, passed: tuple[str, ...]) -> Plan:
        """Parse the prerequisite's config with what this run passes on, and find its run folder."""
        config = resolve_config(item.config)
        overrides = inherited(cfg.as_dict(), load_yaml(config), passed)
        args = ["fit", "--config", str(config)]
        for key, value in _flatten(overrides):
            # Strings as they are (jsonargparse keeps quotes of str arguments); the rest as JSON, which YAML reads.
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        args += item.args
        try:
            with isolate_rng(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                PlanningCLI(**_cli_kwargs(args))
        except Planned as planned:
            plan = Plan(item, args, planned.run_dir, planned.identity, None, "")
            return plan.refresh()
        except SystemExit as err:
            raise SystemExit(f"prerequisite {item.config}: its config does not parse with what this run passes "
                             f"on ({' '.join(args)}): {err}") from None
        raise RuntimeError(f"planning {item.config} did not stop at its run folder")  # pragma: no cover

    def _make(self, plan: Plan) -> None:
        """Make an unfinished prerequisite: rank zero trains it (one process at a time per folder, with a
        heartbeat); the other ranks wait for its completion record."""
        if plan.finished:
            return
        if global_rank() != 0:
            try:
                wait_for_record(plan.run_dir, plan.identity, since=time.time())
            except RankZeroFailed as err:
                raise SystemExit(str(err)) from None
            plan.refresh()
            return
        status = RunStatus(plan.run_dir)
        with status.beating("waiting"):
            lock = RunLock(plan.run_dir).acquire(
                wait=True, on_wait=lambda who: say(f"[prerequisite] waiting for {who} to finish {plan.run_dir}"))
        try:
            if plan.refresh().finished:  # made by the process we waited for
                say(f"[prerequisite] {plan.item.config}: reuse {plan.run_dir} (finished by another process)")
                return
            say(f"[prerequisite] {plan.item.config}: training in {plan.run_dir}")
            with status.beating("training"):
                try:
                    # This process holds the folder's lock for the child, which then takes none itself.
                    train_in_child(ROOT / "train.py", plan, {LOCK_HELD_ENV: str(plan.run_dir.resolve())})
                except Exception as err:
                    raise RuntimeError(f"prerequisite {plan.item.config} failed ({err})") from None
                if not plan.refresh().finished:
                    raise RuntimeError(f"prerequisite {plan.item.config} ended without a completion record")
        except RuntimeError as err:
            raise SystemExit(str(err)) from None
        finally:
            lock.release()

    def _describe_data(self, cfg: Any) -> dict[str, Any] | None:
        data = cfg.get("data")
        if data is None or not data.get("class_path"):
            return None
        try:
            return data_description(_instantiate(data))
        except Exception as err:  # the same error comes back, with LightningCLI's context, when it builds the data
            return {"error": f"{type(err).__name__}: {err}"}

    def _place(self, cfg: Any) -> None:
        """Point the trainer, the logger and the report at the run folder."""
        run_dir = str(self.run_dir)
        cfg.trainer.default_root_dir = run_dir
        loggers = cfg.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            args = logger.get("init_args") if hasattr(logger, "get") else None
            if args is not None and "save_dir" in args:
                args.save_dir = run_dir
                if "name" in args and args.get("name") is None:
                    args.name = self.run_dir.name

    def instantiate_trainer(self, **kwargs: Any):
        from callbacks.report import ReportWriter

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = super().instantiate_trainer(**kwargs)
        writers = [cb for cb in trainer.callbacks if isinstance(cb, ReportWriter)]
        if not writers:
            trainer.callbacks.append(ReportWriter(cfg.get("report_dir")))
        elif cfg.get("report_dir"):
            for w in writers:
                w.report_dir = cfg.get("report_dir")
        return trainer

    def finish(self) -> None:
        """Write the completion record when the run ended normally (rank zero); release the folder."""
        trainer = getattr(self, "trainer", None)
        run_dir = getattr(self, "run_dir", None)
        if trainer is None or run_dir is None or not trainer.is_global_zero:
            return
        if trainer.state.status == TrainerStatus.FINISHED and not trainer.interrupted:
            ckpts = {kind: run_dir / "checkpoints" / f"{kind}.ckpt" for kind in ("best", "last")}
            write_record(run_dir, self.identity, {k: str(p) for k, p in ckpts.items() if p.is_file()})
            say(f"[run] {run_dir} finished; wall time {format_duration(time.perf_counter() - _STARTED)}"
                " (prerequisites made by this command included)")
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()


class PlanningCLI(AIDCLI):
    """Parses a config like :class:`AIDCLI` and stops with :class:`Planned` once its run folder is known."""

    plan_only = True


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted ``(key, value)`` pairs of nested overrides; ``class_path`` nodes stay whole."""
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" not in value:
            out += _flatten(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def _check_training_length(cfg: Any) -> None:
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    if trainer.get("max_epochs") == 0 or trainer.get("max_steps") == 0:
        raise SystemExit("trainer.max_epochs / trainer.max_steps is 0: nothing would be trained; give at least 1")


def _check_callbacks(cfg: Any) -> None:
    """Build every callback of the config once, so that a wrong setting fails before any prerequisite or
    training starts (LightningCLI builds them again for the run)."""
    trainer = cfg.get("trainer")
    callbacks = trainer.get("callbacks") if trainer is not None else None
    for i, cb in enumerate(callbacks if isinstance(callbacks, list) else []):
        if not hasattr(cb, "get") or not cb.get("class_path"):
            continue
        try:
            _instantiate(cb)
        except (ValueError, TypeError, KeyError) as err:
            raise SystemExit(f"trainer.callbacks[{i}] ({cb['class_path']}): {err}") from None


def _cli_kwargs(argv: list[str]) -> dict[str, Any]:
    return dict(save_config_kwargs={"overwrite": True}, trainer_defaults={"inference_mode": False},
                seed_everything_default=0, args=argv)


def main(argv: list[str] | None = None, default_subcommand: str = "fit") -> AIDCLI:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); ``default_subcommand`` is implied when absent."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = [default_subcommand, *argv]
    argv = resolve_config_args(argv)
    keep_freed_memory()
    # We pass the (rewritten) command line as ``args`` on purpose; Lightning's warning about it is noise.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    cli = None
    try:
        cli = AIDCLI(**_cli_kwargs(argv))
    finally:
        if cli is not None:
            cli.finish()
    return cli


def locate(config: str, checkpoint: str = "last", args: list[str] | None = None, runs_root: str = "runs") -> Path:
    """The ``checkpoint`` (``best`` / ``last``) of the finished run that ``train.py --config config args`` makes.

    Scripts and experiments find a trained model through this, as configs do through their prerequisites.
    FileNotFoundError, naming the folder and the command that makes it, when that run has not finished."""
    path = resolve_config(config)
    argv = ["fit", "--config", str(path), "--runs_root", runs_root, *(args or [])]
    try:
        with isolate_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PlanningCLI(**_cli_kwargs(argv))
    except Planned as planned:
        record = read_record(planned.run_dir)
        ok, why = record_matches(record, planned.identity)
        if not ok:
            raise FileNotFoundError(
                f"{planned.run_dir} is not a finished run ({why}); make it with: python train.py "
                + " ".join(argv[1:])
            ) from None
        from aid.runs.record import record_checkpoint

        return record_checkpoint(planned.run_dir, record, checkpoint)
    raise RuntimeError(f"planning {config} did not stop at its run folder")  # pragma: no cover


if __name__ == "__main__":
    main()
