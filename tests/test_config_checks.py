"""Mistakes refused when they are parsed: evaluation callbacks' settings (checked in their constructors, which
LightningCLI runs before training) and the keyword arguments and budgets of build_attack / build_interpreter."""

from __future__ import annotations

import json
import pydoc
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aid.attacks import ADV2, PGD, ADV2Adaptive, ADV2Mask, ADV2MaskAdaptive, ADV2StAdv, StAdv, build_attack
from aid.attacks.base import attack_class
from aid.interpreters import build_interpreter
from aid.interpreters.rts import RTSInterpreter
from aid.models import build_classifier
from aid.registry import accepted_arguments
from callbacks import (
    ADV2Evaluation,
    EvaluationCallback,
    ImageGrids,
    LocalizationEvaluation,
    NoiseSensitivity,
    ReportWriter,
    SqueezeDetection,
    Transferability,
)
from callbacks.adv2 import merged_kwargs
from tests.conftest import ROOT, TinyClassifierModule, shapes_datamodule

CALLBACKS = [ADV2Evaluation, NoiseSensitivity, Transferability, SqueezeDetection, ImageGrids, LocalizationEvaluation]
WITH_ATTACKS = [ADV2Evaluation, Transferability, SqueezeDetection, ImageGrids]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64]).eval()


# ----- interpreter names --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_unknown_interpreter_name_is_refused_naming_the_key_the_name_and_the_allowed_ones(cls):
    with pytest.raises(ValueError) as err:
        cls(interpreters=["grad", "gradcamm"])
    msg = str(err.value)
    assert cls.__name__ in msg and "interpreters" in msg and "'gradcamm'" in msg
    assert "did you mean 'gradcam'" in msg and "allowed: cam, ensemble, grad, gradcam, ig, mask, rts, rtsa" in msg


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_registry_and_module_interpreter_names_are_accepted(cls):
    cb = cls(interpreters=["grad", "cam", "gradcam", "ig", "mask", "ensemble", "rts", "rtsa"])
    assert "rtsa" in cb.interpreters


@pytest.mark.parametrize("cls", [ImageGrids, LocalizationEvaluation], ids=lambda c: c.__name__)
def test_unknown_name_in_compare_is_refused(cls):
    with pytest.raises(ValueError, match=r"compare: unknown interpreter 'rtsaa' \(did you mean 'rtsa'\?\)"):
        cls(interpreters=["grad"], compare=["rts", "rtsaa"])


@pytest.mark.parametrize("cls", [ADV2Evaluation, SqueezeDetection], ids=lambda c: c.__name__)
def test_unknown_attack_name_is_refused_naming_the_key_and_the_allowed_ones(cls):
    with pytest.raises(ValueError, match=r"attacks: unknown name 'adv2_stdav'.*'adv2_stadv'.*allowed: pgd"):
        cls(interpreters=["cam"], attacks=["pgd", "adv2_stdav"])


# ----- attack_kwargs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", WITH_ATTACKS, ids=lambda c: c.__name__)
def test_attack_kwargs_key_with_an_unknown_attack_is_refused_with_a_suggestion(cls):
    with pytest.raises(ValueError, match=r"attack_kwargs\.pdg: unknown attack 'pdg' \(did you mean 'pgd'\?\)"):
        cls(interpreters=["cam"], attack_kwargs={"pdg": {"steps": 3}})


def test_attack_kwargs_key_with_an_unknown_interpreter_is_refused():
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.grd: unknown interpreter 'grd'.*'grad'"):
        ADV2Evaluation(interpreters=["grad"], attack_kwargs={"adv2.grd": {"steps": 3}})


def test_interpreter_free_attack_takes_no_interpreter_suffix():
    with pytest.raises(ValueError, match=r"attack_kwargs\.pgd\.cam: 'pgd' attacks no interpreter"):
        ADV2Evaluation(interpreters=["cam"], attack_kwargs={"pgd.cam": {"steps": 3}})


