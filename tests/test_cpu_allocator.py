"""glibc malloc settings that keep freed memory: fewer page faults, and left alone when the user says so."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aid import cpu_allocator

ROOT = Path(__file__).resolve().parents[1]

# Repeated ADV²-style steps (a double backward through the smooth ReLU) at a batch whose activations
# are large enough for glibc's default malloc to give memory back and fault it in again.
STEPS = textwrap.dedent("""
    import resource, sys, torch
    from aid.cpu_allocator import allocator_setting, keep_freed_memory
    from aid.interpreters.smooth_relu import smooth_relu
    from aid.models import build_classifier
    if sys.argv[1] == "keep":
        keep_freed_memory()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    clf = build_classifier("resnet10t", num_classes=4, channels=[16, 32, 64, 128]).eval()
    x = torch.rand(32, 3, 32, 32)
    def step():
        xa = x.clone().requires_grad_(True)
        with smooth_relu(clf):
            logits = clf(xa)
            (g,) = torch.autograd.grad(logits[:, 0].sum(), xa, create_graph=True)
            torch.autograd.grad(logits.logsumexp(1).sum() + g.abs().sum(), xa)
    # Warm-up steps first: with freed memory kept, the heap grows to its working size once, then stops.
    for _ in range(6):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        step()
    print(allocator_setting(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6, sep="|")
""")


def faults_per_step(mode: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != cpu_allocator.ENV_SWITCH}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, check=True)
    setting, faults = out.stdout.strip().splitlines()[-1].split("|")
    return setting, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keeping_freed_memory_removes_most_page_faults_of_repeated_double_backward_steps():
    # Two processes of each: how much glibc's default gives back (and faults in again) varies from one
    # process to the next, by a factor of up to ten here.
    (default_setting, d1), (_, d2) = faults_per_step("default"), faults_per_step("default")
    (setting, k1), (_, k2) = faults_per_step("keep"), faults_per_step("keep")
    if setting == "unchanged (not glibc)":
        pytest.skip("not glibc")
    assert default_setting == "not asked" and setting == "keep freed memory"
    default, kept = (d1 + d2) / 2, (k1 + k2) / 2
    if default <= 200:
        pytest.skip(f"this C library's default malloc faults little here ({default:.0f} pages per step)")
    assert kept <= 0.2 * default, (d1, d2, k1, k2)


@pytest.mark.parametrize(("env", "words"), [
    ({cpu_allocator.ENV_SWITCH: "0"}, "off"),
    ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "from the environment"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, "from the environment"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator"),
])
def test_malloc_is_left_alone_when_switched_off_or_set_by_the_user(monkeypatch, env, words):
    for key in (cpu_allocator.ENV_SWITCH, "LD_PRELOAD", "GLIBC_TUNABLES", *cpu_allocator.USER_SETTINGS):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "platform", "linux")
    assert words in cpu_allocator._apply()
