-- The long-running sweep under a supervisor: systemd's readiness and
-- watchdog (NOTIFY_SOCKET, WATCHDOG_USEC), and the /metrics and /healthz
-- endpoint of --metrics-listen (resclean.httpd answers on a thread of its
-- own; this module hands it the metrics text and a heartbeat).
--
--   local d = daemon.new({ server = srv, grace = 300 })
--   d:cycle_started(p)          -- a cycle begins: READY=1 the first time
--   d:tick()                    -- between batches and in the wait
--   d:waiting(seconds, code)    -- a cycle ended, the next one in `seconds`
--   sleep = d:sleeper(sleep)    -- a sleep that feeds the watchdog
--
-- The heartbeat: /healthz answers 200 while the loop keeps its promise
-- (the next batch, or the next cycle, comes within its time plus `grace`
-- seconds), else 503 naming what is overdue. The watchdog is fed from the
-- same places, never from the server's thread: a loop stuck in a batch
-- starves it and systemd restarts the service.
local sys = require("resclean.sys")

local M = {}

M.DEFAULT_GRACE = 300 -- seconds a batch or a wait may overrun before /healthz says stale

-- "ADDR:PORT", "[v6]:PORT" or ":PORT" / "PORT" (loopback). Returns host,
-- port or nil, message.
function M.parse_listen(text)
  text = tostring(text or "")
  local host, port = text:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = text:match("^([^:%[%]]*):(%d+)$") end
  if not host and text:match("^%d+$") then host, port = "", text end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    return nil, ("--metrics-listen %q: expected ADDR:PORT (127.0.0.1:9469, [::1]:9469, 0.0.0.0:9469 "
      .. "to listen on every address), the port from 1 to 65535"):format(text)
  end
  if host == "" then host = "127.0.0.1" end
  return host, port
end

-- Start the server for --metrics-listen. Returns it or nil, message (an
-- address in use or not on this host names the flag).
function M.listen(text)
  local host, port = M.parse_listen(text)
  if not host then return nil, port end
  local srv, err = require("resclean.httpd").start({ host = host, port = port })
  if not srv then
    return nil, ("--metrics-listen %s: cannot listen: %s (another process on the port? choose another "
      .. "port, or an address of this host)"):format(text, tostring(err))
  end
  return srv
end

-- The watchdog period systemd asked for, halved (seconds), or nil: none,
-- or meant for another process (WATCHDOG_PID).
function M.watchdog_interval(getenv, pid)
  local usec = tonumber(getenv("WATCHDOG_USEC") or "")
  if not usec or usec <= 0 then return nil end
  local wpid = tonumber(getenv("WATCHDOG_PID") or "")
  if wpid and wpid ~= pid then return nil end
  return usec / 1e6 / 2
end

local Daemon = {}
Daemon.__index = Daemon

-- opts: server (resclean.httpd, optional), grace (seconds), notify
-- (sys.notify), getenv, monotime, stopping (specs inject them).
function M.new(opts)
  opts = opts or {}
  local d = setmetatable({
    server = opts.server,
    grace = opts.grace or M.DEFAULT_GRACE,
    notify = opts.notify or sys.notify,
    monotime = opts.monotime or sys.monotime,
    stopping_fn = opts.stopping or sys.stopping,
    ready = false,
    stop_sent = false,
  }, Daemon)
  d.watchdog = M.watchdog_interval(opts.getenv or sys.getenv, sys.pid())
  d.fed_at = d.monotime()
  return d
end

local function secs(n) return ("%d s"):format(math.floor(n + 0.5)) end

function Daemon:beat(allow, ok, late)
  if self.server then self.server:beat(allow + self.grace, ok, late) end
end

-- A cycle (or a retry) begins.
function Daemon:cycle_started()
  self.cycle_at = os.date("!%Y-%m-%dT%H:%M:%SZ")
  self:beat(0, "a cycle is running, started " .. self.cycle_at,
    ("the cycle started %s has not reached its next batch within %s"):format(self.cycle_at, secs(self.grace)))
  self:tick()
end

-- Between two batches, and in the wait: feed the watchdog at half its
-- period, say STOPPING=1 once a stop signal came, renew the heartbeat
-- while a cycle runs.
function Daemon:tick(in_cycle)
  local now = self.monotime()
  if self.watchdog and now - self.fed_at >= self.watchdog then
    self.fed_at = now
    self.notify("WATCHDOG=1")
  end
  if in_cycle then
    self:mark_ready()
    self:beat(0, "a cycle is running, started " .. tostring(self.cycle_at),
      ("the cycle started %s has not reached its next batch within %s"):format(tostring(self.cycle_at),
        secs(self.grace)))
  end
  if not self.stop_sent and self.stopping_fn() then self:stopping() end
end

-- A cycle ended with exit code `code`; the next one starts in `seconds`.
-- READY=1 the first time (the first cycle ran, or its retry is scheduled).
function Daemon:waiting(seconds, code)
  local what = code == 3 and "retry" or "cycle"
  self:beat(seconds, ("last cycle exit %d, next %s in %s"):format(code, what, secs(seconds)),
    ("the next %s was due %s after the last one ended (exit %d) and has not started"):format(what,
      secs(seconds), code))
  self:mark_ready()
  self.notify(("STATUS=last cycle exit %d, next %s in %s"):format(code, what, secs(seconds)))
end

-- READY=1 once: the first cycle reached its first batch (its session
-- opened, the schema checked), or it ended, or its retry is scheduled. A
-- configuration error before that exits 2 without it: systemd shows the
-- start failed.
function Daemon:mark_ready()
  if self.ready then return end
  self.ready = true
  self.notify("READY=1\nSTATUS=sweeping")
end

function Daemon:stopping()
  if self.stop_sent then return end
  self.stop_sent = true
  self.notify("STOPPING=1\nSTATUS=stopping: finishing the batch in hand")
end

-- A sleep for the schedule on top of `inner` (sys.sleep or the listener's
-- sleeper): waits in steps no longer than half the watchdog period,
-- feeding it in between. Returns true, or false on a stop signal.
function Daemon:sleeper(inner)
  inner = inner or sys.sleep
  return function(seconds)
    local deadline = self.monotime() + seconds
    while true do
      self:tick()
      local left = deadline - self.monotime()
      if left <= 0 then return true end
      local step = self.watchdog and math.min(left, math.max(self.watchdog - (self.monotime() - self.fed_at), 0.01))
        or left
      if not inner(step) then
        self:stopping()
        return false
      end
    end
  end
end

-- What GET /metrics answers from now on.
function Daemon:set_metrics(text)
  if self.server then self.server:set_metrics(text) end
end

function Daemon:close()
  if self.server then
    self.server:close()
    self.server = nil
  end
end

return M
