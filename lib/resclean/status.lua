-- Status (resclean run status): the backlog of pending uploads, read-only.
-- Pending resources by type and age (database clock), how many the sweep
-- would take now, the oldest, and whether the sweep's claim query can use an
-- index (with the CREATE INDEX statement to run when it cannot); the report
-- as text or as one JSON object.
local cjson = require("cjson")
local plan = require("resclean.plan")
local policy_mod = require("resclean.policy")
local session = require("resclean.session")

local M = {}

-- Age buckets: upper bounds in seconds (exclusive); the last is open.
local BUCKETS = {
  { name = "<1h", upto = 3600 },
  { name = "1h-24h", upto = 86400 },
  { name = "1d-7d", upto = 7 * 86400 },
  { name = ">7d" },
}

local human_age = policy_mod.human_age

local function round1(x) return x and math.floor(x * 10 + 0.5) / 10 end

-- Pending rows by type and age bucket; stale = older than max_age.
local function pending_by_type(conn, p)
  local q = function(s) return conn:quote_ident(s) end
  local cols = {}
  local lo = nil
  for i, b in ipairs(BUCKETS) do
    local cond
    if lo and b.upto then
      cond = ("age >= %d AND age < %d"):format(lo, b.upto)
    elseif b.upto then
      cond = ("age < %d"):format(b.upto)
    else
      cond = ("age >= %d"):format(lo)
    end
    cols[#cols + 1] = ("count(*) FILTER (WHERE %s)::int8 AS b%d"):format(cond, i)
    lo = b.upto
  end
  local type_expr = p.type_column and (q(p.type_column) .. "::text") or "NULL::text"
  local sql = ([[
    SELECT type, count(*)::int8 AS total, %s,
      count(*) FILTER (WHERE age > $1::float8)::int8 AS stale, max(age)::float8 AS oldest
    FROM (SELECT %s AS type, extract(epoch FROM now() - %s)::float8 AS age
          FROM %s WHERE NOT %s) AS pending
    GROUP BY type]]):format(table.concat(cols, ", "), type_expr, q(p.created_column), q(p.table),
    q(p.uploaded_column))
  return conn:query(sql, p.max_age)
end

local function index_in_plan(text)
  return text:match("Index Only Scan using (%S+)") or text:match("Index Scan Backward using (%S+)")
    or text:match("Index Scan using (%S+)") or text:match("Bitmap Index Scan on (%S+)")
end

-- Gather everything. Returns the report table or nil, err.
local function collect(conn, sql, p)
  local now, err = conn:query("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS now")
  if not now then return nil, err end
  local rows
  rows, err = pending_by_type(conn, p)
  if not rows then return nil, err end
  local elig
  elig, err = conn:query(sql.eligible, p.max_age, p.upload_types)
  if not elig then return nil, err end
  local info
  info, err = plan.inspect(conn, sql, p)
  if not info then return nil, err end
  local idx
  idx, err = plan.created_indexes(conn, p)
  if not idx then return nil, err end

  local report = {
    database_time = now[1].now,
    table = p.table,
    max_age_s = p.max_age,
    upload_types = p.type_column and p.upload_types or nil,
    buckets = {},
    types = {},
    pending = { total = 0, upload = 0, stale = 0 },
    eligible = elig[1].n,
    oldest_eligible_age_s = round1(elig[1].oldest),
    oldest_pending_age_s = nil,
  }
  for i, b in ipairs(BUCKETS) do report.buckets[i] = b.name end
  -- Read-only, status may run on a standby: the report says so, and how far behind it is.
  if sql.standby then
    report.server = sql.standby
    if sql.standby == "standby" then
      local lag = conn:query("SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS s")
      report.replay_lag_s = lag and round1(lag[1].s) or nil
    end
  end
  local upload_order = {}
  for i, t in ipairs(p.upload_types) do upload_order[t] = i end
  for _, r in ipairs(rows) do
    local upload = policy_mod.is_upload_type(p, r.type)
    local by_age = {}
    for i, b in ipairs(BUCKETS) do by_age[b.name] = r["b" .. i] end
    report.types[#report.types + 1] = {
      type = r.type or "(all)", upload = upload, total = r.total, by_age = by_age,
      eligible = upload and r.stale or 0, oldest_age_s = round1(r.oldest),
    }
    report.pending.total = report.pending.total + r.total
    if upload then
      report.pending.upload = report.pending.upload + r.total
      report.pending.stale = report.pending.stale + r.stale
      if r.oldest and (report.oldest_pending_age_s or -math.huge) < r.oldest then
        report.oldest_pending_age_s = round1(r.oldest)
      end
    end
  end
  table.sort(report.types, function(a, b)
    if a.upload ~= b.upload then return a.upload end
    local oa, ob = upload_order[a.type], upload_order[b.type]
    if oa and ob then return oa < ob end
    return a.type < b.type
  end)
  local used = (not info.seq_scan) and index_in_plan(info.plan) or nil
  local existing = {}
  for i, r in ipairs(idx) do existing[i] = { name = r.name, definition = r.def, partial = r.partial } end
  report.claim = {
    uses_index = used ~= nil,
    index = used,
    seq_scan = info.seq_scan,
    table_rows_estimate = info.rows,
    indexes_on_created = existing,
    plan = info.plan,
  }
  if not used then
    report.claim.create_index = plan.index_sql(conn, p)
    if #existing > 0 then
      report.claim.note = "an index on the created column exists but the planner chose not to use it "
        .. "(normal for small tables; run ANALYZE if the table is large)"
    end
  end
  return report
end

-- The report for policy p, read in one READ ONLY transaction (one snapshot
-- and one now() for every figure, and nothing left on the server
-- connection: a transaction pool's). read_only: a standby is fine.
-- Returns the report or nil, err.
function M.read(pg, conninfo, p)
  local conn, sql = session.open(pg, conninfo, p, { read_only = true })
  if not conn then return nil, sql end
  local report
  local tx, err = conn:begin()
  if tx then
    report, err = collect(conn, sql, p)
    tx:rollback()
  end
  conn:close()
  if not report then return nil, err end
  return report
end


local function pad(s, n, right)
  s = tostring(s)
  if #s >= n then return s end
  return right and (s .. (" "):rep(n - #s)) or ((" "):rep(n - #s) .. s)
end

-- The report as text, lines of a person's width.
local function text(r)
  local out = {}
  local function add(fmt, ...) out[#out + 1] = select("#", ...) > 0 and fmt:format(...) or fmt end
  add("resclean status: table %s, database time %s", r.table, r.database_time)
  add("policy: stale after %s%s", human_age(r.max_age_s),
    r.upload_types and (", upload types " .. table.concat(r.upload_types, " ")) or "")
  if r.server == "standby" then
    add("server: a standby (read-only replica)%s: its rows may lag the primary's; the sweep, cancel and "
      .. "reconcile need the primary", r.replay_lag_s and (", last replayed change " .. human_age(r.replay_lag_s)
      .. " ago") or "")
  elseif r.server then
    add("server: read-only (transaction_read_only is on): the sweep and cancel need a writable primary")
  end
  add("")
  add("pending resources (not uploaded), by age:")
  local w = 22
  for _, t in ipairs(r.types) do w = math.max(w, #t.type + 2) end
  local head = pad("type", w, true)
  for _, b in ipairs(r.buckets) do head = head .. pad(b, 9) end
  add("  %s%s%s", head, pad("total", 9), pad("eligible", 10))
  local sums = {}
  for _, t in ipairs(r.types) do
    local line = pad(t.type, w, true)
    for i, b in ipairs(r.buckets) do
      line = line .. pad(t.by_age[b], 9)
      sums[i] = (sums[i] or 0) + t.by_age[b]
    end
    line = line .. pad(t.total, 9) .. pad(t.upload and t.eligible or "-", 10)
    if not t.upload then line = line .. "  (never stale: not an upload type)" end
    add("  %s", line)
  end
  if #r.types == 0 then
    add("  (none)")
  else
    local line = pad("total", w, true)
    for i = 1, #r.buckets do line = line .. pad(sums[i], 9) end
    add("  %s%s%s", line, pad(r.pending.total, 9), pad(r.eligible, 10))
  end
  add("")
  add("eligible now:          %d%s", r.eligible,
    r.oldest_eligible_age_s and (" (oldest " .. human_age(r.oldest_eligible_age_s) .. ")") or "")
  add("oldest pending upload: %s", r.oldest_pending_age_s and human_age(r.oldest_pending_age_s) or "none")
  add("")
  local c = r.claim
  if c.uses_index then
    add("claim query: uses index %s", c.index)
  else
    add("claim query: scans the table (%s) -- no index serves it", c.table_rows_estimate > 0
      and ("about " .. c.table_rows_estimate .. " rows") or "size unknown: empty or not analysed yet")
    if c.note then
      add("  note: %s:", c.note)
      for _, i in ipairs(c.indexes_on_created) do add("    %s", i.definition) end
    else
      add("  create the partial index (safe on a live table; outside a transaction):")
    end
    add("    %s", c.create_index)
  end
  return table.concat(out, "\n") .. "\n"
end

-- lua-cjson encodes an empty table as {}: lists become objects keyed by
-- type, and an empty index list is left out.
local function json_form(r)
  local j = {}
  for k, v in pairs(r) do j[k] = v end
  j.types, j.by_type = nil, {}
  for _, t in ipairs(r.types) do
    j.by_type[t.type] = { upload = t.upload, total = t.total, by_age = t.by_age, eligible = t.eligible,
                          oldest_age_s = t.oldest_age_s }
  end
  j.claim = {}
  for k, v in pairs(r.claim) do j.claim[k] = v end
  if #r.claim.indexes_on_created == 0 then j.claim.indexes_on_created = nil end
  return j
end

-- What status prints for report r: the report, or (json) one JSON object.
function M.render(r, json)
  if json then return cjson.encode(json_form(r)) .. "\n" end
  return text(r)
end

return M
