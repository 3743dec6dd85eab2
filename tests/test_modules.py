"""RTS and AID LightningModules: they train the masker and leave the classifier untouched."""

import math

import pytest
import pytorch_lightning as pl
import torch

from aid.modules.aid import AIDModule
from aid.modules.classifier import ClassifierModule
from aid.modules.rts import RTSModule
from datamodules import ShapesDataModule


def tiny_data():
    return ShapesDataModule(image_size=32, num_classes=4, train_size=32, val_size=16, test_size=16, batch_size=16)


def tiny_data_loader():
    data = tiny_data()
    data.setup("fit")
    return data.train_dataloader()


def save_classifier(path):
    torch.manual_seed(0)
    module = ClassifierModule(num_classes=4, output_stride=8, channels=[8, 16, 32, 64])
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def fit(module, steps=2):
    trainer = pl.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=1, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=tiny_data())
    return trainer


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def test_rts_training_updates_the_masker_and_not_the_classifier(tmp_path):
    module = RTSModule(str(save_classifier(tmp_path / "c.ckpt")))
    before_cls = snapshot(module.classifier)
    before_dec = [p.clone() for p in module.masker.decoder.parameters()]
    fit(module)
    after_cls = snapshot(module.classifier)
    assert all(torch.equal(before_cls[0][k], after_cls[0][k]) for k in before_cls[0])  # BN buffers too
    assert before_cls[1:] == after_cls[1:]
    assert any(not torch.equal(a, b) for a, b in zip(before_dec, module.masker.decoder.parameters(), strict=True))
    assert set(module.interpreters()) == {"rts"}


def test_rts_fake_labels_are_seeded_per_step_and_other_than_the_true_class(tmp_path):
    module = RTSModule(str(save_classifier(tmp_path / "c.ckpt")), fake_label_prob=0.5)
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 4
    seen = {}

    def spy(classifier, x, target, mask, generator=None, real=None):
        seen["target"], seen["real"] = target, real
        return {"loss": mask.sum()}

    module.rts_loss.forward = spy
    module.interpretation_loss(x, y, fake_labels=True)
    first = (seen["target"].clone(), seen["real"].clone())
    assert 10 < int((~first[1]).sum()) < 54  # about half of 64
    assert torch.equal(first[0][first[1]], y[first[1]]) and (first[0][~first[1]] != y[~first[1]]).all()
    module.interpretation_loss(x, y, fake_labels=True)
    assert torch.equal(seen["target"], first[0]) and torch.equal(seen["real"], first[1])  # same step, same draw
    module.interpretation_loss(x, y)  # validation: true classes only
    assert torch.equal(seen["target"], y) and seen["real"] is None
    with pytest.raises(ValueError, match="fake_label_prob"):
        RTSModule(str(tmp_path / "c.ckpt"), fake_label_prob=1.0)


def test_rts_and_aid_record_the_classifiers_class_count_in_their_hyper_parameters(tmp_path):
    # Lightning merges the module's and the datamodule's hyper-parameters and refuses different values.
    ckpt = str(save_classifier(tmp_path / "c.ckpt"))
    assert RTSModule(ckpt).hparams.num_classes == 4
    assert AIDModule(ckpt).hparams.num_classes == 4 and AIDModule(ckpt).hparams_initial.num_classes == 4


