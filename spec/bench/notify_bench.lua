-- `make bench`, second part: how soon a cancel the application asks for is
-- acted on. A long-running sweeper listens on cancel_channel; the bench
-- commits a cancel request (INSERT INTO resclean_cancel_requests, whose
-- trigger wakes the sweeper) for a fresh pending row (with an object) and
-- measures the time from the commit to the sweeper's
-- resource line for that id (the line's ts, milliseconds, same host clock).
--   idle        the sweeper is waiting between cycles
--   mid-cycle   the sweeper is working through a stale backlog in batches
-- Each cancel must end object_deleted with row and object gone: a fast wrong
-- run is an error, not a result. It empties the upstream tables, so it
-- refuses any database but the throwaway stack's (fixtures.throwaway).
--
--   resclean run spec/bench/notify_bench.lua [--n 200] [--backlog 60000] [--batch 500]
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../?.lua;" .. package.path

local cjson = require("cjson")
local args = require("support.args")
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

local function say(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

local opts = args.parse({ ... }, { n = "value", backlog = "value", batch = "value" })
if not opts then
  io.stderr:write("usage: resclean run spec/bench/notify_bench.lua [--n 200] [--backlog 60000] [--batch 500]\n")
  return 2
end
local N = math.tointeger(tonumber(opts.n or "200"))
local BACKLOG = math.tointeger(tonumber(opts.backlog or "60000"))
local BATCH = math.tointeger(tonumber(opts.batch or "500"))

local conn = fx.connect()
local ok, why = fx.throwaway(conn)
if not ok then
  io.stderr:write("notify_bench: refused: ", why, "\n")
  return 2
end

-- Resource lines of the sweeper so far, by id (read incrementally).
local function reader(proc)
  local seen, offset, partial = {}, 0, ""
  return function()
    local f = io.open(proc.dir .. "/out", "rb")
    if not f then return seen end
    f:seek("set", offset)
    local chunk = f:read("a") or ""
    f:close()
    offset = offset + #chunk
    local text = partial .. chunk
    local last = 1
    for line, e in text:gmatch("([^\n]*)\n()") do
      last = e
      if line:find('"event":"resource"', 1, true) then
        local okd, rec = pcall(cjson.decode, line)
        if okd then seen[rec.resource_id] = rec end
      end
    end
    partial = text:sub(last)
    return seen
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 / 0 end
  local i = math.max(1, math.min(#sorted, math.ceil(p * #sorted)))
  return sorted[i]
end

-- Send up to n cancels one after the other while keep_going() holds; returns latencies (ms).
local function measure(proc, client, n, keep_going)
  local read = reader(proc)
  local lat = {}
  for _ = 1, n do
    if keep_going and not keep_going() then break end
    local id = fx.rows(conn, 1, { age_s = 120 })[1]
    fx.objects(client, { id })
    local tx = assert(conn:begin())
    fx.check(conn:query("INSERT INTO resclean_cancel_requests (resource_ids) VALUES ($1::uuid[])", { id }))
    fx.check(tx:commit())
    local sent = sys.time()
    local rec = h.wait_for(function() return read()[id] end, 30, "the cancel of " .. id)
    if rec.outcome ~= "object_deleted" or rec.via ~= "request" then
      error(("cancel of %s ended %s (via %s), expected object_deleted via request"):format(id, tostring(rec.outcome),
        tostring(rec.via)))
    end
    -- the line's ts (UTC, milliseconds) read by PostgreSQL, after the measurement
    local at = fx.check(conn:query("SELECT extract(epoch FROM $1::timestamptz)::float8 AS t", rec.ts))[1].t
    lat[#lat + 1] = math.max(0, (at - sent) * 1000)
  end
  table.sort(lat)
  return lat
end

local function start_sweeper(bucket, policy)
  local pol = h.tmpfile(policy, "policy.lua")
  local env = h.script_env(bucket, { PGAPPNAME = "resclean-notify-bench" })
  local proc = h.spawn({ "run", "sweep", "--policy", pol }, env)
  h.wait_for(function()
    local out = h.readall(proc.dir .. "/out")
    return out:find('"event":"listening"', 1, true) and out:find('"event":"sweep"', 1, true)
  end, 120, "the sweeper to listen")
  return proc
end

local function stop(proc)
  proc.kill("TERM")
  proc.wait(60)
end

say("notify bench: %d cancels each, commit of the request to the sweeper's resource line", N)
local results = {}

-- Idle: nothing stale, the sweeper waits for the next cycle.
do
  local bucket, client = fx.fresh_bucket(conn, "notify-idle")
  local proc = start_sweeper(bucket, "return { interval = 3600, jitter = 0 }")
  local lat = measure(proc, client, N)
  stop(proc)
  results[#results + 1] = { "idle", lat }
end

-- Mid-cycle: a stale backlog (rows only) swept in batches while the cancels arrive.
do
  local bucket, client = fx.fresh_bucket(conn, "notify-busy")
  fx.check(conn:query([[
    INSERT INTO attack_resource_files (id, file_name, download_url, checksum, guid, resource_type,
      line_format, line_encoding, used_for_modes, source, line_count, byte_size, is_uploaded, created_at, updated_at)
    SELECT gen_random_uuid(), 'b', '', '', gen_random_uuid(), 'WORD_LIST', 'freeform', 'utf-8', '[0]'::json,
      'upload', 0, 0, false, now() - interval '2 days' - g * interval '1 ms', now()
    FROM generate_series(1, $1::int) AS g]], BACKLOG))
  local pol = h.tmpfile(("return { interval = 3600, jitter = 0, batch_size = %d }"):format(BATCH), "policy.lua")
  local env = h.script_env(bucket, { PGAPPNAME = "resclean-notify-bench" })
  local proc = h.spawn({ "run", "sweep", "--policy", pol }, env)
  h.wait_for(function() return h.readall(proc.dir .. "/out"):find('"event":"resource"', 1, true) end, 120,
    "the cycle to start")
  local function cycle_running() return not h.readall(proc.dir .. "/out"):find('"event":"sweep"', 1, true) end
  local lat = measure(proc, client, N, cycle_running)
  local finished = not cycle_running()
  stop(proc)
  results[#results + 1] = { ("mid-cycle (batch_size %d%s)"):format(BATCH,
    finished and ", cycle ended before the last cancel" or ""), lat }
end

say("")
say("  %-42s %5s %9s %9s %9s", "sweeper", "n", "median", "p99", "max")
for _, r in ipairs(results) do
  local lat = r[2]
  say("  %-52s %5d %7.1f ms %7.1f ms %7.1f ms", r[1], #lat, percentile(lat, 0.5), percentile(lat, 0.99),
    lat[#lat] or 0 / 0)
end
conn:close()
h.cleanup()
return 0
