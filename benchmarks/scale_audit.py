"""A whole ``audit run`` on N synthetic 28×28 grey images: time and peak memory per stage.

    python benchmarks/scale_audit.py [--n 1000000] [--dir /tmp/audit-scale] [--threads 1]

Writes (once) ``DIR/synthetic-N.npz``, uncompressed, with :func:`scale.write_synthetic` (10 classes,
each a fixed random template plus noise; the last N/6 rows are the test split), then runs the real CLI,
``python -m audit run --dataset npz:DIR/synthetic-N.npz --out DIR/run-N --threads T`` plus
:data:`RECIPE` (or ``--recipe``), in a subprocess with ``OMP_NUM_THREADS=T``. Every ``--interval``
seconds (0.5) it reads

* the subprocess's memory: ``VmRSS`` of it and of every descendant, from ``/proc/PID/status``, and
  its ``VmHWM`` (the kernel's own peak, which catches a peak between two samples);
* the machine's swap: ``SwapTotal - SwapFree`` from ``/proc/meminfo``, and ``pswpin`` / ``pswpout``
  (pages swapped in / out since boot) from ``/proc/vmstat``, and ``MemAvailable``;
* where the run is: the stages ``manifest.json`` marks ``running`` (the pipeline rewrites it as a
  training stage starts and ends). Phases the manifest does not mark are named here: ``setup`` (imports,
  loading, fingerprint, canaries, the time forecast: before the first manifest), ``between_stages``
  (health checks, cache loads), ``issues`` (after ``influence`` ends until the log says
  ``issues: done``: the issues stage does not rewrite the manifest as it starts), ``tables_write``
  (building the tables and writing the parquet files, until the process ends).

Each phase's peak RSS is the largest sample in it, raised to ``VmHWM`` when the kernel's peak rose
during the phase. Prints a Markdown table and writes ``benchmarks/results/scale_audit_N.json``
(``stages.<name>``: ``seconds`` from the manifest, ``wall_s`` and ``peak_rss_mb`` sampled here).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Light enough for 1M images on one thread, with models that pass the run's own health checks on this
# data: the MLP (the cheapest architecture; this run measures the pipeline's time and memory per stage,
# not a recipe's detection), two epochs of each model, two cross-validation folds, no augmented model,
# a 5-step evaluation attack (default 20), and the radius given (no calibration stage). On 30,000 of
# these images: at eps 0.1 the natural MLP was already 0.94 accurate under attack, so PGD-AT failed the
# robust check (it cannot beat that by 0.1) and was retrained twice; at 0.2 and 0.25 PGD-AT did not
# learn in two epochs (retried); at 0.15 every check passed at the first training.
RECIPE = ("--models natural,pgd --arch mlp --epochs 2 --robust-epochs 2 --cv-epochs 2 --folds 2 "
          "--eps 0.15 --eval-steps 5 --augment none")


def _scale_module():
    spec = importlib.util.spec_from_file_location("scale_bench", HERE / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _kv(path: str) -> dict[str, int]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.replace(":", " ").split()
                if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
                    out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def machine_memory() -> dict:
    """Swap and memory now, in MB (swap counters in pages)."""
    mi, vm = _kv("/proc/meminfo"), _kv("/proc/vmstat")
    return {"swap_total_mb": round(mi.get("SwapTotal", 0) / 1024, 1),
            "swap_used_mb": round((mi.get("SwapTotal", 0) - mi.get("SwapFree", 0)) / 1024, 1),
            "mem_total_mb": round(mi.get("MemTotal", 0) / 1024, 1),
            "mem_available_mb": round(mi.get("MemAvailable", 0) / 1024, 1),
            "pswpin": vm.get("pswpin", 0), "pswpout": vm.get("pswpout", 0)}


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (from ``/proc/*/stat``)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def process_memory(pid: int) -> tuple[float, float, float]:
    """(RSS of ``pid`` and its descendants, ``pid``'s VmHWM, swap of them all), MB."""
    st = _kv(f"/proc/{pid}/status")
    rss, swap = st.get("VmRSS", 0), st.get("VmSwap", 0)
    for c in descendants(pid):
        cs = _kv(f"/proc/{c}/status")
        rss, swap = rss + cs.get("VmRSS", 0), swap + cs.get("VmSwap", 0)
    return rss / 1024, st.get("VmHWM", 0) / 1024, swap / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (``/proc/PID/stat``)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def phase_of(man: dict | None, log: str, previous: str) -> str:
    if man is None:
        return previous if previous != "setup" else "setup"
    stages = man.get("stages") or {}
    running = [n for n, s in stages.items() if isinstance(s, dict) and s.get("status") == "running"]
    if running:
        return "+".join(running)
    if man.get("status") == "complete":
        return "tables_write"
    if "issues: done" in log or "issues: up to date" in log:
        return "tables_write"
    if stages.get("influence", {}).get("status") in ("done", "cached"):
        return "issues"
    return "between_stages"


def run(args) -> dict:
    scale = _scale_module()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = scale.write_synthetic(args.n, d / f"synthetic-{args.n}.npz")
    gen_s = time.perf_counter() - t0
    out = Path(args.out) if args.out else d / f"run-{args.n}"
    if out.exists() and not args.resume:
        import shutil

        shutil.rmtree(out)
    recipe = shlex.split(args.recipe)
    cmd = [sys.executable, "-m", "audit", "run", "--dataset", f"npz:{data}", "--out", str(out),
           "--threads", str(args.threads), *recipe]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # this checkout
    log_path = out.parent / f"{out.name}.log"
    before = machine_memory()
    load_before = os.getloadavg()
    print(f"$ OMP_NUM_THREADS={args.threads} {' '.join(shlex.quote(c) for c in cmd[1:])}", file=sys.stderr)
    samples, phases, order = [], {}, []
    log_text, log_pos = "", 0
    max_swap_used, min_avail = before["swap_used_mb"], before["mem_available_mb"]
    with open(log_path, "wb") as logf:
        t_start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        phase, hwm_seen, cpu_seen = "setup", 0.0, 0.0
        while True:
            rc = proc.poll()
            now = time.perf_counter() - t_start
            if rc is None:
                rss, hwm, pswap = process_memory(proc.pid)
                cpu = cpu_seconds(proc.pid)
                with open(log_path, "rb") as f:
                    f.seek(log_pos)
                    chunk = f.read()
                log_pos += len(chunk)
                # only the [audit] lines matter; progress bars are dropped
                log_text += "\n".join(l for l in chunk.decode(errors="replace").replace("\r", "\n").split("\n")
                                      if l.startswith("[audit]")) + "\n"
                phase = phase_of(read_manifest(out / "manifest.json"), log_text, phase)
                mem = machine_memory()
                max_swap_used = max(max_swap_used, mem["swap_used_mb"])
                min_avail = min(min_avail, mem["mem_available_mb"])
                p = phases.get(phase)
                if p is None:
                    p = phases[phase] = {"first_s": now, "last_s": now, "peak_rss_mb": 0.0, "hwm_at_start_mb": hwm_seen,
                                         "samples": 0, "cpu_s": 0.0}
                    order.append(phase)
                p["last_s"], p["samples"] = now, p["samples"] + 1
                p["cpu_s"] += cpu - cpu_seen  # CPU time since the last sample goes to the phase seen now
                cpu_seen = cpu
                p["peak_rss_mb"] = max(p["peak_rss_mb"], rss)
                if hwm > p["hwm_at_start_mb"]:  # the kernel's peak rose in this phase
                    p["peak_rss_mb"] = max(p["peak_rss_mb"], hwm)
                hwm_seen = max(hwm_seen, hwm)
                samples.append([round(now, 1), phase, round(rss, 1), round(pswap, 1), mem["swap_used_mb"],
                                mem["mem_available_mb"], round(os.getloadavg()[0], 2), round(cpu, 1)])
                if args.timeout and now > args.timeout:
                    proc.kill()
                    proc.wait()
                    raise SystemExit(f"N={args.n}: over --timeout {args.timeout} s; killed (log {log_path})")
                time.sleep(args.interval)
                continue
            break
        wall = time.perf_counter() - t_start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = machine_memory()
    tail = log_path.read_text(errors="replace")[-3000:]
    if rc:
        raise SystemExit(f"N={args.n}: audit run exited {rc}:\n{tail}")
    man = read_manifest(out / "manifest.json") or {}
    stages = {}
    for name in order:
        p = phases[name]
        st = (man.get("stages") or {}).get(name, {})
        stages[name] = {"status": st.get("status", "(not a manifest stage)"), "seconds": st.get("seconds"),
                        "wall_s": round(p["last_s"] - p["first_s"] + args.interval, 1), "cpu_s": round(p["cpu_s"], 1),
                        "peak_rss_mb": round(p["peak_rss_mb"], 1), "samples": p["samples"]}
    for name, st in (man.get("stages") or {}).items():  # stages too short to be sampled
        if name not in stages:
            stages[name] = {"status": st.get("status"), "seconds": st.get("seconds"), "wall_s": None,
                            "cpu_s": None, "peak_rss_mb": None, "samples": 0}
    files = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.glob("*")) if p.is_file()}
    metrics = man.get("metrics", {})
    res = {
        "n": args.n, "n_train": man.get("dataset", {}).get("num_train"), "n_test": man.get("dataset", {}).get("num_test"),
        "command": f"OMP_NUM_THREADS={args.threads} python -m audit run --dataset npz:{data} --out {out} "
                   f"--threads {args.threads} {args.recipe}",
        "recipe": args.recipe, "threads": args.threads, "interval_s": args.interval,
        "generate_s": round(gen_s, 1), "wall_s": round(wall, 1),
        "manifest_wall_seconds": metrics.get("wall_seconds"),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(max([s[2] for s in samples] + [p["peak_rss_mb"] for p in phases.values()]), 1),
        "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),  # the kernel's peak of the largest child
        "stages": stages,
        "machine": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                    "load_avg_1min_during_mean": round(sum(x[6] for x in samples) / max(1, len(samples)), 2),
                    "load_avg_1min_during_max": max((x[6] for x in samples), default=None),
                    "mem_total_mb": before["mem_total_mb"], "swap_total_mb": before["swap_total_mb"],
                    "mem_available_before_mb": before["mem_available_mb"], "mem_available_min_mb": min_avail},
        "swap": {"used_before_mb": before["swap_used_mb"], "used_after_mb": after["swap_used_mb"],
                 "used_max_mb": max_swap_used, "pswpin_delta": after["pswpin"] - before["pswpin"],
                 "pswpout_delta": after["pswpout"] - before["pswpout"],
                 "process_swap_max_mb": max((s[3] for s in samples), default=0.0)},
        "outputs_mb": files,
        "status": man.get("status"),
        "health_ok": (man.get("health") or {}).get("ok"),
        "health_failed": (man.get("health") or {}).get("failed"),
        "neighbors": man.get("neighbors"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None},
        "samples_columns": ["t_s", "phase", "rss_mb", "process_swap_mb", "swap_used_mb", "mem_available_mb",
                            "load_avg_1min", "cpu_s"],
        "samples": samples[::max(1, len(samples) // 2000)],
    }
    return res


def table(res: dict) -> str:
    rows = ["| stage | status | seconds (manifest) | wall s (sampled) | CPU s | peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, s in res["stages"].items():
        rows.append(f"| {name} | {s['status']} | {s['seconds'] if s['seconds'] is not None else '–'} "
                    f"| {s['wall_s'] if s['wall_s'] is not None else '–'} | {s['cpu_s'] if s['cpu_s'] is not None else '–'} "
                    f"| {format(s['peak_rss_mb'], ',.0f') if s['peak_rss_mb'] is not None else '–'} |")
    sw = res["swap"]
    rows.append(f"| whole run | {res['status']} | {res['manifest_wall_seconds']} | {res['wall_s']} | {res['cpu_s']} "
                f"| {res['peak_rss_mb']:,.0f} |")
    rows.append("")
    rows.append(f"N = {res['n']:,}; swap total {res['machine']['swap_total_mb']} MB, used max {sw['used_max_mb']} MB, "
                f"pswpin +{sw['pswpin_delta']}, pswpout +{sw['pswpout_delta']}; MemAvailable min "
                f"{res['machine']['mem_available_min_mb']:,.0f} MB; 1-min load average during the run: mean "
                f"{res['machine']['load_avg_1min_during_mean']}, max {res['machine']['load_avg_1min_during_max']}; before "
                f"{res['machine']['load_avg_before']}, after {res['machine']['load_avg_after']}")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="images (default 1,000,000)")
    ap.add_argument("--dir", default="/tmp/audit-scale", help="where the .npz, the run directory and its log go")
    ap.add_argument("--out", default=None, help="run directory (default DIR/run-N; removed first unless --resume)")
    ap.add_argument("--resume", action="store_true", help="keep an existing run directory (cached stages are reused)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipe", default=RECIPE, help=f"audit run options (default: {RECIPE})")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--timeout", type=float, default=0, help="kill the run after this many seconds (0: never)")
    ap.add_argument("--json", default=None, help="where the JSON goes (default benchmarks/results/scale_audit_N.json)")
    args = ap.parse_args()
    res = run(args)
    path = Path(args.json) if args.json else HERE / "results" / f"scale_audit_{args.n}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
