#!/bin/bash
# measure.sh NAME PORT OTHER_PID: wrk for 6 s (core 0) against PORT with the other gateway paused;
# prints NAME's req/s and its process CPU (utime+stime, clock ticks of 10 ms) per request in µs.
# NAME.rpid holds the pid of the ringgate serving PORT (started pinned to core 1).
m=$1; port=$2; other=$3; pid=$(cat "$m.rpid")
ticks() { python3 -c "print(sum(int(x) for x in open('/proc/$pid/stat').read().rsplit(')',1)[1].split()[11:13]))"; }
kill -STOP "$other"
t0=$(ticks)
r=$(taskset -c 0 wrk -t1 -c64 -d6s "http://127.0.0.1:$port/small" | awk '/Requests\/sec/ {print $2}')
t1=$(ticks)
kill -CONT "$other"
python3 -c "r=float('$r'); print('$m', r, 'req/s', round(($t1-$t0)*10000/(r*6),2), 'us/req')"
