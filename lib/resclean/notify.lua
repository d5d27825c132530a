-- Cancels from the application. PostgreSQL has no privilege on NOTIFY (any
-- role that can connect may send one), so a notification is never the
-- authority to cancel, only a wake-up. The authority is a row the
-- application writes into the policy's cancel_requests_table
-- (examples/cancel-requests.sql): the operator grants INSERT on it to the
-- application's role, a trigger stamps each row with the role that wrote
-- it (requested_by) and sends an empty NOTIFY on cancel_channel.
--
-- The long-running sweep LISTENs on cancel_channel on a connection of its
-- own. A wake-up costs one query on that connection (is anything
-- pending?); pending requests are then taken in turns (cancel.requests: at
-- most batch_size ids a turn, one query for the lot, one line per request)
-- on a session opened for them, closed again after IDLE_CLOSE seconds with
-- nothing to do and before every cycle. During a cycle they are taken
-- between two batches on the cycle's own session. So a sweep holds at most
-- 3 sessions: the listener, plus the cancel session between cycles or the
-- cycle's one or two during a cycle.
--
-- A payload is never read for ids: one that holds anything (the old
-- protocol sent ids there) is ignored with a warning naming the fix, at
-- most one warning a minute however many arrive. Requests written while no
-- sweeper listens are not lost: every sweep (--once too) takes the pending
-- ones at the start of each cycle.
local cancel = require("resclean.cancel")
local errors = require("resclean.errors")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local presence = require("resclean.presence")
local runs = require("resclean.run")
local session = require("resclean.session")
local sys = require("resclean.sys")

local M = {}

M.SQL_FILE = "examples/cancel-requests.sql"
M.IDLE_CLOSE = 5            -- seconds the cancel session stays open with nothing to take
M.PAYLOAD_WARN_EVERY = 60   -- seconds between two warnings about ignored payloads

