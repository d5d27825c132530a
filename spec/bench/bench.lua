-- `make bench`: the sweep's throughput next to the storage floor, on the
-- throwaway stack (spec/support/with-stack.sh provides DATABASE_URL and the
-- AWS_* variables of a throwaway PostgreSQL and Ceph RGW). It empties the
-- upstream tables, so it refuses any database but that stack's (see
-- fixtures.throwaway).
--
--   resclean run spec/bench/bench.lua [--n 20000] [--objects 0.8] [--only a,b,c,d]
--                                     [--repeat R] [--set field=value,...] [--no-startup] [--phases]
--                                     [--referenced K] [--perrow-limit M] [--profile local,remote]
--                                     [--remote-n 3000] [--remote-repeat 3] [--s3-rtt 10] [--pg-rtt 1]
--   resclean run spec/bench/bench.lua --scale [--scale-n 200000] [--claim-rows 2000000]
--
-- Before every measured run the tables are emptied and re-seeded, in a fresh
-- bucket: N stale pending upload rows (a fraction with a small object) and
-- controls that must survive, each with an object: fresh pending, confirmed,
-- ephemeral and dynamic, and stale rows referenced by an attack. Then one of
--   a  `resclean run sweep --once`, default policy (verify on)
--   b  the same with verify = false
--   c  the upstream per-row pattern on the same primitives: one resource per
--      transaction (lock one row SKIP LOCKED, HEAD, DELETE, commit)
--   d  the floor: one DELETE ... RETURNING of the eligible rows, then
--      DeleteObjects of their keys in 1,000s; no locks, checks or logging
--   e  as a, with verify_list = false: HEAD by HEAD, as with a bucket far
--      larger than the backlog (where a lists this small bucket instead)
-- runs as its own resclean process under /usr/bin/time (wall, CPU, peak RSS),
-- and afterwards exactly the stale rows and objects must be gone and every
-- control must remain: a fast wrong run is an error, not a result.
--
-- Two profiles, both by default: local (the servers on loopback) and remote
-- (3,000 rows, median of 3 rounds, the measured process talking to
-- PostgreSQL and RGW through spec/support/delay_proxy.c: +10 ms a round trip
-- to S3, +1 ms to PostgreSQL, as in production across a network).
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../?.lua;" .. package.path

local cjson = require("cjson")
local args = require("support.args")
local fx = require("support.fixtures")
local h = require("support.helpers")
local log = require("resclean.log")
local sys = require("resclean.sys")

local check = fx.check
local q = h.q

local UPLOAD_TYPES = { "WORD_LIST", "RULE_LIST", "MASK_LIST", "CHARSET" }
local MAX_AGE = 86400 -- the default policy's; stale rows are two days old

local USAGE = [[
usage: resclean run spec/bench/bench.lua [--n N] [--objects F] [--only a,b,c,d] [--repeat R]
                                         [--set field=value,...] [--no-startup] [--phases]
       resclean run spec/bench/bench.lua --scale [--scale-n N] [--claim-rows N]
  --n N          stale pending rows per run (default 20000)
  --objects F    fraction of them with an object (default 0.8)
  --only LIST    which of a (sweep, verify on), b (verify off), c (per row), d (floor),
                 e (verify on by HEADs, no listing)
  --repeat R     measure every mode R times, interleaved; report median and range
  --set LIST     policy overrides for a and b, e.g. --set batch_size=2000,concurrency=32
  --no-startup   skip the hyperfine start-up measurement
  --phases       run a and b with --log-level debug and show where a batch's time goes
  --referenced K stale rows referenced by an attack, spread over the backlog (default 20)
  --perrow-limit M  c cleans only the oldest M of the backlog (default 2000; 0: all of it)
  --scale        memory with a 200,000-row backlog, and the claim on a 2,000,000-row table
  --profile LIST local (servers on loopback), remote (through delay proxies), default local,remote
  --remote-n N   stale rows per run in the remote profile (default 3000)
  --remote-repeat R  rounds of the remote profile (default 3: medians of 3)
  --remote-perrow-limit M  c in the remote profile cleans the oldest M (default 300)
  --s3-rtt MS, --pg-rtt MS  round trip the proxies add (default 10 and 1)
]]

