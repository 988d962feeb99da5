-- wrk script for the MMSSL service: POST bodies with a per-request user id.
--   WRK_MODE=warm|fresh|unknown|mixed  N_USERS=9308  N_ITEMS=6710  K=20
-- warm:    a known user (cache pre-warmed by the harness)              -> path "known", cache hit
-- fresh:   a known user with 1-3 items in "interactions" (not cached)  -> path "fresh", recomputed
-- unknown: a user id the model has never seen, no items               -> path "popularity"
-- mixed:   80% warm, 10% fresh, 5% unknown, 5% POST /interactions (which invalidates that user's
--          cached vector, so later requests for them take the fresh path once, then hit the cache)
-- done() prints one JSON line prefixed with "WRK_JSON " that the harness parses.

local mode = os.getenv("WRK_MODE") or "warm"
local n_users = tonumber(os.getenv("N_USERS") or "9308")
local n_items = tonumber(os.getenv("N_ITEMS") or "6710")
local k = tonumber(os.getenv("K") or "20")
local headers = { ["Content-Type"] = "application/json" }
local counter = 0

function init(args)
  local id = tonumber(wrk.thread:get("id") or "0") or 0
  math.randomseed(os.time() * 1000 + id * 7919)
end

function setup(thread)
  counter = counter + 1
  thread:set("id", tostring(counter))
end

local function known_user()
  return "u" .. math.random(0, n_users - 1)
end

local function items(n)
  local out = {}
  for i = 1, n do out[i] = '"i' .. math.random(0, n_items - 1) .. '"' end
  return table.concat(out, ",")
end

local function recommend(body)
  return wrk.format("POST", "/recommend", headers, body)
end

local function warm()
  return recommend('{"user_id":"' .. known_user() .. '","k":' .. k .. '}')
end

local function fresh()
  return recommend('{"user_id":"' .. known_user() .. '","k":' .. k ..
    ',"interactions":[' .. items(math.random(1, 3)) .. ']}')
end

local function unknown()
  return recommend('{"user_id":"new-' .. math.random(1, 1000000000) .. '","k":' .. k .. '}')
end

local function interactions()
  return wrk.format("POST", "/interactions", headers,
    '{"user_id":"' .. known_user() .. '","items":[' .. items(1) .. ']}')
end

function request()
  if mode == "warm" then return warm() end
  if mode == "fresh" then return fresh() end
  if mode == "unknown" then return unknown() end
  local r = math.random()
  if r < 0.80 then return warm() end
  if r < 0.90 then return fresh() end
  if r < 0.95 then return unknown() end
  return interactions()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"mode":"%s","requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d}}\n',
    mode, summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
end
