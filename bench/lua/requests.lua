-- wrk script for the tessera benchmark (bench/wrk.py writes the request file).
--
-- BENCH_REQUESTS names a file with one request per line: header lines joined
-- by a TAB ("Name: value<TAB>Name: value"), or "-" for no extra header. The
-- requests are formatted once in init() and then sent in turn, so a request
-- costs wrk a table lookup whatever it carries (a bearer token that changes
-- on every request costs the same as a fixed one). Each thread starts at
-- its own offset so two threads never send the same line at the same time.
--
-- BENCH_COUNT=1 adds a response() callback that counts status classes,
-- X-Served-By and whether X-Auth-Method names a method (an authenticated
-- answer); it makes wrk parse every response's headers, so it is only used
-- where those counts are the point (the demonstration rows).
--
-- done() prints one line "BENCH_JSON {...}" that bench/wrk.py parses.

local requests = {}
local count_responses = os.getenv("BENCH_COUNT") == "1"
local threads = {}
local next_index = 1

-- per-thread counters (read in done() through thread:get)
ok = 0
unauthenticated = 0
server_errors = 0
other = 0
served_by = {}

function setup(thread)
   thread:set("thread_number", #threads)
   table.insert(threads, thread)
end

local function split_headers(line)
   local headers = {}
   if line == "-" then
      return headers
   end
   for field in string.gmatch(line, "[^\t]+") do
      local name, value = string.match(field, "^([^:]+):%s*(.*)$")
      if name then
         headers[name] = value
      end
   end
   return headers
end

function init(args)
   local path = os.getenv("BENCH_REQUESTS")
   local method = os.getenv("BENCH_METHOD") or "GET"
   local target = os.getenv("BENCH_PATH") or "/"
   local body = os.getenv("BENCH_BODY")
   local file = assert(io.open(path, "r"))
   for line in file:lines() do
      if #line > 0 then
         table.insert(requests, wrk.format(method, target, split_headers(line), body))
      end
   end
   file:close()
   assert(#requests > 0, "no requests in " .. path)
   local number = thread_number or 0
   local threads_total = tonumber(os.getenv("BENCH_THREADS") or "1")
   next_index = math.floor(number * #requests / threads_total) % #requests + 1
end

function request()
   local current = requests[next_index]
   next_index = next_index + 1
   if next_index > #requests then
      next_index = 1
   end
   return current
end

if count_responses then
   function response(status, headers, body)
      local method = headers["X-Auth-Method"]
      if status >= 200 and status < 300 and method ~= nil and method ~= "none" then
         ok = ok + 1
      elseif status == 401 then
         unauthenticated = unauthenticated + 1
      elseif status >= 500 then
         server_errors = server_errors + 1
      else
         other = other + 1
      end
      local replica = headers["X-Served-By"] or "-"
      served_by[replica] = (served_by[replica] or 0) + 1
   end
end

function done(summary, latency, requests_stats)
   local totals = {ok = 0, unauthenticated = 0, server_errors = 0, other = 0}
   local replicas = {}
   for _, thread in ipairs(threads) do
      for key, _ in pairs(totals) do
         totals[key] = totals[key] + (thread:get(key) or 0)
      end
      local counts = thread:get("served_by") or {}
      for replica, n in pairs(counts) do
         replicas[replica] = (replicas[replica] or 0) + n
      end
   end
   local parts = {}
   for replica, n in pairs(replicas) do
      table.insert(parts, string.format('"%s": %d', replica, n))
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "mean": %.1f, "max": %d}, '
         .. '"counted": %s, "counts": {"ok": %d, "unauthenticated": %d, "server_errors": %d, '
         .. '"other": %d}, "served_by": {%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max,
      tostring(count_responses), totals.ok, totals.unauthenticated, totals.server_errors,
      totals.other, table.concat(parts, ", ")))
end
