-- A session: the fresh connection a cycle, a cancel or the status report
-- works on (never the application's pool), set up before anything is
-- touched: timeouts, the policy's table and columns checked (a typo is a
-- configuration error, exit 2), the SQL built from the policy and the
-- statements every batch runs prepared.
--
-- Nothing is left on the server connection, so DATABASE_URL may point at a
-- transaction pool (PgBouncer pool_mode=transaction): the timeouts are SET
-- LOCAL in every transaction (conn:per_transaction), statements outside one
-- run in a transaction of their own, and the "prepared" statements are SQL
-- kept per session and run unnamed (resclean.pg).
local errors = require("resclean.errors")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local runs = require("resclean.run")

local M = {}

local build_sql, prepare

-- Run body(conn, sql, run) on a session of its own, closed after. body
-- returns the exit code and summary fields. Returns exit code, summary
-- (logged as event), run.
function M.with(opts, event, body)
  local run = runs.new(opts)
  local conn, sql = M.open(opts.pg, opts.conninfo, opts.policy)
  if not conn then
    local code, extra = runs.ended_on(sql)
    extra.exit_code = code
    return code, run:summary(event, extra), run
  end
  run.db_pid = conn:backend_pid()
  local code, extra = body(conn, sql, run)
  conn:close()
  extra = extra or {}
  extra.exit_code = code
  return code, run:summary(event, extra), run
end

-- The statements every transaction of a session starts with: the policy's
-- timeouts (SET LOCAL: they end with the transaction), no idle timeout (a
-- batch waits on the storage with its transaction open), and READ ONLY for
-- a session that only reads.
function M.per_transaction(p, read_only)
  local s = {
    ("SET LOCAL statement_timeout = %d"):format(math.ceil(p.statement_timeout * 1000)),
    ("SET LOCAL lock_timeout = %d"):format(math.ceil(p.lock_timeout * 1000)),
    "SET LOCAL idle_in_transaction_session_timeout = 0",
  }
  if read_only then table.insert(s, 1, "SET TRANSACTION READ ONLY") end
  return table.concat(s, "; ")
end

-- Open the session: fresh connection, the server checked (a standby is
-- refused: M.server_role), timeouts (per transaction), schema check,
-- prepared statements. how.read_only (status): a standby is accepted,
-- sql.standby says so, and every transaction is READ ONLY.
-- Returns conn, sql or nil, err.
function M.open(pg, conninfo, p, how)
  local conn, err = pg.connect(conninfo)
  if not conn then return nil, err end
  local role
  role, err = M.server_role(conn, how)
  -- After server_role, which reads transaction_read_only as the server has it.
  conn:per_transaction(M.per_transaction(p, how and how.read_only))
  local sql
  if role then sql, err = prepare(conn, p) end
  if not sql then
    conn:close()
    return nil, err
  end
  sql.standby = role ~= "primary" and role or nil
  return conn, sql
end

-- What the server is, asked right after connecting: "primary", or for a
-- read-only script (how.read_only) "standby" (pg_is_in_recovery()) or
-- "read_only" (transaction_read_only on a primary). A script that writes is
-- refused there, before anything is prepared, with a message that names
-- the standby and target_session_attrs (errors.STANDBY_HINT): transient
-- (exit 3), so that a failover in progress heals at the next cycle; how.refuse
-- (reconcile) makes a standby a configuration error (exit 2) with that text.
-- Returns the role or nil, err.
function M.server_role(conn, how)
  how = how or {}
  local res, err = conn:query("SELECT pg_is_in_recovery() AS standby, "
    .. "current_setting('transaction_read_only') = 'on' AS read_only, "
    .. "coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'a local socket') AS server")
  if not res then return nil, err end
  local r = res[1]
  local role = r.standby and "standby" or r.read_only and "read_only" or "primary"
  if role == "primary" then M.note_failover(conn, r.server) end
  if role == "primary" or how.read_only then return role end
  if r.standby and how.refuse then
    return nil, errors.new("config", ("the server at %s is a standby (pg_is_in_recovery() is true): %s")
      :format(r.server, how.refuse), { code = "standby" })
  end
  local what = r.standby and "a standby (pg_is_in_recovery() is true)"
    or "read-only (transaction_read_only is on: default_transaction_read_only is set for the role, the "
      .. "database or the server)"
  return nil, errors.new("transient", ("the server at %s is %s"):format(r.server, what),
    { code = "standby", hint = errors.STANDBY_HINT })
