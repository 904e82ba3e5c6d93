#!/usr/bin/env python3
"""Paired per-request latency: direct, nginx and ringgate build(s), one request at a time in turn.

oha at a fixed rate (run.sh, `AB_MODE=latency` in ab.py) compares whole runs of each target taken
one after another; on this shared machine runs of the same target spread by ~30 µs at p50, which
hides a difference of a few µs. `rtt` (rtt.c) instead sends one request to each target in turn on
one keep-alive connection each, with a gap before every request (so each gateway idles between
requests, as at a low fixed rate), and reports each target's percentiles and the median of its
per-request difference to the direct request of the same round. A slow spell hits all targets
alike and cancels out of the paired figure.

Pinned as run.sh pins: rtt and the upstream on core 0, each gateway alone on core 1 (one worker).
Each size runs RTT_REPS times; within a run the gateways' order rotates every round (direct always first: the
reference). Writes report.md and rtt.json to OUT_DIR (default loadtest/reports/rtt-<time>).

Usage: python3 loadtest/rtt.py [OUT_DIR]
  env: RTT_BINS=ringgate=target/release/ringgate (name=path,...)  RTT_SIZES=small,16k
       RTT_REPS=5  RTT_COUNT=20000 (rounds per target per rep)  RTT_GAP_US=200
       RTT_K=1 (requests sent at once per round, on as many connections: overlap)
       RTT_CONNS=RTT_K (connections per target, used in turn: how long each idles)
Needs gcc and nginx (loadtest/run.sh installs nginx). Loopback only; every process it starts is
stopped by its process group on exit.
"""
import json, os, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _bench():
    """The harness (imported on use: report.py renders `tables` without loading it, since its
    import reads and checks the run's environment)."""
    import bench  # noqa: E402 - sibling module
    return bench

SIZES = os.environ.get("RTT_SIZES", "small,16k").split(",")
REPS = int(os.environ.get("RTT_REPS", "5"))
COUNT = int(os.environ.get("RTT_COUNT", "20000"))
GAP_US = int(os.environ.get("RTT_GAP_US", "200"))
# Requests sent to a target at once per round (rtt.c reads RTT_K itself): 1 = one at a time.
CONC = int(os.environ.get("RTT_K", "1"))
# Connections per target, used in turn (rtt.c reads RTT_CONNS itself; default RTT_K).
CONNS = int(os.environ.get("RTT_CONNS", str(CONC)))
FIELDS = ("p50", "p90", "p99", "p999", "paired50")


def compile_rtt(run_dir):
    """Builds rtt.c into `run_dir`; returns the binary's path (gcc -O2)."""
    binp = os.path.join(run_dir, "rtt")
    subprocess.run(["gcc", "-O2", "-o", binp, os.path.join(HERE, "rtt.c")], check=True)
    return binp


def run_rtt(binp, size, ports, count):
    """One rtt run; returns {port: {field: µs}}. Raises RuntimeError when rtt fails."""
    # Bounded: `count` rounds of len(ports) requests (times CONC), each well under 10 ms here.
    limit = 60 + count * CONC * len(ports) * (GAP_US + 10_000) / 1e6
    B = _bench()
    r = subprocess.run(["taskset", "-c", str(B.CFG["gen_cpu"]), binp, f"/{size}", str(GAP_US),
                        str(count)] + [str(p) for p in ports],
                       capture_output=True, text=True, timeout=limit)
    if r.returncode != 0:
        raise RuntimeError(f"rtt failed ({r.returncode}): {r.stderr.strip()}")
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        out[int(parts[0])] = {k: float(v) for k, v in zip(parts[1::2], parts[2::2])}
    return out


