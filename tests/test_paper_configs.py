"""Every config under configs/paper/ parses with the CLI and builds its objects on a CPU.

The paper-scale configs cannot run here (ImageNet, 8 GPUs), so each one is built the way ``train.main``
builds it, with ``run=False`` and overrides that fit this machine: CPU, one device, float32,
``pretrained: false`` and no prerequisites. The working directory is a scratch folder holding a tiny
stand-in for the config's data folder (two 8×8 PNGs per class and split, as many classes as the config's
model has) and randomly initialised checkpoints for what each prerequisite would provide, with the
architecture the run passes on to it. Then every attack the evaluation callbacks would run is constructed
(which checks the argument names and values) and a few of the paper's values are checked.
"""

from __future__ import annotations

import functools
import io
import pydoc
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from aid.attacks import build_attack
from aid.attacks.adv2_mask import ADV2Mask
from aid.interpreters import INTERPRETERS
from aid.interpreters.rts import RTSMasker
from aid.modules.aid import AIDModule
from aid.modules.classifier import ClassifierModule
from aid.modules.evaluation import EvaluationModule
from aid.modules.rts import RTSModule
from callbacks import ADV2Evaluation, EvaluationCallback, ImageGrids, SqueezeDetection
from callbacks.adv2 import ATTACK_NAMES, INTERPRETER_FREE, merged_kwargs
from callbacks.evaluation import resolve_interpreters
from tests.conftest import ROOT
from train import AIDCLI, resolve_config, resolve_config_args

CONFIGS = ROOT / "configs"
PAPER = sorted((CONFIGS / "paper").rglob("*.yaml"))
# What makes a GPU config buildable on this machine; pretrained weights would need the network.
CPU_OVERRIDES = [
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
    "--trainer.precision", "32-true", "--trainer.sync_batchnorm", "false", "--prerequisites", "[]",
]
EPS = 0.031  # ε of Appendix B1
STAND_IN_CLASSES = 3  # classes of the stand-in image folder of a config that does not state its class count
PAPER_IMAGES = 1000  # the paper's evaluation protocol


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def init_args(cfg: dict[str, Any], section: str = "model") -> dict[str, Any]:
    return cfg[section].get("init_args") or {}


ARCH_KEYS = ("arch", "num_classes", "in_chans", "output_stride", "channels")


def prerequisite_config(item: dict[str, Any]) -> dict[str, Any]:
    return load(resolve_config(item["config"]))


def classifier_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """ClassifierModule arguments of the classifier a config's run uses: its own (a classifier config), else
    its classifier prerequisite's with the architecture keys it passes on, else its own architecture keys."""
    args = init_args(cfg)
    if cfg["model"]["class_path"].endswith("ClassifierModule"):
        spec = dict(args)
    else:
        spec = {}
        for item in cfg.get("prerequisites") or []:
            if item["provides"] == "model.init_args.classifier_ckpt":
                spec = classifier_spec(prerequisite_config(item))
        spec.update({k: args[k] for k in ARCH_KEYS if args.get(k) is not None})
    spec["pretrained"] = False
    # The embedded classifier config takes its class count from the data (the shapes module states it; an
    # image folder without a stated count gets the stand-in's classes).
    spec["num_classes"] = spec.get("num_classes") or init_args(cfg, "data").get("num_classes") or STAND_IN_CLASSES
    assert spec.get("arch") and spec["num_classes"], "the config must say (or pass on) the classifier"
    return spec


def num_classes(cfg: dict[str, Any]) -> int:
    return int(classifier_spec(cfg)["num_classes"])


@functools.cache
def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 200)).save(buf, format="PNG")
    return buf.getvalue()


def write_data(cfg: dict[str, Any]) -> None:
    """The config's image folder (relative to the working directory) with the model's number of classes."""
    data = init_args(cfg, "data")
    root, n = Path(data["root"]), num_classes(cfg)
    splits = {data.get("train_split", "train"), data.get("val_split", "val"), data.get("test_split") or "val"}
    for split in sorted(splits):
        folder = root / split
        if folder.is_dir():
            assert len(list(folder.iterdir())) == n, f"configs disagree on the number of classes of {root}"
            continue
        for i in range(n):
            (folder / f"c{i:04d}").mkdir(parents=True)
            for j in range(2):
                (folder / f"c{i:04d}" / f"{j}.png").write_bytes(tiny_png())