def test_aid_keeps_batch_norm_statistics_fixed_while_training(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    attack = {"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 1}
    module = AIDModule(str(ckpt), attack_kwargs=attack)
    bns = [m for m in module.masker.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert any(m.training for m in module.masker.modules())  # the rest trains
    stats = [m.running_mean.clone() for m in bns]
    module.masker.train()  # even a masker put back in training mode: fit applies the rule again
    fit(module, steps=1)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, bns, strict=True))


def test_aid_keep_term_compares_benign_maps_for_the_true_class_only(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    rts = RTSModule(str(ckpt))
    torch.save({"state_dict": rts.state_dict()}, tmp_path / "rts.ckpt")
    module = AIDModule(str(ckpt), rts_ckpt=str(tmp_path / "rts.ckpt"), keep_weight=1.0, fake_label_prob=0.5)
    asked = []
    reference_forward = module.reference.forward

    def spy(x, target, upsample=True):
        asked.append(target.clone())
        return reference_forward(x, target, upsample)

    module.reference.forward = spy
    fit(module, steps=1)
    y_true = asked[0]
    assert len(asked) >= 2 and all(0 <= int(c) < 4 for c in y_true)
    # The ℓ_int step (first call) asks the reference for the batch's own labels, never the fake ones.
    batch_y = next(iter(tiny_data_loader()))[1]
    assert torch.equal(y_true, batch_y)


def test_aid_cosine_schedule_decays_the_learning_rate_once_per_batch(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    attack = {"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 1}
    module = AIDModule(str(ckpt), lr=1e-3, lr_schedule="cosine", attack_kwargs=attack)
    trainer = fit(module, steps=1)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    total = trainer.estimated_stepping_batches
    assert lr < 1e-3 and lr == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / total)))
    with pytest.raises(ValueError, match="lr_schedule"):
        RTSModule(str(ckpt), lr_schedule="linear")


def test_aid_cosine_schedule_ends_at_zero_when_max_steps_counts_two_steps_per_attacked_batch(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    attack = {"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 1}
    module = AIDModule(str(ckpt), lr=1e-3, lr_schedule="cosine", attack_kwargs=attack, attack_every_n_steps=2)
    batches = []
    module.on_train_batch_end = lambda outputs, batch, batch_idx: batches.append(batch_idx)
    # Batches 0 and 2 attack (two optimiser steps each), 1 and 3 do not: 6 optimiser steps in 4 batches.
    trainer = fit(module, steps=6)
    assert len(batches) == 4 and trainer.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_aid_training_runs_adv2_in_the_loop_and_keeps_rts_as_reference(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    rts = RTSModule(str(ckpt))
    trainer = fit(rts, steps=1)
    trainer.save_checkpoint(tmp_path / "rts.ckpt")
    module = AIDModule(
        str(ckpt), rts_ckpt=str(tmp_path / "rts.ckpt"),
        attack_kwargs={"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 2},
    )
    assert torch.equal(
        module.masker.to_saliency.weight, rts.masker.to_saliency.weight
    ), "AID must start from the RTS weights"
    before_cls = snapshot(module.classifier)
    ref_before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer = fit(module, steps=2)
    after_cls = snapshot(module.classifier)
    assert all(torch.equal(before_cls[0][k], after_cls[0][k]) for k in before_cls[0])
    assert before_cls[1:] == after_cls[1:]
    assert all(torch.equal(ref_before[k], v) for k, v in module.reference.state_dict().items())
    assert not torch.equal(module.masker.to_saliency.weight, rts.masker.to_saliency.weight)
    assert "train/aid" in trainer.callback_metrics
    assert set(module.interpreters()) == {"rts", "rtsa"}


def test_aid_presence_gate_starts_as_rts_scaled_by_the_classifier_and_alone_trains_without_train_masker(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    rts = RTSModule(str(ckpt))
    torch.save({"state_dict": rts.state_dict()}, tmp_path / "rts.ckpt")
    module = AIDModule(
        str(ckpt), rts_ckpt=str(tmp_path / "rts.ckpt"), presence=True, train_masker=False, lr=0.05,
        presence_sharpness=2.0, attack_kwargs={"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 1},
    )
    assert module.reference.presence is None  # RTS stays Dabkowski & Gal's masker
    x, y = next(iter(tiny_data_loader()))[:2]
    with torch.no_grad():  # the gate starts as the classifier: RTS's maps times its belief in the class
        logits = module.classifier(x)
        rival = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        belief = torch.sigmoid(2.0 * (logits.gather(1, y[:, None]).squeeze(1) - rival))[:, None, None, None]
        assert torch.allclose(module.masker(x, y)[0], (module.reference(x, y)[0] * belief).clamp(0, 1), atol=1e-5)
    groups = module.param_groups()
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in module.masker.presence.parameters()}
    decoder = {k: v.clone() for k, v in module.masker.state_dict().items() if not k.startswith("presence.")}
    gate = [p.clone() for p in module.masker.presence.parameters()]
    fit(module, steps=2)
    after = module.masker.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in decoder.items())
    assert not all(torch.equal(a, b) for a, b in zip(gate, module.masker.presence.parameters(), strict=True))
    # An RTSA checkpoint with a gate loads into a plain masker (evaluate.py's rtsa_ckpt).
    torch.save({"state_dict": module.state_dict()}, tmp_path / "rtsa.ckpt")
    from aid.interpreters.rts import RTSMasker, load_masker_state

    plain = RTSMasker.from_classifier(module.classifier)
    load_masker_state(plain, tmp_path / "rtsa.ckpt")
    assert plain.presence is not None and plain.presence.sharpness.item() == 2.0
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x, y)[0], module.masker.eval()(x, y)[0])
    with pytest.raises(ValueError, match="train_masker"):
        AIDModule(str(ckpt), train_masker=False)
    with pytest.raises(ValueError, match="presence_sharpness"):
        AIDModule(str(ckpt), presence=True, presence_sharpness=0.0)
    with pytest.raises(ValueError, match="presence_train_sharpness"):
        AIDModule(str(ckpt), presence=True, presence_train_sharpness=-1.0)

    # A checkpoint from before the gate had a sharpness resumes with k = 1, the gate it was trained with.
    old = {k: v for k, v in module.state_dict().items() if k != "masker.presence.sharpness"}
    resumed = AIDModule(str(ckpt), rts_ckpt=str(tmp_path / "rts.ckpt"), presence=True, train_masker=False)
    checkpoint = {"state_dict": old}
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    assert resumed.masker.presence.sharpness.item() == 1.0


def test_aid_gate_trains_at_sharpness_one_and_its_maps_use_the_deployed_sharpness(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    rts = RTSModule(str(ckpt))
    torch.save({"state_dict": rts.state_dict()}, tmp_path / "rts.ckpt")
    gates = {}
    for k in (1.0, 4.0):
        torch.manual_seed(0)
        module = AIDModule(
            str(ckpt), rts_ckpt=str(tmp_path / "rts.ckpt"), presence=True, train_masker=False, lr=0.05,
            presence_ce_weight=0.3, presence_sharpness=k,
            attack_kwargs={"eps": 0.05, "alpha": 0.01, "warm_steps": 1, "steps": 2},
        )
        fit(module, steps=3)
        assert module.masker.presence.sharpness.item() == k
        gates[k] = module
    # the same training (the in-loop attack against the k = 1 gate included), whatever the deployed k
    for a, b in zip(gates[1.0].masker.presence.parameters(), gates[4.0].masker.presence.parameters(), strict=True):
        assert torch.equal(a, b)
    x, y = next(iter(tiny_data_loader()))[:2]
    with torch.no_grad():
        sharp = gates[4.0].masker.eval()(x, y)[0]
        with gates[4.0].masker.presence.sharpness_as(1.0):
            assert torch.equal(gates[4.0].masker(x, y)[0], gates[1.0].masker.eval()(x, y)[0])
    assert not torch.equal(sharp, gates[1.0].masker(x, y)[0])


def test_aid_presence_ce_term_trains_the_gate_to_see_the_true_class_in_adversarial_and_benign_inputs(tmp_path):
    ckpt = save_classifier(tmp_path / "c.ckpt")
    module = AIDModule(str(ckpt), presence=True, train_masker=False, presence_ce_weight=0.5)
    x, y = next(iter(tiny_data_loader()))[:2]
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    terms = module.aid_loss(x, y, x_adv, (y + 1) % 4)
    gate = module.masker.presence
    on_adv = torch.nn.functional.cross_entropy(gate(module.masker.normalize(x_adv)), y)
    on_benign = torch.nn.functional.cross_entropy(gate(module.masker.normalize(x)), y)
    # the gate must call x's own class on A(x) and on x alike
    assert terms["presence"].item() == pytest.approx(0.5 * (on_adv + on_benign).item(), rel=1e-5)
    assert "presence" not in AIDModule(str(ckpt), presence=True).aid_loss(x, y, x_adv, (y + 1) % 4)
    with pytest.raises(ValueError, match="presence"):
        AIDModule(str(ckpt), presence="everywhere")


def test_evaluation_module_runs_trainer_test_with_a_datamodule_and_checks_class_count(tmp_path):
    from aid.modules.evaluation import EvaluationModule

    ckpt = save_classifier(tmp_path / "c.ckpt")
    rts = RTSModule(str(ckpt))
    trainer = fit(rts, steps=1)
    trainer.save_checkpoint(tmp_path / "rts.ckpt")
    module = EvaluationModule(classifier_ckpt=str(ckpt), rts_ckpt=str(tmp_path / "rts.ckpt"))
    assert set(module.interpreters()) == {"rts"}
    tester = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        devices=1, inference_mode=False)
    tester.test(module, datamodule=tiny_data())
    assert "test/acc" in tester.callback_metrics
    wrong = ShapesDataModule(image_size=32, num_classes=3, train_size=16, val_size=16, test_size=16, batch_size=16)
    with pytest.raises(ValueError, match="class-count mismatch"):
        tester.test(module, datamodule=wrong)
