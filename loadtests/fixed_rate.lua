-- Fixed, paced load for `portcullis bench` (wrk):
--   wrk -t1 -c32 -d10s --latency -s loadtests/fixed_rate.lua URL -- RATE CONNECTIONS
--
-- Each connection waits a random gap before each request; the gaps are
-- exponential with mean CONNECTIONS / RATE seconds, so the connections together
-- send about RATE requests/s as a Poisson-like stream (no lock-step bursts).
-- wrk's clock for a request starts when it is written, so the pause is not
-- counted as latency. A connection sends its next request only after the last
-- answer, so each gap is "pause + latency": the achieved rate is slightly
-- below RATE (reported by wrk as Requests/sec) and a stalled server slows the
-- offered load down (closed loop per connection, open-ish across connections).

local mean_ms = 1

function init(args)
  local rate = tonumber(args[1]) or 500
  local connections = tonumber(args[2]) or 1
  mean_ms = connections * 1000 / rate
  math.randomseed(os.time())
end

function delay()
  -- 1 - random() is in (0, 1], so the log is finite; wrk truncates to whole
  -- milliseconds, so round instead to keep the mean.
  return math.floor(-math.log(1 - math.random()) * mean_ms + 0.5)
end