TYPOS = {  # settings argument: (interpreters, settings with a typo, its path, the close match, accepted names)
    "attack_kwargs": (["cam"], {"adv2": {"warm_step": 3}}, "adv2.warm_step", "warm_steps", "accepted: alpha"),
    "interpreter_kwargs": (["mask"], {"mask": {"iteration": 3}}, "mask.iteration", "iterations", "accepted:"),
}


@pytest.mark.parametrize(
    ("cls", "argument"),
    [(c, "attack_kwargs") for c in WITH_ATTACKS] + [(c, "interpreter_kwargs") for c in CALLBACKS],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_a_typo_inside_attack_or_interpreter_settings_is_refused_with_the_accepted_names(cls, argument):
    interpreters, settings, path, close, accepted = TYPOS[argument]
    with pytest.raises(ValueError) as err:
        cls(interpreters=interpreters, **{argument: settings})
    msg = str(err.value)
    assert f"{argument}.{path}" in msg and f"did you mean '{close}'" in msg and accepted in msg


def test_attack_settings_must_be_mappings():
    with pytest.raises(ValueError, match=r"attack_kwargs\.pgd: must be a mapping"):
        ADV2Evaluation(interpreters=["cam"], attack_kwargs={"pgd": 3})


def test_an_unsuffixed_key_fitting_one_interpreter_is_accepted_and_reaches_that_interpreter_only():
    table = {"adv2": {"steps": 4, "n_reset": 2}}
    cb = ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs=table)
    assert merged_kwargs(cb.attack_kwargs, "adv2", "mask") == {"steps": 4, "n_reset": 2}  # ADV2Mask's
    assert merged_kwargs(cb.attack_kwargs, "adv2", "grad") == {"steps": 4}  # ADV2 has no n_reset
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.n_reset: ADV2 has no argument 'n_reset'"):
        ADV2Evaluation(interpreters=["grad", "cam"], attack_kwargs=table)


def test_a_suffixed_key_must_fit_the_attack_of_that_interpreter():
    ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs={"adv2.mask": {"n_reset": 2, "estimate": "algorithm1"}})
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.grad\.n_reset: ADV2 has no argument"):
        ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs={"adv2.grad": {"n_reset": 2}})


def test_mask_settings_must_fit_the_attack_of_the_chosen_estimate():
    ok = {"adv2.mask": {"estimate": "minmax", "select_every": 15, "lam": 100}}
    ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs=ok)
    ADV2Evaluation(interpreters=["mask"], attack_kwargs={"adv2.mask": {"estimate": "unrolled", "unroll": 20}})
    with pytest.raises(ValueError, match=r"adv2\.mask\.n_reset: ADV2MaskMinMax has no argument 'n_reset'"):
        ADV2Evaluation(interpreters=["mask"], attack_kwargs={"adv2.mask": {"estimate": "minmax", "n_reset": 2}})
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.mask\.unroll: ADV2Mask has no argument"):
        ADV2Evaluation(interpreters=["mask"], attack_kwargs={"adv2.mask": {"unroll": 20}})  # Algorithm 1's
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.mask\.estimate: estimate must be one of algorithm1"):
        ADV2Evaluation(interpreters=["mask"], attack_kwargs={"adv2.mask": {"estimate": "exact"}})
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.estimate: ADV2 has no argument 'estimate'"):
        ADV2Evaluation(interpreters=["cam"], attack_kwargs={"adv2": {"estimate": "minmax"}})


