"""Bad input gets a clear error: generated bad values thrown at interpreters, attacks, registries and configs."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aid.attacks import build_attack
from aid.defenses.squeeze import build_squeezer
from aid.interpreters import build_interpreter
from aid.models import build_classifier

# Class indices outside [0, 4) that a LongTensor can hold (beyond int64 torch itself overflows).
OUT_OF_RANGE = st.one_of(st.integers(-(2**63), -1), st.integers(4, 2**63 - 1))
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("resnet10t", num_classes=4, output_stride=8, channels=[8, 16, 32, 64]).eval()


@st.composite
def bad_images(draw):
    """Batches that break the contract in one way: NaN / Inf, values outside [0, 1], channels, dims, dtype."""
    kind = draw(st.sampled_from(["nan", "inf", "high", "low", "channels", "dims", "dtype"]))
    b = draw(st.integers(1, 3))
    x = torch.rand(b, 3, 16, 16)
    if kind == "nan":
        x[0, 0, draw(st.integers(0, 15)), draw(st.integers(0, 15))] = float("nan")
    elif kind == "inf":
        x[-1, -1, 0, 0] = draw(st.sampled_from([float("inf"), float("-inf")]))
    elif kind == "high":
        x[0, 0, 0, 0] = draw(st.floats(1.0001, 1e6))
    elif kind == "low":
        x[0, 0, 0, 0] = draw(st.floats(-1e6, -1e-4))
    elif kind == "channels":
        x = torch.rand(b, draw(st.sampled_from([1, 2, 4])), 16, 16)
    elif kind == "dims":
        x = torch.rand(*([b, 3, 16, 16][: draw(st.integers(1, 3))]))
    else:
        x = (x * 255).to(draw(st.sampled_from([torch.uint8, torch.int64])))
    return x


@pytest.mark.parametrize("name", ["grad", "cam", "gradcam", "ig", "mask", "rts"])
def test_interpreters_reject_generated_bad_images_with_a_clear_error(model, name):
    interp = build_interpreter(name, model, **({"iterations": 2} if name == "mask" else {}))

    @SETTINGS
    @given(x=bad_images())
    def check(x):
        with pytest.raises(ValueError, match=r"NaN|\[0, 1\]|channels|shape|float"):
            interp(x, 0)

    check()


@SETTINGS
@given(target=OUT_OF_RANGE)
def test_interpreters_reject_target_classes_out_of_range(model, target):
    with pytest.raises(ValueError, match="target classes"):
        build_interpreter("grad", model)(torch.rand(2, 3, 16, 16), target)


@SETTINGS
@given(eps=st.floats(max_value=0.0, allow_nan=False), steps=st.integers(max_value=0))
def test_attacks_reject_non_positive_budget_or_steps(model, eps, steps):
    with pytest.raises(ValueError, match="eps"):
        build_attack("pgd", model, eps=eps)
    with pytest.raises(ValueError, match="steps"):
        build_attack("pgd", model, steps=steps)
    with pytest.raises(ValueError, match="eps|steps"):
        build_attack("adv2", model, interpreter=build_interpreter("cam", model), eps=eps, steps=steps)


@SETTINGS
@given(target=OUT_OF_RANGE, x=bad_images())
def test_attacks_reject_bad_images_and_targets(model, target, x):
    pgd = build_attack("pgd", model, steps=1)
    with pytest.raises(ValueError, match="target classes"):
        pgd(torch.rand(2, 3, 16, 16), torch.full((2,), target))
    with pytest.raises(ValueError):
        pgd(x, torch.zeros(x.shape[0] if x.dim() else 1, dtype=torch.long))


@SETTINGS
@given(h=st.integers(1, 20), w=st.integers(1, 20), c=st.integers(1, 3))
def test_adv2_rejects_target_maps_of_the_wrong_shape(model, h, w, c):
    if (c, h, w) == (1, 16, 16):
        return
    attack = build_attack("adv2", model, interpreter=build_interpreter("cam", model), steps=1, warm_steps=0)
    with pytest.raises(ValueError, match="target_map"):
        attack(torch.rand(2, 3, 16, 16), torch.tensor([1, 2]), torch.rand(2, c, h, w))


@pytest.mark.parametrize(
    "build, name",
    [(build_interpreter, "saliency"), (build_attack, "fgsm"), (build_squeezer, "jpeg")],
)
def test_unknown_names_list_the_allowed_ones(model, build, name):
    with pytest.raises(KeyError) as err:
        build(name, model) if build is not build_squeezer else build(name)
    assert "allowed" in str(err.value) or "available" in str(err.value)


@settings(max_examples=10, deadline=None)
@given(
    key_value=st.one_of(
        st.tuples(st.just("--model.init_args.lr"), st.floats(max_value=0, allow_nan=False).map(str)),
        st.tuples(st.just("--model.init_args.optimizer"), st.text("abcxyz", min_size=1, max_size=6)),
        st.tuples(st.just("--data.init_args.num_classes"), st.integers(11, 1000).map(str)),
        st.tuples(st.just("--data.init_args.batch_size"), st.integers(-5, 0).map(str)),
        st.tuples(st.just("--trainer.max_epochs"), st.text("xyz", min_size=1, max_size=3)),
    )
)
def test_config_parsing_rejects_generated_bad_values_naming_the_key(key_value):
    from train import AIDCLI, resolve_config

    key, value = key_value
    if key.endswith("optimizer") and value in ("adamw", "sgd"):
        return
    with pytest.raises((SystemExit, ValueError)) as err:
        cli = AIDCLI(args=["fit", "--config", str(resolve_config("classifier.yaml")), key, value], run=False,
                     save_config_kwargs={"overwrite": True}, trainer_defaults={"inference_mode": False})
        del cli
    if isinstance(err.value, ValueError):
        assert key.split(".")[-1] in str(err.value)