def write_checkpoints(cfg: dict[str, Any], folder: Path = Path("provided"), keys: list[str] = ()) -> list[str]:
    """Random checkpoints for what the config's prerequisites provide, and for the extra dotted ``keys``
    (``model.init_args.rts_ckpt``), written under ``folder``: a classifier with the architecture the run
    uses, RTS / RTSA maskers of that classifier; the command-line arguments that give them to the run (with
    ``--prerequisites []``, as :data:`CPU_OVERRIDES`)."""
    spec = classifier_spec(cfg)
    wanted = [(item["provides"], prerequisite_config(item)) for item in cfg.get("prerequisites") or []]
    wanted += [(key, None) for key in keys if key not in dict(wanted)]
    args = []
    for key, other in wanted:
        path = folder / f"{key.rsplit('.', 1)[-1]}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if key.endswith("classifier_ckpt"):
            module = ClassifierModule(**spec)
            torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
        else:
            source = init_args(other) if other is not None else {}
            scale = int(source.get("mask_scale", init_args(cfg).get("mask_scale", 2)))
            masker = RTSMasker.from_classifier(ClassifierModule(**spec).classifier, mask_scale=scale)
            if source.get("presence"):  # an RTSA checkpoint of an AID run with a presence gate
                masker.add_presence()
            torch.save({"state_dict": {f"masker.{k}": v for k, v in masker.state_dict().items()}}, path)
        args += [f"--{key}", str(path)]
    return args


def build(config: Path, cfg: dict[str, Any], provided: list[str] = (), base: Path | None = None) -> AIDCLI:
    """The CLI of ``config`` (looked up by its name under configs/, as users pass it; layered on ``base`` when
    it is an overlay), objects built, not run; ``provided``: the prerequisites' checkpoints
    (:func:`write_checkpoints`)."""
    names = ([str(base.relative_to(CONFIGS))] if base is not None else []) + [str(config.relative_to(CONFIGS))]
    args = resolve_config_args([a for n in names for a in ("--config", n)]) + CPU_OVERRIDES + list(provided)
    if "pretrained" in init_args(cfg):
        args += ["--model.init_args.pretrained", "false"]
    return AIDCLI(
        args=args,
        run=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"inference_mode": False},
        seed_everything_default=0,
    )


