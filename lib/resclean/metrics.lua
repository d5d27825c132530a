-- Prometheus metrics for node_exporter's textfile collector: after every
-- cycle the whole file is rewritten atomically (sys.write_file: a new file
-- made with mkstemp in the same folder, then rename), so the collector never
-- reads half a file, and a symbolic link planted in a shared textfile folder,
-- at the temporary name or at the file's own name, is never written through.
--
--   local m = require("resclean.metrics").new("/var/lib/node_exporter/textfile/resclean.prom")
--   m:record(summary, exit_code, policy)   -- after a cycle
--   m:record_failure(policy, code)         -- a cycle that failed before sweeping (2 or 3)
--   m:policy_valid(ok)                     -- the policy file loaded (or not) this cycle
--   m:record_policy_failure(code)          -- a start that failed on its policy (exit 2)
--
-- Counters continue from the values already in the file, so a sweep run
-- hourly with --once (a new process each time) still exposes counters that
-- only go up, and a restart does not lose the last success time.
local log = require("resclean.log")
local outcome_mod = require("resclean.outcome")
local sys = require("resclean.sys")

local M = {}

M.EXIT_CODES = { 0, 1, 2, 3 }
-- Why cycles in a row removed nothing (resclean_sweep_stuck_cycles): each is
-- written every cycle, 0 included.
M.STUCK_REASONS = { "nothing_removed", "singleton_busy" }

-- name -> {type, help}; rendered in this order.
M.FAMILIES = {
  { "resclean_resources_total", "counter",
    "Resources handled by the sweep, by outcome (dry runs excluded)." },
  { "resclean_sweep_cycles_total", "counter", "Sweep cycles, by exit code." },
  { "resclean_sweep_last_exit_code", "gauge",
    "Exit code of the last cycle: 0 ok, 1 some failed, 2 configuration, 3 unreachable." },
  { "resclean_sweep_last_run_timestamp_seconds", "gauge", "Unix time the last cycle ended, whatever its result." },
  { "resclean_sweep_last_success_timestamp_seconds", "gauge",
    "Unix time the last cycle that ran to completion (exit code 0 or 1, not a dry run) ended." },
  { "resclean_sweep_duration_seconds", "gauge", "Duration of the last cycle." },
  { "resclean_sweep_eligible", "gauge", "Stale pending resources found at the start of the last cycle." },
  { "resclean_sweep_kept", "gauge",
    "Stale pending resources the last cycle kept on purpose, by reason (referenced by an attack, locked, "
      .. "a key the policy refuses, row gone meanwhile): part of eligible, not a backlog." },
  { "resclean_sweep_backlog", "gauge",
    "Stale pending resources the last cycle left to remove: eligible minus removed minus kept on purpose "
      .. "(failed ones, and those a limit or a stop left; a dry run removes nothing)." },
  { "resclean_sweep_rate", "gauge", "Resources handled per second in the last cycle." },
  { "resclean_pending_oldest_age_seconds", "gauge",
    "Age of the oldest stale pending resource at the start of the last cycle (0: none), by the database clock." },
  { "resclean_sweep_dry_run", "gauge", "1 when the last cycle was a dry run (nothing changed)." },
  { "resclean_sweep_singleton_busy", "gauge",
    "1 when the last cycle did not sweep because another sweeper held the singleton lock." },
  { "resclean_sweep_stuck_cycles", "gauge",
    "Cycles in a row that removed nothing, by reason: nothing_removed (stale resources to remove, not referenced, "
      .. "none removed: a key() that fits no row, refused deletes), singleton_busy (another sweeper held the "
      .. "singleton lock). Dry runs and cycles that failed before counting leave it as it was." },
  { "resclean_policy_invalid", "gauge",
    "1 when the policy file did not load or validate at the last attempt (a long-running sweep keeps the last "
      .. "good policy; a start exits 2)." },
  { "resclean_policy_max_age_seconds", "gauge", "The policy's max_age: pending longer than this is stale." },
  { "resclean_policy_interval_seconds", "gauge", "The policy's interval between cycles." },
  { "resclean_info", "gauge", "The table and bucket this sweeper works on (value 1)." },
}

local Metrics = {}
Metrics.__index = Metrics

