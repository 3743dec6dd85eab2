"""Run every benchmark with the acceptance settings, print the tables and write ``results/<device>.json``.

Each benchmark runs in its own Python process (clean memory figures, no state shared between them)
with ``--json`` to a temporary file; this script gathers those payloads into one file,
``benchmarks/results/<device>.json`` (``cpu`` or ``cuda-<gpu name>``), and prints every table and the
acceptance checks. Run it on a quiet machine: other jobs make the timings meaningless.

    python benchmarks/run_all.py                       # all, on CUDA when available
    python benchmarks/run_all.py --device cpu --threads 2
    python benchmarks/run_all.py --only bench_peers,bench_adv2_cost   # a script's cases (both sizes)
    python benchmarks/run_all.py --only bench_peers,bench_adv2_cost --runs 3   # acceptance: median of 3
    python benchmarks/run_all.py --quick               # checks the scripts run (writes to a temp folder)

With ``--runs N`` every case runs N times, the cases interleaved (case 1, case 2, ..., case 1, ...), so a
drift of the machine reaches every case alike; the JSON keeps every run's payload and the acceptance
summary holds the median of each check's N values against the median of its bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from aid.cpu_allocator import keep_freed_memory

HERE = Path(__file__).resolve().parent
#: Case -> (script, extra arguments of its acceptance run); the scripts' defaults are the embedded
#: classifier (resnet10t, 32 px); the ``@resnet18-64`` cases time a torchvision-sized model at 64 px.
R18 = ["--model", "resnet18", "--image-size", "64", "--num-classes", "10"]   # batch: the scripts' 32
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "bench_peers": ("bench_peers", []),
    "bench_peers@resnet18-64": ("bench_peers", R18),
    "bench_adv2_cost": ("bench_adv2_cost", ["--check-call", "--families", "grad,grad_fused,cam,rts,mask"]),
    "bench_adv2_cost@resnet18-64": ("bench_adv2_cost", [*R18, "--families", "grad,grad_fused,cam"]),
    "bench_batch_scaling": ("bench_batch_scaling", []),
    "bench_aid_epoch": ("bench_aid_epoch", []),
    "bench_switches": ("bench_switches", []),
    "bench_paper_scale": ("bench_paper_scale", []),
}


def select(only: str | None) -> list[str]:
    """Cases named in ``--only``: a script name selects all its cases, a case name one."""
    if not only:
        return list(BENCHMARKS)
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BENCHMARKS and n not in {s for s, _ in BENCHMARKS.values()}]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return [c for c, (script, _) in BENCHMARKS.items() if c in wanted or script in wanted]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every benchmark")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--out", default=None, help="result file (default benchmarks/results/<device>.json)")
    p.add_argument("--quick", action="store_true", help="pass --quick to every script (numbers mean nothing)")
    p.add_argument("--runs", type=int, default=1, help="run every case this many times (acceptance: median)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be >= 1, got {args.runs}")

    device = common.resolve_device(args.device)
    keep_freed_memory()  # as every script does (common.finish_args), so that env.malloc says what they ran under
    names = select(args.only)
    if args.out:
        out = Path(args.out)
    elif args.quick:  # quick numbers never land in results/
        out = Path(tempfile.gettempdir()) / f"aid-bench-{common.device_slug(device)}.quick.json"
    else:
        out = HERE / "results" / f"{common.device_slug(device)}.json"

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="offline", WANDB_SILENT="true")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for name in names:
                if name in failed:
                    continue
                script, extra = BENCHMARKS[name]
                part = Path(tmp) / f"{name.replace('@', '_')}.{r}.json"
                cmd = [sys.executable, str(HERE / f"{script}.py"), "--device", str(device), "--json", str(part),
                       *extra]
                if args.threads is not None:
                    cmd += ["--threads", str(args.threads)]
                if args.quick:
                    cmd.append("--quick")
                tag = f" (run {r + 1} of {args.runs})" if args.runs > 1 else ""
                print(f"\n## {name}{tag}: {' '.join(cmd[1:])}", flush=True)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, cwd=common.ROOT)
                if proc.returncode != 0 or not part.exists():
                    failed.append(name)
                    print(f"!! {name} failed (exit code {proc.returncode})", flush=True)
                    continue
                payload = json.loads(part.read_text())
                payload["wall_s"] = round(time.perf_counter() - t0, 1)
                runs[name].append(payload)
    # One run: its payload. Several: the last run's tables, the median checks and every run's payload.
    payloads = {}
    for name, rs in runs.items():
        if name in failed or not rs:
            continue
        if len(rs) == 1:
            payloads[name] = rs[0]
            continue
        payloads[name] = {
            "benchmark": rs[-1]["benchmark"], "settings": rs[-1]["settings"], "tables": rs[-1]["tables"],
            "checks": common.median_checks([r["checks"] for r in rs]),
            "wall_s": round(sum(r["wall_s"] for r in rs), 1), "runs": rs,
        }

    result = {
        "device": common.device_slug(device),
        "quick": args.quick,
        "env": common.environment(device),
        "runs": args.runs,
        "failed": failed,
        "benchmarks": payloads,
    }
    common.write_json(out, result)

    print("\n# Summary\n")
    for name, payload in payloads.items():
        last = f", tables of the last of {len(payload['runs'])} runs" if "runs" in payload else ""
        print(f"\n## {name} ({payload['wall_s']} s{last})")
        for t in payload["tables"]:
            common.print_table(t)
    checks = [{**c, "check": f"{name}: {c['check']}"} for name, pl in payloads.items() for c in pl["checks"]]
    common.print_checks(checks)
    if args.quick:
        print("\n(--quick: these numbers mean nothing)")
    print(f"\nwrote {out}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
