"""The benchmark summary's median of several runs (benchmarks/common.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_median_value_is_held_against_the_median_bound(common):
    runs = [
        [common.check("grad", 3.0, "<= 2.90", False)],
        [common.check("grad", 2.8, "<= 3.10", True)],
        [common.check("grad", 2.9, "<= 3.00", True)],
    ]
    (c,) = common.median_checks(runs)
    assert c["value"] == pytest.approx(2.9) and c["target"] == "<= 3.00" and c["passed"]
    assert c["values"] == [3.0, 2.8, 2.9] and "median of 3" in c["check"]


def test_a_median_over_the_bound_fails_even_if_one_run_passed(common):
    runs = [[common.check("pgd", v, "<= 1.05", v <= 1.05)] for v in (1.04, 1.07, 1.08)]
    (c,) = common.median_checks(runs)
    assert c["value"] == pytest.approx(1.07) and not c["passed"]


def test_lower_bounds_and_informative_checks(common):
    runs = [[common.check("speed-up", v, ">= 4", v >= 4), common.check("floor", v, "-", True)] for v in (3.9, 4.2, 4.5)]
    speed, floor = common.median_checks(runs)
    assert speed["passed"] and speed["value"] == pytest.approx(4.2)
    assert floor["target"] == "-" and floor["passed"]


def test_compare_varies_which_contender_runs_before_which(common):
    calls = []
    contenders = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    common.compare(contenders, common.torch.device("cpu"), repeats=12, warmup=0, memory=False)
    rounds = [calls[i : i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)  # every contender once per round
    predecessors = {(r[k - 1], r[k]) for r in rounds for k in range(1, 4)}
    # A rotation keeps the cyclic order (only a->b, b->c, c->d, d->a ever occur); fresh orders do not.
    assert predecessors - {("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")}


def test_paired_ratio_is_the_median_of_per_round_ratios(common):
    a, b = common.Stats("a", [2.0, 3.0, 10.0]), common.Stats("b", [1.0, 2.0, 4.0])
    assert common.paired_ratio(a, b) == pytest.approx(2.0)  # ratios 2.0, 1.5, 2.5
    with pytest.raises(ValueError, match="same rounds"):
        common.paired_ratio(a, common.Stats("c", [1.0]))
