-- wrk script of benchmarks/bench_serving.py: POST /invocations at a fixed rate, a random customer's body each.
--
-- Read from the environment (bench_serving.py sets them):
--   BENCH_WRK_RATE        requests per second to offer
--   BENCH_WRK_BODIES      a file of request bodies, one JSON document a line
--   BENCH_WRK_API_KEY     sent as X-API-Key (optional)
--   BENCH_WRK_SEED        seed of the body draws
--   BENCH_WRK_SEND_S      seconds from the first request during which requests are sent (wrk's -d less a
--                         grace period, so that what was sent is answered before wrk stops)
--
-- Pacing: wrk asks delay() before every request of every connection, and all connections of a thread
-- share this Lua state without saying which connection asks. So the thread keeps one timetable: slot k
-- is due at start + k / rate, and each delay() takes the next slot and waits until it is due. With C
-- connections each one waits about C / rate between its requests, less the time its last answer took
-- (the response time is subtracted), so the offered rate holds as long as a connection is free when a
-- slot comes. A slot taken after it was due is sent at once; more than LATE_MS late is counted (no
-- connection was free: the service had fallen behind, and wrk's latency, timed from the send, misses
-- that wait). Nothing is sent after the sending window, not even slots still owed by a service that
-- fell behind, so what was sent is answered (and counted) before wrk stops.
--
-- done() prints one line, WRK_RESULT {json}: latencies in microseconds from wrk's histogram.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_wrk_timespec;
int clock_gettime(int clock_id, bench_wrk_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local LATE_MS = 5.0
local timespec = ffi.new("bench_wrk_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) * 1000.0 + tonumber(timespec.tv_nsec) / 1e6
end

local interval_ms = 1000.0 / tonumber(os.getenv("BENCH_WRK_RATE") or "100")
local send_ms = 1000.0 * tonumber(os.getenv("BENCH_WRK_SEND_S") or "1e9")
local requests = {}
local next_due, stop_at = nil, nil

-- per thread, read by done() through thread:get()
sent, ok, non200, late, first_ms, last_ms = 0, 0, 0, 0, 0, 0

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   local key = os.getenv("BENCH_WRK_API_KEY")
   if key and key ~= "" then
      headers["X-API-Key"] = key
   end
   for line in io.lines(os.getenv("BENCH_WRK_BODIES")) do
      requests[#requests + 1] = wrk.format("POST", wrk.path, headers, line)
   end
   math.randomseed(tonumber(os.getenv("BENCH_WRK_SEED") or "1"))
end

function delay()
   local now = now_ms()
   if not next_due then
      next_due, first_ms, stop_at = now, now, now + send_ms
   end
   local due = next_due
   if due >= stop_at or now >= stop_at then
      return 3600000 -- past the sending window (even with slots still owed): idle until wrk stops
   end
   next_due = due + interval_ms
   local wait = due - now
   if wait <= 0 then
      if -wait > LATE_MS then
         late = late + 1
      end
      return 0
   end
   return math.floor(wait + 0.5) -- wrk's timers count whole milliseconds
end

function request()
   if next_due then -- wrk also calls request() once before the run, to check the request parses
      sent = sent + 1
   end
   return requests[math.random(#requests)]
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      non200 = non200 + 1
   end
   last_ms = now_ms()
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, _requests)
   local total = { sent = 0, ok = 0, non200 = 0, late = 0 }
   local first, last = nil, 0
   for _, thread in ipairs(threads) do
      for name, _ in pairs(total) do
         total[name] = total[name] + thread:get(name)
      end
      local started = thread:get("first_ms")
      if started > 0 and (not first or started < first) then
         first = started
      end
      last = math.max(last, thread:get("last_ms"))
   end
   local window_s = (first and last > first) and (last - first) / 1000.0 or 0
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"responses": %d, "duration_s": %.6f, "window_s": %.6f, "sent": %d, "ok": %d, ' ..
      '"non200": %d, "late": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, ' ..
      '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration / 1e6, window_s, total.sent, total.ok, total.non200, total.late,
      e.connect, e.read, e.write, e.timeout, latency:percentile(50.0), latency:percentile(99.0),
      latency:percentile(99.9), latency.max))
end
