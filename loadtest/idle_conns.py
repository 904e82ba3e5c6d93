#!/usr/bin/env python3
"""Open N idle HTTP/1.1 keep-alive connections to HOST:PORT and hold them.

Each connection sends one `GET PATH` request and reads the full response, then stays open
(idle, keep-alive). When all are open the script prints one JSON line
  {"phase": "ready", "opened": .., "ok": .., "failed": .., "errors": {..}, "elapsed_s": ..}
and holds until it reads a line on stdin (or --hold seconds pass). It then prints
  {"phase": "done", "still_open": ..}
(connections the server has not closed meanwhile) and closes everything.

Bounded: --connect-timeout per connection, --open-timeout for the whole opening phase,
--hold for the holding phase. stdlib only; loopback only. --tls: over TLS (certificate not
checked: loopback test servers are self-signed), to measure what an idle TLS connection costs.
"""
import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def one(host, port, path, timeout, sem, conns, errors, tls=None):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), timeout)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return False
        try:
            req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: ringgate-idle\r\n\r\n"
            writer.write(req.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(head.split(b" ", 2)[1])
            length = None
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if length is None:
                raise ValueError("no content-length")
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout)
            if status != 200:
                raise ValueError(f"status {status}")
        except Exception as e:  # noqa: BLE001
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            writer.close()
            return False
        conns.append((reader, writer))
        return True


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/small")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--open-timeout", type=float, default=120.0)
    ap.add_argument("--hold", type=float, default=120.0)
    ap.add_argument("--tls", action="store_true", help="connect over TLS (certificate not verified)")
    a = ap.parse_args()
    tls = None
    if a.tls:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback only")
    raise_nofile(a.n + 1024)

    conns, errors = [], {}
    sem = asyncio.Semaphore(a.parallel)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(one(a.host, a.port, a.path, a.connect_timeout, sem, conns, errors, tls))
             for _ in range(a.n)]
    done, pending = await asyncio.wait(tasks, timeout=a.open_timeout)
    for t in pending:
        t.cancel()
    if pending:
        errors["open_timeout"] = len(pending)
    ok = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
    print(json.dumps({"phase": "ready", "opened": len(conns), "ok": ok, "failed": a.n - ok,
                      "errors": errors, "elapsed_s": round(time.monotonic() - t0, 3)}), flush=True)

    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), a.hold)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0)  # let pending EOFs be processed
    still = sum(1 for r, _ in conns if not r.at_eof())
    print(json.dumps({"phase": "done", "still_open": still}), flush=True)
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.05)
    sys.stdout.flush()
    # exit hard: the stdin reader thread may still be blocked; the kernel closes the sockets
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