def test_an_unsuffixed_table_follows_the_estimate_of_the_suffixed_one():
    table = {"adv2": {"steps": 4, "unroll": 5}, "adv2.mask": {"estimate": "unrolled"}}
    cb = ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs=table)
    assert merged_kwargs(cb.attack_kwargs, "adv2", "mask") == {"steps": 4, "unroll": 5, "estimate": "unrolled"}
    assert merged_kwargs(cb.attack_kwargs, "adv2", "grad") == {"steps": 4}
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.n_reset: ADV2/ADV2MaskUnrolled has no argument"):
        ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs={**table, "adv2": {"n_reset": 2}})
    shared = {"adv2": {"estimate": "minmax", "steps": 4}}  # reaches MASK only
    cb = ADV2Evaluation(interpreters=["grad", "mask"], attack_kwargs=shared)
    assert merged_kwargs(cb.attack_kwargs, "adv2", "grad") == {"steps": 4}
    assert merged_kwargs(cb.attack_kwargs, "adv2", "mask") == {"estimate": "minmax", "steps": 4}


def test_strategy_settings_are_checked_against_the_strategies_of_the_interpreters():
    table = {"adv2": {"strategy_kwargs": {"tau": 1e-3}}}
    cb = ADV2Evaluation(interpreters=["grad", "cam"], attack_kwargs=table)  # GRAD's strategy has tau
    assert merged_kwargs(cb.attack_kwargs, "adv2", "grad")["strategy_kwargs"] == {"tau": 1e-3}
    assert merged_kwargs(cb.attack_kwargs, "adv2", "cam")["strategy_kwargs"] == {}
    with pytest.raises(ValueError, match=r"adv2\.strategy_kwargs\.tau: no ℓ_int strategy .*\(cam\)"):
        ADV2Evaluation(interpreters=["cam"], attack_kwargs=table)
    with pytest.raises(ValueError, match=r"adv2\.cam\.strategy_kwargs\.tau"):
        ADV2Evaluation(interpreters=["grad", "cam"], attack_kwargs={"adv2.cam": {"strategy_kwargs": {"tau": 1}}})
    with pytest.raises(ValueError, match=r"did you mean 'presence_weight'"):
        ADV2Evaluation(interpreters=["rtsa"], attack_kwargs={"adv2": {"strategy_kwargs": {"presense_weight": 1}}})


def test_adaptive_attack_settings_follow_its_own_and_the_adv2_arguments():
    ok = {"adv2_adaptive": {"mode": "consistency", "warm_steps": 3, "eps": 0.05}, "adv2_adaptive.mask": {"n_reset": 2}}
    SqueezeDetection(interpreters=["rts", "mask"], attack_kwargs=ok)  # ADV2Adaptive, and ADV2MaskAdaptive for mask
    with pytest.raises(ValueError, match=r"adv2_adaptive\.mdoe: ADV2Adaptive.*did you mean 'mode'"):
        SqueezeDetection(interpreters=["rts"], attack_kwargs={"adv2_adaptive": {"mdoe": "consistency"}})


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(min_value=1.0001, max_value=1e4))
def test_a_budget_above_one_in_attack_settings_is_refused_with_the_255_hint(eps):
    with pytest.raises(ValueError, match=r"attack_kwargs\.adv2\.eps: eps must lie in \(0, 1\].*pixel values"):
        ADV2Evaluation(interpreters=["cam"], attack_kwargs={"adv2": {"eps": eps}})


def test_the_hint_reads_eight_as_eight_of_255():
    with pytest.raises(ValueError, match=r"attack_kwargs\.pgd\.alpha: .*8/255 = 0\.031"):
        ADV2Evaluation(interpreters=["cam"], attack_kwargs={"pgd": {"alpha": 8}})


# ----- interpreter_kwargs --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_interpreter_settings_for_an_unknown_interpreter_are_refused(cls):
    with pytest.raises(ValueError, match=r"interpreter_kwargs\.maks: unknown interpreter 'maks'.*'mask'"):
        cls(interpreters=["mask"], interpreter_kwargs={"maks": {"iterations": 3}})


