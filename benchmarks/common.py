"""Shared pieces of the benchmarks: arguments, the default model, a side-by-side timer, memory, tables, JSON.

Every benchmark compares contenders on the same model, batch and device in one process. The timer
(:func:`compare`) runs ``warmup`` untimed rounds, then ``repeats`` rounds; each round calls every
contender once, in a fresh random order (seeded), so slow drifts of the machine (other jobs, clock
changes) hit all contenders alike and no contender always runs right after the same other one (whose
cache, memory or worker threads it would inherit). Reported: median and inter-quartile range of the
per-call times, and for pairs the median of the per-round ratios (:func:`paired_ratio`).

Peak memory of a call: on GPU ``torch.cuda.max_memory_allocated`` (statistics reset before the call);
on CPU the process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), whose high-water
mark is reset before the call by writing ``5`` to ``/proc/self/clear_refs`` (Linux). Where that reset is
not possible the CPU figure is the process's peak so far (``mem_resettable`` False in the JSON), only
meaningful for a process that runs one thing (``bench_aid_epoch.py`` runs each module in its own).

Importing this module puts the repository root on ``sys.path`` so that ``aid`` and ``datamodules``
import when a script runs as ``python benchmarks/<script>.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import operator
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = "resnet10t"
#: The embedded classifier of configs/classifier.yaml (slim resnet10t, output stride 8, 8 classes).
DEFAULT_CHANNELS = (32, 64, 128, 256)
DEFAULT_OUTPUT_STRIDE = 8
DEFAULT_CLASSES = 8


# ----- arguments ----------------------------------------------------------------------------------


def base_parser(description: str, batch: int = 32, image_size: int = 32, repeats: int = 10) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares.

    ``--model`` other than resnet10t defaults to output stride 32 and timm's own widths (a paper-scale
    ResNet-50 / DenseNet); ``--channels`` and ``--output-stride`` override.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="timm classifier name")
    p.add_argument("--num-classes", type=int, default=DEFAULT_CLASSES)
    p.add_argument("--channels", default=None, help="comma-separated stage widths (default: 32,64,128,256 for "
                   "resnet10t, timm's otherwise)")
    p.add_argument("--output-stride", type=int, default=None, help="default: 8 for resnet10t, 32 otherwise")
    p.add_argument("--image-size", type=int, default=image_size, help="image side in pixels")
    p.add_argument("--batch", type=int, default=None, help=f"batch size (default {batch}; 8 with --quick)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {repeats}; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny sizes and repeats: checks that the script runs; "
                   "its numbers mean nothing")
    p.set_defaults(_default_batch=batch, _default_repeats=repeats)
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill quick / default values, set the thread count and resolve the device (``args.device_obj``).

    Also applies :func:`aid.cpu_allocator.keep_freed_memory`, as ``train.py`` does: every contender of a
    benchmark then runs under the malloc settings a training run has (``env.malloc`` in the JSON).
    """
    from aid.cpu_allocator import keep_freed_memory

    keep_freed_memory()
    if args.batch is None:
        args.batch = 8 if args.quick else args._default_batch
    if args.repeats is None:
        args.repeats = 2 if args.quick else args._default_repeats
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.threads is not None:
        torch.set_num_threads(int(args.threads))
    default = args.model == DEFAULT_MODEL
    if args.channels is None:
        args.channels = list(DEFAULT_CHANNELS) if default else None
    elif isinstance(args.channels, str):
        args.channels = [int(c) for c in args.channels.split(",") if c]
    if args.output_stride is None:
        args.output_stride = DEFAULT_OUTPUT_STRIDE if default else 32
    args.device_obj = resolve_device(args.device)
    torch.manual_seed(args.seed)
    return args


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return dev


# ----- model and data -----------------------------------------------------------------------------


def build_model(args: argparse.Namespace):
    """The benchmark classifier (random init, eval mode) on ``args.device_obj``."""
    from aid.models import build_classifier

    torch.manual_seed(args.seed)
    clf = build_classifier(
        args.model,
        num_classes=args.num_classes,
        output_stride=args.output_stride,
        channels=args.channels,
    )
    return clf.to(args.device_obj).eval()


def random_batch(
    batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, C, size, size) uniform in [0, 1], target classes (B,) long), seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, size, size, generator=g)
    t = torch.randint(0, num_classes, (batch,), generator=g)
    return x.to(device), t.to(device)


def feature_layer(clf) -> tuple[str, torch.nn.Module]:
    """(name, module) of the layer whose output is ``clf.features(x)`` (timm's last ``feature_info`` entry).

    For timm ResNets this is ``backbone.layer4``. Checked on a probe batch: a peer Grad-CAM hooked on
    that layer sees exactly the feature map our CAM / Grad-CAM use.
    """
    info = clf.backbone.feature_info
    name = "backbone." + (info[-1]["module"] if isinstance(info, list) else info.module_name()[-1])
    module = dict(clf.named_modules())[name]
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        p = next(clf.parameters())
        probe = torch.rand(1, clf.in_chans, 32, 32, device=p.device)
        with torch.no_grad():
            feats = clf.features(probe)
    finally:
        handle.remove()
    if not seen or seen[-1].shape != feats.shape or not torch.allclose(seen[-1], feats):
        raise RuntimeError(f"layer {name} does not output clf.features(x); pass another layer")
    return name, module