def measure(binp, upport, gateways, sizes, reps, count):
    """`reps` rtt runs per size over direct (`upport`, always first: the reference) and the
    `gateways` (bench Targets; rtt.c rotates their order every round); one result row per run."""
    B = _bench()
    results = []
    for size in sizes:
        for rep in range(reps):
            got = run_rtt(binp, size, [upport] + [t.port for t in gateways], count)
            row = {"size": size, "rep": rep,
                   "targets": {"direct": got[upport], **{t.name: got[t.port] for t in gateways}}}
            results.append(row)
            B.log(f"paired /{size} rep {rep}: " + ", ".join(
                f"{n} p50 {v['p50']:.1f} +{v['paired50']:.1f}" for n, v in row["targets"].items()))
    return results


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def tables(results, names, sizes, heading="##"):
    """Markdown: per size, each target's percentiles and paired added latency (medians over reps,
    min–max), then each ringgate build minus nginx per rep."""
    lines = []
    gateways = [n for n in names if n != "direct"]
    for size in sizes:
        reps = [r for r in results if r["size"] == size]
        if not reps:
            continue
        lines += [f"{heading} /{size}", "",
                  "| target | p50 | p90 | p99 | p99.9 | paired (added) |", "|---|---|---|---|---|---|"]
        for n in names:
            cells = []
            for f in FIELDS:
                xs = [r["targets"][n][f] for r in reps if n in r["targets"]]
                cells.append("—" if (n == "direct" and f == "paired50") or not xs
                             else f"{med(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        if "nginx" in gateways:
            lines.append("")
            for n in gateways:
                if n == "nginx":
                    continue
                both = [r for r in reps if n in r["targets"] and "nginx" in r["targets"]]
                d = [r["targets"][n]["paired50"] - r["targets"]["nginx"]["paired50"] for r in both]
                d99 = [r["targets"][n]["p99"] - r["targets"]["nginx"]["p99"] for r in both]
                lines.append(f"- {n} − nginx, per rep: added {' '.join(f'{x:+.1f}' for x in d)} µs "
                             f"(median {med(d):+.1f}); p99 {' '.join(f'{x:+.1f}' for x in d99)} "
                             f"(median {med(d99):+.1f})")
        lines.append("")
    return lines


def describe(reps, count):
    """One sentence on how the runs were made (for report.md and run.sh's report)."""
    return (f"`loadtest/rtt.py`: {reps} reps per size, {count:,} rounds per target per rep, "
            + ("one request at a time" if CONC == 1 else f"{CONC} requests at once (`RTT_K={CONC}`)")
            + f" on {CONNS} connection(s) per target used in turn, the targets in turn (direct, then "
            f"the gateways in an order rotated every round), {GAP_US} µs before each request; rtt and the "
            "upstream on core 0, each gateway alone on core 1. *paired*: the median over requests of "
            "(gateway latency − the direct request's latency of the same round), i.e. the latency "
            "the gateway adds. All figures are medians over reps (min–max), µs.")


def report(results, names, bins, started):
    lines = [
        f"# Paired per-request latency ({time.strftime('%Y-%m-%d %H:%M', time.localtime(started))})",
        "",
        describe(REPS, COUNT) + f" Builds: {', '.join(f'{n} = `{p}`' for n, p in bins)}.",
        "",
    ]
    return "\n".join(lines + tables(results, names, SIZES))


def main():
    started = time.time()
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        HERE, "reports", "rtt-" + time.strftime("%Y%m%d-%H%M%S"))
    B = _bench()
    os.sched_setaffinity(0, {B.CFG["gen_cpu"]})
    run_dir = tempfile.mkdtemp(prefix="rtt-")
    os.chmod(run_dir, 0o755)
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    bins = B.builds_from_env("RTT_BINS", "ringgate=" + B.CFG["ringgate_bin"])
    binp = compile_rtt(run_dir)
    try:
        upport = B.free_port()
        B.start_upstream(run_dir, upport)
        targets = B.start_builds(run_dir, upport, bins)
        names = ["direct"] + [t.name for t in targets]
        try:
            results = measure(binp, upport, targets, SIZES, REPS, COUNT)
        except (RuntimeError, subprocess.SubprocessError) as e:
            sys.exit(str(e))
    finally:
        B.PROCS.stop_all()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "rtt.json"), "w") as f:
        json.dump({"count": COUNT, "gap_us": GAP_US, "k": CONC, "conns": CONNS, "reps": REPS,
                   "builds": bins,
                   "results": results}, f, indent=1)
    text = report(results, names, bins, started)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\nwritten to {out_dir}")


if __name__ == "__main__":
    main()