def test_rts_settings_reach_through_to_the_masker():
    # RTSInterpreter passes **masker_kwargs to RTSMasker.from_classifier, which passes them to RTSMasker.
    settings = {"rts": {"mask_scale": 4}, "rtsa": {"checkpoint": "x"}}
    NoiseSensitivity(interpreters=["rts", "rtsa"], interpreter_kwargs=settings)
    with pytest.raises(ValueError, match=r"interpreter_kwargs\.rtsa\.mask_scal.*did you mean 'mask_scale'"):
        NoiseSensitivity(interpreters=["rtsa"], interpreter_kwargs={"rtsa": {"mask_scal": 4}})


# ----- every shipped config passes ----------------------------------------------------------------------


CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_evaluation_callback_of_the_shipped_configs_passes_the_checks(config: Path):
    cfg = yaml.safe_load(config.read_text())
    for cb in (cfg.get("trainer") or {}).get("callbacks") or []:
        cls = pydoc.locate(cb["class_path"])
        if isinstance(cls, type) and issubclass(cls, EvaluationCallback):
            cls(**(cb.get("init_args") or {}))


# ----- build_attack / build_interpreter -------------------------------------------------------------------


def test_build_attack_refuses_a_budget_of_eight_naming_eps_with_the_255_hint(model):
    hint = r"eps must lie in \(0, 1\], got 8 \(pixel values are in \[0, 1\]: 8/255 = 0\.031\)"
    with pytest.raises(ValueError, match=hint):
        build_attack("pgd", model, eps=8)
    with pytest.raises(ValueError, match="alpha"):
        build_attack("adv2", model, interpreter=build_interpreter("cam", model), alpha=2)
    assert build_attack("pgd", model, eps=1.0, alpha=1.0).eps == 1.0  # the whole range is allowed


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(min_value=1e-6, max_value=1.0), alpha=st.floats(min_value=1e-6, max_value=1.0))
def test_budgets_in_the_unit_interval_are_accepted(model, eps, alpha):
    attack = build_attack("pgd", model, eps=eps, alpha=alpha, steps=1)
    assert (attack.eps, attack.alpha) == (eps, alpha)


def test_build_attack_refuses_an_unknown_keyword_naming_it_and_the_accepted_ones(model):
    message = (r"stesp: attack 'pgd' \(PGD\) has no argument 'stesp' \(did you mean 'steps'\?\); "
               r"accepted: alpha, classifier, eps, progress, random_start, seed, steps")
    with pytest.raises(ValueError, match=message):
        build_attack("pgd", model, stesp=3)


def test_build_attack_checks_the_arguments_of_the_class_that_runs_for_the_interpreter(model):
    mask = build_interpreter("mask", model, iterations=2)
    attack = build_attack("adv2", model, interpreter=mask, n_reset=2, steps=1)
    assert isinstance(attack, ADV2Mask) and attack.n_reset == 2
    with pytest.raises(ValueError, match=r"n_reset: attack 'adv2' \(ADV2\) has no argument"):
        build_attack("adv2", model, interpreter=build_interpreter("cam", model), n_reset=2)


def test_unknown_names_still_raise_the_registry_key_error(model):
    with pytest.raises(KeyError, match="allowed"):
        build_attack("fgsm", model)
    with pytest.raises(KeyError, match="allowed"):
        build_interpreter("saliency", model)


@pytest.mark.parametrize("family", ["grad", "cam", "mask", "rts"])
def test_attack_class_names_the_class_that_build_attack_returns(model, family):
    interp = build_interpreter(family, model, **({"iterations": 2} if family == "mask" else {}))
    for name in ("pgd", "stadv", "adv2", "adv2_stadv", "adv2_adaptive"):
        kwargs = {} if name in ("pgd", "stadv") else {"interpreter": interp}
        assert type(build_attack(name, model, **kwargs)) is attack_class(name, family) is attack_class(name, interp)
    assert attack_class("adv2", "mask") is ADV2Mask and attack_class("adv2_adaptive", "mask") is ADV2MaskAdaptive


