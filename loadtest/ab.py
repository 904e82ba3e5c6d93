#!/usr/bin/env python3
"""Interleaved A/B of ringgate builds, with nginx in the same run as the yardstick.

Every build and nginx run one after another at each point, in an order rotated per round, pinned as
run.sh pins (wrk and the upstream on core 0, the gateway alone on core 1); gateway-core CPU per
request from /proc/stat. Prints, per point, each target's median µs/request (min-max), and each
build's median per-round ratio to the first build, so a change's cost is read against the noise
of the same run (nginx's own ratio to itself across rounds shows it).

Usage: AB_BINS=base=/tmp/rg-old,new=target/release/ringgate python3 loadtest/ab.py
       (env: AB_ROUNDS=5 AB_DUR=6 AB_POINTS=small:64,small:256,16k:64;
        AB_MODE=latency: oha at run.sh's fixed rate on the first point's size, added p50/p99)
Needs wrk and nginx (loadtest/run.sh installs them). Raw runs go to a temp directory.
"""
import json, os, statistics, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402

ROUNDS = int(os.environ.get("AB_ROUNDS", "5"))
DUR = float(os.environ.get("AB_DUR", "6"))
POINTS = [(p.split(":")[0], int(p.split(":")[1]))
          for p in os.environ.get("AB_POINTS", "small:64,small:256,16k:64").split(",")]


def builds():
    out = B.builds_from_env("AB_BINS")
    if not out:
        sys.exit(__doc__)
    return out


def main():
    os.sched_setaffinity(0, {B.CFG["gen_cpu"]})
    run_dir = tempfile.mkdtemp(prefix="ab-")
    os.chmod(run_dir, 0o755)
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    bins = builds()
    try:
        upport = B.free_port()
        B.start_upstream(run_dir, upport)
        targets = B.start_builds(run_dir, upport, bins)
        if os.environ.get("AB_MODE") == "latency":
            # oha at run.sh's fixed rate, direct first in each round, the rest rotating: the
            # floor experiment's latency mode, on these binaries.
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor"))
            import floor  # noqa: E402
            floor.ROUNDS, floor.POINTS = ROUNDS, POINTS
            return floor.latency(targets, upport, run_dir)
        runs = B.interleaved_wrk(targets, POINTS, ROUNDS, DUR, run_dir)
        with open(os.path.join(run_dir, "ab.json"), "w") as f:
            json.dump(runs, f, indent=1)
        names = [t.name for t in targets]
        base = bins[0][0]
        print(f"\nraw runs: {run_dir}/ab.json\n")
        print("| point | " + " | ".join(f"{n} µs/req" for n in names) + " | " +
              " | ".join(f"{n}/{base} (per round)" for n, _ in bins[1:]) + " |")
        print("|---" * (len(names) + len(bins)) + "|")
        for size, conns in POINTS:
            per = {n: [r["cpu_us_per_req"] for r in runs
                       if r["target"] == n and r["size"] == size and r["conns"] == conns] for n in names}
            cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in per.values()]
            ratios = []
            for n, _ in bins[1:]:
                rs = [a / b for a, b in zip(per[n], per[base])]
                ratios.append(f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})")
            print(f"| /{size} c={conns} | " + " | ".join(cells + ratios) + " |")
    finally:
        B.PROCS.stop_all()


if __name__ == "__main__":
    main()
