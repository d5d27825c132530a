-- `make soak`: the long-running sweep for many cycles while rows keep
-- arriving, watching what a leak would grow. On the throwaway stack only
-- (it empties the upstream tables; see fixtures.throwaway).
--
--   resclean run spec/bench/soak.lua [--cycles 1000] [--every 100] [--rows 4] [--objects 0.75]
--                                    [--batch-size 2]
--
-- It starts `resclean run sweep --policy P` (interval = 1, jitter = 0, a
-- fresh bucket, batch_size 2: a cycle's few rows make several full
-- batches, so every cycle opens and closes the two-batch pipeline's second
-- session and S3 client) and, as a writer, inserts --rows stale pending rows every
-- second (a fraction with an object) for as long as the sweep runs. Every
-- --every cycles (a cycle is one "sweep" summary line) it samples the
-- sweeper half a second after that cycle ended, while it waits for the
-- next: its resident memory (VmRSS), its open file descriptors
-- (/proc/PID/fd) and its database sessions (pg_stat_activity, by
-- application_name resclean; the writer's own session is named
-- resclean-soak). The long-running sweep keeps one LISTEN session for
-- cancel_channel: that one is expected, and constant.
--
-- It reports the RSS growth from the first sample (cycle --every) to the
-- last (target <= 1 MiB) and whether descriptors and sessions stayed
-- constant; exits 1 when a target is missed, a cycle failed a resource or
-- the sweeper left an object whose row is gone.
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../?.lua;" .. package.path

local cjson = require("cjson")
local args = require("support.args")
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")
local sys = require("resclean.sys")

local check = fx.check

local USAGE = "usage: resclean run spec/bench/soak.lua [--cycles 1000] [--every 100] [--rows 4] [--objects 0.75]"
  .. " [--batch-size 2]\n"

-- Stale pending rows with the given ids (two days old).
local INSERT = [[
  INSERT INTO attack_resource_files (id, file_name, download_url, checksum, guid, resource_type,
    line_format, line_encoding, used_for_modes, source, line_count, byte_size, is_uploaded, created_at, updated_at)
  SELECT id, 'soak.txt', '', '', gen_random_uuid(), 'WORD_LIST', 'freeform', 'utf-8', '[0]'::json, 'upload', 0, 0,
    false, now() - interval '2 days', now()
  FROM unnest($1::uuid[]) AS id]]

