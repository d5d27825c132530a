-- Reconcile: objects in the bucket that no row owns, and confirmed rows
-- whose object is missing.
--   resclean run scripts/reconcile.lua [--apply] [--json] [--older-than DURATION]
--                                      [--page-size N] [--policy FILE] [--log-level LEVEL]
--
-- An orphan is an object whose key matches the policy's key_pattern, that
-- was last modified before the cutoff (database now() minus max_age plus
-- url_lifetime, or --older-than), and that no owner table (policy.owners)
-- has a row for. Orphans appear when a presigned PUT lands after its row was
-- swept or cancelled. Without --apply the plan is printed and nothing is
-- deleted. Confirmed rows (uploaded_column true) of owner tables with a uuid
-- key column whose object is missing are reported, never changed.
--
-- The listing is processed one page (<= 1000 keys) at a time: each page's
-- candidates are checked against every owner with one `= ANY($1)` query per
-- owner, and its orphans deleted with one DeleteObjects. Listing order is
-- byte order, which for lower-case UUID keys is also PostgreSQL's uuid
-- order, so confirmed rows are checked against each page by key range.
--
-- Exit 0; 1 when some deletes failed; 2 on usage, policy or a missing owner
-- table or column; 3 when the database or the storage cannot be reached.
local app = require("resclean.app")
local config = require("resclean.config")
local log = require("resclean.log")
local pg = require("resclean.pg")
local policy_mod = require("resclean.policy")
local sweep = require("resclean.sweep")
local sys = require("resclean.sys")

local USAGE = [[
usage: resclean run scripts/reconcile.lua [--apply] [--json] [--older-than DURATION]
                                          [--page-size N] [--policy FILE] [--log-level LEVEL]
  --apply            delete the orphans (default: print the plan, delete nothing)
  --json             JSON log lines on stdout (one per orphan and missing object,
                     then a "reconcile" summary) instead of the report; without it
                     the report is on stdout and the JSON log lines on stderr
  --older-than D     only objects last modified more than D ago (seconds or "90s",
                     "15m", "25h", "7d"; database clock). Default: max_age plus
                     url_lifetime; never less than url_lifetime
  --page-size N      keys listed (and checked, and deleted) at a time, 1-1000
                     (default 1000)
  --policy FILE      policy file (else RESCLEAN_POLICY, else the defaults)
  --log-level L      debug, info, warn or error
]]

local PAGE = 1000 -- S3's most keys a list reply or a DeleteObjects request holds

local M = {}

-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- "2026-11-29T19:30:01.123Z" (or +hh:mm) -> Unix seconds, or nil.
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d%.?%d*)(.*)$")
  if not y then return nil end
  local off = 0
  if rest ~= "Z" and rest ~= "z" and rest ~= "" then
    local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) - off
end

local function human_age(s)
  s = math.floor(s or 0)
  local d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
  if d > 0 then return ("%dd %dh"):format(d, h) end
  if h > 0 then return ("%dh %dm"):format(h, m) end
  if m > 0 then return ("%dm %ds"):format(m, s % 60) end
  return ("%ds"):format(math.max(s, 0))
end

local TEXT_TYPES = { text = true, ["character varying"] = true, character = true, name = true }