end

function prepare(conn, p)
  local ok, err = M.check_schema(conn, p)
  if not ok then return nil, err end
  local sql = build_sql(conn, p)
  -- Kept once per session (parsed by the server now, run unnamed): the
  -- claim and the delete run every batch.
  for name, text in pairs({ resclean_claim_first = sql.claim_first .. " FOR UPDATE SKIP LOCKED",
                            resclean_claim_next = sql.claim_next .. " FOR UPDATE SKIP LOCKED",
                            resclean_delete = sql.delete }) do
    ok, err = conn:prepare(name, text)
    if not ok then return nil, err end
  end
  -- The referenced pre-check is an optimisation: tried once here, outside
  -- any transaction (a failure inside one would abort it), else left out.
  local ref = M.referenced_sql(conn, p)
  if ref and conn:prepare("resclean_referenced", ref) and conn:exec_prepared("resclean_referenced", {}) then
    sql.referenced = ref
  end
  return sql
end

-- The singleton's lock for a cycle (policy singleton = true; else a no-op
-- lock at once): a session advisory lock, held until the returned value is closed
-- (a to-be-closed variable) or the session ends. It needs a session: it is
-- taken on a connection of its own to RESCLEAN_DIRECT_DATABASE_URL when
-- set, else on conn once DATABASE_URL is shown not to be a transaction pool
-- (pool.lua). Through one it is a configuration error (exit 2) naming the
-- setting: never a lock left on a pooled server connection for whoever
-- gets it next, never a silent no-op. Returns the lock, false when another
-- sweeper holds it, or nil, err.
local NO_LOCK = setmetatable({}, { __close = function() end })

function M.singleton(conn, run, opts)
  if not run.policy.singleton then return NO_LOCK end
  local pool = require("resclean.pool")
  local ci, which = pool.session_conninfo(opts.conninfo)
  local ok, err = pool.check_session(opts.pg, ci, which, "policy field 'singleton' (an advisory lock held for "
    .. "the cycle)", ", or set singleton = false (sweepers then share the work through SKIP LOCKED)",
    which == "DATABASE_URL" and conn or nil)
  if not ok then return nil, err end
  local lconn = conn
  if which == pool.SETTING then
    lconn, err = opts.pg.connect(ci)
    if not lconn then return nil, err end
  end
  local function done()
    if lconn ~= conn then lconn:close() end
  end
  local key = run.policy.table
  local res
  res, err = lconn:query("SELECT pg_try_advisory_lock(hashtext('resclean:' || $1)::int8) AS got", key)
  if not res or not res[1].got then
    done()
    if not res then return nil, err end
    return false
  end
  return setmetatable({}, { __close = function()
    if lconn:status() == "ok" then
      lconn:query("SELECT pg_advisory_unlock(hashtext('resclean:' || $1)::int8)", key)
    end
    done()
  end })
end

