-- Presence: which resclean processes work on this database, shown to every
-- role. Each sweeper session holds session-level *shared* advisory locks
-- (two int4 keys: a class, a value) that say what it is:
--   * a listener (the long-running sweep's LISTEN connection) holds
--     (class "listen <requests table>", 0): `cancel --notify` and `check`
--     look for it, so a request no sweeper will take soon is said to be so;
--   * a sweep's cycle session and its listener hold, for their table, one
--     lock per part of the policy that must agree between two sweepers of
--     one table: bucket, key (key() on a fixed sample row), max_age (the
--     value itself, in seconds) and upload_types; and one for the whole
--     (the fingerprint, 8 hex digits, also on the sweep's lines).
-- pg_locks shows every session's locks to any role (pg_stat_activity hides
-- other roles' queries and states, and application_name is the operator's
-- to choose), and a lock goes with its session: nothing to clean up after
-- a crash. Shared locks never block anyone; the singleton lock (one int8
-- key) is another kind of key and never meets these.
local M = {}

local PARTS = { "bucket", "key", "max_age", "upload_types", "fingerprint" }

-- FNV-1a, 32 bits: the same number in every process, for any string.
local function fnv(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

-- As PostgreSQL's int4 (what pg_advisory_lock_shared(int4, int4) takes;
-- pg_locks shows it back as an unsigned oid).
local function int4(u) return u >= 0x80000000 and u - 0x100000000 or u end

-- The fixed row key() is tried on for the key part: every key column set
-- to one sample value (the upstream key is the id, a UUID).
local SAMPLE = "00000000-0000-4000-8000-000000000000"

local function key_sig(p)
  local row = {}
  for _, c in ipairs(p.key_columns) do row[c] = SAMPLE end
  row[p.id_column] = SAMPLE
  local ok, key = pcall(p.key, row)
  return table.concat(p.key_columns, ",") .. "\0" .. (ok and tostring(key) or "(raised)")
end

-- The policy's parts: part -> unsigned 32-bit value, and the class of each
-- part for p.table.
function M.parts(p)
  local types = {}
  for i, t in ipairs(p.type_column and p.upload_types or {}) do types[i] = t end
  table.sort(types)
  local v = {
    bucket = fnv(p.bucket),
    key = fnv(key_sig(p)),
    max_age = math.min(math.floor(p.max_age), 0x7fffffff),
    upload_types = fnv((p.type_column or "") .. "\0" .. table.concat(types, ",")),
  }
  v.fingerprint = fnv(("%08x %08x %d %08x"):format(v.bucket, v.key, v.max_age, v.upload_types))
  local class = {}
  for _, part in ipairs(PARTS) do class[part] = fnv("resclean " .. p.table .. " " .. part) end
  return v, class
end

-- The fingerprint of p (8 hex digits): equal for two policies that agree
-- on bucket, key, max_age and upload_types.
function M.fingerprint(p)
  return ("%08x"):format((M.parts(p)).fingerprint)
end

-- What the locks of p say, as one string: equal when they would be the same locks.
function M.signature(p)
  local v = M.parts(p)
  return ("%s %08x %d"):format(p.table, v.fingerprint, v.max_age)
end

local function listen_class(requests_table) return fnv("resclean listen " .. requests_table) end

local function lock_all(conn, pairs_)
  local a, b = {}, {}
  for i, kv in ipairs(pairs_) do a[i], b[i] = int4(kv[1]), int4(kv[2]) end
  return conn:query("SELECT count(*)::int AS n FROM (SELECT pg_advisory_lock_shared(a, b) "
    .. "FROM unnest($1::int4[], $2::int4[]) AS t(a, b)) AS s", a, b)
end

local function unlock_all(conn, pairs_)
  local a, b = {}, {}
  for i, kv in ipairs(pairs_) do a[i], b[i] = int4(kv[1]), int4(kv[2]) end
  return conn:query("SELECT count(*) FILTER (WHERE u)::int AS n FROM (SELECT pg_advisory_unlock_shared(a, b) AS u "
    .. "FROM unnest($1::int4[], $2::int4[]) AS t(a, b)) AS s", a, b)
end

local function policy_pairs(p)
  local v, class = M.parts(p)
  local out = {}
  for i, part in ipairs(PARTS) do out[i] = { class[part], v[part] } end
  return out
end

-- Publish p on conn (a session of its own, outside a transaction). Returns
-- a handle for M.release, or nil, err.
function M.hold_policy(conn, p)
  local pp = policy_pairs(p)
  local ok, err = lock_all(conn, pp)
  if not ok then return nil, err end
  return pp
end

function M.release(conn, handle)
  if handle then return unlock_all(conn, handle) end
  return true
end

-- Say on conn that its process listens for the cancel requests of table t.
function M.hold_listener(conn, t)
  local pp = { { listen_class(t), 0 } }
  local ok, err = lock_all(conn, pp)
  if not ok then return nil, err end
  return pp
end

-- The sessions (other than conn's own) of listeners for requests table t:
-- a list of {pid, role, application_name}, or nil, err.
function M.listeners(conn, t)
  return conn:query([[SELECT l.pid, a.usename::text AS role, a.application_name AS app
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.pid <> pg_backend_pid()
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::int8 = $1 AND l.objid::int8 = 0
    ORDER BY l.pid]], listen_class(t))
end

-- Other sweepers of p.table whose policy differs from p. Returns a list of
-- {pid, role, app, fingerprint (hex), differs (list of part names),
-- max_age (theirs, seconds)}, one per other policy (the first session
-- found holding it, pids: how many sessions), or nil, err.
function M.others(conn, p)
  local v, class = M.parts(p)
  local classes, part_of = {}, {}
  for i, part in ipairs(PARTS) do
    classes[i] = class[part]
    part_of[class[part]] = part
  end
  local res, err = conn:query([[SELECT l.pid, l.classid::int8 AS class, l.objid::int8 AS value,
      a.usename::text AS role, a.application_name AS app
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.pid <> pg_backend_pid()
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::int8 = ANY($1::int8[])
    ORDER BY l.pid]], classes)
  if not res then return nil, err end
  local by_pid, order = {}, {}
  for _, r in ipairs(res) do
    local s = by_pid[r.pid]
    if not s then
      s = { pid = r.pid, role = r.role, app = r.app, values = {} }
      by_pid[r.pid] = s
      order[#order + 1] = s
    end
    s.values[part_of[r.class]] = r.value
  end
  local out, seen = {}, {}
  for _, s in ipairs(order) do
    local fp = s.values.fingerprint
    if fp and fp ~= v.fingerprint then
      local hex = ("%08x"):format(fp)
      if seen[hex] then
        seen[hex].sessions = seen[hex].sessions + 1
      else
        local differs = {}
        for _, part in ipairs(PARTS) do
          if part ~= "fingerprint" and s.values[part] ~= v[part] then differs[#differs + 1] = part end
        end
        local o = { pid = s.pid, role = s.role, app = s.app, fingerprint = hex, differs = differs,
                    max_age = s.values.max_age, sessions = 1 }
        seen[hex] = o
        out[#out + 1] = o
      end
    end
  end
  return out
end

-- One sentence on others (M.others) against p, for a warning or check.
function M.describe(p, others)
  local human = require("resclean.policy").human_age
  local parts = {}
  for _, o in ipairs(others) do
    local diff = {}
    for _, d in ipairs(o.differs) do
      diff[#diff + 1] = d == "max_age" and ("max_age (its %s)"):format(human(o.max_age)) or d
    end
    parts[#parts + 1] = ("pid %d (role %s, application_name %s%s) with policy %s: another %s"):format(o.pid,
      tostring(o.role or "?"), tostring(o.app or "?"),
      o.sessions > 1 and (", " .. o.sessions .. " sessions") or "", o.fingerprint,
      #diff > 0 and table.concat(diff, ", ") or "policy")
  end
  return ("another sweeper works table %s with a different policy: %s; this one's is %s (bucket %s, max_age %s, "
    .. "key_columns %s, upload_types %s)"):format(p.table, table.concat(parts, "; "), M.fingerprint(p), p.bucket,
    human(p.max_age), table.concat(p.key_columns, ","),
    p.type_column and table.concat(p.upload_types, ",") or "(all rows)")
end

return M