-- Check every owner table and key column; learn the column's type and
-- whether the table has a boolean uploaded column. Returns owners or nil,
-- err (kind "policy" for what is missing).
function M.check_owners(conn, p, page_size)
  page_size = page_size or PAGE
  local listed = false
  for _, o in ipairs(p.owners) do listed = listed or o.table == p.table end
  if not listed then
    return nil, { kind = "policy", field = "owners",
                  message = ("the policy's table %q is not among its owners: its objects would look orphaned")
                    :format(p.table) }
  end
  local out = {}
  for i, o in ipairs(p.owners) do
    local res, err = conn:query([[
      SELECT to_regclass($1) IS NOT NULL AS exists,
        (SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
          WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped) AS key_type,
        (SELECT a.atttypid = 'boolean'::regtype FROM pg_attribute a
          WHERE a.attrelid = to_regclass($1) AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped) AS uploaded]],
      conn:quote_ident(o.table), o.key_column, p.uploaded_column)
    if not res then return nil, err end
    local r = res[1]
    if not r.exists then
      return nil, { kind = "policy", field = ("owners[%d].table"):format(i),
                    message = ("owner table %q does not exist; reconciling without every owner would take "
                      .. "the objects it owns for orphans"):format(o.table) }
    end
    if not r.key_type then
      return nil, { kind = "policy", field = ("owners[%d].key_column"):format(i),
                    message = ("column %q does not exist in owner table %q"):format(o.key_column, o.table) }
    end
    local kind = r.key_type == "uuid" and "uuid" or (TEXT_TYPES[r.key_type] and "text" or "other")
    local t, c = conn:quote_ident(o.table), conn:quote_ident(o.key_column)
    local owner = { table = o.table, key_column = o.key_column, kind = kind, key_type = r.key_type }
    if kind == "uuid" then
      owner.owned_sql = ("SELECT %s::text AS k FROM %s WHERE %s = ANY($1::uuid[])"):format(c, t, c)
    elseif kind == "text" then
      owner.owned_sql = ("SELECT %s::text AS k FROM %s WHERE %s = ANY($1::text[])"):format(c, t, c)
    else
      owner.owned_sql = ("SELECT %s::text AS k FROM %s WHERE %s::text = ANY($1::text[])"):format(c, t, c)
    end
    -- Missing objects: rows marked uploaded, by key range (uuid keys only).
    if r.uploaded and kind == "uuid" then
      local u = conn:quote_ident(p.uploaded_column)
      owner.range_sql = function(lo, hi)
        local where = { u }
        local args = {}
        if lo then
          where[#where + 1] = ("%s > $%d::uuid"):format(c, #args + 1)
          args[#args + 1] = lo
        end
        if hi then
          where[#where + 1] = ("%s <= $%d::uuid"):format(c, #args + 1)
          args[#args + 1] = hi
        end
        return ("SELECT %s::text AS k FROM %s WHERE %s ORDER BY %s LIMIT %d"):format(
          c, t, table.concat(where, " AND "), c, page_size), args
      end
    end
    out[i] = owner
  end
  return out
end

-- Which of keys does some owner hold? Returns set key -> owner table.
function M.owned(conn, owners, keys)
  local owned = {}
  for _, o in ipairs(owners) do
    local sel = {}
    for _, k in ipairs(keys) do
      if o.kind ~= "uuid" or k:find(policy_mod.UUID_PATTERN) then sel[#sel + 1] = k end
    end
    if #sel > 0 then
      local res, err = conn:query(o.owned_sql, sel)
      if not res then return nil, err end
      for _, r in ipairs(res) do owned[r.k] = owned[r.k] or o.table end
    end
  end
  return owned
end

-- A reconcile run: counters, output.
local Run = {}
Run.__index = Run

local COUNTS = { "listed", "considered", "recent", "owned", "orphans", "planned", "object_deleted", "failed",
                 "missing_objects" }

function M.new_run(opts)
  local r = setmetatable({
    policy = opts.policy, apply = opts.apply, human = opts.human, out = opts.out or io.stdout,
    page_size = opts.page_size or PAGE,
    run_id = sweep.run_id(), started = sys.monotime(), counts = {},
  }, Run)
  for _, c in ipairs(COUNTS) do r.counts[c] = 0 end
  return r
end

function Run:say(fmt, ...)
  if self.human then self.out:write(fmt:format(...), "\n") end
end

function Run:orphan(entry, outcome, reason)
  self.counts[outcome] = self.counts[outcome] + 1
  log.emit(outcome == "failed" and "warn" or "info", "orphan", {
    run_id = self.run_id, key = entry.key, size = entry.size, last_modified = entry.last_modified,
    age_s = math.floor(entry.age_s), outcome = outcome, reason = reason,
  })
  local what = outcome == "planned" and "would delete" or outcome == "object_deleted" and "deleted"
    or ("FAILED (" .. tostring(reason) .. ")")
  self:say("orphan   %s  %s bytes  modified %s (%s ago)  %s", entry.key, tostring(entry.size or "?"),
    tostring(entry.last_modified), human_age(entry.age_s), what)
end

function Run:missing(owner, key)
  self.counts.missing_objects = self.counts.missing_objects + 1
  log.warn("missing_object", {
    run_id = self.run_id, table = owner.table, resource_id = key, key = key,
    message = "the row is marked uploaded but its object is missing; not changed",
  })
  self:say("missing  %s  confirmed row in %s has no object (reported only)", key, owner.table)
end

-- Confirmed rows of each owner in key range (lo, hi] whose key is not in
-- present; HEAD double-checks them (a PUT may have landed after the
-- listing). Returns true or nil, err.
function Run:check_range(conn, store, owners, lo, hi, present)
  for _, o in ipairs(owners) do
    if o.range_sql then
      local from = lo
      while true do
        local sql, args = o.range_sql(from, hi)
        local res, err = conn:query(sql, table.unpack(args))
        if not res then return nil, err end
        local absent = {}
        for _, r in ipairs(res) do
          if not present[r.k] then absent[#absent + 1] = r.k end
        end
        if #absent > 0 then
          local heads = store:head_many(absent, self.policy.concurrency)
          for i, k in ipairs(absent) do
            if heads[i] == false then self:missing(o, k) end
          end
        end
        if #res < self.page_size then break end
        from = res[#res].k
      end
    end
  end
  return true
end

-- One page of the listing. Returns true or nil, err.
function Run:page(conn, store, owners, entries, db_now, cutoff, range)
  local p = self.policy
  local candidates, keys, present = {}, {}, {}
  local last_uuid
  for _, e in ipairs(entries) do
    self.counts.listed = self.counts.listed + 1
    present[e.key] = true
    if e.key:find(policy_mod.UUID_PATTERN) then last_uuid = e.key end
    if policy_mod.check_key(p, e.key) then
      self.counts.considered = self.counts.considered + 1
      local lm = e.mtime or M.parse_time(e.last_modified)
      if lm and lm < cutoff then
        e.age_s = db_now() - lm
        candidates[#candidates + 1] = e
        keys[#keys + 1] = e.key
      else
        self.counts.recent = self.counts.recent + 1
      end
    end
  end
  if #keys > 0 then
    local owned, err = M.owned(conn, owners, keys)
    if not owned then return nil, err end
    local orphans, okeys = {}, {}
    for _, e in ipairs(candidates) do
      if owned[e.key] then
        self.counts.owned = self.counts.owned + 1
      else
        orphans[#orphans + 1] = e
        okeys[#okeys + 1] = e.key
      end
    end
    self.counts.orphans = self.counts.orphans + #orphans
    if #orphans > 0 then
      if self.apply then
        local results = store:delete_many(okeys)
        local unreachable = 0
        for i, e in ipairs(orphans) do
          local r = results[i]
          if r == true then
            self:orphan(e, "object_deleted")
          else
            if sweep.is_unreachable(r) then unreachable = unreachable + 1 end
            self:orphan(e, "failed", type(r) == "table" and (r.code or r.kind) or tostring(r))
          end
        end
        if unreachable == #orphans then
          return nil, { kind = "s3", code = "unreachable", message = "storage unreachable while deleting orphans" }
        end
      else
        for _, e in ipairs(orphans) do self:orphan(e, "planned") end
      end
    end
  end
  if last_uuid then
    local ok, err = self:check_range(conn, store, owners, range.lo, last_uuid, present)
    if not ok then return nil, err end
    range.lo = last_uuid
  end
  return true
end

function Run:summary(fields)
  local f = { run_id = self.run_id, bucket = self.policy.bucket, apply = self.apply == true,
              duration_ms = math.floor((sys.monotime() - self.started) * 1000 + 0.5) }
  for k, v in pairs(self.counts) do f[k] = v end
  for k, v in pairs(fields or {}) do f[k] = v end
  log.emit(f.error and "error" or "info", "reconcile", f)
  return f
end

local function connect(p)
  local conn, err = pg.connect(config.conninfo())
  if not conn then return nil, err end
  for _, s in ipairs({ ("SET statement_timeout = %d"):format(math.ceil(p.statement_timeout * 1000)),
                       "SET default_transaction_read_only = on" }) do
    local ok
    ok, err = conn:query(s)
    if not ok then
      conn:close()
      return nil, err
    end
  end
  return conn
end

-- The whole run over an open connection and store. Returns exit code.
function M.reconcile(conn, store, owners, p, opts)
  local run = M.new_run({ policy = p, apply = opts.apply, human = not opts.json, page_size = opts.page_size })
  local res, err = conn:query("SELECT extract(epoch FROM now())::float8 AS now")
  if not res then
    run:summary({ error = sweep.errmsg(err) })
    return app.EXIT.unreachable, sweep.errmsg(err)
  end
  local t0, db0 = sys.monotime(), res[1].now
  local function db_now() return db0 + (sys.monotime() - t0) end
  local cutoff = db0 - opts.older_than
  local owner_names = {}
  for i, o in ipairs(owners) do owner_names[i] = o.table .. "." .. o.key_column end
  run:say("reconcile: bucket %s, objects modified more than %s ago (before %s, database clock)",
    p.bucket, human_age(opts.older_than), os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(cutoff)))
  run:say("owners: %s", table.concat(owner_names, ", "))
  local range = {}
  local token
  repeat
    local page
    page, err = store.client:list({ continuation = token, max = run.page_size })
    if not page then
      run:summary({ error = sweep.errmsg(err) })
      return app.EXIT.unreachable, ("storage bucket %q: %s"):format(p.bucket, sweep.errmsg(err))
    end
    local ok
    ok, err = run:page(conn, store, owners, page.keys or {}, db_now, cutoff, range)
    if not ok then
      run:summary({ error = sweep.errmsg(err) })
      return app.EXIT.unreachable, sweep.errmsg(err)
    end
    token = page.truncated and page.next_continuation or nil
  until not token or sys.stopping()
  if sys.stopping() then
    run:summary({ stopped = true })
    return app.EXIT.ok
  end
  local ok
  ok, err = run:check_range(conn, store, owners, range.lo, nil, {})
  if not ok then
    run:summary({ error = sweep.errmsg(err) })
    return app.EXIT.unreachable, sweep.errmsg(err)
  end
  local s = run:summary({ older_than_s = opts.older_than })
  local c = run.counts
  run:say("listed %d objects: %d match key_pattern, %d too recent, %d owned, %d orphaned; "
    .. "%d confirmed rows without object",
    c.listed, c.considered, c.recent, c.owned, c.orphans, c.missing_objects)
  if opts.apply then
    run:say("deleted: %d, failed: %d", c.object_deleted, c.failed)
  elseif c.orphans > 0 then
    run:say("plan only: nothing was deleted; run with --apply to delete the orphaned objects")
  end
  return s.failed > 0 and app.EXIT.failed or app.EXIT.ok
end

local function main(...)
  local opts, rest = config.parse_args({ ... }, {
    apply = "flag", json = "flag", ["older-than"] = "value", ["page-size"] = "value", policy = "value",
    ["log-level"] = "value",
    help = "flag",
  })
  if not opts then return app.usage("reconcile.lua", USAGE, rest) end
  if opts.help then
    io.stdout:write(USAGE)
    return 0
  end
  if #rest > 0 then return app.usage("reconcile.lua", USAGE, "unexpected argument " .. rest[1]) end
  if opts["log-level"] and not log.LEVELS[opts["log-level"]] then
    return app.usage("reconcile.lua", USAGE, "--log-level: expected debug, info, warn or error")
  end
  if not opts.json then log.set_output(io.stderr) end
  local p, err = app.load_policy(opts)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  local older = p.max_age + p.url_lifetime
  if opts["older-than"] then
    older = policy_mod.duration(opts["older-than"])
    if not older or older < p.url_lifetime then
      return app.usage("reconcile.lua", USAGE, ("--older-than: expected a duration of at least the policy's "
        .. "url_lifetime (%ss): a younger object may still gain its row"):format(p.url_lifetime))
    end
  end
  local page_size = PAGE
  if opts["page-size"] then
    page_size = math.tointeger(tonumber(opts["page-size"]))
    if not page_size or page_size < 1 or page_size > PAGE then
      return app.usage("reconcile.lua", USAGE, "--page-size: expected an integer from 1 to 1000")
    end
  end
  local conn
  conn, err = connect(p)
  if not conn then return app.fail(app.EXIT.unreachable, "database: " .. sweep.errmsg(err)) end
  local owners
  owners, err = M.check_owners(conn, p, page_size)
  if not owners then
    conn:close()
    return app.fail(err.kind == "policy" and app.EXIT.usage or app.EXIT.unreachable, sweep.errmsg(err))
  end
  local store, code, msg = app.open_store(p, true)
  if not store then
    conn:close()
    return app.fail(code, msg)
  end
  code, msg = M.reconcile(conn, store, owners, p, { apply = opts.apply, json = opts.json, older_than = older,
                                                      page_size = page_size })
  store:close()
  conn:close()
  if msg then io.stderr:write("resclean: ", log.redact(msg), "\n") end
  return code
end

return main(...)
