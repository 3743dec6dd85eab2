"""Run variants of a training or evaluation config side by side and tabulate their report metrics.

A plan (YAML) lists variants; each is a base config plus a *patch* deep-merged into it (a dict merges key by
key). Callbacks are addressed by class and prefix, never by their place in the list: a patch of
``trainer.callbacks`` is a dict whose keys are selectors, ``ADV2Evaluation:adv2_patch`` (the callback of that
class whose ``prefix`` or ``name``, given or default, is ``adv2_patch``) or ``NoiseSensitivity`` (the one
callback of that class); a dict value merges into that callback, ``null`` removes it, ``"*": null`` removes
every callback the patch does not name and ``"+name": {class_path: ...}`` adds one. Every variant runs
``train.py`` / ``evaluate.py`` with its run folder at ``<out>/<name>/run``; prerequisites (a trained
classifier, an RTS) are found or made in the runs folder ``--runs`` (by default the working folder's
``runs``, so a sweep reuses the main job's), as every run finds them: by what defines them. An argument
``@other/checkpoints/last.ckpt`` points into another variant's run folder (that variant must be in an
earlier ``stage``). Up to ``--jobs`` variants run at once: on a GPU small models leave most of the card
idle, so several processes share it.

    python experiments/sweep.py experiments/plans/aid_presence.yaml --out sweeps/aid --jobs 2

Plan keys: ``defaults`` (any variant key), ``variants`` (list). Variant keys: ``name``, ``script``
(train.py or evaluate.py), ``subcommand`` (fit, validate, test; default: the script's own), ``config``
(path relative to the repository), ``patch`` (dict), ``args`` (extra command-line arguments), ``keys``
(metrics to tabulate), ``ratios`` ({label: [numerator key, denominator key]}), ``stage`` (int, default 0).
A variant's ``keys`` and ``ratios`` replace the defaults'; its ``patch`` is merged into theirs. Writes
``<out>/results.json`` and ``<out>/results.md`` after every finished variant, so a run cut short keeps
what finished.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPLACED = ("keys", "ratios")  # variant keys that replace the defaults' instead of merging
ALL_OTHERS = "*"


def _label_of(cb: dict) -> str | None:
    """A callback entry's ``prefix`` or ``name`` init argument, or the class's default for it."""
    args = cb.get("init_args") or {}
    if args.get("prefix") or args.get("name"):
        return args.get("prefix") or args.get("name")
    module, _, cls = str(cb.get("class_path", "")).rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), cls)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    for key in ("prefix", "name"):
        if key in params and isinstance(params[key].default, str):
            return params[key].default
    return None


def callback_label(cb: dict) -> str:
    """``Class:label`` of a callback entry (its ``prefix`` or ``name``, given or default), or ``Class``."""
    cls = str(cb.get("class_path", "")).rsplit(".", 1)[-1]
    label = _label_of(cb)
    return f"{cls}:{label}" if label else cls


def _matches(selector: str, cb: dict) -> bool:
    cls, _, label = selector.partition(":")
    return str(cb.get("class_path", "")).rsplit(".", 1)[-1] == cls and (not label or label == _label_of(cb))


def patch_callbacks(callbacks: list, patch: dict) -> list:
    """``callbacks`` (a config's list) with ``patch`` applied: ``{selector: dict}`` merges into the one matching
    callback, ``{selector: null}`` removes it, ``{"+label": {class_path: ...}}`` appends a new one and
    ``{"*": null}`` removes every callback the patch does not name (see the module doc)."""
    out = list(callbacks)
    drop_others = ALL_OTHERS in patch and patch[ALL_OTHERS] is None
    named: set[int] = set()
    added = []
    for selector, value in patch.items():
        if selector == ALL_OTHERS:
            continue
        if isinstance(selector, int) or not isinstance(selector, str):
            raise ValueError(f"callbacks are patched by class and prefix (e.g. ADV2Evaluation:adv2_patch), not by "
                             f"position: got {selector!r}")
        if selector.startswith("+"):
            if not isinstance(value, dict) or "class_path" not in value:
                raise ValueError(f"callback {selector!r}: a new callback needs a class_path")
            added.append(copy.deepcopy(value))
            continue
        hits = [i for i, cb in enumerate(out) if isinstance(cb, dict) and _matches(selector, cb)]
        if len(hits) != 1:
            have = ", ".join(callback_label(cb) for cb in out if isinstance(cb, dict))
            raise ValueError(f"callback selector {selector!r} matches {len(hits)} callbacks; the config has: {have}")
        named.add(hits[0])
        out[hits[0]] = None if value is None else deep_merge(out[hits[0]], value)
    kept = [cb for i, cb in enumerate(out) if cb is not None and (i in named or not drop_others)]
    return kept + added


def deep_merge(base: Any, patch: Any) -> Any:
    """``base`` with ``patch`` merged in: dicts key by key (a new ``class_path`` replaces the whole dict; a
    ``callbacks`` list is patched by :func:`patch_callbacks`); anything else replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "class_path" in patch and patch["class_path"] != base.get("class_path"):
            return copy.deepcopy(patch)  # another class: its init_args start afresh, as in LightningCLI
        out = dict(base)
        for k, v in patch.items():
            if k == "callbacks" and isinstance(base.get(k), list) and isinstance(v, dict):
                out[k] = patch_callbacks(base[k], v)
            else:
                out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(patch)


def run_dir(out: Path, name: str) -> Path:
    """The run folder of variant ``name``."""
    return out / name / "run"


def variant_command(v: dict, workdir: Path, out: Path | None = None, runs: Path | None = None) -> list[str]:
    """Write the variant's patched config into ``workdir`` and return the command that runs it (its run folder
    ``<out>/<name>/run``, prerequisites in ``runs``; ``@other/...`` arguments point into ``other``'s run)."""
    with open(ROOT / v["config"]) as f:
        config = yaml.safe_load(f)
    config = deep_merge(config, v.get("patch") or {})
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    script = str(ROOT / v.get("script", "train.py"))
    sub = [str(v["subcommand"])] if v.get("subcommand") else []
    out = out or workdir.parent
    args = []
    for a in map(str, v.get("args", [])):
        if a.startswith("@"):
            other, _, rest = a[1:].partition("/")
            a = str(run_dir(out, other) / rest)
        args.append(a)
    where = ["--run_dir", str(run_dir(out, v["name"]))]
    if runs is not None:
        where += ["--runs_root", str(runs)]
    return [sys.executable, script, *sub, "--config", str(path), *where, *args]


def run_variant(v: dict, out: Path, runs: Path, timeout: float, threads: int) -> dict:
    """Run one variant to completion (or timeout); returns its row: status, seconds, metrics."""
    workdir = out / v["name"]
    workdir.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"name": v["name"], "status": "failed", "seconds": None, "metrics": {}}
    try:
        cmd = variant_command(v, workdir, out, runs)
    except Exception as exc:  # a broken variant must not stop the others
        row["error"] = repr(exc)
        return row
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS=str(threads), WANDB_MODE="offline",
               WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(workdir / "log.txt", "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=os.getcwd(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            row["status"] = "ok" if proc.returncode == 0 else f"rc={proc.returncode}"
        except subprocess.TimeoutExpired:
            row["status"] = "timeout"
    row["seconds"] = round(time.perf_counter() - start, 1)
    report = run_dir(out, v["name"]) / "report" / "summary.json"
    if report.exists():
        summary = json.loads(report.read_text())
        keys = v.get("keys") or sorted(summary)
        row["metrics"] = {k: summary.get(k) for k in keys}
        for label, (num, den) in (v.get("ratios") or {}).items():
            a, b = summary.get(num), summary.get(den)
            row["metrics"][label] = a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None
    if row["status"] != "ok":
        row["log_tail"] = (workdir / "log.txt").read_text()[-1500:]
    return row


def write_results(rows: list[dict], out: Path) -> str:
    """Write ``results.json`` and a Markdown table ``results.md``; returns the table."""
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r["metrics"] if k not in keys]
    short = [k.removeprefix("adv2/").replace("localization/", "loc/").replace("squeeze/", "sq/") for k in keys]
    lines = ["| variant | status | s | " + " | ".join(short) + " |", "|" + "---|" * (len(keys) + 3)]
    for r in rows:
        vals = [r["metrics"].get(k) for k in keys]
        cells = ["" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x) for x in vals]
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("plan", help="plan YAML (defaults + variants)")
    p.add_argument("--out", required=True, help="folder for the variants' working directories and results")
    p.add_argument("--runs", default="runs", help="runs folder where prerequisites are found or made (default: runs)")
    p.add_argument("--jobs", type=int, default=1, help="variants run at once")
    p.add_argument("--threads", type=int, default=2, help="OMP threads per variant")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new variant starts")
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--patch", default=None, help="YAML dict merged into every variant's patch (e.g. a tiny smoke run)")
    args = p.parse_args(argv)

    plan = yaml.safe_load(Path(args.plan).read_text())
    defaults = plan.get("defaults") or {}
    # A variant's keys and ratios replace the defaults' (merging would keep keys it does not log).
    variants = [{**deep_merge(defaults, v), **{k: v[k] for k in REPLACED if k in v}} for v in plan["variants"]]
    if args.patch:
        extra = yaml.safe_load(args.patch)
        variants = [dict(v, patch=deep_merge(v.get("patch") or {}, extra)) for v in variants]
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names must be unique: {names}")
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v["name"] in keep]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs).resolve()
    t0 = time.perf_counter()
    rows: list[dict] = []

    def task(v: dict) -> dict:
        if args.deadline is not None and time.perf_counter() - t0 > args.deadline:
            row = {"name": v["name"], "status": "skipped (deadline)", "seconds": None, "metrics": {}}
            rows.append(row)
            return row
        row = run_variant(v, out, runs, args.timeout, args.threads)
        rows.append(row)
        print(f"[{time.perf_counter() - t0:7.1f}s] {row['name']}: {row['status']} in {row['seconds']} s", flush=True)
        write_results(sorted(rows, key=lambda r: names.index(r["name"])), out)
        return row

    for stage in sorted({int(v.get("stage", 0)) for v in variants}):
        batch = [v for v in variants if int(v.get("stage", 0)) == stage]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(task, batch))
    rows.sort(key=lambda r: names.index(r["name"]))
    print(write_results(rows, out))
    return rows


if __name__ == "__main__":
    main()
