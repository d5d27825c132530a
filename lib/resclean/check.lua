-- The preflight (resclean run check): everything a sweep needs, verified
-- without deleting anything, one item at a time:
--   policy, max_age, database, primary, pooler, schema, grants, index, keys,
--   bucket, head, delete, clock, metrics, cancel, sweepers
-- Each item is {item, status, message[, fix][, details...]}, status one of
--   ok           nothing to do
--   warn         works, but worth a look (exit code unchanged)
--   fail         a setting to fix: fix says which and how
--   unreachable  the database or the storage did not answer
--   skip         not checked (message says why)
-- M.exit_code: 2 when any item fails, else 3 when any is unreachable, else 0.
-- Nothing is deleted: the only write is a DeleteObjects of a random key that
-- a HEAD just found missing (harmless: S3 answers it "deleted" either way).
local errors = require("resclean.errors")
local log = require("resclean.log")
local plan = require("resclean.plan")
local policy_mod = require("resclean.policy")
local presence = require("resclean.presence")
local session = require("resclean.session")
local sys = require("resclean.sys")

local M = {}

-- max_age must exceed url_lifetime by this much: an upload may start at the
-- last second of its URL and take a while, and S3 accepts a URL signed by a
-- clock up to 15 minutes behind its own.
M.MAX_AGE_MARGIN = 900
-- Clock differences (seconds) worth a warning, and those to fix: S3 refuses
-- requests signed 15 minutes off, and the logs' times must agree with the
-- database's.
M.SKEW_WARN = 30
M.SKEW_FAIL = 300
-- Pending rows key() is tried on, and how many of their keys are HEADed (RGW answers
-- a HEAD of a missing key 404 even without s3:GetObject: only an existing object
-- shows the refusal the sweep would meet).
M.KEY_SAMPLE = 20
M.HEAD_SAMPLE = 5

M.EXIT = errors.EXIT

local human = policy_mod.human_age

-- 2 when something is to fix, else 3 when something did not answer, else 0.
function M.exit_code(items)
  local unreachable = false
  for _, it in ipairs(items) do
    if it.status == "fail" then return M.EXIT.usage end
    if it.status == "unreachable" then unreachable = true end
  end
  return unreachable and M.EXIT.unreachable or M.EXIT.ok
end

-- An item from an error of the primitives: unreachable when transient,
-- else fail, with the hint as the fix.
local function from_error(name, err, prefix, fix)
  local class, hint = errors.classify(err)
  local quiet = err
  if type(err) == "table" then -- the hint goes in fix, not in the message too
    quiet = {}
    for k, v in pairs(err) do quiet[k] = v end
    quiet.no_hint = true
  end
  local msg = (prefix or "") .. errors.message(quiet)
  if class == "transient" then return { item = name, status = "unreachable", message = msg } end
  return { item = name, status = "fail", message = msg, fix = fix or hint or "see the message" }
end

local function probe_key()
  local hex = {}
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(16) or ""
  if f then f:close() end
  for i = 1, 16 do
    local b = bytes:byte(i) or math.random(0, 255)
    hex[i] = ("%02x"):format(b)
  end
  return "resclean-check-" .. table.concat(hex)
end
M.probe_key = probe_key

-- ------------------------------------------------------------------ policy

local function check_max_age(p)
  local need = p.url_lifetime + M.MAX_AGE_MARGIN
  local msg = ("max_age %s, url_lifetime %s"):format(human(p.max_age), human(p.url_lifetime))
  if p.max_age < need then
    return { item = "max_age", status = "fail", max_age_s = p.max_age, url_lifetime_s = p.url_lifetime,
             message = msg .. (": max_age leaves less than %s after a presigned URL expires; an upload still "
               .. "in progress could be deleted"):format(human(M.MAX_AGE_MARGIN)),
             fix = ("set max_age to at least url_lifetime + %s (%s) in the policy"):format(human(M.MAX_AGE_MARGIN),
               human(need)) }
  end
  return { item = "max_age", status = "ok", max_age_s = p.max_age, url_lifetime_s = p.url_lifetime,
           message = msg .. (": uploads get %s past their URL's expiry"):format(human(p.max_age - p.url_lifetime)) }
end

-- ------------------------------------------------------------------ database

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
local function check_cancel(conn, p, pooled)
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
local function check_sweepers(conn, p)
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

-- ------------------------------------------------------------------ storage

local S3_FIX = {
  head = "allow s3:GetObject on arn:aws:s3:::%s/* (or set verify = false in the policy: outcomes are then "
    .. "reported unverified)",
  delete = "allow s3:DeleteObject on arn:aws:s3:::%s and arn:aws:s3:::%s/* (RGW checks DeleteObjects against "
    .. "the bucket ARN)",
}

