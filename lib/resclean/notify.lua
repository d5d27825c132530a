-- Cancel from the application: the long-running sweep LISTENs on a channel
-- (policy cancel_channel, default "resclean_cancel") on a connection of its
-- own. An application cancels an upload with one statement inside its own
-- transaction:
--     SELECT pg_notify('resclean_cancel', '<id>')
-- PostgreSQL delivers it only if that transaction commits. A payload is one
-- id or several separated by commas or whitespace (at most 8,000 bytes).
--
-- Notifications sent while no listener is connected are lost (PostgreSQL
-- does not queue them for absent listeners): the hourly sweep removes such
-- rows once they pass max_age.
local cancel = require("resclean.cancel")
local errors = require("resclean.errors")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local runs = require("resclean.run")
local session = require("resclean.session")
local sys = require("resclean.sys")

local M = {}

M.MAX_PAYLOAD = 7999 -- bytes PostgreSQL takes in a NOTIFY payload (less than 8000)

-- Split a payload into ids (lower case, each once, in order) and the
-- tokens that are not ids (shortened for a log line).
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

-- Payloads for ids: as few as fit in MAX_PAYLOAD bytes each.
function M.payloads(ids, max)
  max = max or M.MAX_PAYLOAD
  local out, cur = {}, {}
  local len = 0
  for _, id in ipairs(ids) do
    if #cur > 0 and len + 1 + #id > max then
      out[#out + 1] = table.concat(cur, ",")
      cur, len = {}, 0
    end
    cur[#cur + 1] = id
    len = len + (#cur > 1 and 1 or 0) + #id
  end
  if #cur > 0 then out[#out + 1] = table.concat(cur, ",") end
  return out
end

-- A queue of ids waiting to be cancelled, each id once, bounded: ids that
-- arrive while it is full are counted and dropped (the hourly sweep takes
-- them later); take(n) hands out up to n in arrival order.
local Queue = {}
Queue.__index = Queue

function M.queue(limit)
  return setmetatable({ items = {}, head = 1, tail = 0, queued = {}, limit = limit or 100000, dropped = 0 }, Queue)
end

function Queue:size() return self.tail - self.head + 1 end

function Queue:push(id)
  if self.queued[id] then return true end
  if self:size() >= self.limit then
    self.dropped = self.dropped + 1
    return false
  end
  self.tail = self.tail + 1
  self.items[self.tail] = id
  self.queued[id] = true
  return true
end

function Queue:take(n)
  local out = {}
  while #out < n and self.head <= self.tail do
    local id = self.items[self.head]
    self.items[self.head] = nil
    self.head = self.head + 1
    self.queued[id] = nil
    out[#out + 1] = id
  end
  return out
end

-- The listener: a connection of its own that LISTENs on the channel, and
-- reconnects with backoff when it drops.
local Listener = {}
Listener.__index = Listener

-- opts: pg (module), conninfo, channel, queue, emit (log.emit), backoff(n)
-- -> seconds (optional).
function M.listener(opts)
  return setmetatable({
    pg = opts.pg, conninfo = opts.conninfo, channel = opts.channel, queue = opts.queue or M.queue(),
    emit = opts.emit or log.emit, failures = 0, retry_at = 0,
    backoff = opts.backoff or function(n) return math.min(0.5 * 2 ^ (n - 1), 30) end,
  }, Listener)
end

-- Connect and LISTEN. Returns true or nil, err.
function Listener:connect()
  local conn, err = self.pg.connect(self.conninfo)
  if not conn then return nil, err end
  local ok
  ok, err = conn:query("LISTEN " .. conn:quote_ident(self.channel))
  if not ok then
    conn:close()
    return nil, err
  end
  self.conn = conn
  return true
end

-- Make sure the listener is connected; on failure schedule a retry with
-- backoff and log it (once per attempt). Returns true when listening.
function Listener:ensure()
  if self.conn then return true end
  local now = sys.monotime()
  if now < self.retry_at then return false end
  local ok, err = self:connect()
  if ok then
    self.emit(self.failures > 0 and "warn" or "info", "listening",
      { channel = self.channel, reconnected = self.failures > 0 or nil,
        message = self.failures > 0 and "listening again; notifications sent while down were lost" or nil })
    self.failures = 0
    return true
  end
  self.failures = self.failures + 1
  local wait = self.backoff(self.failures)
  self.retry_at = now + wait
  self.emit("warn", "listen_failed", { channel = self.channel, attempt = self.failures,
    retry_in_s = math.floor(wait * 10 + 0.5) / 10,
    message = errors.message(err) })
  return false
end

-- Take what arrived on the connection into the queue. Returns the number
-- of ids queued, or nil when the connection dropped (it is closed and a
-- reconnect scheduled).
function Listener:drain()
  if not self.conn then return 0 end
  local notes, err = self.conn:notifications()
  if not notes then
    self.emit("warn", "listen_lost", { channel = self.channel,
      message = errors.message(err) })
    self.conn:close()
    self.conn = nil
    self.failures = 1
    self.retry_at = sys.monotime() + self.backoff(1)
    return nil
  end
  local n = 0
  for _, note in ipairs(notes) do
    if note.channel == self.channel then
      local ids, bad = M.parse_payload(note.payload)
      if #bad > 0 or #ids == 0 then
        self.emit("warn", "notify_ignored", { channel = self.channel, sender_pid = note.pid,
          tokens = #bad > 0 and table.concat(bad, " ", 1, math.min(#bad, 5)) or "",
          message = "a payload holds resource ids separated by commas or whitespace; the rest is ignored" })
      end
      for _, id in ipairs(ids) do
        if self.queue:push(id) then n = n + 1 end
      end
    end
  end
  return n
end

-- Wait up to `seconds` for notifications (and stop signals). Returns the
-- number of ids now queued, or nil when a stop signal arrived.
function Listener:wait(seconds)
  local deadline = sys.monotime() + seconds
  while true do
    if self.queue:size() > 0 then return self.queue:size() end
    local left = deadline - sys.monotime()
    if left <= 0 then return 0 end
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

-- The session notified cancels run on: opened on first use and kept (a
-- cancel within a second should not pay for a connection, the schema check
-- and the prepared statements each time), reopened when the policy changed
-- or after an error. Returns the session or nil, exit code, message.
function Listener:cancel_session(opts, p)
  local s = self.session
  if s and s.policy == p then return s end
  self:close_session()
  local store, code, msg = opts.open_store(p)
  if not store then return nil, code, msg end
  local conn, sql = session.open(opts.pg, opts.conninfo, p)
  if not conn then
    store:close()
    return nil, errors.exit_code(sql), "database: " .. errors.message(sql)
  end
  self.session = { conn = conn, sql = sql, store = store, policy = p }
  return self.session
end

function Listener:close_session()
  if self.session then
    self.session.conn:close()
    self.session.store:close()
    self.session = nil
  end
end

-- One cancel of ids on the kept session, exactly as cancel.ids does it
-- for `resclean run cancel`. Returns exit code, summary.
local function cancel_on(s, ids)
  local run = runs.new({ policy = s.policy })
  run.eligible = #ids
  run.db_pid = s.conn:backend_pid()
  local code, extra = cancel.ids(s.conn, s.sql, s.store, run, ids)
  extra = extra or {}
  extra.exit_code = code
  return code, run:summary("cancel", extra)
end

-- Cancel what the queue holds, batch_size ids at a time, each batch through
-- exactly the path of `resclean run cancel` (same locks, outcomes, lines),
-- its lines marked via = "notify". opts: pg, conninfo, policy (a function
-- returning the current policy), open_store(p) -> store or nil, code, msg,
-- on_result(code, summary) (optional). Returns the number of ids handled.
function Listener:cancel_queued(opts)
  local done = 0
  while self.queue:size() > 0 and not sys.stopping() do
    local p = opts.policy()
    local ids = self.queue:take(p.batch_size)
    local saved = log.get_base()
    local base = {}
    for k, v in pairs(saved) do base[k] = v end
    base.via = "notify"
    log.set_base(base)
    -- A kept session may have died since its last use: one more try on a
    -- fresh one (the failed try rolled back).
    for attempt = 1, 2 do
      local reused = self.session ~= nil
      local s, code, msg = self:cancel_session(opts, p)
      if not s then
        self.emit("error", "notify_failed", { ids = #ids, exit_code = code, message = msg,
          detail = "these ids stay pending; the sweep removes them once they pass max_age" })
        break
      end
      local summary
      code, summary = cancel_on(s, ids)
      if code == runs.EXIT.usage or code == runs.EXIT.unreachable then self:close_session() end
      if opts.on_result then opts.on_result(code, summary) end
      if not (reused and code == runs.EXIT.unreachable and attempt == 1) then break end
    end
    log.set_base(saved)
    done = done + #ids
  end
  return done
end

-- A sleep for the schedule: waits until `seconds` have passed or a stop
-- signal came, cancelling notified ids as they arrive. Returns true, or
-- false on a stop signal (like sys.sleep).
function Listener:sleeper(opts)
  return function(seconds)
    local deadline = sys.monotime() + seconds
    while true do
      local left = deadline - sys.monotime()
      if left <= 0 then return true end
      local n = self:wait(left)
      if n == nil then return false end
      if n > 0 then self:cancel_queued(opts) end
    end
  end
end

-- Whether ids wait to be cancelled (what arrived is taken in first). The
-- sweep asks between two batches and then runs cancel_queued, so a cycle
-- delays a notification by at most one batch.
function Listener:waiting()
  if self.conn then self:drain() end
  return self.queue:size() > 0
end

function Listener:close()
  self:close_session()
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
end

return M
