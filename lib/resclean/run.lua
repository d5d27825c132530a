-- A run of the sweep (one cycle) or of a cancel: its id, its counts by
-- outcome, the lines it logs (one per resource, progress, one summary) and
-- how it ends. An error that ends a run becomes its exit code here and
-- nowhere else: ended_on(err), through errors.exit_code (config 2,
-- transient 3, item 1). Reconcile's run (reconcile_run.lua) is this Run
-- with counts, lines and summary fields of its own.
local errors = require("resclean.errors")
local log = require("resclean.log")
local outcome_mod = require("resclean.outcome")
local sys = require("resclean.sys")

local M = {}

M.EXIT = errors.EXIT

local Run = {}
Run.__index = Run
M.Run = Run -- a command's own Run: setmetatable(M.new(opts), Sub), Sub's __index Run

-- opts: policy, dry_run, run_id (else a new one), emit (else log.emit),
-- counts (the names counted, else outcome.OUTCOMES), pg and conninfo (a fresh
-- session, to settle a commit whose answer was lost: commit_doubt.lua).
function M.new(opts)
  local r = setmetatable({
    policy = opts.policy,
    pg = opts.pg,
    conninfo = opts.conninfo,
    dry_run = opts.dry_run or false,
    run_id = opts.run_id or M.id(),
    counts = {},
    done = 0,
    eligible = 0,
    started = sys.monotime(),
    last_progress = sys.monotime(),
    emit = opts.emit or log.emit,
  }, Run)
  for _, o in ipairs(opts.counts or outcome_mod.OUTCOMES) do r.counts[o] = 0 end
  return r
end

-- A run id: UTC time, pid, a fraction of the second.
function M.id()
  local t = sys.time()
  return ("%s-%d-%06x"):format(os.date("!%Y%m%dT%H%M%S", math.floor(t)), sys.pid(),
    math.floor((t % 1) * 0xffffff))
end

-- The exit code and summary fields of a run that ends on err.
function M.ended_on(err)
  local log_failed = type(err) == "table" and err.log_failed or nil
  return errors.exit_code(err), { error = errors.message(err), log_failed = log_failed }
end

-- The log cannot be written: the reason goes to stderr (where the log
-- itself cannot go), and the error ends the run before it deletes anything
-- further (no audit trail, no deletes): a config error, exit 2.
local told -- the reason already on stderr
function M.log_unwritable(why)
  local msg = ("the log cannot be written (%s): stopping before deleting anything further"):format(tostring(why))
  if told ~= msg then io.stderr:write("resclean: ", msg, "\n") end
  told = msg
  return errors.new("config", msg, { log_failed = true })
end

local LEVEL = { failed = "warn", refused = "warn", in_doubt = "warn" }

-- One log line per resource; counted.
function Run:outcome(item, outcome, reason)
  item.logged = true
  self.counts[outcome] = self.counts[outcome] + 1
  if outcome == "skipped" and reason then -- kept on purpose, by reason (metrics)
    self.skipped_reasons = self.skipped_reasons or {}
    self.skipped_reasons[reason] = (self.skipped_reasons[reason] or 0) + 1
  end
  self.done = self.done + 1
  self.emit(LEVEL[outcome] or "info", "resource", {
    run_id = self.run_id, resource_id = item.id, key = item.key,
    age_s = item.age_s and math.floor(item.age_s) or nil,
    outcome = outcome, reason = reason, dry_run = self.dry_run or nil,
    in_doubt_run_id = item.in_doubt_run_id,
  })
end

-- Log items whose outcome is decided (item.outcome, item.reason), in a
-- few writes.
function Run:log_decided(items)
  log.hold()
  for _, it in ipairs(items) do self:outcome(it, it.outcome, it.reason) end
  log.release()
end

function Run:progress(force)
  local now = sys.monotime()
  if not force and now - self.last_progress < self.policy.progress_interval then return end
  self.last_progress = now
  local elapsed = now - self.started
  local rate = elapsed > 0 and self.done / elapsed or 0
  local left = math.max(self.eligible - self.done, 0)
  self.emit("info", "progress", {
    run_id = self.run_id, done = self.done, eligible = self.eligible,
    rate = math.floor(rate * 10 + 0.5) / 10, eta_s = rate > 0 and math.ceil(left / rate) or nil,
    dry_run = self.dry_run or nil,
  })
end

-- The summary's own fields (besides run_id and the counts), ms the run's
-- duration so far. A command's Run gives its own.
function Run:summary_fields(ms)
  return { eligible = self.eligible, duration_ms = ms,
           rate = ms > 0 and math.floor(self.done / ms * 1000 * 10 + 0.5) / 10 or 0,
           total = self.done, dry_run = self.dry_run or nil, db_pid = self.db_pid,
           oldest_age_s = self.oldest_age_s and math.floor(self.oldest_age_s) or nil,
           skipped_reasons = self.skipped_reasons }
end

-- The summary line, event: run_id, summary_fields, the counts, then extra
-- (which wins); an error when extra has one. Returns its fields.
function Run:summary(event, extra)
  local f = self:summary_fields(math.floor((sys.monotime() - self.started) * 1000 + 0.5))
  f.run_id = self.run_id
  for k, v in pairs(self.counts) do f[k] = v end
  for k, v in pairs(extra or {}) do f[k] = v end
  self.emit(f.error and "error" or "info", event, f)
  return f
end

-- Exit code from the counts: 3 when a commit is in doubt (the database
-- could not be asked), else 1 when anything failed or was refused.
function Run:exit_code()
  if self.counts.in_doubt > 0 then return M.EXIT.unreachable end
  if self.counts.failed > 0 or self.counts.refused > 0 then return M.EXIT.failed end
  return M.EXIT.ok
end

return M