local function say(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

local function fail(fmt, ...)
  error(("bench: " .. fmt):format(...), 0)
end

local function median(list)
  local s = { table.unpack(list) }
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local set_of = h.set

local function append(dst, src)
  for _, v in ipairs(src) do dst[#dst + 1] = v end
  return dst
end

-- ---------------------------------------------------------------- seeding

local WIDE_INSERT = [[
  INSERT INTO attack_resource_files (id, file_name, download_url, checksum, guid, resource_type,
    line_format, line_encoding, used_for_modes, source, line_count, byte_size, content,
    is_uploaded, created_at, updated_at)
  SELECT gen_random_uuid(), 'list-' || g || '.txt', '', '', gen_random_uuid(),
    (ARRAY[%s])[1 + g %% %d]::attackresourcetype,
    'freeform', 'utf-8', '[0]'::json, 'upload', 0, 0, $3::json, $2,
    now() - make_interval(secs => $4::float8 + g * $5::float8), now()
  FROM generate_series(1, $1::int) AS g
  ORDER BY g]]

-- Insert n rows of the given types (cycled), created age_s + g * step_s
-- seconds ago; returns their ids in created_at order, oldest last.
local function insert_rows(conn, n, opts)
  local types = opts.types or UPLOAD_TYPES
  local lits = {}
  for i, t in ipairs(types) do lits[i] = conn:quote_literal(t) end
  local sql = WIDE_INSERT:format(table.concat(lits, ","), #types)
  if opts.no_ids then -- millions of rows: do not bring them back
    check(conn:query(sql, n, opts.uploaded or false, opts.content, opts.age_s, opts.step_s or 0.001))
    return nil
  end
  local res = check(conn:query(sql .. " RETURNING id::text AS id", n, opts.uploaded or false, opts.content,
    opts.age_s, opts.step_s or 0.001))
  local ids = {}
  for i, r in ipairs(res) do ids[i] = r.id end
  return ids
end

-- Upload a small object for every key: presigned PUT URLs (signed here,
-- offline) fed to one `curl --parallel`, far faster than a put loop.
local function seed_objects(client, keys, dir)
  if #keys == 0 then return 0 end
  local body = h.write(dir .. "/body", "password\n123456\nletmein\n")
  local cfg_path = dir .. "/curl.cfg"
  local f = assert(io.open(cfg_path, "w"))
  for _, k in ipairs(keys) do
    f:write('url = "', check(client:presign("PUT", k, 3600)), '"\nupload-file = "', body, '"\noutput = "/dev/null"\n')
  end
  f:close()
  local t0 = sys.monotime()
  local ok = os.execute(("curl -sS --fail --parallel --parallel-max 32 -K %s 2>%s"):format(q(cfg_path),
    q(dir .. "/curl.err")))
  os.remove(cfg_path) -- presigned URLs: valid for an hour, do not leave them lying around
  if not ok then fail("seeding objects with curl failed: %s", h.readall(dir .. "/curl.err"):sub(1, 400)) end
  return sys.monotime() - t0
end

-- Does an object have to exist for stale row i of n, given fraction f?
-- Spread evenly, so every batch sees the same mix.
local function has_object(i, f)
  return math.floor(i * f) > math.floor((i - 1) * f)
end

-- The world of one run: tables emptied, a fresh bucket, stale rows and
-- controls. Returns w = {bucket, client, stale, stale_obj, control_rows,
-- control_objs, referenced, seed_rows_s, seed_objs_s, n_objects}.
local function seed(conn, opts, dir, label)
  local w = { bucket = fx.unique_bucket("bench-" .. label) }
  w.client = fx.bucket(w.bucket, { timeout = 120 })
  fx.reset(conn)
  local t0 = sys.monotime()
  local n = opts.n
  -- Stale: two days old, 1 ms apart (claim order = created_at).
  w.stale = insert_rows(conn, n, { age_s = 2 * 86400 })
  w.stale_obj = {}
  for i, id in ipairs(w.stale) do
    if has_object(i, opts.objects) then w.stale_obj[#w.stale_obj + 1] = id end
  end
  -- Controls.
  local c = opts.controls
  local fresh = insert_rows(conn, c, { age_s = 2 * 3600 })
  local confirmed = insert_rows(conn, c, { uploaded = true, age_s = 20 * 86400 })
  local ephemeral = insert_rows(conn, c, { age_s = 5 * 86400, content = '{"lines":["a","b"]}',
    types = { "EPHEMERAL_WORD_LIST", "EPHEMERAL_MASK_LIST", "EPHEMERAL_RULE_LIST", "DYNAMIC_WORD_LIST" } })
  -- Referenced: stale pending rows in the middle of the backlog, spread so
  -- that most batches hold one (the foreign-key path is part of the cost).
  local nref = opts.referenced
  local span = n * 0.001
  w.referenced = insert_rows(conn, nref, { age_s = 2 * 86400, step_s = nref > 0 and span / nref or 0 })
  for _, id in ipairs(w.referenced) do fx.reference(conn, id) end
  check(conn:query("ANALYZE attack_resource_files"))
  check(conn:query("ANALYZE attacks"))
  w.seed_rows_s = sys.monotime() - t0
  w.control_rows = append(append(append(append({}, fresh), confirmed), ephemeral), w.referenced)
  w.control_objs = w.control_rows
  local keys = append(append({}, w.stale_obj), w.control_objs)
  w.n_objects = #keys
  w.seed_objs_s = seed_objects(w.client, keys, dir)
  return w
end

-- ---------------------------------------------------------------- checking

local function list_all(client)
  local keys, token = {}, nil
  repeat
    local page = check(client:list({ continuation = token }))
    for _, e in ipairs(page.keys) do keys[#keys + 1] = e.key end
    token = page.next_continuation
  until not page.truncated
  return keys
end

-- Exactly the stale rows and their objects gone (with gone_n, only the
-- gone_n oldest, as a run stopped early leaves it), every control intact.
local function verify(conn, w, label, gone_n)
  gone_n = gone_n or #w.stale
  local problems = {}
  local function problem(fmt, ...)
    if #problems < 8 then problems[#problems + 1] = fmt:format(...) end
  end
  local rows = {}
  for _, r in ipairs(check(conn:query("SELECT id::text AS id FROM attack_resource_files"))) do rows[r.id] = true end
  local objs = set_of(list_all(w.client))
  local with_obj = set_of(w.stale_obj)
  local left, want_rows, want_objs = 0, #w.control_rows, #w.control_objs
  -- w.stale is newest first; the sweep takes the oldest first.
  for k = 1, #w.stale do
    local id = w.stale[#w.stale + 1 - k]
    if k <= gone_n then
      if rows[id] then
        left = left + 1
        problem("stale row %s still there", id)
      end
      if with_obj[id] and objs[id] then problem("stale object %s still there", id) end
    else
      want_rows = want_rows + 1
      if not rows[id] then problem("stale row %s (after the first %d) was deleted", id, gone_n) end
      if with_obj[id] then
        want_objs = want_objs + 1
        if not objs[id] then problem("stale object %s (after the first %d) was deleted", id, gone_n) end
      end
    end
  end
  for _, id in ipairs(w.control_rows) do
    if not rows[id] then problem("control row %s was deleted", id) end
  end
  for _, id in ipairs(w.control_objs) do
    if not objs[id] then problem("control object %s was deleted", id) end
  end
  local nobj = fx.count_set(objs)
  if nobj ~= want_objs then problem("%d objects in the bucket, expected %d", nobj, want_objs) end
  local nrows = fx.count_set(rows)
  if nrows ~= want_rows then problem("%d rows in the table, expected %d", nrows, want_rows) end
  if #problems > 0 then
    fail("run %s left the wrong state (%d stale rows left):\n  %s", label, left, table.concat(problems, "\n  "))
  end
end

-- ---------------------------------------------------------------- measuring

local function bin() return h.bin() end

-- Busy CPU seconds of the whole machine so far (/proc/stat: all but idle
-- and iowait, in clock ticks of 1/100 s): resclean, RGW, the OSD and
-- PostgreSQL together. On a saturated 2-core machine this, not the wall
-- clock, is what a change of the sweep moves first.
local function machine_busy()
  local f = io.open("/proc/stat")
  if not f then return nil end
  local line = f:read("l")
  f:close()
  local t, i = {}, 0
  for v in line:gmatch("%d+") do
    i = i + 1
    t[i] = tonumber(v)
  end
  local busy = 0
  for k = 1, math.min(i, 8) do
    if k ~= 4 and k ~= 5 then busy = busy + t[k] end
  end
  return busy / 100
end

-- CPU seconds so far of every process but ours, by command name: own time
-- and that of reaped children (PostgreSQL's backends end with their
-- connection; the postmaster's cutime keeps what they used).
local function procs_cpu()
  local by = {}
  local p = io.popen("cat /proc/[0-9]*/stat 2>/dev/null")
  if not p then return by end
  for line in p:lines() do
    local comm, rest = line:match("^%d+ %((.*)%) (.*)$")
    if comm and comm ~= "resclean" and comm ~= "cat" then
      local f, i = {}, 0
      for v in rest:gmatch("%S+") do
        i = i + 1
        f[i] = v
        if i >= 15 then break end
      end
      -- fields after "(comm)": state is 1, utime 12, stime 13, cutime 14, cstime 15
      local t = (tonumber(f[12]) or 0) + (tonumber(f[13]) or 0) + (tonumber(f[14]) or 0) + (tonumber(f[15]) or 0)
      comm = comm:match("^postgres") and "postgres" or comm:match("^python") and "proxy" or comm
      by[comm] = (by[comm] or 0) + t / 100
    end
  end
  p:close()
  return by
end

local function cpu_diff(a, b)
  local d = {}
  for k, v in pairs(b) do
    local x = v - (a[k] or 0)
    if x > 0.005 then d[k] = x end
  end
  return d
end

-- Run argv (after the binary) under /usr/bin/time, stdout to out. Returns
-- {code, wall, cpu, utime, stime, rss_kb, stderr}.
local function measured(argv, env, dir, net)
  local parts = {}
  local all = {}
  for k, v in pairs(env or {}) do all[k] = v end
  for k, v in pairs(net or {}) do all[k] = v end
  for k, v in pairs(all) do
    parts[#parts + 1] = v == false and ("-u " .. k) or (k .. "=" .. q(v))
  end
  table.sort(parts)
  local cmd = { "env", table.concat(parts, " "), "/usr/bin/time", "-f", q("%e %U %S %M"), "-o", q(dir .. "/time"),
    q(bin()) }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = q(a) end
  local line = ("%s </dev/null >%s 2>%s"):format(table.concat(cmd, " "), q(dir .. "/out"), q(dir .. "/err"))
  local c0 = procs_cpu()
  local t0, m0 = sys.monotime(), machine_busy()
  local _, _, code = os.execute(line)
  local wall, m1 = sys.monotime() - t0, machine_busy()
  local others = cpu_diff(c0, procs_cpu())
  local times = h.readall(dir .. "/time")
  local _, u, s, m = times:match("([%d.]+) ([%d.]+) ([%d.]+) (%d+)%s*$")
  if not u then fail("cannot read /usr/bin/time's output: %s", times) end
  return { code = code, wall = wall, utime = tonumber(u), stime = tonumber(s), cpu = tonumber(u) + tonumber(s),
           machine = m0 and m1 and m1 - m0, others = others,
           rss_kb = tonumber(m), stderr = h.readall(dir .. "/err"), out = dir .. "/out" }
end

-- The sweep's summary line from its log.
local function sweep_summary(path)
  local last
  for line in io.lines(path) do
    if line:find('"event":"sweep"', 1, true) then last = line end
  end
  return last and cjson.decode(last)
end

local function policy_text(w, overrides)
  local parts = { ("bucket = %q"):format(w.bucket) }
  local names = {}
  for k in pairs(overrides) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = overrides[k]
    parts[#parts + 1] = ("%s = %s"):format(k, type(v) == "string" and ("%q"):format(v) or tostring(v))
  end
  return "return { " .. table.concat(parts, ", ") .. " }\n"
end

local MODES = {
  a = { title = "sweep, verify on (default policy)" },
  b = { title = "sweep, verify off" },
  c = { title = "per row (upstream)" },
  d = { title = "floor (bulk, no checks)" },
  e = { title = "sweep, verify by HEADs (no listing)" },
}

-- Median milliseconds per phase of the sweep's batches (debug "batch" lines).
local function phases(path)
  local cols = { "claim_ms", "rows_ms", "head_ms", "delete_ms", "commit_ms", "log_ms", "duration_ms" }
  local acc = {}
  for _, c in ipairs(cols) do acc[c] = {} end
  for line in io.lines(path) do
    if line:find('"event":"batch"', 1, true) then
      local b = cjson.decode(line)
      for _, c in ipairs(cols) do
        if b[c] then table.insert(acc[c], b[c]) end
      end
    end
  end
  local parts = {}
  for _, c in ipairs(cols) do
    if #acc[c] > 0 then parts[#parts + 1] = ("%s %.0f"):format((c:gsub("_ms$", "")), median(acc[c])) end
  end
  -- Every batch's storage phases, in order (the first one pays for what is learnt).
  local each = {}
  for i = 1, math.min(#acc.duration_ms, 12) do
    each[i] = ("%s/%s"):format(tostring(acc.head_ms[i] or "-"), tostring(acc.delete_ms[i] or "-"))
  end
  return ("%d batches, median ms: %s\n         head/delete ms by batch: %s"):format(#acc.duration_ms,
    table.concat(parts, ", "), table.concat(each, " "))
end

local function run_sweep(w, dir, overrides, n, debug, net)
  local pfile = h.write(dir .. "/policy.lua", policy_text(w, overrides))
  local argv = { "run", "sweep", "--once", "--policy", pfile }
  if debug then append(argv, { "--log-level", "debug" }) end
  local r = measured(argv, { RESCLEAN_POLICY = false, RESCLEAN_LOG_LEVEL = false, RESCLEAN_BUCKET = false }, dir,
    net)
  if r.code ~= 0 then
    local why = {}
    for line in io.lines(r.out) do
      if #why < 3 and (line:find('"outcome":"failed"', 1, true) or line:find('"level":"error"', 1, true)) then
        why[#why + 1] = line
      end
    end
    fail("sweep exited %s: %s%s", tostring(r.code), r.stderr:sub(1, 600), table.concat(why, "\n"):sub(1, 1200))
  end
  local s = sweep_summary(r.out)
  if not s then fail("no sweep summary line in the sweep's output") end
  local nref = #w.referenced
  local want
  if overrides.verify == false then
    want = { deleted = n, skipped = nref, failed = 0, object_deleted = 0, record_only = 0 }
  else
    want = { object_deleted = #w.stale_obj, skipped = nref, failed = 0 }
    -- No object: record_only by HEAD, deleted (not_listed) when verify_list listed the bucket.
    local none = (tonumber(s.record_only) or 0) + (tonumber(s.deleted) or 0)
    if none ~= n - #w.stale_obj then
      fail("sweep summary: record_only + deleted = %d, expected %d", none, n - #w.stale_obj)
    end
  end
  for k, v in pairs(want) do
    if s[k] ~= v then fail("sweep summary: %s = %s, expected %d", k, tostring(s[k]), v) end
  end
  r.summary = s
  if debug then r.phases = phases(r.out) end
  return r
end

local function run_self(mode, w, dir, limit, net)
  local r = measured({ "run", arg[0], "--mode", mode, "--bucket", w.bucket, "--limit", tostring(limit or 0) },
    { RESCLEAN_LOG_LEVEL = false }, dir, net)
  if r.code ~= 0 then fail("%s exited %s: %s", mode, tostring(r.code), r.stderr:sub(1, 600)) end
  r.note = r.stderr:match("[^\n]+")
  return r
end

local function run_mode(conn, letter, opts, dir)
  local w = seed(conn, opts, dir, letter)
  local r
  local done = opts.n
  if letter == "a" then
    r = run_sweep(w, dir, opts.overrides, opts.n, opts.phases, opts.net)
  elseif letter == "b" or letter == "e" then
    local o = {}
    for k, v in pairs(opts.overrides) do o[k] = v end
    if letter == "b" then o.verify = false else o.verify_list = false end
    r = run_sweep(w, dir, o, opts.n, opts.phases, opts.net)
  elseif letter == "c" then
    -- The per-row pattern is slow (its claim scans the table every row):
    -- it cleans the oldest perrow_limit of the same backlog, not all of it.
    if opts.perrow_limit > 0 and opts.perrow_limit < opts.n then done = opts.perrow_limit end
    r = run_self("perrow", w, dir, done, opts.net)
  else
    r = run_self("floor", w, dir, nil, opts.net)
  end
  verify(conn, w, letter, done)
  r.done = done
  r.rate = done / r.wall
  r.cpu_per_k = r.cpu / done * 1e6 -- ms per 1,000 resources
  r.machine_per_k = r.machine and r.machine / done * 1e6
  r.seed_rows_s, r.seed_objs_s, r.n_objects = w.seed_rows_s, w.seed_objs_s, w.n_objects
  w.client:close()
  return r
end

-- ---------------------------------------------------------------- the modes run as subprocesses

local function client_for(bucket)
  return check(require("resclean.s3").client(fx.s3_options(bucket, { timeout = 120 })))
end

-- (c) One resource per transaction, as upstream does it, but in the safe
-- order (row first, so a referenced row fails before its object is gone),
-- with the same number of round trips: claim, delete row, HEAD, DELETE,
-- commit, one log line.
local function mode_perrow(bucket, limit)
  local conn = fx.connect()
  local client = client_for(bucket)
  local run_id = "perrow-" .. sys.pid()
  local skipped = {}
  local n = 0
  while limit == 0 or n < limit do
    local tx <close> = check(conn:begin())
    local res = check(conn:query([[
      SELECT id::text AS id, extract(epoch FROM now() - created_at)::float8 AS age_s
      FROM attack_resource_files
      WHERE NOT is_uploaded AND created_at < now() - make_interval(secs => $1::float8)
        AND resource_type::text = ANY($2::text[]) AND id <> ALL($3::uuid[])
      ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED]], MAX_AGE, UPLOAD_TYPES, skipped))
    local row = res[1]
    if not row then
      tx:commit()
      break
    end
    check(tx:savepoint("row"))
    local ok, err = conn:query("DELETE FROM attack_resource_files WHERE id = $1", row.id)
    if not ok then
      if err.code ~= "23503" then check(ok, err) end
      check(tx:rollback_to("row"))
      skipped[#skipped + 1] = row.id
      check(tx:commit())
      log.info("resource", { run_id = run_id, resource_id = row.id, key = row.id, age_s = math.floor(row.age_s),
                             outcome = "skipped", reason = "referenced" })
    else
      local head = check(client:head(row.id))
      check(client:delete(row.id))
      check(tx:commit())
      n = n + 1
      log.info("resource", { run_id = run_id, resource_id = row.id, key = row.id, age_s = math.floor(row.age_s),
                             outcome = head.exists and "object_deleted" or "record_only" })
    end
  end
  io.stderr:write(("perrow: %d resources\n"):format(n))
  return 0
end

-- (d) The floor: what the storage and the database must do at the least.
-- The bench knows which rows are referenced; the floor leaves those out of
-- its one bulk DELETE rather than checking anything per row.
local function mode_floor(bucket)
  local conn = fx.connect()
  local client = client_for(bucket)
  local t0 = sys.monotime()
  local res = check(conn:query([[
    DELETE FROM attack_resource_files a
    WHERE NOT is_uploaded AND created_at < now() - make_interval(secs => $1::float8)
      AND resource_type::text = ANY($2::text[])
      AND NOT EXISTS (SELECT 1 FROM attacks t
                      WHERE a.id IN (t.word_list_id, t.rule_list_id, t.mask_list_id, t.charset_id))
    RETURNING id::text AS id]], MAX_AGE, UPLOAD_TYPES))
  local keys = {}
  for i, r in ipairs(res) do keys[i] = r.id end
  local t1 = sys.monotime()
  local _, nfailed = client:delete_many(keys, { quiet = true })
  if nfailed ~= 0 then
    io.stderr:write(("floor: %d keys failed to delete\n"):format(nfailed))
    return 1
  end
  io.stderr:write(("floor: %d resources; rows %.1f s, objects %.1f s\n"):format(#keys, t1 - t0, sys.monotime() - t1))
  return 0
end

-- ---------------------------------------------------------------- reports

local function fmt_spread(list, fmt)
  local m = median(list)
  if #list == 1 then return fmt:format(m) end
  local lo, hi = math.huge, -math.huge
  for _, v in ipairs(list) do
    lo, hi = math.min(lo, v), math.max(hi, v)
  end
  return (fmt .. " [" .. fmt .. "-" .. fmt .. "]"):format(m, lo, hi)
end

local function startup(dir)
  local empty = h.write(dir .. "/empty.lua", "")
  local json = dir .. "/hyperfine.json"
  local ok = os.execute(("hyperfine -N --style none --warmup 20 --min-runs 200 --export-json %s %s >/dev/null 2>&1")
    :format(q(json), q(bin() .. " run " .. empty)))
  if not ok then
    say("start-up: hyperfine failed (is it installed? make deps)")
    return
  end
  local r = cjson.decode(h.readall(json)).results[1]
  say("start-up (hyperfine -N, `resclean run` of an empty script, %d runs): mean %.2f ms +- %.2f, min %.2f, max %.2f",
    #r.times, r.mean * 1000, r.stddev * 1000, r.min * 1000, r.max * 1000)
end

local function parse_set(s)
  local o = {}
  if not s then return o end
  for item in s:gmatch("[^,]+") do
    local k, v = item:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
    if not k then fail("--set: expected field=value, got %q", item) end
    if v == "true" or v == "false" then
      o[k] = v == "true"
    elseif math.tointeger(tonumber(v)) then
      o[k] = math.tointeger(tonumber(v))
    elseif tonumber(v) then
      o[k] = tonumber(v)
    else
      o[k] = v
    end
  end
  return o
end

local function bench(conn, opts)
  local dir = h.tmpdir()
  local letters = {}
  for l in opts.only:gmatch("[^,%s]+") do
    if not MODES[l] then fail("--only: unknown mode %q (a, b, c, d or e)", l) end
    letters[#letters + 1] = l
  end
  local policy = require("resclean.policy").build(opts.overrides, "--set")
  if not policy then fail("--set: not a valid policy") end
  say("")
  say("== profile %s: %s", opts.profile.name, opts.profile.about)
  say("resclean bench: %d stale pending rows per run (%.0f%% with an object); controls with objects: %d each"
    .. " fresh, confirmed, ephemeral/dynamic, and %d stale but referenced; %d run(s) per mode", opts.n,
    opts.objects * 100, opts.controls, opts.referenced, opts.rep)
  say("policy for a and b: defaults%s (batch_size %d, concurrency %d)",
    next(opts.overrides) and (" + " .. cjson.encode(opts.overrides)) or "", policy.batch_size, policy.concurrency)
  local results = {}
  for _, l in ipairs(letters) do results[l] = {} end
  for rep = 1, opts.rep do
    for _, l in ipairs(letters) do
      local r = run_mode(conn, l, opts, dir)
      table.insert(results[l], r)
      say("  run %d %s: %7.1f res/s  %6.2f s  cpu %6.1f ms/1000  machine %6.0f ms/1000  rss %5.1f MiB"
        .. "   (seeded %d objects in %.1f s, %.0f/s)",
        rep, l, r.rate, r.wall, r.cpu_per_k, r.machine_per_k or 0 / 0, r.rss_kb / 1024, r.n_objects, r.seed_objs_s,
        r.n_objects / math.max(r.seed_objs_s, 1e-9))
      if r.phases then say("         %s", r.phases) end
      if opts.phases and r.others then
        local parts, names = {}, {}
        for k in pairs(r.others) do names[#names + 1] = k end
        table.sort(names, function(x, y) return r.others[x] > r.others[y] end)
        for _, k in ipairs(names) do parts[#parts + 1] = ("%s %.0f"):format(k, r.others[k] / r.done * 1e6) end
        say("         other processes' CPU ms / 1000 res: resclean %.0f, %s", r.cpu_per_k, table.concat(parts, ", "))
      end
      if r.note then say("         %s", r.note) end
    end
  end
  local function col(l, f)
    local t = {}
    for i, r in ipairs(results[l]) do t[i] = f(r) end
    return t
  end
  say("")
  say("%-38s %-26s %-22s %-24s %-20s %s", "mode", "resources/s", "wall s", "CPU ms / 1000 res", "peak RSS MiB",
    "machine CPU ms / 1000")
  local rate = {}
  for _, l in ipairs(letters) do
    rate[l] = median(col(l, function(r) return r.rate end))
    local title = MODES[l].title
    if results[l][1].done < opts.n then title = ("%s, oldest %d"):format(title, results[l][1].done) end
    say("%-38s %-26s %-22s %-24s %-20s %s", l .. "  " .. title,
      fmt_spread(col(l, function(r) return r.rate end), "%.1f"),
      fmt_spread(col(l, function(r) return r.wall end), "%.2f"),
      fmt_spread(col(l, function(r) return r.cpu_per_k end), "%.1f"),
      fmt_spread(col(l, function(r) return r.rss_kb / 1024 end), "%.1f"),
      fmt_spread(col(l, function(r) return r.machine_per_k or 0 / 0 end), "%.0f"))
  end
  -- Ratios of the median rates, and (with --repeat) the median and range of
  -- the ratios within each round: the machine is shared, and runs minutes
  -- apart see different loads.
  local ratios, per_round, verdicts = {}, {}, {}
  local function ratio(x, y, target)
    if not (rate[x] and rate[y]) then return end
    local v = rate[x] / rate[y]
    ratios[#ratios + 1] = ("%s/%s %.2f"):format(x, y, v)
    local rounds = {}
    for i = 1, opts.rep do rounds[i] = results[x][i].rate / results[y][i].rate end
    per_round[#per_round + 1] = ("%s/%s %s"):format(x, y, fmt_spread(rounds, "%.2f"))
    if target then
      verdicts[#verdicts + 1] = ("%s/%s >= %g %s"):format(x, y, target, v >= target and "ok" or "MISSED")
    end
  end
  local t = opts.profile.targets
  ratio("a", "d", t.ad)
  ratio("b", "d", t.bd)
  ratio("a", "c", t.ac)
  ratio("b", "c", t.bc)
  ratio("e", "d")
  if #ratios > 0 then say("ratios (medians): %s", table.concat(ratios, "   ")) end
  if #ratios > 0 and opts.rep > 1 then say("ratios per round: %s", table.concat(per_round, "   ")) end
  if results.a and t.cpu then
    local cpu = median(col("a", function(r) return r.cpu_per_k end))
    verdicts[#verdicts + 1] = ("a CPU %.0f ms/1000 <= %d %s"):format(cpu, t.cpu, cpu <= t.cpu and "ok" or "MISSED")
  end
  if #verdicts > 0 then say("targets: %s", table.concat(verdicts, "; ")) end
  say("machine CPU: busy time of the whole machine during the run (resclean, RGW, OSD, PostgreSQL%s), from /proc/stat",
    opts.net and ", the delay proxies" or "")
  say("every run checked: stale rows and objects gone, controls (fresh, confirmed, ephemeral, referenced) intact")
  if opts.startup then startup(dir) end
  return rate
end

-- ---------------------------------------------------------------- the remote profile

-- A delay proxy (spec/support/delay_proxy.c, built by `make bench` as
-- build/delay_proxy) in front of host:port, one_way_ms each direction.
-- Returns {port, stop() -> its stats line}.
local function delay_proxy(host, port, one_way_ms)
  local prog = here .. "/../../build/delay_proxy"
  if not sys.file_kind(prog) then fail("%s is missing: `make build/delay_proxy` (make bench builds it)", prog) end
  local server = h.start_server(prog, { host, tostring(port), tostring(one_way_ms) })
  function server.stop()
    os.execute(("kill -TERM %d 2>/dev/null"):format(server.pid))
    local ok, line = pcall(h.wait_for, function()
      local f = io.open(server.dir .. "/stats")
      local l = f and f:read("l")
      if f then f:close() end
      return l
    end, 10, "the delay proxy's stats")
    return ok and line or "no stats"
  end
  return server
end

-- Median seconds of k calls of fn().
local function rtt(k, fn)
  local t = {}
  for i = 1, k do
    local t0 = sys.monotime()
    fn()
    t[i] = sys.monotime() - t0
  end
  return median(t)
end

-- The measured runs talk to PostgreSQL and RGW through delay proxies (seeding
-- and checking do not): DATABASE_URL, PGHOST/PGPORT and AWS_ENDPOINT_URL_S3
-- point at them. Returns what bench returns.
local function remote(conn, opts)
  local db_url, s3_url = os.getenv("DATABASE_URL"), os.getenv("AWS_ENDPOINT_URL_S3")
  local db_host, db_port = db_url:match("@([%d.]+):(%d+)/")
  local s3_scheme, s3_host, s3_port = s3_url:match("^(https?://)([%d.]+):(%d+)")
  if not (db_host and s3_host) then
    fail("remote profile: cannot find host:port in DATABASE_URL or AWS_ENDPOINT_URL_S3")
  end
  local pgp = delay_proxy(db_host, db_port, opts.pg_rtt / 2)
  local s3p = delay_proxy(s3_host, s3_port, opts.s3_rtt / 2)
  local proxied_db = db_url:gsub("@[%d.]+:%d+/", "@127.0.0.1:" .. pgp.port .. "/", 1)
  opts.net = { DATABASE_URL = proxied_db, PGHOST = "127.0.0.1", PGPORT = tostring(pgp.port),
               AWS_ENDPOINT_URL_S3 = ("%s127.0.0.1:%d"):format(s3_scheme, s3p.port) }
  local ok, res = pcall(function()
    -- What the proxies really add: a query and a HEAD, direct and through them.
    local far = check(require("resclean.pg").connect(proxied_db))
    local pg_direct = rtt(50, function() check(conn:query("SELECT 1")) end)
    local pg_far = rtt(50, function() check(far:query("SELECT 1")) end)
    far:close()
    local bucket = fx.unique_bucket("bench-rtt")
    local near_c = fx.bucket(bucket)
    local far_c = check(require("resclean.s3").client(fx.s3_options(bucket,
      { endpoint = opts.net.AWS_ENDPOINT_URL_S3 })))
    local s3_direct = rtt(30, function() check(near_c:head("absent")) end)
    local s3_far = rtt(30, function() check(far_c:head("absent")) end)
    near_c:close()
    far_c:close()
    opts.profile.about = opts.profile.about .. ("; measured: SELECT 1 %.1f -> %.1f ms, HEAD %.1f -> %.1f ms")
      :format(pg_direct * 1000, pg_far * 1000, s3_direct * 1000, s3_far * 1000)
    return bench(conn, opts)
  end)
  say("delay proxies: PostgreSQL %s", pgp.stop())
  say("               S3 %s", s3p.stop())
  if not ok then error(res, 0) end
  return res
end

-- ---------------------------------------------------------------- --scale

-- Batch durations and claim times (debug "batch" lines), and how many
-- claim_seq_scan warnings a sweep's log holds.
local function debug_batches(path)
  local ms, claim_ms, warns = {}, {}, 0
  for line in io.lines(path) do
    if line:find('"event":"batch"', 1, true) then
      local b = cjson.decode(line)
      ms[#ms + 1] = b.duration_ms
      claim_ms[#claim_ms + 1] = b.claim_ms
    end
    if line:find('"event":"claim_seq_scan"', 1, true) then warns = warns + 1 end
  end
  return ms, claim_ms, warns
end

-- Median milliseconds of the sweep's own claim (first and keyset-next), in
-- a transaction that is rolled back.
local function time_claims(conn, sql, p, rounds)
  local first, nxt = {}, {}
  local function one(list, name, ...)
    local tx <close> = check(conn:begin())
    local t0 = sys.monotime()
    local res = check(conn:query(sql[name] .. " FOR UPDATE SKIP LOCKED", ...))
    list[#list + 1] = (sys.monotime() - t0) * 1000
    tx:rollback()
    return res
  end
  local last
  for _ = 1, rounds do
    local res = one(first, "claim_first", p.max_age, p.upload_types, p.batch_size)
    last = res[#res]
    one(nxt, "claim_next", p.max_age, p.upload_types, p.batch_size, last._created, last.id)
  end
  return median(first), median(nxt), last
end

-- The scan lines of a claim's plan (which node reads the table, and how).
local function plan_of(conn, sql, name, ...)
  local res = check(conn:query("EXPLAIN " .. sql[name] .. " FOR UPDATE SKIP LOCKED", ...))
  local lines = {}
  for _, r in ipairs(res) do
    local l = r["QUERY PLAN"]
    if l:find("Scan", 1, true) or l:find("Index Cond", 1, true) or l:find("Sort Key", 1, true) then
      lines[#lines + 1] = (l:gsub("^%s*%->%s*", ""):gsub("^%s+", ""))
    end
  end
  return ("%s: %s"):format(name, table.concat(lines, "; "))
end

local function scale(conn, opts)
  local dir = h.tmpdir()
  -- 1. Memory with a large backlog: claims stream in batches.
  local sopts = { n = opts.scale_n, objects = 0.1, controls = 50, referenced = 0, overrides = opts.overrides }
  say("scale 1: %d stale pending rows, %.0f%% with an object, one sweep (default policy)", sopts.n, 10)
  local r = run_mode(conn, "a", sopts, dir)
  say("  seeded %d objects in %.1f s; swept in %.1f s (%.0f res/s), CPU %.1f ms/1000, peak RSS %.1f MiB (target < 32)"
    .. " %s", r.n_objects, r.seed_objs_s, r.wall, r.rate, r.cpu_per_k, r.rss_kb / 1024,
    r.rss_kb < 32 * 1024 and "ok" or "MISSED")

  -- 2. The claim on a large table, with and without the partial index.
  local total = opts.claim_rows
  local eligible = total // 100
  say("scale 2: %d rows, %d of them stale pending (1%%)", total, eligible)
  fx.reset(conn)
  local drop_index = "DROP INDEX IF EXISTS attack_resource_files_pending_created_idx"
  check(conn:query(drop_index))
  local t0 = sys.monotime()
  -- Confirmed rows spread over 30 days, stale ones among them.
  insert_rows(conn, total - eligible, { uploaded = true, age_s = 3600, step_s = 30 * 86400 / total, no_ids = true })
  insert_rows(conn, eligible, { age_s = 2 * 86400, step_s = 0.01, no_ids = true })
  check(conn:query("ANALYZE attack_resource_files"))
  say("  inserted and analysed in %.1f s", sys.monotime() - t0)
  local p = require("resclean.policy").build(opts.overrides, "--set")
  local sql = require("resclean.session").build_sql(conn, p)
  local bucket = fx.unique_bucket("bench-scale")
  fx.bucket(bucket):close()
  local function sweep_part(label, limit)
    local o = { max_deletes_per_run = limit }
    for k, v in pairs(opts.overrides) do o[k] = v end
    local pfile = h.write(dir .. "/policy.lua", policy_text({ bucket = bucket }, o))
    local sr = measured({ "run", "sweep", "--once", "--policy", pfile, "--log-level", "debug" }, {
      RESCLEAN_POLICY = false, RESCLEAN_LOG_LEVEL = false, RESCLEAN_BUCKET = false }, dir)
    if sr.code ~= 0 then fail("sweep (%s) exited %s: %s", label, tostring(sr.code), sr.stderr:sub(1, 600)) end
    local ms, claim_ms, warns = debug_batches(sr.out)
    say("  sweep %s: %d batches of %d in %.1f s, median batch %.0f ms, median claim %.0f ms;"
      .. " claim_seq_scan warnings: %d", label, #ms, p.batch_size, sr.wall, median(ms) or 0, median(claim_ms) or 0,
      warns)
    return warns
  end
  local index_sql = require("resclean.plan").index_sql(conn, p)
  local function create_index()
    local t = sys.monotime()
    check(conn:query(index_sql))
    check(conn:query("ANALYZE attack_resource_files"))
    return sys.monotime() - t
  end
  local function plans(last)
    say("      %s", plan_of(conn, sql, "claim_first", p.max_age, p.upload_types, p.batch_size))
    say("      %s", plan_of(conn, sql, "claim_next", p.max_age, p.upload_types, p.batch_size, last._created, last.id))
  end
  local f1, n1, last = time_claims(conn, sql, p, 5)
  say("  without the index: claim_first %.1f ms, claim_next %.1f ms per batch of %d (median of 5)", f1, n1,
    p.batch_size)
  plans(last)
  say("  %s  -- %.1f s", index_sql, create_index())
  local f2, n2
  f2, n2, last = time_claims(conn, sql, p, 5)
  say("  with the index: claim_first %.1f ms, claim_next %.1f ms per batch of %d (median of 5)", f2, n2, p.batch_size)
  plans(last)
  check(conn:query(drop_index))
  local w1 = sweep_part("without the index (5 batches)", 5 * p.batch_size)
  create_index()
  local w2 = sweep_part("with the index (the rest)", 0)
  check(conn:query(drop_index))
  local left = check(conn:query("SELECT count(*)::int AS n FROM attack_resource_files WHERE NOT is_uploaded"))[1].n
  if left ~= 0 then fail("%d stale rows left after the sweeps", left) end
  if fx.count(conn) ~= total - eligible then fail("confirmed rows were deleted") end
  if w1 ~= 1 then fail("expected exactly one claim_seq_scan warning without the index, got %d", w1) end
  if w2 ~= 0 then fail("expected no claim_seq_scan warning with the index, got %d", w2) end
  say("  claim_seq_scan: logged once per run without the index, not at all with it: ok")
end

-- ---------------------------------------------------------------- main

local function main(...)
  local opts, rest = args.parse({ ... }, {
    n = "value", objects = "value", only = "value", ["repeat"] = "value", set = "value", scale = "flag",
    ["scale-n"] = "value", ["claim-rows"] = "value", ["no-startup"] = "flag", mode = "value", bucket = "value",
    phases = "flag", referenced = "value", ["perrow-limit"] = "value", limit = "value", help = "flag",
    profile = "value", ["remote-n"] = "value", ["remote-repeat"] = "value", ["remote-perrow-limit"] = "value",
    ["s3-rtt"] = "value", ["pg-rtt"] = "value",
  })
  if not opts then
    io.stderr:write("bench: ", rest, "\n", USAGE)
    return 2
  end
  if opts.help then
    io.stdout:write(USAGE)
    return 0
  end
  -- Every mode empties or deletes rows: only on the throwaway stack (fixtures.throwaway).
  local guard = fx.connect()
  local marked, why = fx.throwaway(guard)
  guard:close()
  if not marked then
    io.stderr:write("bench: refusing to run: ", why, "\n")
    return 2
  end
  if opts.mode == "perrow" then return mode_perrow(opts.bucket, math.tointeger(tonumber(opts.limit or 0)) or 0) end
  if opts.mode == "floor" then return mode_floor(opts.bucket) end
  if opts.mode then
    io.stderr:write("bench: unknown --mode ", opts.mode, "\n")
    return 2
  end
  local int = function(v) return math.tointeger(tonumber(v)) end
  local o = {
    n = int(opts.n or 20000),
    objects = tonumber(opts.objects or 0.8),
    only = opts.only or "a,b,c,d,e",
    rep = math.tointeger(tonumber(opts["repeat"] or 1)),
    overrides = parse_set(opts.set),
    controls = 200,
    referenced = math.tointeger(tonumber(opts.referenced or 20)),
    startup = not opts["no-startup"],
    phases = opts.phases,
    perrow_limit = math.tointeger(tonumber(opts["perrow-limit"] or 2000)),
    scale_n = math.tointeger(tonumber(opts["scale-n"] or 200000)),
    claim_rows = math.tointeger(tonumber(opts["claim-rows"] or 2000000)),
    profile = { name = "local", about = "PostgreSQL and RGW on loopback",
                targets = { ad = 0.6, bd = 0.85, ac = 5, bc = 5, cpu = 150 } },
  }
  -- The remote profile: the same modes with the servers a network away.
  local r = {
    n = int(opts["remote-n"] or 3000),
    rep = int(opts["remote-repeat"] or 3),
    perrow_limit = int(opts["remote-perrow-limit"] or 300),
    s3_rtt = tonumber(opts["s3-rtt"] or 10),
    pg_rtt = tonumber(opts["pg-rtt"] or 1),
    startup = false,
  }
  local profiles = {}
  for name in (opts.profile or "local,remote"):gmatch("[^,%s]+") do
    if name ~= "local" and name ~= "remote" then
      io.stderr:write("bench: --profile: expected local, remote or local,remote, got ", name, "\n")
      return 2
    end
    profiles[#profiles + 1] = name
  end
  if not (r.n and r.n > 0 and r.rep and r.rep > 0 and r.perrow_limit and r.perrow_limit >= 0 and r.s3_rtt
      and r.s3_rtt >= 0 and r.pg_rtt and r.pg_rtt >= 0) then
    io.stderr:write("bench: bad numbers for the remote profile\n", USAGE)
    return 2
  end
  for k, v in pairs(o) do
    if r[k] == nil then r[k] = v end
  end
  r.profile = { name = "remote", about = ("through delay proxies: S3 round trip +%g ms, PostgreSQL +%g ms")
                  :format(r.s3_rtt, r.pg_rtt), targets = { ad = 0.75, bd = 0.95, ac = 30, bc = 30 } }
  if not (o.n and o.n > 0 and o.referenced and o.referenced >= 0 and o.perrow_limit and o.perrow_limit >= 0
      and o.objects and o.objects >= 0 and o.objects <= 1 and o.rep and o.rep > 0
      and o.scale_n and o.claim_rows and o.claim_rows >= 100) then
    io.stderr:write("bench: bad numbers\n", USAGE)
    return 2
  end
  local conn = fx.connect()
  local ok, err
  if opts.scale then
    ok, err = pcall(scale, conn, o)
  else
    ok, err = pcall(function()
      for _, name in ipairs(profiles) do
        if name == "local" then bench(conn, o) else remote(conn, r) end
      end
    end)
  end
  conn:close()
  h.cleanup()
  if not ok then
    io.stderr:write(tostring(err), "\n")
    return 1
  end
  return 0
end

return main(...)