-- A failover seen from one process (a long-running sweep): the cluster's
-- timeline (the first 8 hex digits of the current WAL file's name) grew
-- since its last session, so a standby was promoted. Logged once per
-- change (failover), saying what the log shows next: a batch the old
-- primary acknowledged just before may not have reached the standby
-- (asynchronous replication), its rows come back and are logged
-- record_only. Best effort: a server that refuses the query is not asked.
local seen_timeline
function M.note_failover(conn, server)
  local res = conn:query("SELECT (SELECT system_identifier FROM pg_control_system())::text AS system, "
    .. "pg_walfile_name(pg_current_wal_lsn()) AS walfile")
  if not res or not res[1].walfile then return end
  local now = { system = res[1].system, timeline = tonumber(res[1].walfile:sub(1, 8), 16) }
  local before = seen_timeline
  seen_timeline = now
  if before and before.system == now.system and now.timeline and before.timeline
      and now.timeline > before.timeline then
    log.warn("failover", { server = server, timeline = now.timeline, previous_timeline = before.timeline,
      message = "the database's timeline changed since the last session: a standby was promoted. A batch the "
        .. "old primary acknowledged just before may not have reached it (asynchronous replication): its "
        .. "objects are gone, its rows are back, and the sweep removes them now, logged record_only" })
  end
end

-- The columns a claimed row comes with (the shape key(row) sees, which
-- reconcile gives it too): id, _created, age_s, the key columns, _type.
function M.row_columns(conn, p)
  local q = function(s) return conn:quote_ident(s) end
  local id, created = q(p.id_column), q(p.created_column)
  local cols = { ("%s::text AS id"):format(id), ("%s::text AS _created"):format(created),
    ("extract(epoch FROM now() - %s)::float8 AS age_s"):format(created) }
  for _, c in ipairs(p.key_columns) do
    if c ~= "id" then cols[#cols + 1] = ("%s::text AS %s"):format(q(c), q(c)) end
  end
  if p.type_column then cols[#cols + 1] = ("%s::text AS _type"):format(q(p.type_column)) end
  return table.concat(cols, ", ")
end

-- SQL built once per session from the policy; identifiers quoted.
function build_sql(conn, p)
  local q = function(s) return conn:quote_ident(s) end
  local t, id, created = q(p.table), q(p.id_column), q(p.created_column)
  local cols = M.row_columns(conn, p)
  local select = "SELECT " .. cols .. " FROM " .. t
  local stale = ("NOT %s AND %s < now() - make_interval(secs => $1::float8)"):format(q(p.uploaded_column), created)
  if p.type_column then
    stale = stale .. (" AND %s::text = ANY($2::text[])"):format(q(p.type_column))
  else
    -- $2 is still bound (the same parameters for every statement): give it a type.
    stale = stale .. " AND $2::text[] IS NOT NULL"
  end
  -- Qualified: a bare "id" in ORDER BY would name the id::text output
  -- column, sorting by text while the keyset below compares uuids.
  local order = (" ORDER BY %s.%s, %s.%s LIMIT $3::int"):format(t, created, t, id)
  local after = (" AND (%s.%s, %s.%s) > ($4, $5)"):format(t, created, t, id)
  local s = {
    eligible = ("SELECT count(*)::int8 AS n, max(extract(epoch FROM now() - %s))::float8 AS oldest FROM %s WHERE %s")
      :format(created, t, stale),
    claim_first = select .. " WHERE " .. stale .. order,
    claim_next = select .. " WHERE " .. stale .. after .. order,
    delete = ("DELETE FROM %s WHERE %s = ANY($1) RETURNING %s::text AS id"):format(t, id, id),
    lock_ids = select .. (" WHERE %s = $1 FOR UPDATE"):format(id),
    uploaded = ("%s AS _uploaded"):format(q(p.uploaded_column)),
  }
  s.lock_one = ("SELECT %s, %s FROM %s WHERE %s = $1 FOR UPDATE"):format(cols, s.uploaded, t, id)
  return s
end
M.build_sql = build_sql

-- Check that the policy's table and columns exist, so a typo is a clear
-- configuration error (exit 2) before anything is touched.
function M.check_schema(conn, p)
  local res, err = conn:query(
    "SELECT column_name::text AS c, data_type::text AS t FROM information_schema.columns "
    .. "WHERE table_schema = ANY(current_schemas(false)) AND table_name = $1", p.table)
  if not res then return nil, err end
  local function bad(field, msg) return nil, policy_mod.error(p.source, field, msg) end
  if #res == 0 then
    -- information_schema shows only what the role may use: say which it is.
    local seen = conn:query("SELECT to_regclass($1) IS NOT NULL AS e, current_user::text AS role",
      conn:quote_ident(p.table))
    if seen and seen[1] and seen[1].e then
      return bad("table", ("table %q exists but role %s has no privilege on it: grant it the privileges in the README "
        .. "(Deploy: least privilege)"):format(p.table, seen[1].role))
    end
    return bad("table", ("table %q does not exist"):format(p.table))
  end
  local have = {}
  for _, r in ipairs(res) do have[r.c] = r.t end
  local need = { id_column = p.id_column, uploaded_column = p.uploaded_column,
                 created_column = p.created_column, type_column = p.type_column }
  for i, c in ipairs(p.key_columns) do need["key_columns[" .. i .. "]"] = c end
  local fields = {}
  for field in pairs(need) do fields[#fields + 1] = field end
  table.sort(fields)
  for _, field in ipairs(fields) do
    local col = need[field]
    if not have[col] then
      return bad(field, ("column %q does not exist in table %q"):format(col, p.table))
    end
  end
  -- The claim reads NOT uploaded_column and now() - created_column: other types fail there,
  -- mid-run, as an SQL error that would look like an unreachable database.
  if have[p.uploaded_column] ~= "boolean" then
    return bad("uploaded_column", ("column %q is %s, expected boolean"):format(p.uploaded_column,
      have[p.uploaded_column]))
  end
  local t = have[p.created_column]
  if t ~= "timestamp with time zone" and t ~= "timestamp without time zone" and t ~= "date" then
    return bad("created_column", ("column %q is %s, expected a timestamp"):format(p.created_column, t))
  end
  if p.type_column then
    local ok, uerr = M.check_upload_types(conn, p, bad)
    if not ok then return nil, uerr end
  end
  return true
end

-- When the type column is an enum, every upload type must be one of its
-- labels: a typo ("WORDLIST") would otherwise match nothing, every cycle,
-- and switch the sweeper off without a word. A label with no rows is fine.
function M.check_upload_types(conn, p, bad)
  local res, err = conn:query([[
    SELECT e.enumlabel::text AS label FROM pg_attribute a JOIN pg_enum e ON e.enumtypid = a.atttypid
    WHERE a.attrelid = to_regclass($1) AND a.attname = $2 ORDER BY e.enumsortorder]],
    conn:quote_ident(p.table), p.type_column)
  if not res then return nil, err end
  if #res == 0 then return true end -- not an enum: any text may match
  local known, labels = {}, {}
  for i, r in ipairs(res) do
    known[r.label] = true
    labels[i] = r.label
  end
  for i, u in ipairs(p.upload_types) do
    if not known[u] then
      return bad(("upload_types[%d]"):format(i), ("%q is not a label of the enum of column %q (known: %s)")
        :format(u, p.type_column, table.concat(labels, ", ")))
    end
  end
  return true
end

-- A query for the ids among $1 that a row elsewhere still references, from
-- the single-column foreign keys onto the policy's id column that block a
-- delete (NO ACTION, RESTRICT): one hashed scan of each referencing table
-- per batch instead of a failing DELETE. nil when there are none, or they
-- cannot be read; keys it does not cover still end in 23503 and are found
-- there (batch.lua). Our FOR UPDATE lock keeps new references out until we
-- commit (inserting one needs a KEY SHARE lock on the row).
function M.referenced_sql(conn, p)
  local res = conn:query([[
    SELECT c.conrelid::regclass::text AS tbl, a.attname::text AS col
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]
    WHERE c.contype = 'f' AND c.confrelid = to_regclass($1) AND cardinality(c.conkey) = 1
      AND r.attname = $2 AND c.confdeltype IN ('a', 'r')
    ORDER BY 1, 2]], conn:quote_ident(p.table), p.id_column)
  if not res or #res == 0 then return nil end
  local t, id = conn:quote_ident(p.table), conn:quote_ident(p.id_column)
  local refs = {}
  for i, r in ipairs(res) do
    -- regclass prints the table quoted (and qualified) as needed.
    refs[i] = ("%s.%s IN (SELECT %s FROM %s)"):format(t, id, conn:quote_ident(r.col), r.tbl)
  end
  return ("SELECT %s.%s::text AS id FROM %s WHERE %s.%s = ANY($1) AND (%s)"):format(t, id, t, t, id,
    table.concat(refs, " OR "))
end

return M