local function say(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- What a leak would grow, for process pid.
local function sample(conn, pid)
  local status = slurp("/proc/" .. pid .. "/status") or ""
  local p = assert(io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l"))
  local fds = tonumber(p:read("a"):match("%d+"))
  p:close()
  local sessions = check(conn:query([[SELECT count(*)::int AS n FROM pg_stat_activity
    WHERE application_name = 'resclean' AND datname = current_database()]]))[1].n
  return { rss_kb = tonumber(status:match("VmRSS:%s*(%d+)")), fds = fds, sessions = sessions }
end

-- New complete lines of a growing file: reader() -> list of lines.
local function tail(path)
  local pos, partial = 0, ""
  return function()
    local f = io.open(path)
    if not f then return {} end
    f:seek("set", pos)
    local data = f:read("a") or ""
    f:close()
    pos = pos + #data
    data = partial .. data
    local lines = {}
    local last = 1
    for line, nxt in data:gmatch("([^\n]*)\n()") do
      lines[#lines + 1] = line
      last = nxt
    end
    partial = data:sub(last)
    return lines
  end
end

local function main(...)
  local opts = args.parse({ ... }, { cycles = "value", every = "value", rows = "value", objects = "value",
                                            ["batch-size"] = "value" })
  if not opts then
    io.stderr:write(USAGE)
    return 2
  end
  local cycles = math.tointeger(tonumber(opts.cycles or 1000))
  local every = math.tointeger(tonumber(opts.every or 100))
  local per_s = math.tointeger(tonumber(opts.rows or 4))
  local frac = tonumber(opts.objects or 0.75)
  local batch_size = math.tointeger(tonumber(opts["batch-size"] or 2))
  if not (cycles and every and per_s and frac and batch_size and cycles >= every and every > 0 and per_s >= 0
      and batch_size >= 1) then
    io.stderr:write("soak: bad numbers\n", USAGE)
    return 2
  end
  local url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL is not set: run through spec/support/with-stack.sh")
  local conn = check(pg.connect(url .. (url:find("?", 1, true) and "&" or "?") .. "application_name=resclean-soak"))
  local marked, why = fx.throwaway(conn)
  if not marked then
    io.stderr:write("soak: refusing to run: ", why, "\n")
    return 2
  end
  fx.reset(conn)
  local bucket = fx.unique_bucket("soak")
  local client = fx.bucket(bucket)
  local dir = h.tmpdir()
  local pfile = h.write(dir .. "/policy.lua", ("return { bucket = %q, interval = 1, jitter = 0, batch_size = %d }\n")
    :format(bucket, batch_size))
  local sweeper = h.spawn({ "run", "sweep", "--policy", pfile }, h.script_env(bucket))
  say("soak: sweeper pid %d, %d cycles (interval 1 s, jitter 0, batch_size %d), %d stale rows a second arriving"
    .. " (%.0f%% with an object), a sample every %d cycles", sweeper.pid, cycles, batch_size, per_s, frac * 100, every)

  local lines = tail(sweeper.dir .. "/out")
  local t0 = sys.monotime()
  local n_cycle, inserted, with_obj, acc = 0, 0, 0, 0
  local counts = {}
  local samples = {}
  local sample_at -- monotonic time of the next sample (half a second after a sampled cycle)
  local next_insert = t0
  local bad = {}
  local has_obj, dishonest = {}, 0
  local piped = 0 -- cycles with more rows than a batch: the second session and client were used
  local ok, err = pcall(function()
    while n_cycle < cycles or sample_at do
      if not sweeper.alive() then error(("the sweeper exited early: %s"):format(sweeper.stderr():sub(1, 600)), 0) end
      local now = sys.monotime()
      -- The writer: rows keep arriving, each object before its row (as the
      -- application's upload would be, long before the row turns stale):
      -- a row the sweep can see already has its object.
      if now >= next_insert and per_s > 0 then
        next_insert = next_insert + 1
        local ids = {}
        for i, r in ipairs(check(conn:query("SELECT gen_random_uuid()::text AS id FROM generate_series(1, $1::int)",
            per_s))) do ids[i] = r.id end
        for _, id in ipairs(ids) do
          acc = acc + frac
          if acc >= 1 then
            acc = acc - 1
            check(client:put(id, "soak"))
            with_obj = with_obj + 1
            has_obj[id] = true
          end
        end
        check(conn:query(INSERT, ids))
        inserted = inserted + #ids
      end
      for _, line in ipairs(lines()) do
        if line:find('"event":"sweep"', 1, true) then
          local s = cjson.decode(line)
          n_cycle = n_cycle + 1
          for _, k in ipairs({ "object_deleted", "record_only", "deleted", "failed", "skipped" }) do
            counts[k] = (counts[k] or 0) + (tonumber(s[k]) or 0)
          end
          if (tonumber(s.total) or 0) > batch_size then piped = piped + 1 end
          if (tonumber(s.failed) or 0) > 0 and #bad < 5 then bad[#bad + 1] = "cycle " .. n_cycle .. ": " .. line end
          if n_cycle % every == 0 and n_cycle <= cycles then sample_at = sys.monotime() + 0.5 end
        elseif line:find('"event":"resource"', 1, true) then
          -- Honest outcomes: object_deleted exactly for the rows that had an object.
          local r = cjson.decode(line)
          local want = has_obj[r.resource_id] and "object_deleted" or "record_only"
          -- verify_list's listing cannot prove there was no object: deleted (not_listed)
          if r.outcome ~= want and not (want == "record_only" and r.reason == "not_listed") then
            dishonest = dishonest + 1
            if #bad < 5 then bad[#bad + 1] = ("expected %s: %s"):format(want, line) end
          end
        elseif line:find('"level":"error"', 1, true) and #bad < 5 then
          bad[#bad + 1] = line
        end
      end
      if sample_at and sys.monotime() >= sample_at then
        sample_at = nil
        local s = sample(conn, sweeper.pid)
        s.cycle, s.elapsed = n_cycle, sys.monotime() - t0
        samples[#samples + 1] = s
        say("cycle %5d  %6.0f s  rss %8.1f KiB  fds %3d  sessions %d  swept %d of %d inserted", s.cycle, s.elapsed,
          s.rss_kb, s.fds, s.sessions, (counts.object_deleted or 0) + (counts.record_only or 0), inserted)
      end
      sys.sleep(0.05)
    end
  end)
  sweeper.kill("TERM")
  local code = sweeper.wait(60)
  if not ok then
    io.stderr:write("soak: ", tostring(err), "\n")
    return 1
  end

  -- Never an object whose row is gone.
  local rows = {}
  for _, r in ipairs(check(conn:query("SELECT id::text AS id FROM attack_resource_files"))) do rows[r.id] = true end
  local orphans, token = 0, nil
  repeat
    local page = check(client:list({ continuation = token }))
    for _, e in ipairs(page.keys) do
      if not rows[e.key] then orphans = orphans + 1 end
    end
    token = page.next_continuation
  until not page.truncated
  local first, last = samples[1], samples[#samples]
  local growth = last.rss_kb - first.rss_kb
  local fmin, fmax, smin, smax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(samples) do
    fmin, fmax = math.min(fmin, s.fds), math.max(fmax, s.fds)
    smin, smax = math.min(smin, s.sessions), math.max(smax, s.sessions)
  end
  local verdicts, missed = {}, false
  local function verdict(good, fmt, ...)
    verdicts[#verdicts + 1] = fmt:format(...) .. (good and " ok" or " MISSED")
    if not good then missed = true end
  end
  say("")
  say("soak: %d cycles in %.0f s; %d rows inserted (%d with an object), %d object_deleted, %d record_only,"
    .. " %d failed, %d left; the sweeper exited %s on SIGTERM", n_cycle, last.elapsed, inserted, with_obj,
    counts.object_deleted or 0, counts.record_only or 0, counts.failed or 0, fx.count(conn), tostring(code))
  verdict(growth <= 1024, "RSS growth cycle %d -> %d: %+.0f KiB (%.1f -> %.1f MiB), target <= 1024 KiB",
    first.cycle, last.cycle, growth, first.rss_kb / 1024, last.rss_kb / 1024)
  verdict(fmin == fmax, "open fds %s", fmin == fmax and ("constant at " .. fmin) or ("between %d and %d"):format(fmin,
    fmax))
  verdict(smin == smax, "database sessions %s", smin == smax and ("constant at " .. smin)
    or ("between %d and %d"):format(smin, smax))
  verdict(piped > 0, "cycles that ran two batches at once (more than batch_size rows): %d of %d", piped, n_cycle)
  verdict(orphans == 0, "objects whose row is gone: %d", orphans)
  verdict(dishonest == 0, "outcomes other than the object's existence says: %d", dishonest)
  verdict((counts.failed or 0) == 0 and #bad == 0, "failed resources and error lines: %d", #bad)
  verdict(code == 0, "exit code on SIGTERM %s", tostring(code))
  for _, v in ipairs(verdicts) do say("  %s", v) end
  for _, b in ipairs(bad) do say("  %s", b:sub(1, 400)) end
  client:close()
  conn:close()
  h.cleanup()
  return missed and 1 or 0
end

return main(...)
