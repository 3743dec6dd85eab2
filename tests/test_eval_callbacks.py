"""Noise sensitivity, transferability, squeeze detection and image grids through ``trainer.validate``."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

import callbacks.adv2 as adv2_module
from aid.interpreters.rts import RTSInterpreter, RTSMasker
from callbacks.adv2 import ADV2Evaluation
from callbacks.grids import ImageGrids, heat
from callbacks.localization import LocalizationEvaluation
from callbacks.noise import NoiseSensitivity, calibrate_sigma, level_name, predict, unit_noise
from callbacks.report import ReportWriter
from callbacks.squeeze import SqueezeDetection
from callbacks.transfer import Transferability
from datamodules import ShapesDataModule
from tests.conftest import TinyClassifierModule, briefly_trained_state, shapes_datamodule

ATTACKS = {
    "pgd": {"steps": 5, "eps": 0.1, "alpha": 0.02},
    "adv2": {"steps": 3, "warm_steps": 3, "eps": 0.1, "alpha": 0.02},
    "adv2_adaptive": {"steps": 3, "warm_steps": 3, "eps": 0.1, "alpha": 0.02},
}
COMMON = dict(num_images=8, batch_size=4, progress=False)


class TinyModule(TinyClassifierModule):
    """The slim classifier with two random RTS maskers as its own interpreters ``rts`` and ``rtsa``."""

    def __init__(self) -> None:
        super().__init__()
        self.maskers = torch.nn.ModuleDict({n: RTSMasker.from_classifier(self.classifier) for n in ("rts", "rtsa")})

    def interpreters(self):
        return {n: RTSInterpreter(self.classifier, masker=m) for n, m in self.maskers.items()}


def datamodule() -> ShapesDataModule:
    return shapes_datamodule()


@pytest.fixture(scope="module")
def trained_state():
    """Weights after a few training steps, so that the classifier gets more than a few images right."""
    return briefly_trained_state(TinyModule())


@pytest.fixture
def model(trained_state):
    m = TinyModule()
    m.load_state_dict(trained_state)
    return m


def validate(model, tmp_path, *callbacks) -> tuple[dict, str]:
    trainer = pl.Trainer(inference_mode=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, callbacks=[ReportWriter(str(tmp_path)), *callbacks])
    trainer.validate(model, datamodule=datamodule())
    return json.loads((tmp_path / "summary.json").read_text()), (tmp_path / "report.md").read_text()


def in_unit(summary: dict, key: str) -> bool:
    v = summary[key]
    return v is not None and math.isfinite(v) and 0.0 <= v <= 1.0


# ----- noise sensitivity ---------------------------------------------------------------------------


def test_level_names_are_percentages():
    assert [level_name(r) for r in (0.03, 0.30, 0.025)] == ["3", "30", "2.5"]


def test_calibrated_sigma_reaches_about_the_target_rate_and_grows_with_it():
    torch.manual_seed(0)
    # A linear classifier without bias: predictions vary over images and noise moves them.
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4, bias=False))
    x = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rates = torch.tensor([0.05, 0.2])
    clean = predict(linear, x)
    for kind in ("normal", "uniform"):
        z = unit_noise(x, kind, torch.Generator().manual_seed(1))
        sigma = calibrate_sigma(linear, x, z, rates)
        assert sigma.shape == (2,) and 0 < sigma[0] < sigma[1] < 1
        changed = torch.stack([(predict(linear, (x + s * z).clamp(0, 1)) != clean).float().mean() for s in sigma])
        assert torch.allclose(changed, rates, atol=0.02)


def test_noise_sensitivity_logs_sigma_misclassification_and_map_distances(model, tmp_path):
    cb = NoiseSensitivity(interpreters=["rts", "rtsa"], calibration_images=64, **COMMON)
    summary, report = validate(model, tmp_path, cb)
    for noise in ("normal", "uniform"):
        lo, hi = summary[f"noise/{noise}_3/sigma"], summary[f"noise/{noise}_30/sigma"]
        assert 0 < lo <= hi <= 1
        for name in ("rts", "rtsa"):
            for level in ("3", "30"):
                assert in_unit(summary, f"noise/{name}/{noise}_{level}/l1")
                assert in_unit(summary, f"noise/{name}/{noise}_{level}/misclassified")
        # The stronger noise misclassifies at least as many of the same images (same draw, larger σ).
        assert summary[f"noise/rts/{noise}_30/misclassified"] >= summary[f"noise/rts/{noise}_3/misclassified"]
    assert "## Noise sensitivity" in report and "| rtsa |" in report


def test_noise_sensitivity_does_not_depend_on_the_batch_size(model, tmp_path):
    def run(batch_size, out):
        out.mkdir()
        kw = {**COMMON, "batch_size": batch_size}
        cb = NoiseSensitivity(interpreters=["grad", "rts"], calibration_images=64, **kw)
        return {k: v for k, v in validate(model, out, cb)[0].items() if k.startswith("noise/")}

    whole, halves = run(8, tmp_path / "one"), run(4, tmp_path / "two")
    assert len(whole) > 20 and whole.keys() == halves.keys()
    for key, value in whole.items():
        assert halves[key] == pytest.approx(value, abs=1e-5), key


# ----- transferability and the shared attack cache -------------------------------------------------


def test_transferability_logs_the_source_by_target_matrix_with_a_pgd_row(model, tmp_path):
    cb = Transferability(interpreters=["grad", "cam", "rts"], attack_kwargs=ATTACKS, **COMMON)
    summary, report = validate(model, tmp_path, cb)
    for s in ("grad", "cam", "rts", "pgd"):
        for t in ("grad", "cam", "rts"):
            assert in_unit(summary, f"transfer/{s}/{t}/l1") and in_unit(summary, f"transfer/{s}/{t}/iou")
    assert "## Transferability" in report and "| pgd |" in report and "**" in report


def test_adv2_transfer_and_grids_share_adversarial_examples_of_a_round(model, tmp_path, monkeypatch):
    calls = []
    real = adv2_module.build_attack
    monkeypatch.setattr(adv2_module, "build_attack", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    cbs = [
        ADV2Evaluation(interpreters=["rts"], attacks=["pgd", "adv2"], attack_kwargs=ATTACKS, **COMMON),
        Transferability(interpreters=["rts"], attack_kwargs=ATTACKS, **COMMON),
        ImageGrids(interpreters=["rts"], attack_kwargs=ATTACKS, **COMMON),
    ]
    summary, _ = validate(model, tmp_path, *cbs)
    batches = COMMON["num_images"] // COMMON["batch_size"]
    assert sorted(calls) == ["adv2"] * batches + ["pgd"] * batches
    # The diagonal of the transfer matrix is the ADV² evaluation's own distance.
    assert summary["transfer/rts/rts/l1"] == pytest.approx(summary["adv2/rts/adv2/l1"])


def test_cache_keys_tell_batches_of_other_splits_and_targets_apart():
    from callbacks.attack_cache import batch_key
    from callbacks.evaluation import EvalBatch

    def batch(split, target):
        x = torch.zeros(2, 3, 4, 4)
        return EvalBatch(x, torch.tensor([0, 1]), x[:, :1], torch.tensor(target), torch.tensor([5, 9]), split=split)

    assert batch_key(batch("val", [1, 2])) == batch_key(batch("val", [1, 2]))
    assert batch_key(batch("val", [1, 2])) != batch_key(batch("test", [1, 2]))
    assert batch_key(batch("val", [1, 2])) != batch_key(batch("val", [2, 3]))


def test_callbacks_with_differently_built_interpreters_do_not_share_maps_or_examples(model, tmp_path, monkeypatch):
    calls = []
    real = adv2_module.build_attack
    monkeypatch.setattr(adv2_module, "build_attack", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    cbs = [
        ADV2Evaluation(interpreters=["grad"], attacks=["adv2"], attack_kwargs=ATTACKS, prefix=f"pool{p}",
                       interpreter_kwargs={"grad": {"pool": p}}, **COMMON)
        for p in (1, 4)
    ]
    summary, _ = validate(model, tmp_path, *cbs)
    batches = COMMON["num_images"] // COMMON["batch_size"]
    assert calls == ["adv2"] * (2 * batches)
    assert summary["pool1/grad/adv2/l1"] != pytest.approx(summary["pool4/grad/adv2/l1"])


def test_random_patch_targets_do_not_depend_on_the_batch_size(model, tmp_path):
    def run(batch_size, out):
        out.mkdir()
        # A strong attack, so that most images count (the metrics are over successful examples).
        strong = {"adv2": {"steps": 10, "warm_steps": 10, "eps": 0.3, "alpha": 0.05}}
        cb = ADV2Evaluation(interpreters=["rts"], attacks=["adv2"], target_map="patch", attack_kwargs=strong,
                            **{**COMMON, "batch_size": batch_size})
        return validate(model, out, cb)[0]

    whole, halves = run(8, tmp_path / "one"), run(4, tmp_path / "two")
    assert whole["adv2/rts/adv2/asr"] >= 0.75
    for key in ("asr", "l1", "l1_target", "iou"):
        assert whole[f"adv2/rts/adv2/{key}"] == pytest.approx(halves[f"adv2/rts/adv2/{key}"], abs=1e-5)
    with pytest.raises(ValueError, match="target_map"):
        ADV2Evaluation(target_map="random_class")


class _ZeroMasks(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y, m = self.base[i]
        return x, y, torch.zeros_like(m)


class NoMaskShapes(ShapesDataModule):
    """The shapes data as a folder of images without masks would give it: all-zero masks."""

    has_masks = False

    def val_dataloader(self):
        loader = super().val_dataloader()
        return torch.utils.data.DataLoader(_ZeroMasks(loader.dataset), batch_size=loader.batch_size)


def test_localization_without_ground_truth_masks_is_nan_with_a_warning(model, tmp_path):
    cb = LocalizationEvaluation(interpreters=["grad", "rts"], **COMMON)
    trainer = pl.Trainer(inference_mode=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, callbacks=[ReportWriter(str(tmp_path)), cb])
    dm = NoMaskShapes(image_size=32, num_classes=4, train_size=64, val_size=64, test_size=64, batch_size=32)
    with pytest.warns(UserWarning, match="no ground-truth object masks"):
        trainer.validate(model, datamodule=dm)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("localization/grad/iou", "localization/rts/energy"):
        assert summary[key] is None or math.isnan(summary[key])  # not the 1.0 that empty masks gave


def test_rts_without_a_trained_masker_is_refused_instead_of_a_random_one():
    from aid.modules.evaluation import EvaluationModule
    from callbacks.evaluation import resolve_interpreters

    module = EvaluationModule(arch="resnet10t", num_classes=4)
    with pytest.raises(ValueError, match="rts_ckpt"):
        resolve_interpreters(module, ["grad", "rts"])


# ----- squeeze detection ---------------------------------------------------------------------------


def test_squeeze_detection_rates_per_squeezer_and_attack_over_successful_examples(model, tmp_path):
    cb = SqueezeDetection(
        interpreters=["rts", "rtsa"], squeezers=["bit_depth_3", "median_3x3", "nlm"], attacks=["pgd", "adv2"],
        calibration_images=64, attack_kwargs=ATTACKS, **COMMON,
    )
    summary, report = validate(model, tmp_path, cb)
    for sq in ("bit_depth_3", "median_3x3", "nlm_11_3_4"):
        for col in ("benign", "pgd", "adv2", "adv2_rtsa"):
            assert in_unit(summary, f"squeeze/{sq}/{col}/detection_rate")
    assert "## Feature squeezing" in report and "| median_3x3 |" in report


def test_adaptive_adv2_runs_once_per_squeezer_and_logs_its_maps(model, tmp_path, monkeypatch):
    adapted = []
    real = adv2_module.build_attack
    monkeypatch.setattr(
        adv2_module, "build_attack", lambda *a, **k: adapted.append(k["squeezer"].name) or real(*a, **k)
    )
    cb = SqueezeDetection(
        interpreters=["rts"], squeezers=["bit_depth_3", "median_3x3"], attacks=["adv2_adaptive"],
        calibration_images=64, attack_kwargs=ATTACKS, **COMMON,
    )
    summary, report = validate(model, tmp_path, cb)
    batches = COMMON["num_images"] // COMMON["batch_size"]
    assert sorted(adapted) == ["bit_depth_3"] * batches + ["median_3x3"] * batches
    for sq in ("bit_depth_3", "median_3x3"):
        assert in_unit(summary, f"squeeze/{sq}/adv2_adaptive/detection_rate")
    assert in_unit(summary, "adv2/rts/adv2_adaptive/l1") and in_unit(summary, "adv2/rts/adv2_adaptive/iou")
    assert "Table 5" in report


# ----- image grids ---------------------------------------------------------------------------------


def test_heat_ramp_runs_from_blue_to_red_within_the_unit_range():
    maps = torch.linspace(0, 1, 11).view(11, 1, 1, 1)
    rgb = heat(maps)
    assert rgb.shape == (11, 3, 1, 1) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[0].flatten().tolist() == [0.0, 0.0, 0.5] and rgb[-1].flatten().tolist() == [0.5, 0.0, 0.0]


def test_image_grids_write_figure_4_and_16_pngs_linked_from_the_report(model, tmp_path):
    cb = ImageGrids(interpreters=["grad", "rts"], compare=["rts", "rtsa"], attack_kwargs=ATTACKS, **COMMON)
    _, report = validate(model, tmp_path, cb)
    for kind, cols in (("attacks", 1 + 4 * 2), ("compare", 1 + 3 * 2)):
        path = tmp_path / "figures" / f"grids_{kind}.png"
        with Image.open(path) as img:
            width, height = img.size
        # 32 px tiles enlarged 3x, 6 px apart; titles, labels and the colour bar add less than a tile.
        assert cols * 96 + (cols - 1) * 6 < width < (cols + 1) * 96 + (cols - 1) * 6
        assert 8 * 96 < height < 9 * 96 + 7 * 20
        assert f"](figures/grids_{kind}.png)" in report


# ----- side effects --------------------------------------------------------------------------------


def test_an_evaluation_leaves_weights_modes_flags_and_the_global_rng_unchanged(model, tmp_path):
    model.classifier.train()
    model.maskers["rts"].requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]

    def draw_after(*callbacks) -> torch.Tensor:
        torch.manual_seed(123)
        validate(model, tmp_path, *callbacks)
        return torch.rand(5)

    plain = draw_after()
    with_eval = draw_after(
        NoiseSensitivity(interpreters=["rts"], calibration_images=32, **COMMON),
        Transferability(interpreters=["rts"], attack_kwargs=ATTACKS, **COMMON),
    )
    assert torch.equal(plain, with_eval)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