# ----- timing -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU), so that wall-clock time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_peak_mb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak_memory(device: torch.device) -> bool:
    """Reset the peak-memory statistic; True when it could be reset (always on GPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return _reset_rss_peak()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset in MiB: GPU allocated memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_peak_mb()


def current_memory_mb(device: torch.device) -> float:
    """Memory in use now in MiB: GPU allocated memory, or the resident set on CPU (right after a reset the
    CPU peak equals the current resident set)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return _rss_peak_mb()


@dataclass
class Stats:
    """Per-call timings of one contender, in seconds, and its peak memory in MiB."""

    name: str
    times: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    extra_mb: float = 0.0
    mem_resettable: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def q1(self) -> float:
        return _quantile(self.times, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.times, 0.75)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def summary(self, per: float = 1.0) -> dict[str, Any]:
        """Median / IQR divided by ``per`` (e.g. the step count for a per-step time), in seconds."""
        return {
            "name": self.name,
            "median_s": self.median / per,
            "q1_s": self.q1 / per,
            "q3_s": self.q3 / per,
            "iqr_s": self.iqr / per,
            "repeats": len(self.times),
            "peak_mb": round(self.peak_mb, 1),
            "extra_mb": round(self.extra_mb, 1),
            "mem_resettable": self.mem_resettable,
        }


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Contender:
    """Something to time: ``run(state)`` is timed; ``context()`` (optional) is entered before and left after
    each call, untimed, and its value is the ``state`` passed to ``run`` (None without a context).

    A context serves peers that register hooks on the model (pytorch-grad-cam): they are removed
    between calls, so they never slow down the other contenders of a round.
    """

    run: Callable[[Any], Any]
    context: Callable[[], contextlib.AbstractContextManager] | None = None


def as_contender(c: Contender | Callable[[], Any]) -> Contender:
    return c if isinstance(c, Contender) else Contender(run=lambda _state, f=c: f())


def compare(
    contenders: dict[str, Contender | Callable[[], Any]],
    device: torch.device,
    repeats: int = 10,
    warmup: int = 2,
    memory: bool = True,
    seed: int = 0,
) -> dict[str, Stats]:
    """Time contenders side by side: ``warmup`` untimed rounds, then ``repeats`` timed rounds.

    Each round calls every contender once, in an order drawn afresh every round from a generator seeded
    with ``seed`` (a rotation would keep the cyclic order, so one contender would always follow the same
    other one and inherit its cache, freed memory or spinning worker threads). Returns
    ``{name: Stats}`` with the per-call wall-clock times (GPU work synchronised), the largest peak
    memory seen over the timed calls (``peak_mb``) and the largest rise of memory above its level at the
    start of a call (``extra_mb``: what the call itself allocates; CPU figures count resident pages, so
    memory the allocator kept from an earlier call shows as no rise).
    """
    items = [(name, as_contender(c)) for name, c in contenders.items()]
    stats = {name: Stats(name) for name, _ in items}
    order = random.Random(seed)
    for r in range(warmup + repeats):
        for name, c in order.sample(items, len(items)):
            with c.context() if c.context is not None else contextlib.nullcontext() as state:
                timed = r >= warmup
                if timed and memory:
                    sync(device)
                    stats[name].mem_resettable &= reset_peak_memory(device)
                    base = current_memory_mb(device)
                sync(device)
                t0 = time.perf_counter()
                c.run(state)
                sync(device)
                dt = time.perf_counter() - t0
                if timed:
                    stats[name].times.append(dt)
                    if memory:
                        peak = peak_memory_mb(device)
                        stats[name].peak_mb = max(stats[name].peak_mb, peak)
                        stats[name].extra_mb = max(stats[name].extra_mb, peak - base)
    return stats


def paired_ratio(a: Stats, b: Stats) -> float:
    """Median over rounds of a's time / b's time in the same round (contenders of one :func:`compare`).

    Both ran within one round, so a drift of the machine between rounds cancels in each ratio; it is a
    steadier estimate of the relative cost than the ratio of the two medians.
    """
    if len(a.times) != len(b.times) or not a.times:
        raise ValueError(f"{a.name} and {b.name} were not timed in the same rounds")
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


def time_one(fn: Callable[[], Any], device: torch.device, repeats: int = 10, warmup: int = 2) -> Stats:
    """:func:`compare` with a single contender."""
    return compare({"fn": fn}, device, repeats, warmup)["fn"]


