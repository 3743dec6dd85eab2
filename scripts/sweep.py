"""Run variants of a training or evaluation config side by side and tabulate their report metrics.

A plan (YAML) lists variants; each is a base config plus a *patch* deep-merged into it (a dict
merges key by key; a dict with integer keys patches those items of a list, e.g. one callback). Every
variant runs ``train.py`` / ``evaluate.py`` in its own working directory, so the configs' relative
``runs/...`` paths never collide; ``links`` put shared prerequisites (a trained classifier, an RTS)
into that directory, and a link ``@other/runs/rts`` points into another variant's directory (that
variant must be in an earlier ``stage``). Up to ``--jobs`` variants run at once: on a GPU small models
leave most of the card idle, so several processes share it.

    python scripts/sweep.py plans/aid_gpu.yaml --out sweeps/aid --prereq /path/with/runs --jobs 6

Plan keys: ``defaults`` (any variant key), ``variants`` (list). Variant keys: ``name``, ``script``
(train.py or evaluate.py), ``subcommand`` (fit, validate, test; default: the script's own),
``config`` (path relative to the repository), ``patch`` (dict), ``args``
(extra command-line arguments), ``links`` ({path in the workdir: source}), ``report`` (summary.json
path in the workdir), ``keys`` (metrics to tabulate), ``ratios`` ({label: [numerator key, denominator
key]}), ``stage`` (int, default 0). A variant's ``links``, ``keys`` and ``ratios`` replace the
defaults'; its ``patch`` is merged into theirs. Writes ``<out>/results.json`` and ``<out>/results.md``
after every finished variant, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import copy
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
REPLACED = ("links", "keys", "ratios")  # variant keys that replace the defaults' instead of merging


def deep_merge(base: Any, patch: Any) -> Any:
    """``base`` with ``patch`` merged in: dicts key by key (a new ``class_path`` replaces the whole dict), a
    dict with int keys into a list by index (``null`` removes that item); anything else replaces."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "class_path" in patch and patch["class_path"] != base.get("class_path"):
            return copy.deepcopy(patch)  # another class: its init_args start afresh, as in LightningCLI
        out = dict(base)
        for k, v in patch.items():
            out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, dict) and all(isinstance(k, int) for k in patch):
        out = list(base)
        for i, v in patch.items():
            if not -len(out) <= i < len(out):
                raise IndexError(f"patch index {i} outside a list of {len(out)} items")
            out[i] = deep_merge(out[i], v)
        drop = {i % len(base) for i, v in patch.items() if v is None}  # ``{i: null}`` removes item i
        return [item for i, item in enumerate(out) if i not in drop]
    return copy.deepcopy(patch)


def variant_command(v: dict, workdir: Path) -> list[str]:
    """Write the variant's patched config into ``workdir`` and return the command that runs it."""
    with open(ROOT / v["config"]) as f:
        config = yaml.safe_load(f)
    config = deep_merge(config, v.get("patch") or {})
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    script = str(ROOT / v.get("script", "train.py"))
    sub = [str(v["subcommand"])] if v.get("subcommand") else []
    return [sys.executable, script, *sub, "--config", str(path), *map(str, v.get("args", []))]


def make_links(v: dict, workdir: Path, out: Path, prereq: Path | None) -> None:
    """Symlink each ``links`` source (relative to ``--prereq``, or ``@variant/...``) into ``workdir``."""
    for dest, src in (v.get("links") or {}).items():
        if src.startswith("@"):
            source = out / src[1:]
        elif prereq is not None:
            source = prereq / src
        else:
            source = Path(src)
        if not source.exists():
            raise FileNotFoundError(f"variant {v['name']}: link source {source} does not exist")
        target = workdir / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(source.resolve())


def run_variant(v: dict, out: Path, prereq: Path | None, timeout: float, threads: int) -> dict:
    """Run one variant to completion (or timeout); returns its row: status, seconds, metrics."""
    workdir = out / v["name"]
    workdir.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"name": v["name"], "status": "failed", "seconds": None, "metrics": {}}
    try:
        make_links(v, workdir, out, prereq)
        cmd = variant_command(v, workdir)
    except Exception as exc:  # a broken variant must not stop the others
        row["error"] = repr(exc)
        return row
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS=str(threads), WANDB_MODE="offline",
               WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(workdir / "log.txt", "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            row["status"] = "ok" if proc.returncode == 0 else f"rc={proc.returncode}"
        except subprocess.TimeoutExpired:
            row["status"] = "timeout"
    row["seconds"] = round(time.perf_counter() - start, 1)
    report = workdir / v.get("report", "report/summary.json")
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
    p.add_argument("--prereq", default=None, help="folder that relative link sources are taken from")
    p.add_argument("--jobs", type=int, default=1, help="variants run at once")
    p.add_argument("--threads", type=int, default=2, help="OMP threads per variant")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new variant starts")
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--patch", default=None, help="YAML dict merged into every variant's patch (e.g. a tiny smoke run)")
    args = p.parse_args(argv)

    plan = yaml.safe_load(Path(args.plan).read_text())
    defaults = plan.get("defaults") or {}
    # A variant's links, keys and ratios replace the defaults' (merging would keep links it must not have).
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
    prereq = Path(args.prereq).resolve() if args.prereq else None
    t0 = time.perf_counter()
    rows: list[dict] = []

    def task(v: dict) -> dict:
        if args.deadline is not None and time.perf_counter() - t0 > args.deadline:
            row = {"name": v["name"], "status": "skipped (deadline)", "seconds": None, "metrics": {}}
            rows.append(row)
            return row
        row = run_variant(v, out, prereq, args.timeout, args.threads)
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
