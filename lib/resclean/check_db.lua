-- The preflight's database items (check.lua): database, primary, pooler,
-- schema, grants, index, keys, and, after the storage items, cancel and
-- sweepers; each an item (check_item.lua).
local from_error = require("resclean.check_item").from_error
local plan = require("resclean.plan")
local policy_mod = require("resclean.policy")
local presence = require("resclean.presence")
local session = require("resclean.session")
local sys = require("resclean.sys")

local M = {}

-- Pending rows key() is tried on, and how many of their keys are HEADed (RGW answers
-- a HEAD of a missing key 404 even without s3:GetObject: only an existing object
-- shows the refusal the sweep would meet).
M.KEY_SAMPLE = 20
M.HEAD_SAMPLE = 5

local function conn_name(conn)
  local s = tostring(conn)
  return s:match("%((.-)%)$") or s
end

function M.check_primary(info)
  if info.standby then
    return { item = "primary", status = "fail",
             message = "the database is a standby (pg_is_in_recovery() is true): the sweep deletes rows and "
               .. "needs the primary",
             fix = "point DATABASE_URL at the primary, or list every host with target_session_attrs=read-write" }
  end
  return { item = "primary", status = "ok", message = "a primary (pg_is_in_recovery() is false)" }
end

-- A transaction pool in between (PgBouncer pool_mode=transaction, found by pool.lua)?
-- The batches run through one (nothing outlives a transaction), but LISTEN and the
-- singleton's lock need a session: RESCLEAN_DIRECT_DATABASE_URL, checked too when set.
-- Without it a singleton policy is to fix (the sweep exits 2), and cancels lose their
-- wake-up (a warning: requests are taken at each cycle's start). conn: the check's
-- session on DATABASE_URL; opts.direct_conninfo: RESCLEAN_DIRECT_DATABASE_URL or nil.
function M.check_pooler(conn, p, opts)
  local pool = require("resclean.pool")
  local pooled, err = pool.transaction_pooled(opts.pg, opts.conninfo, conn)
  if pooled == nil then return from_error("pooler", err, "database: ") end
  local direct = opts.direct_conninfo
  if not pooled then
    return { item = "pooler", status = "ok", transaction_pool = false,
             message = "no transaction pool: DATABASE_URL gives sessions (LISTEN and the singleton's lock use it)"
               .. (direct and ("; %s is set and used for them"):format(pool.SETTING) or "") }
  end
  local needs = {}
  if p.cancel_channel and p.cancel_requests_table then needs[#needs + 1] = "LISTEN (the cancel wake-up)" end
  if p.singleton then needs[#needs + 1] = "the singleton's lock" end
  local what = #needs > 0 and table.concat(needs, " and ") or "LISTEN and the singleton's lock"
  local base = "transaction pool detected at DATABASE_URL (PgBouncer pool_mode=transaction: batches run through "
    .. "it, nothing outlives a transaction)"
  if direct then
    local dpooled, derr = pool.transaction_pooled(opts.pg, direct)
    if dpooled == nil then
      return from_error("pooler", derr, base .. "; " .. pool.SETTING .. ": ")
    end
    if dpooled then
      return { item = "pooler", status = "fail", transaction_pool = true,
               message = ("%s; %s leads to a transaction pool too"):format(base, pool.SETTING),
               fix = ("set %s to PostgreSQL itself or to a session pool"):format(pool.SETTING) }
    end
    return { item = "pooler", status = "ok", transaction_pool = true,
             message = ("%s; %s needs a session: %s gives one"):format(base, what, pool.SETTING) }
  end
  local fix = ("set %s to PostgreSQL itself or to a session pool"):format(pool.SETTING)
  if p.singleton then
    return { item = "pooler", status = "fail", transaction_pool = true,
             message = ("%s: %s needs a session: the sweep exits 2"):format(base, what),
             fix = fix .. ", or set singleton = false in the policy" }
  end
  if #needs > 0 then
    return { item = "pooler", status = "warn", transaction_pool = true,
             message = ("%s: %s needs %s: without it cancel requests are taken at the start of each cycle only")
               :format(base, what, pool.SETTING), fix = fix }
  end
  return { item = "pooler", status = "ok", transaction_pool = true,
           message = base .. ": the policy needs no session (no singleton, no cancel wake-up)" }
end

local function check_schema(conn, p)
  local ok, err = session.check_schema(conn, p)
  if ok then
    local types = p.type_column and (", upload_types %s in column %s"):format(table.concat(p.upload_types, " "),
      p.type_column) or ""
    return { item = "schema", status = "ok",
             message = ("table %s: columns %s, %s, %s%s"):format(p.table, p.id_column, p.uploaded_column,
               p.created_column, types) }
  end
  if err.kind == "policy" then
    return { item = "schema", status = "fail", message = err.message,
             fix = ("fix the policy's field '%s' (or the table it names)"):format(err.field or "table") }
  end
  return from_error("schema", err, "database: ")
end

-- What the sweep runs on its table: SELECT ... FOR UPDATE SKIP LOCKED (the claim, the
-- cancel's lock), which needs SELECT and UPDATE on at least one column (no row is
-- updated), and DELETE.
local function check_grants(conn, p)
  local t = conn:quote_ident(p.table)
  local res, err = conn:query([[
    SELECT current_user::text AS who, has_table_privilege($1, 'SELECT') AS sel,
      has_table_privilege($1, 'DELETE') AS del, has_any_column_privilege($1, 'UPDATE') AS upd,
      EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'updated_at'
              AND NOT attisdropped) AS has_updated_at]], t)
  if not res then return from_error("grants", err, "database: ") end
  local r = res[1]
  local who = conn:quote_ident(r.who)
  local missing, fixes = {}, {}
  local tables = {}
  if not r.sel then tables[#tables + 1] = "SELECT" end
  if not r.del then tables[#tables + 1] = "DELETE" end
  if #tables > 0 then
    missing[#missing + 1] = table.concat(tables, ", ")
    fixes[#fixes + 1] = ("GRANT %s ON %s TO %s;"):format(table.concat(tables, ", "), t, who)
  end
  if not r.upd then
    local col = r.has_updated_at and "updated_at" or p.id_column
    missing[#missing + 1] = "UPDATE (on one column at least)"
    fixes[#fixes + 1] = ("GRANT UPDATE (%s) ON %s TO %s; -- SELECT ... FOR UPDATE needs it; no row is updated")
      :format(conn:quote_ident(col), t, who)
  end
  local item = { item = "grants", role = r.who, select = r.sel, delete = r.del, update_column = r.upd }
  if #missing > 0 then
    item.status = "fail"
    item.message = ("role %s lacks %s on table %s (the sweep runs SELECT ... FOR UPDATE SKIP LOCKED and DELETE)")
      :format(r.who, table.concat(missing, " and "), p.table)
    item.fix = table.concat(fixes, " ")
    return item
  end
  item.status = "ok"
  item.message = ("role %s has SELECT, DELETE and UPDATE on a column of %s: what the sweep runs (SELECT ... FOR "
    .. "UPDATE SKIP LOCKED, DELETE)"):format(r.who, p.table)
  return item
end

-- Is there an index the claim can use (first column created_column, valid)? The sweep
-- warns claim_seq_scan when a large table is scanned: here a missing index fails on a
-- table that large, and is a warning below it.
local function check_index(conn, p)
  local idx, err = plan.created_indexes(conn, p)
  if not idx then return from_error("index", err, "database: ") end
  if #idx > 0 then
    local names = {}
    for i, r in ipairs(idx) do names[i] = r.name .. (r.partial and " (partial)" or "") end
    return { item = "index", status = "ok", message = "the claim can use " .. table.concat(names, ", ") }
  end
  local est
  est, err = conn:query("SELECT greatest(reltuples, 0)::int8 AS n FROM pg_class WHERE oid = to_regclass($1)",
    conn:quote_ident(p.table))
  if not est then return from_error("index", err, "database: ") end
  local rows = est[1] and est[1].n or 0
  local large = rows >= plan.LARGE_TABLE_ROWS
  return { item = "index", status = large and "fail" or "warn", rows_estimate = rows,
           message = ("no index on %s(%s): every batch scans the table (%s)%s"):format(p.table,
             p.created_column, rows > 0 and ("about " .. rows .. " rows") or "empty or not analysed yet",
             large and "" or "; fine while it stays small"),
           fix = "create the partial index (outside a transaction, safe on a live table): " .. plan.index_sql(conn, p) }
end

-- key() on a sample of pending rows: the stale ones the sweep would take, else any.
local function check_keys(conn, p)
  local sql = session.build_sql(conn, p)
  local rows, err = conn:query(sql.claim_first, p.max_age, p.upload_types, M.KEY_SAMPLE)
  local which = "stale"
  if rows and #rows == 0 then
    rows, err = conn:query(sql.claim_first, 0, p.upload_types, M.KEY_SAMPLE)
    which = "pending"
  end
  if not rows then return from_error("keys", err, "database: ") end
  if #rows == 0 then
    return { item = "keys", status = "ok", sampled = 0, message = "no pending upload rows to try key() on" }
  end
  local bad, first_bad, example, keys = 0, nil, nil, {}
  for _, row in ipairs(rows) do
    local key, why = policy_mod.row_key(p, row)
    if key then
      example = example or { id = row.id, key = key }
      if #keys < M.HEAD_SAMPLE then keys[#keys + 1] = key end
    else
      bad = bad + 1
      first_bad = first_bad or { id = row.id, why = why }
    end
  end
  local item = { item = "keys", sampled = #rows, bad = bad }
  if bad == #rows then
    item.status = "fail"
    item.message = ("key() fits none of the %d %s rows sampled: row %s: %s"):format(#rows, which, first_bad.id,
      first_bad.why)
    item.fix = ("fix key() (it reads key_columns %s) or key_pattern in the policy %s"):format(
      table.concat(p.key_columns, ", "), p.source or "(defaults)")
  elseif bad > 0 then
    item.status = "warn"
    item.message = ("key() refuses %d of the %d %s rows sampled (row %s: %s): the sweep keeps them (skipped, "
      .. "bad_key)"):format(bad, #rows, which, first_bad.id, first_bad.why)
    item.fix = "check those rows, or key() and key_pattern in the policy"
  else
    item.status = "ok"
    item.message = ("key() gives keys matching key_pattern for the %d %s rows sampled (row %s: %s)"):format(#rows,
      which, example.id, example.key)
  end
  return item, keys
end

-- The cancel path: LISTEN on cancel_channel (the long-running sweep's wake-up), and the
-- table of cancel requests the sweeper reads and deletes, where the policy names one
-- (cancel_requests_table); without that field, the default table is reported when present.
function M.check_cancel(conn, p, pooled)
  local parts, item = {}, { item = "cancel", status = "ok", channel = p.cancel_channel or nil }
  if p.cancel_channel and pooled then
    -- A LISTEN would stay on a pooled server connection: the pooler item says where it goes.
    parts[1] = "LISTEN not tried through the transaction pool (see the pooler item)"
  elseif p.cancel_channel then
    local ch = conn:quote_ident(p.cancel_channel)
    local ok, err = conn:query("LISTEN " .. ch)
    if ok then ok, err = conn:query("UNLISTEN " .. ch) end
    if not ok then
      local failed = from_error("cancel", err, ("LISTEN %s: "):format(p.cancel_channel))
      if failed.status == "fail" then failed.status = "warn" end -- the sweep itself still runs
      return failed
    end
    parts[1] = ("the long-running sweep can LISTEN on %s (a --once run does not listen)"):format(p.cancel_channel)
  else
    parts[1] = "cancel_channel = false: no LISTEN"
  end
  local tbl, required = p.cancel_requests_table, p.cancel_requests_table ~= nil
  if tbl == nil then tbl = "resclean_cancel_requests" end
  if tbl then
    local res = conn:query([[SELECT to_regclass($1) IS NOT NULL AS present, current_user::text AS who,
      CASE WHEN to_regclass($1) IS NOT NULL
           THEN has_table_privilege($1, 'SELECT') AND has_table_privilege($1, 'DELETE') END AS usable]],
      conn:quote_ident(tbl))
    local r = res and res[1]
    if r and r.present then
      item.requests_table = tbl
      if r.usable then
        parts[#parts + 1] = ("requests table %s: SELECT and DELETE granted"):format(tbl)
        -- A listener shows itself with a lock every role sees (presence.lua).
        local l = presence.listeners(conn, tbl)
        if l then
          item.listeners = #l
          parts[#parts + 1] = #l > 0 and ("%d sweeper session%s listening now (pid %d)"):format(#l,
            #l > 1 and "s" or "", l[1].pid)
            or "no sweeper listening now: an application's cancel waits for the next cycle of a sweep (a --once "
              .. "deployment: its next run)"
        end
      else
        item.status = "warn"
        parts[#parts + 1] = ("requests table %s: role %s lacks SELECT or DELETE on it"):format(tbl, r.who)
        item.fix = ("GRANT SELECT, DELETE ON %s TO %s;"):format(conn:quote_ident(tbl), conn:quote_ident(r.who))
      end
    elseif r and required then
      item.status = "warn"
      parts[#parts + 1] = ("requests table %s does not exist: applications cannot ask for cancels"):format(tbl)
      item.fix = "create it with examples/cancel-requests.sql, or set cancel_requests_table = false in the policy"
    end
  end
  item.message = table.concat(parts, "; ")
  return item
end

-- Other sweepers of the table, seen by the locks their sessions hold
-- (presence.lua): one with another bucket, key or upload_types is to fix
-- (rows it deletes keep objects this policy would remove, or the other way
-- round); another max_age alone is a warning (a rolling change of it).
function M.check_sweepers(conn, p)
  local others, err = presence.others(conn, p)
  if not others then return from_error("sweepers", err, "database: ") end
  local fp = presence.fingerprint(p)
  if #others == 0 then
    return { item = "sweepers", status = "ok", fingerprint = fp,
             message = ("no sweeper of %s with another policy is running (this policy's fingerprint: %s)")
               :format(p.table, fp) }
  end
  local serious = false
  for _, o in ipairs(others) do
    for _, d in ipairs(o.differs) do serious = serious or d ~= "max_age" end
  end
  return { item = "sweepers", status = serious and "fail" or "warn", fingerprint = fp,
           other_pid = others[1].pid, other_fingerprint = others[1].fingerprint,
           message = presence.describe(p, others),
           fix = "run one policy per table: stop the other sweeper or give both the same policy file" }
end

-- The database items, through add. Returns the session (kept for the cancel item; nil
-- when none), the host clock's offset from the database's, keys of pending rows,
-- whether the server is a standby, and whether DATABASE_URL is a transaction pool.
function M.check_database(p, opts, add)
  local conn, err = opts.pg.connect(opts.conninfo)
  local res, skew, sample_keys
  if conn then
    local t0 = sys.time()
    res, err = conn:query([[SELECT current_setting('server_version') AS version,
      pg_is_in_recovery() AS standby, extract(epoch FROM clock_timestamp())::float8 AS now]])
    if res then
      skew = (t0 + sys.time()) / 2 - res[1].now
    else
      conn:close()
      conn = nil
    end
  end
  if not conn then
    add(from_error("database", err, "database: "))
    for _, name in ipairs({ "primary", "pooler", "schema", "grants", "index", "keys" }) do
      add({ item = name, status = "skip", message = "not checked: no database session" })
    end
    return nil
  end
  local info = res[1]
  add({ item = "database", status = "ok", server_version = info.version,
        message = ("connected to %s (PostgreSQL %s)"):format(conn_name(conn), info.version) })
  add(M.check_primary(info))
  local pooled = add(M.check_pooler(conn, p, opts)).transaction_pool
  local schema = add(check_schema(conn, p))
  if schema.status ~= "ok" then
    for _, name in ipairs({ "grants", "index", "keys" }) do
      add({ item = name, status = "skip", message = "not checked: the schema check failed" })
    end
    return conn, skew, nil, info.standby, pooled
  end
  add(check_grants(conn, p))
  add(check_index(conn, p))
  local keys_item
  keys_item, sample_keys = check_keys(conn, p)
  add(keys_item)
  return conn, skew, sample_keys, info.standby, pooled
end

return M