# ----- output -------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the machine, stored beside every result."""
    from aid.cpu_allocator import allocator_setting
    from aid.interpreters import smooth_relu_native

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "malloc": allocator_setting(),
        # Built only where they serve (float32 on a CPU), so a GPU run does not compile them.
        "smooth_relu_kernels": smooth_relu_native.status() if device.type == "cpu" else f"unused on {device.type}",
        "device": str(device),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with contextlib.suppress(Exception):
        env["load_avg_1m"] = os.getloadavg()[0]
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    from importlib import metadata

    for dist in ("timm", "captum", "torchattacks", "grad-cam", "pytorch-lightning", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[dist] = metadata.version(dist)
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def device_slug(device: torch.device) -> str:
    """A file-name-safe name of the device: ``cpu`` or ``cuda-<gpu name>``."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line settings of a run, JSON-friendly."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "device_obj"}


def table(title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """A table for :func:`print_table` and the JSON output."""
    return {"title": title, "columns": list(columns), "rows": list(rows), "note": note}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def print_table(t: dict[str, Any], file=None) -> None:
    """Print a table (from :func:`table`) as GitHub markdown."""
    file = file or sys.stdout
    cols = t["columns"]
    cells = [[_fmt(r.get(c)) for c in cols] for r in t["rows"]]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print(f"\n### {t['title']}\n", file=file)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |", file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |", file=file)
    if t.get("note"):
        print(f"\n{t['note']}", file=file)


def check(name: str, value: float, target: str, passed: bool) -> dict[str, Any]:
    """One acceptance check for the summary (value is the measured figure)."""
    return {"check": name, "value": value, "target": target, "passed": bool(passed)}


def median_checks(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One check per name from N runs of the same checks: the median value against the median bound.

    A target is ``"<= b"``, ``">= b"``, ``"< b"``, ``"> b"`` or ``"-"`` (informative); bounds that a run
    derives from its own timings (ADV²-GRAD's, from the double-backward floor) differ between runs, so
    the median value is held against the median bound. ``values`` keeps each run's figure.
    """
    ops = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for c in run:
            by_name.setdefault(c["check"], []).append(c)
    out = []
    for name, cs in by_name.items():
        values = [float(c["value"]) for c in cs]
        value = statistics.median(values)
        parts = str(cs[0]["target"]).split()
        if len(parts) == 2 and parts[0] in ops:
            bound = statistics.median(float(str(c["target"]).split()[1]) for c in cs)
            target, passed = f"{parts[0]} {bound:.2f}", ops[parts[0]](value, bound)
        else:
            target, passed = cs[0]["target"], all(c["passed"] for c in cs)
        out.append({"check": f"{name} (median of {len(cs)})", "value": value, "target": target,
                    "passed": bool(passed), "values": values})
    return out


def print_checks(checks: Sequence[dict[str, Any]], file=None) -> None:
    """Print acceptance checks as a table."""
    if checks:
        print_table(table("Acceptance", ["check", "value", "target", "passed"], checks), file)


def report(
    name: str, args: argparse.Namespace, tables: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the tables and checks, write ``args.json`` when given; return the payload."""
    payload = {
        "benchmark": name,
        "quick": bool(args.quick),
        "env": environment(args.device_obj),
        "settings": settings(args),
        "tables": list(tables),
        "checks": list(checks),
        **(extra or {}),
    }
    if args.quick:
        print("(--quick: tiny repeats on whatever load the machine has; these numbers mean nothing)")
    for t in tables:
        print_table(t)
    print_checks(checks)
    if args.json:
        write_json(args.json, payload)
    return payload


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


@contextlib.contextmanager
def frozen(*models: torch.nn.Module) -> Iterator[None]:
    """The library's ``frozen_eval`` (eval mode, no parameter gradients), as attacks hold their models."""
    from aid.model_state import frozen_eval

    with frozen_eval(*models), torch.enable_grad():
        yield


def stats_row(s: Stats, per: float = 1.0, **extra: Any) -> dict[str, Any]:
    """A table row with median / IQR in milliseconds (divided by ``per``) and the memory a call adds."""
    row = {
        "contender": s.name,
        "median_ms": 1e3 * s.median / per,
        "iqr_ms": 1e3 * s.iqr / per,
        "extra_mb": s.extra_mb,
    }
    row.update(extra)
    return row


def asdict_stats(stats: dict[str, Stats], per: float = 1.0) -> dict[str, Any]:
    """Stats as plain dicts (times per call divided by ``per``), with the raw samples."""
    return {k: {**v.summary(per), "samples_s": [t / per for t in v.times]} for k, v in stats.items()}


__all__ = [
    "Contender",
    "Stats",
    "asdict_stats",
    "base_parser",
    "build_model",
    "check",
    "compare",
    "device_slug",
    "environment",
    "feature_layer",
    "finish_args",
    "paired_ratio",
    "frozen",
    "peak_memory_mb",
    "print_table",
    "random_batch",
    "report",
    "reset_peak_memory",
    "stats_row",
    "sync",
    "table",
    "time_one",
    "write_json",
]