def planned_attacks(cb: EvaluationCallback) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(attack, attacked interpreter or None, settings) of every attack the callback runs."""
    if isinstance(cb, SqueezeDetection):
        return [(attack, name, kw) for _, attack, name, _, kw, _ in cb.plan()]
    if isinstance(cb, ADV2Evaluation):
        out = []
        for name in cb.interpreters:
            for attack in cb.attacks:
                target = None if attack in INTERPRETER_FREE else name
                out.append((attack, target, merged_kwargs(cb.attack_kwargs, attack, target)))
        return out
    names = cb.interpreters + (getattr(cb, "compare", None) or [])
    return [("pgd", None, merged_kwargs(cb.attack_kwargs, "pgd", None))] + [
        ("adv2", n, merged_kwargs(cb.attack_kwargs, "adv2", n)) for n in dict.fromkeys(names)
    ]


def check_attack_tables(model, callbacks: list[EvaluationCallback], mask_iterations: int | None = 500) -> list:
    """Construct every attack of the callbacks (argument names and values are checked by the constructors);
    ``mask_iterations``: what the MASK interpreter must run (the authors' 500; None: not checked)."""
    attacks = []
    for cb in callbacks:
        for key in cb.attack_kwargs:
            attack, _, interp = key.partition(".")
            assert attack in ATTACK_NAMES, f"{type(cb).__name__}: unknown attack in attack_kwargs key {key!r}"
            assert not interp or interp in INTERPRETERS or interp in ("rts", "rtsa"), f"unknown interpreter {key!r}"
        plan = planned_attacks(cb)
        names = sorted({name for _, name, _ in plan if name is not None})
        interps = resolve_interpreters(model, names, cb.interpreter_kwargs)
        if "mask" in interps and mask_iterations is not None:
            assert interps["mask"].iterations == mask_iterations  # the authors' MASK interpreter
        for attack, name, kwargs in plan:
            interp = {} if name is None else {"interpreter": interps[name]}
            attacks.append(build_attack(attack, model.classifier, **interp, **kwargs))
    return attacks


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One scratch working directory for all configs: data folders and checkpoints are written once."""
    return tmp_path_factory.mktemp("paper_configs")


def test_the_paper_configs_exist():
    names = {p.name for p in PAPER}
    for arch in ("resnet50", "densenet169"):
        assert {f"imagenet_{arch}_classifier.yaml", f"imagenet_{arch}_rts.yaml", f"imagenet_{arch}_eval.yaml"} <= names
    assert {"imagenet_resnet50_aid.yaml", "isic2018_resnet_classifier.yaml", "isic2018_eval.yaml"} <= names


@pytest.mark.parametrize("config", PAPER, ids=[p.name for p in PAPER])
def test_paper_config_builds_its_model_data_trainer_and_callbacks(config, workspace, monkeypatch):
    cfg = load(config)
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the CLI gets its arguments from args= only
    for item in cfg.get("prerequisites") or []:  # each prerequisite's config exists and says what it provides
        assert resolve_config(item["config"]).is_file() and item["provides"].startswith("model.init_args.")
    write_data(cfg)
    cli = build(config, cfg, write_checkpoints(cfg, Path(config.stem)))

    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    assert isinstance(model, pydoc.locate(cfg["model"]["class_path"]))
    assert isinstance(dm, pydoc.locate(cfg["data"]["class_path"]))
    data = init_args(cfg, "data")
    assert dm.root == Path(data["root"]) and dm.image_size == data["image_size"] == 224
    assert dm.num_classes == model.classifier.num_classes == num_classes(cfg)
    assert cfg["trainer"]["accelerator"] == "gpu"  # the run as written targets GPUs
    wanted = [pydoc.locate(cb["class_path"]) for cb in cfg["trainer"].get("callbacks") or []]
    for cls in set(wanted):
        assert sum(isinstance(cb, cls) for cb in trainer.callbacks) == wanted.count(cls), cls.__name__
    evals = [cb for cb in trainer.callbacks if isinstance(cb, EvaluationCallback)]
    for cb in evals:
        if not isinstance(cb, ImageGrids):
            assert cb.num_images == PAPER_IMAGES, type(cb).__name__
    callbacks_with_attacks = [cb for cb in evals if hasattr(cb, "attack_kwargs")]
    attacks = check_attack_tables(model, callbacks_with_attacks)
    for atk in attacks:
        if atk.eps != float("inf"):  # StAdv has no L∞ budget
            assert atk.eps == EPS and atk.alpha == pytest.approx(1 / 255, abs=1e-5)
        if isinstance(atk, ADV2Mask):  # Table 10, MASK
            assert (atk.steps, atk.n_step, atk.n_reset, atk.alpha_max, atk.n_bs) == (1000, 4, 50, 0.08, 12)
        elif type(atk).__name__ == "ADV2" and atk.interpreter.name == "cam":  # Table 10 and the authors, CAM
            assert (atk.warm_steps, atk.steps) == (400, 1200)

    if isinstance(model, ClassifierModule):
        assert init_args(cfg)["pretrained"] is True  # the paper's classifiers start from ImageNet weights
    elif isinstance(model, AIDModule):
        assert model.reference is not None and set(model.interpreters()) == {"rts", "rtsa"}
        atk = build_attack("adv2", model.classifier, interpreter=model.interpreters()["rtsa"], **model.attack_kwargs)
        assert atk.eps == EPS and atk.steps < 100  # a short ADV² in the training loop
    elif isinstance(model, RTSModule):
        size = data["image_size"]
        with torch.no_grad():
            mask, logits = model.masker(torch.rand(1, 3, size, size), torch.tensor([1]), upsample=False)
        assert mask.shape[-2:] == (56, 56)  # the authors' 56×56 masks at 224 px
        assert logits.shape == (1, num_classes(cfg))
    elif isinstance(model, EvaluationModule):
        provides = {item["provides"] for item in cfg.get("prerequisites") or []}
        assert ("rts" in model.interpreters()) == ("model.init_args.rts_ckpt" in provides)
        assert {type(a).__name__ for a in attacks} >= {"PGD", "ADV2Mask"}
        assert any(isinstance(cb, ADV2Evaluation) for cb in evals)
