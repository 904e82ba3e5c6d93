-- wrk script: prints one machine-readable line "WRKJSON {...}" at the end of a run
-- with request/error counts and a dense latency percentile list (microseconds).
-- Used by bench.py; harmless for manual use: wrk -s loadtest/wrk_report.lua URL

local pcts = {0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96.875, 97.5,
              98.4375, 99, 99.21875, 99.5, 99.609375, 99.75, 99.8046875, 99.9,
              99.9375, 99.96875, 99.99, 99.999, 100}

done = function(summary, latency, requests)
  local e = summary.errors
  local out = {}
  out[#out + 1] = string.format('"requests":%d,"duration_us":%d,"bytes":%d',
    summary.requests, summary.duration, summary.bytes)
  out[#out + 1] = string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
    e.connect, e.read, e.write, e.status, e.timeout)
  out[#out + 1] = string.format('"lat_mean_us":%.3f,"lat_stdev_us":%.3f,"lat_min_us":%d,"lat_max_us":%d',
    latency.mean, latency.stdev, latency.min, latency.max)
  local p = {}
  for _, q in ipairs(pcts) do
    local v
    if q == 0 then v = latency.min elseif q == 100 then v = latency.max else v = latency:percentile(q) end
    p[#p + 1] = string.format('"%s":%d', tostring(q), v)
  end
  out[#out + 1] = '"lat_pct_us":{' .. table.concat(p, ",") .. '}'
  io.write("WRKJSON {" .. table.concat(out, ",") .. "}\n")
end