local function s3_item(name, err, p)
  local item = from_error(name, err, ("%s: "):format(name == "head" and "HEAD" or "DeleteObjects"))
  if item.status == "fail" and (err.code == "AccessDenied" or err.code == "Forbidden" or err.status == 403) then
    item.message = ("%s refused: %s"):format(name == "head" and "HEAD" or "DeleteObjects",
      err.code == "Forbidden" and "403 Forbidden" or tostring(err.code))
    item.fix = S3_FIX[name]:format(p.bucket, p.bucket)
  end
  return item
end

-- ------------------------------------------------------------------ clock

local function signed(s)
  local n = s >= 0 and math.floor(s + 0.5) or -math.floor(-s + 0.5)
  if n == 0 then return "in step with" end
  return ("%d s %s"):format(math.abs(n), n > 0 and "ahead of" or "behind")
end

local function check_clock(db, s3, s3_refused)
  local parts, worst = {}, 0
  local item = { item = "clock" }
  if db then
    item.skew_database_s = math.floor(db * 10 + 0.5) / 10
    parts[#parts + 1] = ("%s the database's now()"):format(signed(db))
    worst = math.max(worst, math.abs(db))
  end
  if s3 then
    item.skew_s3_s = s3
    parts[#parts + 1] = ("%s S3's Date"):format(signed(s3))
    worst = math.max(worst, math.abs(s3) - 1) -- Date has whole seconds
  end
  if #parts == 0 then
    if s3_refused then
      item.status, item.message = "fail", "S3 refused a request as RequestTimeTooSkewed"
      item.fix = "synchronise the host clock (NTP)"
      return item
    end
    item.status, item.message = "skip", "neither the database nor S3 answered with its time"
    return item
  end
  item.message = "the host clock is " .. table.concat(parts, " and ")
  if worst > M.SKEW_FAIL or s3_refused then
    item.status = "fail"
    item.fix = "synchronise the host clock (NTP): S3 refuses requests signed 15 minutes off, and ages and log "
      .. "times must agree with the database"
  elseif worst > M.SKEW_WARN then
    item.status = "warn"
    item.fix = "check NTP on the host"
  else
    item.status = "ok"
  end
  return item
end

-- ------------------------------------------------------------------ the run

-- The database items, through add. Returns the session (kept for the cancel item; nil
-- when none), the host clock's offset from the database's, keys of pending rows,
-- whether the server is a standby, and whether DATABASE_URL is a transaction pool.
local function check_database(p, opts, add)
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

-- HEAD of the probe key (and S3's clock from its reply), then of keys of pending rows:
-- read-only, and the only way to meet a refused GetObject. Returns the head item's
-- parts: head result or nil, err, whether the probe key exists, objects found, server
-- time and when it was read.
local function head_probe(store, key, sample_keys)
  local t0 = sys.time()
  local head, herr = store.client:head(key)
  local server_time = (head or herr or {}).server_time
  local at = (t0 + sys.time()) / 2
  local probe_exists = head ~= nil and head.exists
  local found = 0
  if head and sample_keys and #sample_keys > 0 then
    for _, r in ipairs(store.client:head_many(sample_keys, { concurrency = 4 })) do
      if r.err then
        head, herr = nil, r.err
        break
      end
      if r.exists then found = found + 1 end
    end
  end
  return head, herr, probe_exists, found, server_time, at
end

local function head_item(p, key, head, herr, found, nsample)
  if head then
    local it = { item = "head", status = "ok", probe_key = key, message = ("HEAD permitted (probe key %s: %s; "
      .. "%d keys of pending rows: %d found)%s"):format(key, head.exists and "found" or "not found", nsample, found,
      found == 0 and "; no existing object was tried: a missing key answers 404 even without s3:GetObject" or "") }
    if not p.verify then it.message = it.message .. "; unused: the policy sets verify = false" end
    return it
  end
  if not p.verify then
    return { item = "head", status = "warn", probe_key = key,
             message = "HEAD refused (" .. errors.message(herr) .. "); the policy sets verify = false, so the "
               .. "sweep sends none and reports outcomes unverified (deleted)" }
  end
  local it = s3_item("head", herr, p)
  it.probe_key = key
  if herr.key and herr.key ~= key then it.message = ("%s (key %s)"):format(it.message, herr.key) end
  return it
end

-- The storage items, through add. Returns S3's clock offset (host minus S3, seconds) or
-- nil, and whether S3 refused a request as skewed.
local function check_storage(p, opts, add, sample_keys)
  local store, code, msg = opts.open_store(p)
  if not store then
    add({ item = "bucket", status = code == M.EXIT.unreachable and "unreachable" or "fail", message = msg,
          fix = code ~= M.EXIT.unreachable and "see the message" or nil })
    add({ item = "head", status = "skip", message = "not checked: no storage client" })
    add({ item = "delete", status = "skip", message = "not checked: no storage client" })
    return nil, false
  end
  local refused = false
  local ok, err = store:check()
  if ok then
    add({ item = "bucket", status = "ok", message = ("bucket %s listed"):format(p.bucket) })
  else
    local bcode, bmsg, fix = require("resclean.app").store_check_failure(store.opts.endpoint, p, err)
    if fix and bmsg:sub(-#fix - 3) == " (" .. fix .. ")" then bmsg = bmsg:sub(1, -#fix - 4) end
    add({ item = "bucket", status = bcode == M.EXIT.unreachable and "unreachable" or "fail", message = bmsg,
          fix = fix })
    refused = err.code == "RequestTimeTooSkewed"
  end
  local key = probe_key()
  local head, herr, probe_exists, found, server_time, at = head_probe(store, key, ok and sample_keys or nil)
  if herr and herr.code == "RequestTimeTooSkewed" then refused = true end
  if not ok then
    add({ item = "head", status = "skip", message = "not checked: the bucket check failed" })
    add({ item = "delete", status = "skip", message = "not checked: the bucket check failed" })
  else
    local hi = add(head_item(p, key, head, herr, found, sample_keys and #sample_keys or 0))
    if probe_exists then
      add({ item = "delete", status = "skip", message = ("the probe key %s exists: not sent"):format(key) })
    elseif hi.status == "unreachable" then
      add({ item = "delete", status = "skip", message = "not checked: the storage did not answer" })
    else
      -- Only a key a HEAD found missing, or could not look at (refused): a random 128-bit
      -- name no upload has. S3 answers a missing key "deleted".
      local res = store:delete_many({ key }, 1, { quiet = false })
      if res[1] == true then
        add({ item = "delete", status = "ok", probe_key = key,
              message = ("DeleteObjects permitted (probe key %s: nothing to delete)"):format(key) })
      else
        local it = s3_item("delete", res[1], p)
        it.probe_key = key
        add(it)
      end
    end
  end
  store:close()
  -- Date has whole seconds: the server's time is, on average, half a second past it.
  return server_time and math.floor(at - (server_time + 0.5) + 0.5) or nil, refused
end

-- opts: load_policy() -> p | nil, err; pg; conninfo; direct_conninfo (or nil); open_store(p) -> store | nil, code,
-- msg (unchecked); metrics_file (or nil); emit(item), called as each item is known.
-- Returns the items and the exit code.
function M.run(opts)
  local items = {}
  local function add(item)
    item.message = log.redact(item.message or "")
    if item.fix then item.fix = log.redact(item.fix) end
    items[#items + 1] = item
    if opts.emit then opts.emit(item) end
    return item
  end

  local p, perr = opts.load_policy()
  if not p then
    add({ item = "policy", status = "fail", message = perr.message,
          fix = "fix the policy file (the message names it and the field); nothing else was checked" })
    return items, M.exit_code(items)
  end
  add({ item = "policy", status = "ok", source = p.source,
        message = ("%s: table %s, bucket %s, batch_size %d, verify %s"):format(p.source, p.table, p.bucket,
          p.batch_size, tostring(p.verify)) })
  add(check_max_age(p))

  local conn, db_skew, sample_keys, standby, pooled = check_database(p, opts, add)
  local s3_skew, s3_refused = check_storage(p, opts, add, sample_keys)
  add(check_clock(db_skew, s3_skew, s3_refused))

  if opts.metrics_file then
    local ok, err = require("resclean.metrics").new(opts.metrics_file):check()
    if ok then
      add({ item = "metrics", status = "ok", message = ("metrics file %s can be written"):format(opts.metrics_file) })
    else
      add({ item = "metrics", status = "fail", message = err.message,
            fix = "give --metrics-file a folder resclean's user can create files in" })
    end
  else
    add({ item = "metrics", status = "skip", message = "not configured (check --metrics-file FILE checks it)" })
  end

  if conn and standby then
    -- LISTEN is refused during recovery: the primary item already says what to fix.
    add({ item = "cancel", status = "skip", message = "not checked: the database is a standby" })
    add({ item = "sweepers", status = "skip", message = "not checked: the database is a standby" })
    conn:close()
  elseif conn then
    add(check_cancel(conn, p, pooled))
    add(check_sweepers(conn, p))
    conn:close()
  else
    add({ item = "cancel", status = "skip", message = "not checked: no database session" })
    add({ item = "sweepers", status = "skip", message = "not checked: no database session" })
  end
  return items, M.exit_code(items)
end

return M