-- The ids an old-style payload names (lower case, each once, in order) and
-- the tokens that are not ids: only counted for the warning, never acted on.
function M.parse_payload(payload)
  local ids, bad, seen = {}, {}, {}
  for tok in tostring(payload or ""):gmatch("[^,%s]+") do
    local id = tok:lower()
    if id:find(policy_mod.UUID_PATTERN) then
      if not seen[id] then
        seen[id] = true
        ids[#ids + 1] = id
      end
    else
      bad[#bad + 1] = #tok > 64 and (tok:sub(1, 61) .. "...") or tok
    end
  end
  return ids, bad
end

local Cancels = {}
Cancels.__index = Cancels

-- opts: pg (module), conninfo, listen_conninfo (for the LISTEN connection,
-- which needs a session of its own: a direct one behind a transaction
-- pooler; default conninfo), policy (a function returning the current
-- policy), open_store(p) -> store or nil, code, msg, on_result(code,
-- summary) (optional), channel (LISTEN on it; nil: no listening, as for
-- --once), quiet_missing (a missing table is a debug line, not a warning),
-- emit (log.emit), backoff(n) -> seconds.
function M.new(opts)
  return setmetatable({
    pg = opts.pg, conninfo = opts.conninfo, listen_conninfo = opts.listen_conninfo or opts.conninfo,
    policy = opts.policy, open_store = opts.open_store,
    on_result = opts.on_result, channel = opts.channel, quiet_missing = opts.quiet_missing,
    emit = opts.emit or log.emit, failures = 0, retry_at = 0,
    backoff = opts.backoff or function(n) return math.min(0.5 * 2 ^ (n - 1), 30) end,
    woken = false,   -- a notification arrived: look
    check = false,   -- a cycle started: look
    pending = false, -- a turn left requests for the next one
    ignored = 0, ignored_ids = 0, warned_at = -math.huge,
  }, Cancels)
end

-- ------------------------------------------------------------ the table

local function table_name(self) return self.policy().cancel_requests_table end

-- The table's state changed ("ok", "missing", "forbidden"): said once.
function Cancels:table_state(state, role)
  if state == self.state then return end
  self.state = state
  local t = table_name(self)
  if state == "missing" then
    self.emit(self.quiet_missing and "debug" or "warn", "cancel_requests_missing", { table = t,
      message = ("table %q does not exist (or is not on the role's search_path): the application cannot cancel; "
        .. "create it with %s (resclean(1), CANCEL), or set the policy's cancel_requests_table = false")
        :format(t, M.SQL_FILE) })
  elseif state == "forbidden" then
    self.emit("warn", "cancel_requests_forbidden", { table = t, role = role,
      message = ("role %s may not take cancel requests: GRANT SELECT, DELETE ON %s TO %s (%s)")
        :format(role or "(the sweeper's)", t, role or "<sweeper role>", M.SQL_FILE) })
  end
end

-- A missing table or grant is a state (said once), not an error. Returns
-- true when err was one. conn must be outside a failed transaction.
function Cancels:table_error(conn, err)
  if err.code == "42P01" then
    self:table_state("missing")
    return true
  end
  if err.code == "42501" then
    local res = conn:query("SELECT current_user::text AS role")
    self:table_state("forbidden", res and res[1] and res[1].role)
    return true
  end
  return false
end

-- Is any request pending? One query, which also sees whether the role
-- may take requests (SELECT and DELETE). Returns true or false (false too
-- when the table is missing or not granted: see self.state), or nil, err.
function Cancels:probe(conn)
  local t = conn:quote_ident(table_name(self))
  local res, err = conn:query(("SELECT EXISTS (SELECT 1 FROM %s) AS any, has_table_privilege($1, 'DELETE') AS del, "
    .. "current_user::text AS role"):format(t), t)
  if res then
    if not res[1].del then
      self:table_state("forbidden", res[1].role)
      return false
    end
    self:table_state("ok")
    return res[1].any
  end
  if self:table_error(conn, err) then return false end
  return nil, err
end

-- ------------------------------------------------------------ turns

-- One turn on s = {conn, sql, store, policy}: see cancel.requests. Lines
-- carry via = "request"; the turn's summary is a "cancel" line. Sets
-- self.pending (requests left for another turn). Returns the exit code, or
-- nil when there was nothing to take (or no usable table).
function Cancels:turn(s)
  self.woken, self.check, self.pending = false, false, false
  local p = s.policy
  local run = runs.new({ policy = p, emit = self.emit })
  run.db_pid = s.conn:backend_pid()
  local saved = log.get_base()
  local base = {}
  for k, v in pairs(saved) do base[k] = v end
  base.via = "request"
  log.set_base(base)
  local info, err, taken = cancel.requests(s.conn, s.sql, s.store, run,
    { table = p.cancel_requests_table, max_ids = p.batch_size })
  local code, extra
  if info then
    self:table_state("ok")
    self.pending = info.more
    if info.requests == 0 then
      log.set_base(saved)
      return nil
    end
    code = run:exit_code()
    extra = { requests = info.requests, more = info.more or nil,
      requests_unlogged = info.requests > cancel.REQUEST_LINES and info.requests - cancel.REQUEST_LINES or nil }
  elseif err.kind == "pg" and self:table_error(s.conn, err) then
    log.set_base(saved)
    return nil
  else
    code, extra = runs.ended_on(err)
    extra.detail = taken and "the requests were taken; their resources failed and stay pending (the sweep removes "
      .. "them past max_age)" or "the requests of this turn stay in the table: a later turn takes them again"
  end
  extra.exit_code = code
  local summary = run:summary("cancel", extra)
  log.set_base(saved)
  if self.on_result then self.on_result(code, summary) end
  return code
end

-- The session turns between cycles run on: opened when requests are
-- pending, kept IDLE_CLOSE seconds for the next ones, closed before each
-- cycle. Returns the session or nil, exit code, message.
function Cancels:own_session(p)
  local s = self.session
  if s and s.policy == p then return s end
  self:close_session()
  local store, code, msg = self.open_store(p)
  if not store then return nil, code, msg end
  local conn, sql = session.open(self.pg, self.conninfo, p)
  if not conn then
    store:close()
    return nil, errors.exit_code(sql), "database: " .. errors.message(sql)
  end
  self.session = { conn = conn, sql = sql, store = store, policy = p }
  return self.session
end

function Cancels:close_session()
  if self.session then
    self.session.conn:close()
    self.session.store:close()
    self.session = nil
  end
end

-- Between cycles: take what is pending, turn after turn, on the cancel
-- session (a wake-up first asks the listening connection whether anything
-- is pending, so empty NOTIFYs cost one query and no session).
function Cancels:take_pending()
  if not table_name(self) then
    self.woken, self.pending = false, false
    return
  end
  if not self.pending then
    self.woken = false
    if not self.conn then return end
    local any, err = self:probe(self.conn)
    if any == nil then return self:lost(err) end
    if not any then return end
  end
  while not sys.stopping() do
    local p = self.policy()
    -- A kept session may have died since its last use: one more try on a
    -- fresh one (the failed turn rolled back).
    for attempt = 1, 2 do
      local reused = self.session ~= nil
      local s, code, msg = self:own_session(p)
      if not s then
        self.pending = false
        self.emit("error", "cancel_requests_failed", { exit_code = code, message = msg,
          detail = "the requests stay in the table: the next wake-up or cycle takes them" })
        return
      end
      code = self:turn(s)
      s.used = sys.monotime()
      if code == runs.EXIT.usage or code == runs.EXIT.unreachable then self:close_session() end
      if not (reused and code == runs.EXIT.unreachable and attempt == 1) then break end
      self.pending = true
    end
    if not self.pending then return end
  end
end

-- ------------------------------------------------------------ listening

-- Make sure the listener is connected and LISTENing (not without a usable
-- table: nothing would come of a wake-up); on failure a retry is
-- scheduled with backoff and logged. Returns true when listening.
function Cancels:ensure()
  if self.conn then return true end
  if not self.channel or not table_name(self) then return false end
  local now = sys.monotime()
  if now < self.retry_at then return false end
  local conn, err = self.pg.connect(self.listen_conninfo)
  local any
  if conn then
    any, err = self:probe(conn)
    if any ~= nil and self.state ~= "ok" then
      -- Looked at again at the next cycle (cycle_start).
      conn:close()
      self.retry_at = math.huge
      return false
    end
    if any ~= nil then
      local ok
      -- Seen by cancel --notify and check (presence.lua): a sweeper listens for this
      -- table's requests, with this policy (a lock goes with its session).
      ok, err = presence.hold_listener(conn, table_name(self))
      if ok then
        self.held_policy = presence.signature(self.policy())
        ok, err = presence.hold_policy(conn, self.policy())
        self.held = ok
      end
      if ok then ok, err = conn:query("LISTEN " .. conn:quote_ident(self.channel)) end
      if ok then
        self.conn = conn
        self.emit(self.failures > 0 and "warn" or "info", "listening", { channel = self.channel,
          table = table_name(self), reconnected = self.failures > 0 or nil,
          message = self.failures > 0 and "listening again; requests written meanwhile are taken now" or nil })
        self.failures = 0
        if any then self.woken = true end
        return true
      end
    end
    conn:close()
  end
  self.failures = self.failures + 1
  local wait = self.backoff(self.failures)
  self.retry_at = now + wait
  self.emit("warn", "listen_failed", { channel = self.channel, attempt = self.failures,
    retry_in_s = math.floor(wait * 10 + 0.5) / 10, message = errors.message(err) })
  return false
end

-- The listening connection failed: closed, a reconnect scheduled.
function Cancels:lost(err)
  self.emit("warn", "listen_lost", { channel = self.channel, message = errors.message(err) })
  self.conn:close()
  self.conn = nil
  self.failures = 1
  self.retry_at = sys.monotime() + self.backoff(1)
end

-- Take in what arrived on the listening connection: any notification on
-- the channel wakes; payloads are counted for the warning, never read for
-- ids.
function Cancels:drain()
  if not self.conn then return end
  local notes, err = self.conn:notifications()
  if not notes then return self:lost(err) end
  for _, note in ipairs(notes) do
    if note.channel == self.channel then
      self.woken = true
      if note.payload ~= nil and note.payload ~= "" then
        self.ignored = self.ignored + 1
        self.ignored_ids = self.ignored_ids + #(M.parse_payload(note.payload))
        self.ignored_pid = note.pid
      end
    end
  end
  if self.ignored > 0 and sys.monotime() - self.warned_at >= M.PAYLOAD_WARN_EVERY then
    self.warned_at = sys.monotime()
    self.emit("warn", "notify_payload_ignored", { channel = self.channel, notifications = self.ignored,
      ids = self.ignored_ids, sender_pid = self.ignored_pid,
      message = ("a NOTIFY is only a wake-up (anyone who can connect may send one): its payload is ignored. "
        .. "To cancel, the application INSERTs the ids into %s (%s, examples/cancel-endpoint.py); "
        .. "at most one such warning a minute"):format(table_name(self), M.SQL_FILE) })
    self.ignored, self.ignored_ids = 0, 0
  end
end

-- Wait up to `seconds` for a wake-up (and stop signals). Returns true when
-- there is something to look at, false when the time passed, nil on a
-- stop signal.
function Cancels:wait(seconds)
  local deadline = sys.monotime() + seconds
  while true do
    if self.woken or self.pending then return true end
    local left = deadline - sys.monotime()
    if left <= 0 then return false end
    if self:ensure() then
      local r = sys.wait_readable(self.conn:socket(), left)
      if r == nil then return nil end
      if r then self:drain() end
    else
      local step = math.min(left, math.max(self.retry_at - sys.monotime(), 0.01))
      if not sys.sleep(step) then return nil end
    end
  end
end

-- A sleep for the schedule: waits until `seconds` have passed or a stop
-- signal came, taking requests as they are written, and closing the cancel
-- session once idle. Returns true, or false on a stop signal (like
-- sys.sleep).
function Cancels:sleeper()
  return function(seconds)
    local deadline = sys.monotime() + seconds
    while true do
      local now = sys.monotime()
      local left = deadline - now
      if left <= 0 then return true end
      if self.session then
        local idle_left = (self.session.used or now) + M.IDLE_CLOSE - now
        if idle_left <= 0 then
          self:close_session()
        else
          left = math.min(left, idle_left)
        end
      end
      local r = self:wait(left)
      if r == nil then return false end
      if r then self:take_pending() end
    end
  end
end

-- ------------------------------------------------------------ in a cycle

-- A cycle starts: the cancel session is closed (the cycle's sessions take
-- its place), pending requests are looked for before the first batch, and
-- a listener off for want of a table tries again.
function Cancels:cycle_start()
  self:close_session()
  self.check = true
  if self.retry_at == math.huge then self.retry_at = 0 end
  -- The listener shows the policy the cycles use (presence.lua): re-read every cycle.
  local p = self.policy()
  if self.conn and self.held_policy ~= presence.signature(p) then
    local ok, err = presence.release(self.conn, self.held)
    if ok then ok, err = presence.hold_policy(self.conn, p) end
    if not ok then return self:lost(err) end
    self.held, self.held_policy = ok, presence.signature(p)
  end
end

-- Whether to look for requests now (what arrived is taken in first). The
-- sweep asks before each batch, with none of its batches in flight.
function Cancels:waiting()
  if not table_name(self) then return false end
  if self.conn then self:drain() end
  return self.pending or self.woken or self.check
end

-- One turn on the cycle's own session (lane: {conn, sql}) between two
-- batches, after one query saying whether anything is pending.
function Cancels:between_batches(lane, store)
  local s = { conn = lane.conn, sql = lane.sql, store = store, policy = self.policy() }
  if not self.pending then
    self.woken, self.check = false, false
    local any = self:probe(lane.conn)
    if not any then return end
  end
  self:turn(s)
end

function Cancels:close()
  self:close_session()
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
end

return M
