-- Connection poolers. Everything resclean runs in a transaction leaves the
-- server connection as it found it (session.lua), so DATABASE_URL may point
-- at a transaction pool (PgBouncer pool_mode=transaction). Two things need
-- a session of their own, which such a pool does not give: LISTEN (a
-- notification goes to whichever client holds the server connection then)
-- and the singleton's advisory lock (it stays on the server connection,
-- held for whoever gets it next). They go to RESCLEAN_DIRECT_DATABASE_URL
-- when it is set, else to DATABASE_URL once it is shown not to be a
-- transaction pool; otherwise the listener is off with a warning and a
-- singleton sweep stops (exit 2), each naming the setting.
local config = require("resclean.config")
local errors = require("resclean.errors")
local log = require("resclean.log")

local M = {}

M.SETTING = "RESCLEAN_DIRECT_DATABASE_URL"

local known = {} -- conninfo (or "") -> true: a transaction pool; false: sessions hold

local function backend(q)
  local res, err = q:query("SELECT pg_backend_pid() AS pid")
  if not res then return nil, err end
  return res[1].pid
end

-- Does conninfo lead to a transaction (or statement) pool? Without a
-- pooler in between, the backend key the server sent at connect is its own
-- pid (PQbackendPID = pg_backend_pid()): no pool, decided at once. A
-- pooler (PgBouncer) sends a key of its own; then its mode shows in how
-- backends move. A session keeps its server backend for life and no other
-- session gets it. Through a transaction pool the backend a client used is
-- free after its transaction: a second client's transaction right after
-- usually gets it (PgBouncer hands out the most recently used server
-- connection first), and on a busy pool the first client's next statements
-- land on other backends. Either shows a transaction pool; after five
-- rounds of both, sessions are taken to hold. The answer is kept for the
-- process. conn (optional): an open connection to conninfo, outside a
-- transaction, to be the first client (one session less).
-- Returns true or false, or nil, err (not reached: asked again next time).
function M.transaction_pooled(pg, conninfo, conn)
  local key = conninfo or ""
  if known[key] ~= nil then return known[key] end
  local opened, err
  if not conn then
    opened, err = pg.connect(conninfo)
    if not opened then return nil, err end
  end
  local own <close> = opened
  local a = conn or own
  local first
  first, err = backend(a)
  if not first then return nil, err end
  if a:backend_pid() == first then
    known[key] = false
    return false
  end
  local b <close>, berr = pg.connect(conninfo)
  if not b then return nil, berr end
  for _ = 1, 5 do
    local tx, terr = b:begin()
    if not tx then return nil, terr end
    local other, oerr = backend(tx)
    tx:rollback()
    if not other then return nil, oerr end
    if other == first then
      known[key] = true
      return true
    end
    for _ = 1, 2 do
      local again
      again, err = backend(a)
      if not again then return nil, err end
      if again ~= first then
        known[key] = true
        return true
      end
    end
  end
  known[key] = false
  return false
end

-- The error for `what` (a sentence naming what needs a session) through a
-- transaction pool at `which` (the variable's name).
local function pooled_error(what, which, fix)
  return errors.new("config", ("%s needs a database session, and %s leads to a transaction pool (PgBouncer "
    .. "pool_mode=transaction: every transaction may run on another server connection): set %s to "
    .. "PostgreSQL itself or to a session pool%s"):format(what, which, M.SETTING, fix or ""), { setting = M.SETTING })
end

-- The conninfo for what needs a session: the direct URL when set, else
-- DATABASE_URL (conninfo when given: the one a caller already has from
-- it). Returns conninfo, the name of its variable.
function M.session_conninfo(conninfo)
  local direct = config.direct_conninfo()
  if direct then return direct, M.SETTING end
  return conninfo or config.conninfo(), "DATABASE_URL"
end

-- Check that conninfo (from the variable `which`) gives sessions (conn: an
-- open connection to it, see transaction_pooled). Returns
-- true, or nil, err: a config error naming the setting when it is a
-- transaction pool, the connection's error when it cannot be reached.
function M.check_session(pg, conninfo, which, what, fix, conn)
  local pooled, err = M.transaction_pooled(pg, conninfo, conn)
  if pooled == nil then return nil, err end
  if pooled then return nil, pooled_error(what, which, fix) end
  return true
end

-- Where the long-running sweep LISTENs on channel (notify.lua): the
-- conninfo, true; or, through a transaction pool, nil, false after one
-- warning that names the setting (instead of "listening"): cancel requests
-- are then taken at the start of each cycle only. A database not reached
-- yet is not checked (the listener retries as before).
function M.listen_conninfo(pg, channel)
  local ci, which = M.session_conninfo()
  local ok, err = M.check_session(pg, ci, which, "the wake-up for cancel requests (LISTEN on the policy's "
    .. "cancel_channel)")
  if not ok and err.setting then
    log.warn("listen_unavailable", { channel = channel, setting = M.SETTING,
      message = errors.message(err) .. "; until then cancel requests are taken at the start of each cycle "
        .. "(every interval), not within a second" })
    return nil, false
  end
  return ci, true
end

return M