-- Numbers as Prometheus reads them.
local function num(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
  return ("%.15g"):format(v)
end

-- Label values: backslash, double quote and line feed escaped.
local function label(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function parse_num(s)
  if s == "NaN" then return 0 / 0 end
  if s == "+Inf" then return math.huge end
  if s == "-Inf" then return -math.huge end
  return math.tointeger(tonumber(s)) or tonumber(s)
end

-- Read the state worth keeping (counters, last success) from a file this
-- module wrote. Anything unreadable is ignored: the counters start at 0.
-- A file that could not be replaced is not read either: the check comes
-- first (sys.write_file without data: lstat, then a probe file created and
-- removed), so a symbolic link or a FIFO planted at path is never opened;
-- check() and write() report it.
function M.read_state(path)
  local state = { resources = {}, cycles = {}, stuck = {}, policy = {} }
  if not sys.write_file(path) then return state end
  local f = io.open(path, "rb")
  if not f then return state end
  for line in f:lines() do
    local outcome, v = line:match('^resclean_resources_total{outcome="([%w_]+)"} (%S+)$')
    if outcome then
      state.resources[outcome] = parse_num(v)
    else
      local code
      code, v = line:match('^resclean_sweep_cycles_total{exit_code="(%d+)"} (%S+)$')
      if code then
        state.cycles[tonumber(code)] = parse_num(v)
      else
        local reason
        reason, v = line:match('^resclean_sweep_stuck_cycles{reason="([%w_]+)"} (%S+)$')
        if reason then state.stuck[reason] = math.tointeger(parse_num(v)) end
        v = line:match("^resclean_sweep_last_success_timestamp_seconds (%S+)$")
        if v then state.last_success = parse_num(v) end
        -- The policy's figures, for a run that fails on its policy: alerts keep their thresholds.
        v = line:match("^resclean_policy_max_age_seconds (%S+)$")
        if v then state.policy.max_age = parse_num(v) end
        v = line:match("^resclean_policy_interval_seconds (%S+)$")
        if v then state.policy.interval = parse_num(v) end
        local t, b = line:match('^resclean_info{table="([%w_]+)",bucket="([a-z0-9.%-]*)"} 1$')
        if t then state.policy.table, state.policy.bucket = t, b end
      end
    end
  end
  f:close()
  return state
end

local function policy_gauges(g, p)
  if not p then return end
  g.max_age = p.max_age
  g.interval = p.interval
  g.table, g.bucket = p.table, p.bucket
end

-- opts.now: clock for timestamps (specs); opts.fresh: ignore the old file;
-- opts.on_update(text): called with the rendered series after each change
-- (the --metrics-listen endpoint, a --metrics-push). path nil: no file, the
-- series live in memory only (counters start at 0).
function M.new(path, opts)
  assert(path == nil or (type(path) == "string" and path ~= ""), "metrics: a file path is needed")
  opts = opts or {}
  local state = (opts.fresh or not path) and { resources = {}, cycles = {}, stuck = {}, policy = {} }
    or M.read_state(path)
  local m = setmetatable({
    path = path,
    on_update = opts.on_update,
    now = opts.now or sys.time,
    resources = {},
    cycles = {},
    last_success = state.last_success,
    gauges = {},
    stuck = {},
  }, Metrics)
  for _, r in ipairs(M.STUCK_REASONS) do m.stuck[r] = state.stuck[r] or 0 end
  policy_gauges(m.gauges, state.policy.interval and state.policy or nil)
  for _, o in ipairs(outcome_mod.OUTCOMES) do m.resources[o] = state.resources[o] or 0 end
  for o, v in pairs(state.resources) do m.resources[o] = v end
  for _, c in ipairs(M.EXIT_CODES) do m.cycles[c] = state.cycles[c] or 0 end
  for c, v in pairs(state.cycles) do m.cycles[c] = v end
  return m
end


-- Kept on purpose, by reason, from a summary: skipped_reasons when the
-- sweep gives them; skipped resources it does not explain are "other".
local function kept(summary)
  local by, named = {}, 0
  for _, r in ipairs(outcome_mod.KEPT_REASONS) do by[r] = 0 end
  for r, n in pairs(summary.skipped_reasons or {}) do
    if math.type(n) == "integer" and n > 0 then
      by[r] = (by[r] or 0) + n
      named = named + n
    end
  end
  local rest = (math.type(summary.skipped) == "integer" and summary.skipped or 0) - named
  if rest > 0 then by.other = rest end
  return by
end

-- What the cycle left to remove: rows that became stale during the cycle
-- and were removed too would make it negative: 0.
local function backlog(summary)
  local function n(k) return math.type(summary[k]) == "integer" and summary[k] or 0 end
  if math.type(summary.eligible) ~= "integer" then return nil end
  local removed = summary.dry_run and 0 or n("object_deleted") + n("record_only") + n("deleted")
  return math.max(summary.eligible - removed - n("skipped"), 0)
end

-- After a cycle: summary is the sweep's summary (counts by outcome,
-- skipped_reasons, eligible, duration_ms, rate, error, dry_run,
-- singleton_busy, oldest_age_s), code its exit code.
function Metrics:record(summary, code, p)
  summary = summary or {}
  local g = self.gauges
  local now = self.now()
  if not summary.dry_run then
    for _, o in ipairs(outcome_mod.OUTCOMES) do
      local n = summary[o]
      if math.type(n) == "integer" and n > 0 then self.resources[o] = self.resources[o] + n end
    end
  end
  self.cycles[code] = (self.cycles[code] or 0) + 1
  g.exit_code = code
  g.last_run = now
  if summary.duration_ms then g.duration = summary.duration_ms / 1000 end
  if summary.singleton_busy then
    -- Another sweeper did the work: this one knows nothing of the backlog.
    g.eligible, g.oldest, g.rate, g.kept, g.backlog = nil, nil, nil, nil, nil
  elseif not summary.error or (summary.eligible or 0) > 0 then
    -- (a cycle that failed before counting reports eligible 0: keep the last values)
    g.eligible = summary.eligible
    g.rate = summary.rate
    g.kept = kept(summary)
    g.backlog = backlog(summary)
    if summary.oldest_age_s ~= nil then
      g.oldest = summary.oldest_age_s
    elseif summary.eligible == 0 then
      g.oldest = 0
    else
      g.oldest = nil -- not reported: unknown rather than stale
    end
  end
  g.dry_run = summary.dry_run and 1 or 0
  g.singleton_busy = summary.singleton_busy and 1 or 0
  self:count_stuck(summary)
  policy_gauges(g, p)
  if (code == 0 or code == 1) and not summary.error and not summary.dry_run then
    self.last_success = now
  end
  return self:flush()
end

-- Cycles in a row that removed nothing, by reason (see FAMILIES).
function Metrics:count_stuck(summary)
  local st = self.stuck
  if summary.singleton_busy then
    st.singleton_busy = st.singleton_busy + 1
    return
  end
  local counted = math.type(summary.eligible) == "integer" and not (summary.error and summary.eligible == 0)
  if summary.dry_run or not counted then return end
  st.singleton_busy = 0
  local function n(v) return math.type(v) == "integer" and v or 0 end
  local reasons = summary.skipped_reasons or {}
  local kept_reason = outcome_mod.KEPT
  local removable = summary.eligible - n(reasons[kept_reason.referenced]) - n(reasons[kept_reason.row_vanished])
  local removed = n(summary.object_deleted) + n(summary.record_only) + n(summary.deleted)
  if removed > 0 or removable <= 0 then
    st.nothing_removed = 0
  else
    st.nothing_removed = st.nothing_removed + 1
  end
end

-- Did the policy file load and validate (this cycle, or at start)? Written
-- with the next record or flush.
function Metrics:policy_valid(ok)
  self.gauges.policy_invalid = ok and 0 or 1
end

-- A start that failed on its policy (before any cycle): its exit code counted
-- as a cycle's, resclean_policy_invalid 1, the last policy figures kept.
function Metrics:record_policy_failure(code)
  self:policy_valid(false)
  return self:record_failure(nil, code or 2)
end

-- Resources handled outside a cycle (cancels an application notified):
-- counted in resclean_resources_total by outcome like a cycle's; the cycle
-- gauges are left as the last cycle set them.
function Metrics:record_resources(summary)
  for _, o in ipairs(outcome_mod.OUTCOMES) do
    local n = summary and summary[o]
    if math.type(n) == "integer" and n > 0 then self.resources[o] = self.resources[o] + n end
  end
  return self:flush()
end

-- A cycle that failed before sweeping: code 3 (storage or database
-- unreachable, the default) or 2 (configuration the operator must fix). It is
-- counted as a cycle; the last success and the backlog figures stay as they were.
function Metrics:record_failure(p, code)
  code = code or 3
  assert(math.type(code) == "integer", "metrics: record_failure needs an exit code")
  self.cycles[code] = (self.cycles[code] or 0) + 1
  self.gauges.exit_code = code
  self.gauges.last_run = self.now()
  policy_gauges(self.gauges, p)
  return self:flush()
end

-- What to fix, by the errno sys.write_file returns (Linux numbers); a link
-- or a non-regular file at the path is explained by the message itself.
local FIX = {
  [1] = "resclean's user must be allowed to create files in the folder",  -- EPERM
  [2] = "the folder must exist",                                          -- ENOENT
  [13] = "resclean's user must be allowed to create files in the folder", -- EACCES
  [20] = "every part of the folder's path must be a folder",              -- ENOTDIR
  [28] = "the file system is full",                                       -- ENOSPC
  [30] = "the folder is on a read-only file system",                      -- EROFS
  [122] = "resclean's user is over its disk quota",                       -- EDQUOT
}

-- The error of a failed sys.write_file; msg names the path.
local function write_error(code, msg, errno)
  local fix = FIX[errno]
  return { kind = "metrics", code = code,
           message = ("cannot write metrics file (--metrics-file) %s%s"):format(msg, fix and ("; " .. fix) or "") }
end

-- Can the file be written? path is no symbolic link or other non-regular
-- file, and a file can be created in its folder (then removed). For a
-- start-up check: true or nil, err.
function Metrics:check()
  if not self.path then return true end
  local ok, msg, errno = sys.write_file(self.path)
  if not ok then return nil, write_error("open", msg, errno) end
  return true
end

-- write(), with a warning logged on failure: metrics never stop a sweep.
function Metrics:flush()
  if self.on_update then self.on_update(self:render()) end
  if not self.path then return true end
  local ok, err = self:write()
  if not ok then log.warn("metrics_write_failed", { path = self.path, message = err.message }) end
  return ok, err
end

-- The file's text.
function Metrics:render()
  local g = self.gauges
  local values = {
    resclean_sweep_last_exit_code = g.exit_code,
    resclean_sweep_last_run_timestamp_seconds = g.last_run,
    resclean_sweep_last_success_timestamp_seconds = self.last_success,
    resclean_sweep_duration_seconds = g.duration,
    resclean_sweep_eligible = g.eligible,
    resclean_sweep_backlog = g.backlog,
    resclean_sweep_rate = g.rate,
    resclean_pending_oldest_age_seconds = g.oldest,
    resclean_sweep_dry_run = g.dry_run,
    resclean_sweep_singleton_busy = g.singleton_busy,
    resclean_policy_max_age_seconds = g.max_age,
    resclean_policy_interval_seconds = g.interval,
    resclean_policy_invalid = g.policy_invalid or 0,
  }
  local out = {}
  local function add(s) out[#out + 1] = s end
  for _, fam in ipairs(M.FAMILIES) do
    local name, kind, help = fam[1], fam[2], fam[3]
    local samples = {}
    if name == "resclean_resources_total" then
      local names = {}
      for o in pairs(self.resources) do names[#names + 1] = o end
      table.sort(names)
      for _, o in ipairs(names) do
        samples[#samples + 1] = ('%s{outcome="%s"} %s'):format(name, label(o), num(self.resources[o]))
      end
    elseif name == "resclean_sweep_cycles_total" then
      local codes = {}
      for c in pairs(self.cycles) do codes[#codes + 1] = c end
      table.sort(codes)
      for _, c in ipairs(codes) do
        samples[#samples + 1] = ('%s{exit_code="%d"} %s'):format(name, c, num(self.cycles[c]))
      end
    elseif name == "resclean_sweep_kept" then
      local reasons = {}
      for r in pairs(g.kept or {}) do reasons[#reasons + 1] = r end
      table.sort(reasons)
      for _, r in ipairs(reasons) do
        samples[#samples + 1] = ('%s{reason="%s"} %s'):format(name, label(r), num(g.kept[r]))
      end
    elseif name == "resclean_sweep_stuck_cycles" then
      for _, r in ipairs(M.STUCK_REASONS) do
        samples[#samples + 1] = ('%s{reason="%s"} %s'):format(name, r, num(self.stuck[r] or 0))
      end
    elseif name == "resclean_info" then
      if g.table then
        samples[1] = ('%s{table="%s",bucket="%s"} 1'):format(name, label(g.table), label(g.bucket or ""))
      end
    elseif values[name] ~= nil then
      samples[1] = name .. " " .. num(values[name])
    end
    if #samples > 0 then
      add(("# HELP %s %s"):format(name, help))
      add(("# TYPE %s %s"):format(name, kind))
      for _, s in ipairs(samples) do add(s) end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- Write the file atomically (mode 0644: node_exporter often runs as
-- another user). Returns true or nil, err ({kind="metrics"}).
function Metrics:write()
  local ok, msg, errno = sys.write_file(self.path, self:render(), "0644")
  if not ok then return nil, write_error("write", msg, errno) end
  return true
end

return M