def test_build_interpreter_refuses_an_unknown_keyword_naming_it(model):
    message = r"iteration: interpreter 'mask' \(MaskInterpreter\) has no argument 'iteration' \(did you mean"
    with pytest.raises(ValueError, match=message):
        build_interpreter("mask", model, iteration=3)
    rts = build_interpreter("rts", model, mask_scale=4)  # forwarded to the masker
    assert rts.masker.mask_scale == 4


# ----- the signature helper ---------------------------------------------------------------------------


def test_accepted_arguments_follow_kwargs_into_super_and_named_callees():
    assert {"squeezer", "lam_sqz", "warm_steps", "eps"} <= accepted_arguments(ADV2Adaptive)
    assert {"squeezer", "n_reset"} <= accepted_arguments(ADV2MaskAdaptive)
    assert "estimate" not in accepted_arguments(ADV2MaskAdaptive)  # the selector of adv2 / adv2_adaptive
    assert "n_reset" not in accepted_arguments(ADV2Adaptive)
    assert {"checkpoint", "masker", "copy_weights", "mask_scale", "presence"} <= accepted_arguments(RTSInterpreter)
    assert "encoder" not in accepted_arguments(RTSInterpreter)  # filled by position in RTSMasker.from_classifier
    assert accepted_arguments(PGD) == {"classifier", "eps", "alpha", "steps", "random_start", "seed", "progress"}
    assert {"lr", "tau"} <= accepted_arguments(ADV2StAdv) and "eps" not in accepted_arguments(StAdv)
    assert "strategy_kwargs" in accepted_arguments(ADV2)


def test_accepted_arguments_is_unknown_when_kwargs_go_somewhere_it_cannot_see():
    class Opaque:
        def __init__(self, a: int = 1, **kwargs) -> None:
            target = dict
            self.x = target(**kwargs)  # a local name: not resolvable

    assert accepted_arguments(Opaque) is None

    class Plain:
        def __init__(self, a: int = 1, *, b: int = 2) -> None:
            pass

    assert accepted_arguments(Plain) == {"a", "b"}


# ----- fewer correctly classified images than asked -----------------------------------------------------


class CountOnly(EvaluationCallback):
    """An evaluation with no metric of its own: only ``<name>/images``."""

    name = "count_only"

    def evaluate(self, trainer, pl_module, classifier, batches):
        return {}


def run_count(tmp_path: Path, num_images: int) -> tuple[pl.Trainer, dict, str]:
    dm = shapes_datamodule(train_size=16, val_size=16, test_size=16, batch_size=16)
    trainer = pl.Trainer(inference_mode=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, callbacks=[ReportWriter(str(tmp_path)),
                                                                  CountOnly(num_images=num_images, progress=False)])
    trainer.validate(TinyClassifierModule(), datamodule=dm)
    return trainer, json.loads((tmp_path / "summary.json").read_text()), (tmp_path / "report.md").read_text()


def test_fewer_correct_images_than_asked_warns_and_the_report_says_how_many_were_used(tmp_path: Path):
    with pytest.warns(UserWarning, match=r"CountOnly \(count_only\): split 'val' holds only (\d+) correctly classified "
                      r"images of the 1000 asked") as record:
        _, summary, report = run_count(tmp_path, 1000)
    message = next(str(w.message) for w in record if "holds only" in str(w.message))
    found = int(message.split("holds only ")[1].split()[0])
    assert 0 < found < 16 and summary["count_only/images"] == found
    assert f"Images: {found} correctly classified images of split `val` (fewer than the 1000 asked" in report


def test_enough_correct_images_give_no_warning(tmp_path: Path, recwarn):
    _, summary, report = run_count(tmp_path, 1)
    assert not [w for w in recwarn if "holds only" in str(w.message)]
    assert summary["count_only/images"] == 1 and "Images: 1 correctly classified images of split `val`." in report
