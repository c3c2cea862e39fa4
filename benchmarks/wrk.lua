-- The benchmark's wrk script: paths from a file, a bound on the number of requests, an optional
-- body read from a file, and a JSON summary on stdout (a line starting with BENCH).
-- Arguments after "--": PATHS_FILE MAX_REQUESTS [BODY_FILE]

local paths = {}
local issued = 0
local max_requests = 0
local fixed = nil
exhausted = 0 -- global: done() reads it through thread:get

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      paths[#paths + 1] = line
    end
  end
  max_requests = tonumber(args[2])
  if args[3] ~= nil and args[3] ~= "" then
    local file = assert(io.open(args[3], "rb"))
    wrk.method = "POST"
    wrk.body = file:read("*a")
    file:close()
    wrk.headers["Content-Type"] = "application/octet-stream"
    -- Formatted once: concatenating a 20 MB body per request would make wrk the bottleneck.
    fixed = wrk.format("POST", paths[1])
  end
end

function request()
  issued = issued + 1
  if issued > max_requests then
    exhausted = 1
    wrk.thread:stop()
  end
  if fixed ~= nil then
    return fixed
  end
  return wrk.format("GET", paths[((issued - 1) % #paths) + 1])
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local ran_out = 0
  for _, thread in ipairs(threads) do
    ran_out = ran_out + (thread:get("exhausted") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"exhausted": %d}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean, ran_out))
end
