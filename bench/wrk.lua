-- wrk script for optic's bench: rotates prebuilt request bodies, counts answers by status, prints JSON.
--
--   wrk -t1 -c16 -d10s -s bench/wrk.lua URL -- BODY_DIR CONTENT_TYPE [DELAY_MS] [HEADER]
--
-- BODY_DIR holds 0.body, 1.body, ... (each a whole request body, built once by bench/wrk.py). Each
-- connection starts on a different body. DELAY_MS (optional) makes every connection pause that long
-- between requests (the soak's pacing). HEADER (optional), "Name: value", is one more request header. done() prints one JSON line, prefixed "WRK_JSON ", with latency
-- percentiles in microseconds and status counts over all threads.

local threads = {}
local bodies = {}
local content_type
local delay_ms = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  local dir = args[1]
  content_type = args[2]
  delay_ms = tonumber(args[3] or "0")
  local i = 0
  while true do
    local handle = io.open(dir .. "/" .. i .. ".body", "rb")
    if handle == nil then break end
    bodies[#bodies + 1] = handle:read("*a")
    handle:close()
    i = i + 1
  end
  if #bodies == 0 then error("no bodies in " .. dir) end
  cursor = (id * 7) % #bodies
  counts = {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = content_type
  local extra = args[4] or ""
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

function request()
  cursor = cursor % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[cursor])
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts") or {}) do
      statuses[status] = (statuses[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(statuses) do
    parts[#parts + 1] = string.format('"%s":%d', status, n)
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"statuses":{%s},' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes, table.concat(parts, ","),
    errors.connect, errors.read, errors.write, errors.timeout, errors.status,
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
