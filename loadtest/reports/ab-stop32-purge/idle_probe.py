"""Ad-hoc: RSS per idle connection over time after 10k connections open (ringgate only)."""
import os, sys, time, json, subprocess, tempfile
sys.path.insert(0, "/work/main/loadtest")
import bench
from bench import *
bin_ = sys.argv[1]
bench.CFG["ringgate_bin"] = bin_
run_dir = tempfile.mkdtemp(prefix="idle-"); os.chmod(run_dir, 0o755)
upport = free_port()
up = start_upstream(run_dir, upport)
try:
    port = free_port()
    p, err = start_ringgate(run_dir, port, upport, tag="idle")
    assert not err, err
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(300):
        c.request("GET", "/small"); c.getresponse().read()
    c.close(); time.sleep(0.5)
    base, _ = mem_kb(p, "VmRSS")
    ic = PROCS.start([sys.executable, "/work/main/loadtest/idle_conns.py", "--port", str(port), "-n", "10000",
                      "--open-timeout", "90", "--hold", "60"], os.path.join(run_dir, "ic.log"), cpu=0,
                     stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    line = bench._readline_timeout(ic, 120)
    ready = json.loads(line); print(ready); n = ready["opened"] or 1
    t0 = time.monotonic(); out = []
    while time.monotonic() - t0 < 13:
        r, _ = mem_kb(p, "VmRSS")
        out.append("%.1fs:%.2f" % (time.monotonic() - t0, (r - base) * 1024 / n / 1024))
        time.sleep(0.5)
    print("opened", n, "base", base, " ".join(out))
    ic.stdin.write(b"done\n"); ic.stdin.flush()
    PROCS.stop(ic); PROCS.stop(p)
finally:
    PROCS.stop(up)
