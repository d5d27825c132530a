-- Metrics: the Prometheus textfile the sweep writes with --metrics-file,
-- checked with promtool and against the outcomes of real runs on the
-- harness's PostgreSQL and RGW.
local fx = require("support.fixtures")
local h = require("support.helpers")
local cjson = require("cjson")
local log = require("resclean.log")
local metrics = require("resclean.metrics")
local outcome_mod = require("resclean.outcome")
local sys = require("resclean.sys")

-- "name{labels}" -> value, plus the TYPE of each family.
local function parse_prom(text)
  local samples, types, helps = {}, {}, {}
  for line in text:gmatch("[^\n]+") do
    local name, kind = line:match("^# TYPE (%S+) (%S+)$")
    if name then
      types[name] = kind
    else
      local hname = line:match("^# HELP (%S+) .+$")
      if hname then
        helps[hname] = true
      else
        local series, v = line:match("^(%S+) (%S+)$")
        assert(series, "not a sample line: " .. line)
        samples[series] = tonumber(v)
      end
    end
  end
  return samples, types, helps
end

-- The log lines fn emits, decoded, and fn's results.
local function capture(fn)
  local path = h.tmpdir() .. "/log"
  local f = assert(io.open(path, "w"))
  log.set_output(f)
  local res = table.pack(pcall(fn))
  log.set_output(io.stdout)
  f:close()
  assert(res[1], res[2])
  local lines = {}
  for line in io.lines(path) do lines[#lines + 1] = cjson.decode(line) end
  return lines, table.unpack(res, 2, res.n)
end

-- promtool check metrics: exit 0 and nothing to say.
local function promtool(path)
  local out = h.tmpdir() .. "/promtool.out"
  local _, _, code = os.execute(("promtool check metrics <%s >%s 2>&1"):format(h.q(path), h.q(out)))
  return code, h.readall(out)
end

local function ls(dir)
  local p = assert(io.popen("ls -A " .. h.q(dir)))
  local names = {}
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  return names
end

local function is_link(path)
  local ok = os.execute("test -L " .. h.q(path))
  return ok == true
end

local function mode(path)
  local p = assert(io.popen("stat -c %a " .. h.q(path)))
  local m = p:read("l")
  p:close()
  return m
end

-- Symbolic links to target at each of names (one python3, not one ln each).
local function plant(target, names)
  local list = h.write(h.tmpdir() .. "/links", table.concat(names, "\n") .. "\n")
  assert(os.execute(("%s -c %s %s %s"):format(h.python(), h.q(
    "import os, sys\nfor n in open(sys.argv[2]).read().split():\n    os.symlink(sys.argv[1], n)"),
    h.q(target), h.q(list))))
end

-- FILE.tmp, FILE.tmp.<pid> and the n pids after it: the names a writer
-- that picks its temporary name from its pid would use.
local function pid_names(path, pid, n)
  local names = { path .. ".tmp", path .. ".tmp." .. pid }
  for i = 1, n do names[#names + 1] = ("%s.tmp.%d"):format(path, pid + i) end
  return names
end

-- Pids a child started now may get: all of them where pid_max is small (the
-- usual 32768: other processes on the machine take pids meanwhile), else the
-- 50000 after the last one handed out. Returns first pid and count.
local function pid_range()
  local function read(f)
    local fh = io.open(f)
    local n = fh and tonumber(fh:read("l"))
    if fh then fh:close() end
    return n
  end
  local max = read("/proc/sys/kernel/pid_max") or 32768
  if max <= 65536 then return 1, max end
  return read("/proc/sys/kernel/ns_last_pid") or sys.pid(), 50000
end

local SUMMARY = { run_id = "r", eligible = 9, duration_ms = 1500, rate = 6, total = 9, object_deleted = 4,
                  record_only = 2, deleted = 0, failed = 1, skipped = 2, not_found = 0, refused = 0,
                  oldest_age_s = 90061 }
local POLICY = { max_age = 86400, interval = 3600, table = "attack_resource_files", bucket = "b\"1" }

describe("sys.write_file", function()
  it("replaces the file with the data, mode 0644 unless told, leaving nothing else in the folder", function()
    local dir = h.tmpdir()
    local path = h.write(dir .. "/m.prom", "old\n")
    local big = ("0123456789abcdef"):rep(100000)
    assert.is_true(sys.write_file(path, big))
    assert.are.equal(big, h.readall(path))
    assert.are.equal("644", mode(path))
    assert.is_true(sys.write_file(path, "", "0600"))
    assert.are.equal("", h.readall(path))
    assert.are.equal("600", mode(path))
    assert.is_true(sys.write_file(dir .. "/new.prom", "x", 416)) -- 0640
    assert.are.equal("640", mode(dir .. "/new.prom"))
    assert.are.same({ "m.prom", "new.prom" }, ls(dir))
  end)

  it("without data only checks: creates nothing, changes nothing", function()
    local dir = h.tmpdir()
    assert.is_true(sys.write_file(dir .. "/absent.prom"))
    local path = h.write(dir .. "/m.prom", "kept\n")
    assert.is_true(sys.write_file(path))
    assert.are.equal("kept\n", h.readall(path))
    assert.are.same({ "m.prom" }, ls(dir))
  end)

  it("refuses a symbolic link at the path: the link and its target stay as they were", function()
    local dir = h.tmpdir()
    local victim = h.write(dir .. "/victim", "precious\n")
    local path = dir .. "/m.prom"
    plant(victim, { path })
    for _, data in ipairs({ "new\n", false }) do
      local ok, msg, errno = sys.write_file(path, data or nil)
      assert.is_nil(ok)
      assert.are.equal(path .. ": is a symbolic link; it is neither followed nor replaced "
        .. "(give the link's target as the file, or remove the link)", msg)
      assert.are.equal("integer", math.type(errno))
    end
    -- a dangling link is refused as well: creating its target is what a planted link is for
    local dangling = dir .. "/d.prom"
    plant(dir .. "/would-be-created", { dangling })
    assert.is_nil(sys.write_file(dangling, "x"))
    assert.is_true(is_link(path))
    assert.is_true(is_link(dangling))
    assert.are.equal("precious\n", h.readall(victim))
    assert.are.same({ "d.prom", "m.prom", "victim" }, ls(dir))
  end)

  it("refuses a folder at the path and names what to give instead", function()
    local dir = h.tmpdir()
    local ok, msg = sys.write_file(dir, "x")
    assert.is_nil(ok)
    assert.matches("is not a regular file", msg, 1, true)
    assert.matches(dir, msg, 1, true)
  end)

  it("names the path and the system's reason when the folder is missing", function()
    local ok, msg, errno = sys.write_file("/nonexistent-dir/m.prom", "x")
    assert.is_nil(ok)
    assert.are.equal("/nonexistent-dir/m.prom: cannot create a temporary file in its folder: "
      .. "No such file or directory", msg)
    assert.are.equal(2, errno)
  end)

  -- Why a link planted between the check and the rename is harmless.
  it("relies on rename replacing a link at the final name, never following it", function()
    local dir = h.tmpdir()
    local victim = h.write(dir .. "/victim", "precious\n")
    local path = dir .. "/m.prom"
    plant(victim, { path })
    assert.is_true(os.rename(h.write(dir .. "/new", "new\n"), path))
    assert.is_false(is_link(path))
    assert.are.equal("new\n", h.readall(path))
    assert.are.equal("precious\n", h.readall(victim))
  end)

  it("removes its temporary file and keeps the old file when a write fails", function()
    local dir = h.tmpdir()
    local path = h.write(dir .. "/m.prom", "old\n")
    local script = h.write(dir .. "/w.lua", ([[
      local sys = require("resclean.sys")
      local ok, msg = sys.write_file(%q, ("x"):rep(100000))
      print(tostring(ok), msg)
    ]]):format(path))
    -- 1 KiB file size limit, SIGXFSZ ignored: write() fails with EFBIG
    local out = dir .. "/out"
    os.execute(("sh -c %s"):format(h.q(("trap '' XFSZ; ulimit -f 1; exec %s run %s >%s 2>&1")
      :format(h.q(h.bin()), h.q(script), h.q(out)))))
    assert.are.equal("nil\t" .. path .. ": cannot write the temporary file: File too large\n", h.readall(out))
    assert.are.equal("old\n", h.readall(path))
    assert.are.same({ "m.prom", "out", "w.lua" }, ls(dir))
  end)

  it("rejects a mode that is not one and a path with a NUL byte", function()
    local dir = h.tmpdir()
    assert.has_error(function() sys.write_file(dir .. "/m", "x", "0999") end)
    assert.has_error(function() sys.write_file(dir .. "/m", "x", 8 ^ 5) end)
    assert.has_error(function() sys.write_file(dir .. "/m\0x", "x") end)
    assert.has_error(function() sys.write_file("", "x") end)
    assert.are.same({}, ls(dir))
  end)
end)

describe("the metrics file", function()
  it("has HELP and TYPE for every family and passes promtool", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local m = metrics.new(path, { now = function() return 1700000000.5 end })
    assert.is_true(m:record(SUMMARY, 1, POLICY))
    local code, out = promtool(path)
    assert.are.equal(0, code, out)
    assert.are.equal("", out)
    local samples, types, helps = parse_prom(h.readall(path))
    for _, fam in ipairs(metrics.FAMILIES) do
      assert.are.equal(fam[2], types[fam[1]], fam[1])
      assert.is_true(helps[fam[1]], fam[1])
    end
    assert.are.equal("counter", types.resclean_resources_total)
    assert.are.equal(4, samples['resclean_resources_total{outcome="object_deleted"}'])
    assert.are.equal(1, samples['resclean_resources_total{outcome="failed"}'])
    assert.are.equal(0, samples['resclean_resources_total{outcome="refused"}'])
    assert.are.equal(1.5, samples.resclean_sweep_duration_seconds)
    assert.are.equal(9, samples.resclean_sweep_eligible)
    assert.are.equal(90061, samples.resclean_pending_oldest_age_seconds)
    assert.are.equal(1, samples.resclean_sweep_last_exit_code)
    assert.are.equal(1700000000.5, samples.resclean_sweep_last_success_timestamp_seconds)
    -- label values are escaped
    assert.are.equal(1, samples['resclean_info{table="attack_resource_files",bucket="b\\"1"}'])
  end)

  it("has every family documented in the README and resclean(1)", function()
    for _, doc in ipairs({ "README.md", "src/resclean.1" }) do
      local text = h.readall(doc)
      for _, fam in ipairs(metrics.FAMILIES) do
        assert(text:find(fam[1], 1, true), ("%s does not describe %s"):format(doc, fam[1]))
      end
    end
  end)

  it("is replaced by a rename, leaving no temporary file behind", function()
    local dir = h.tmpdir()
    local path = dir .. "/resclean.prom"
    h.write(path, "old content\n")
    local m = metrics.new(path, { fresh = true })
    assert.is_true(m:record(SUMMARY, 0, POLICY))
    assert.are.same({ "resclean.prom" }, ls(dir))
    assert.matches("^# HELP ", h.readall(path))
  end)

  it("writes through no link planted at the temporary names, and leaves those links alone", function()
    local dir = h.tmpdir()
    local victim = h.write(dir .. "/victim", "precious\n")
    local path = dir .. "/resclean.prom"
    local planted = pid_names(path, sys.pid(), 20)
    plant(victim, planted)
    local m = metrics.new(path)
    assert.is_true(m:check())
    assert.is_true(m:record(SUMMARY, 0, POLICY))
    assert.is_true(m:record(SUMMARY, 1, POLICY))
    assert.are.equal("precious\n", h.readall(victim))
    for _, l in ipairs(planted) do assert.is_true(is_link(l), l) end
    assert.is_false(is_link(path))
    assert.are.equal("644", mode(path))
    assert.are.equal(2, parse_prom(h.readall(path))['resclean_resources_total{outcome="failed"}'])
    assert.are.equal(#planted + 2, #ls(dir)) -- the links, the victim, the file: no temporary file left
  end)

  it("refuses a link at its own name: a clear error, the link's target neither read nor changed", function()
    local dir = h.tmpdir()
    -- the target looks like a metrics file: counters read through the link would show
    local victim = h.write(dir .. "/victim", 'resclean_resources_total{outcome="failed"} 41\n')
    local path = dir .. "/resclean.prom"
    plant(victim, { path })
    local m = metrics.new(path, { now = function() return 100 end })
    local ok, err = m:check()
    assert.is_nil(ok)
    assert.are.equal("metrics", err.kind)
    assert.are.equal("cannot write metrics file (--metrics-file) " .. path .. ": is a symbolic link; it is "
      .. "neither followed nor replaced (give the link's target as the file, or remove the link)", err.message)
    -- a long-running sweep goes on and logs why the file is not written
    local lines
    lines, ok, err = capture(function() return m:record(SUMMARY, 0, POLICY) end)
    assert.is_nil(ok)
    assert.matches("is a symbolic link", err.message, 1, true)
    assert.are.equal(1, #lines)
    assert.are.equal("warn", lines[1].level)
    assert.are.equal("metrics_write_failed", lines[1].event)
    assert.are.equal(err.message, lines[1].message)
    assert.are.equal(path, lines[1].path)
    assert.are.equal(1, m.resources.failed) -- SUMMARY's 1, not 41 + 1: the target was not read
    assert.are.equal('resclean_resources_total{outcome="failed"} 41\n', h.readall(victim))
    assert.is_true(is_link(path))
    -- once the link is gone, the file is written
    os.remove(path)
    assert.is_true(m:record(SUMMARY, 0, POLICY))
    assert.is_false(is_link(path))
    assert.are.equal(2, parse_prom(h.readall(path))['resclean_resources_total{outcome="failed"}'])
  end)

  it("reports rows kept on purpose by reason, and what the cycle left to remove", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local m = metrics.new(path, { fresh = true })
    -- SUMMARY: 9 eligible, 6 removed, 2 skipped (no reasons given: "other"), 1 failed
    m:record(SUMMARY, 1, POLICY)
    local s = parse_prom(h.readall(path))
    for _, r in ipairs(outcome_mod.KEPT_REASONS) do
      assert.are.equal(0, s[('resclean_sweep_kept{reason="%s"}'):format(r)], r)
    end
    assert.are.equal(2, s['resclean_sweep_kept{reason="other"}'])
    assert.are.equal(1, s.resclean_sweep_backlog)
    local with_reasons = { eligible = 10, object_deleted = 3, skipped = 5, failed = 2,
                           skipped_reasons = { referenced = 4, locked = 1 }, duration_ms = 1 }
    m:record(with_reasons, 1, POLICY)
    s = parse_prom(h.readall(path))
    assert.are.equal(4, s['resclean_sweep_kept{reason="referenced"}'])
    assert.are.equal(1, s['resclean_sweep_kept{reason="locked"}'])
    assert.are.equal(0, s['resclean_sweep_kept{reason="bad_key"}'])
    assert.is_nil(s['resclean_sweep_kept{reason="other"}'])
    assert.are.equal(2, s.resclean_sweep_backlog) -- the failed ones
    -- a dry run removes nothing: everything not kept is left
    m:record({ dry_run = true, eligible = 10, object_deleted = 7, skipped = 3,
               skipped_reasons = { referenced = 3 }, duration_ms = 1 }, 0, POLICY)
    assert.are.equal(7, parse_prom(h.readall(path)).resclean_sweep_backlog)
    -- rows that went stale during the cycle and were removed too: nothing left, not negative
    m:record({ eligible = 2, object_deleted = 5, skipped = 1, skipped_reasons = { referenced = 1 },
               duration_ms = 1 }, 0, POLICY)
    assert.are.equal(0, parse_prom(h.readall(path)).resclean_sweep_backlog)
    -- a cycle that failed before counting keeps the last figures; one that left the work
    -- to the singleton holder has none
    m:record_failure(POLICY, 2)
    m:record({ eligible = 0, duration_ms = 1, error = "connection lost" }, 3, POLICY)
    s = parse_prom(h.readall(path))
    assert.are.equal(0, s.resclean_sweep_backlog)
    assert.are.equal(1, s['resclean_sweep_kept{reason="referenced"}'])
    assert.are.equal(3, s.resclean_sweep_last_exit_code)
    m:record({ eligible = 0, duration_ms = 1, singleton_busy = true }, 0, POLICY)
    s = parse_prom(h.readall(path))
    assert.is_nil(s.resclean_sweep_backlog)
    assert.is_nil(s['resclean_sweep_kept{reason="referenced"}'])
    assert.are.equal(0, promtool(path))
  end)

  it("counts a cycle that failed before sweeping under its exit code, the last success unmoved", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local t = 100
    local m = metrics.new(path, { fresh = true, now = function() return t end })
    m:record(SUMMARY, 0, POLICY)
    t = 200
    assert.is_true(m:record_failure(POLICY, 2))
    t = 300
    assert.is_true(m:record_failure(POLICY))
    local s = parse_prom(h.readall(path))
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="0"}'])
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="2"}'])
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="3"}'])
    assert.are.equal(3, s.resclean_sweep_last_exit_code)
    assert.are.equal(300, s.resclean_sweep_last_run_timestamp_seconds)
    assert.are.equal(100, s.resclean_sweep_last_success_timestamp_seconds)
    assert.are.equal(9, s.resclean_sweep_eligible)
    assert.are.equal(3600, s.resclean_policy_interval_seconds)
    -- the very first cycle failing: no success series at all (what RescleanSweepNeverSucceeded reads)
    local fresh = h.tmpdir() .. "/first.prom"
    metrics.new(fresh):record_failure(POLICY, 3)
    s = parse_prom(h.readall(fresh))
    assert.is_nil(s.resclean_sweep_last_success_timestamp_seconds)
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="3"}'])
    assert.are.equal(0, s['resclean_sweep_cycles_total{exit_code="0"}'])
    assert.are.equal(0, promtool(fresh))
  end)

  it("counts cycles in a row that removed nothing, by reason, leaving it unchanged for dry runs and errors",
    function()
    local path = h.tmpdir() .. "/resclean.prom"
    local m = metrics.new(path, { fresh = true })
    local function stuck()
      local s = parse_prom(h.readall(path))
      return s['resclean_sweep_stuck_cycles{reason="nothing_removed"}'],
        s['resclean_sweep_stuck_cycles{reason="singleton_busy"}']
    end
    local typo = { eligible = 5, duration_ms = 5, total = 5, skipped = 5, skipped_reasons = { bad_key = 5 } }
    m:record(typo, 0, POLICY)
    m:record(typo, 0, POLICY)
    assert.are.same({ 2, 0 }, { stuck() })
    m:record({ dry_run = true, eligible = 5, duration_ms = 5 }, 0, POLICY)       -- unchanged
    m:record({ eligible = 0, duration_ms = 5, error = "08006: lost" }, 3, POLICY) -- unchanged
    m:record_failure(POLICY, 3)                                                   -- unchanged
    m:record(typo, 0, POLICY)
    assert.are.same({ 3, 0 }, { stuck() })
    -- rows still referenced by attacks are kept on purpose: nothing to remove, not stuck
    m:record({ eligible = 2, duration_ms = 5, skipped = 2, skipped_reasons = { referenced = 2 } }, 0, POLICY)
    assert.are.same({ 0, 0 }, { stuck() })
    m:record(typo, 1, POLICY)
    m:record(SUMMARY, 0, POLICY)                                                   -- removed some
    assert.are.same({ 0, 0 }, { stuck() })
    for _ = 1, 3 do m:record({ eligible = 0, duration_ms = 3, singleton_busy = true }, 0, POLICY) end
    assert.are.same({ 0, 3 }, { stuck() })
    -- a new process (--once) continues from the file
    metrics.new(path):record({ eligible = 0, duration_ms = 3, singleton_busy = true }, 0, POLICY)
    assert.are.same({ 0, 4 }, { stuck() })
    metrics.new(path):record({ eligible = 0, duration_ms = 3, rate = 0 }, 0, POLICY)
    assert.are.same({ 0, 0 }, { stuck() })
    assert.are.equal(0, promtool(path))
  end)

  it("writes resclean_policy_invalid, and a start that fails on its policy keeps the policy figures", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local m = metrics.new(path, { fresh = true })
    m:record(SUMMARY, 0, POLICY)
    assert.are.equal(0, parse_prom(h.readall(path)).resclean_policy_invalid)
    m:policy_valid(false)
    m:record(SUMMARY, 0, POLICY)
    assert.are.equal(1, parse_prom(h.readall(path)).resclean_policy_invalid)
    m:policy_valid(true)
    m:record(SUMMARY, 0, POLICY)
    assert.are.equal(0, parse_prom(h.readall(path)).resclean_policy_invalid)
    local info = 'resclean_info{table="attack_resource_files",bucket="cipherswarm-resources"}'
    metrics.new(path):record(SUMMARY, 0, { max_age = 86400, interval = 1800, table = "attack_resource_files",
                                           bucket = "cipherswarm-resources" })
    assert.is_true(metrics.new(path):record_policy_failure(2))
    local s = parse_prom(h.readall(path))
    assert.are.equal(1, s.resclean_policy_invalid)
    assert.are.equal(2, s.resclean_sweep_last_exit_code)
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="2"}'])
    assert.are.equal(1800, s.resclean_policy_interval_seconds)
    assert.are.equal(86400, s.resclean_policy_max_age_seconds)
    assert.are.equal(1, s[info])
    assert.are.equal(0, promtool(path))
  end)

  it("reports an unwritable folder as an error value instead of raising", function()
    local m = metrics.new("/nonexistent-dir/resclean.prom")
    local ok, err = m:write()
    assert.is_nil(ok)
    assert.are.equal("metrics", err.kind)
    assert.matches("cannot write metrics", err.message)
    ok, err = m:check()
    assert.is_nil(ok)
    assert.matches("/nonexistent%-dir/resclean.prom", err.message)
    local dir = h.tmpdir()
    assert.is_true(metrics.new(dir .. "/x.prom"):check())
    assert.are.same({}, ls(dir))
  end)

  it("keeps the backlog figures of the last cycle that counted it", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local m = metrics.new(path, { fresh = true })
    m:record(SUMMARY, 0, POLICY)
    -- the database went away before the eligible count: eligible 0 means "unknown" here
    m:record({ eligible = 0, duration_ms = 10, error = "connection: refused" }, 3, POLICY)
    local s = parse_prom(h.readall(path))
    assert.are.equal(9, s.resclean_sweep_eligible)
    assert.are.equal(90061, s.resclean_pending_oldest_age_seconds)
    -- a sweeper that left the cycle to the singleton holder reports no backlog figures at all
    m:record({ eligible = 0, duration_ms = 3, singleton_busy = true }, 0, POLICY)
    s = parse_prom(h.readall(path))
    assert.is_nil(s.resclean_sweep_eligible)
    assert.is_nil(s.resclean_pending_oldest_age_seconds)
    assert.are.equal(1, s.resclean_sweep_singleton_busy)
    assert.are.equal(0, promtool(path))
    -- a cycle with nothing eligible has no oldest age: 0
    m:record({ eligible = 0, duration_ms = 3, rate = 0 }, 0, POLICY)
    s = parse_prom(h.readall(path))
    assert.are.equal(0, s.resclean_sweep_eligible)
    assert.are.equal(0, s.resclean_pending_oldest_age_seconds)
  end)

  it("keeps counting from the values in the file, so --once runs give counters that only grow", function()
    local path = h.tmpdir() .. "/resclean.prom"
    metrics.new(path, { now = function() return 100 end }):record(SUMMARY, 0, POLICY)
    local m2 = metrics.new(path, { now = function() return 200 end })
    m2:record(SUMMARY, 0, POLICY)
    local s = parse_prom(h.readall(path))
    assert.are.equal(8, s['resclean_resources_total{outcome="object_deleted"}'])
    assert.are.equal(2, s['resclean_sweep_cycles_total{exit_code="0"}'])
    assert.are.equal(200, s.resclean_sweep_last_success_timestamp_seconds)
  end)

  it("moves the last success time only for completed cycles that were not dry runs", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local t = 100
    local m = metrics.new(path, { now = function() return t end })
    m:record(SUMMARY, 0, POLICY)
    t = 200
    m:record_failure(POLICY)
    t = 300
    m:record({ eligible = 3, duration_ms = 5, error = "08006: connection lost", failed = 1 }, 3, POLICY)
    t = 400
    local dry = { dry_run = true, eligible = 9, duration_ms = 5, object_deleted = 9 }
    m:record(dry, 0, POLICY)
    local s = parse_prom(h.readall(path))
    assert.are.equal(100, s.resclean_sweep_last_success_timestamp_seconds)
    assert.are.equal(400, s.resclean_sweep_last_run_timestamp_seconds)
    assert.are.equal(2, s['resclean_sweep_cycles_total{exit_code="3"}'])
    assert.are.equal(1, s.resclean_sweep_dry_run)
    -- neither the failed cycle's nor the dry run's outcomes are counted twice or at all
    assert.are.equal(4, s['resclean_resources_total{outcome="object_deleted"}'])
    assert.are.equal(2, s['resclean_resources_total{outcome="failed"}'])
    t = 500
    m:record(SUMMARY, 1, POLICY)
    s = parse_prom(h.readall(path))
    assert.are.equal(500, s.resclean_sweep_last_success_timestamp_seconds)
    assert.are.equal(0, s.resclean_sweep_dry_run)
  end)
end)

describe("sweep --metrics-file", function()
  local conn, client, bucket

  local function sweep(path, extra_env, flags)
    return h.run_script({ "scripts/sweep.lua", "--once", "--metrics-file", path, table.unpack(flags or {}) },
      h.script_env(bucket, extra_env))
  end

  setup(function() conn = fx.connect() end)
  before_each(function() bucket, client = fx.fresh_bucket(conn, "metrics") end)
  teardown(function() if conn then conn:close() end end)

  it("matches the outcomes of the run and passes promtool", function()
    local with_obj = fx.rows(conn, 3, { age_s = 5 * 86400 })
    fx.objects(client, with_obj)
    fx.rows(conn, 2, { age_s = 2 * 86400 })                 -- no object: record_only
    local referenced = fx.rows(conn, 1, { age_s = 3 * 86400 })
    fx.objects(client, referenced)
    fx.reference(conn, referenced[1])                       -- skipped
    fx.rows(conn, 4, { age_s = 60 })                        -- fresh: not eligible
    fx.rows(conn, 2, { age_s = 9 * 86400, type = "EPHEMERAL_WORD_LIST", content = '["x"]' })
    local path = h.tmpdir() .. "/resclean.prom"
    local t0 = sys.time()
    local r = sweep(path)
    local t1 = sys.time()
    assert.are.equal(0, r.code, r.stderr)
    local code, out = promtool(path)
    assert.are.equal(0, code, out)
    assert.are.equal("", out)
    local s, types = parse_prom(h.readall(path))
    assert.are.equal("counter", types.resclean_resources_total)
    local expect = { object_deleted = 3, record_only = 2, skipped = 1, deleted = 0, failed = 0, not_found = 0,
                     refused = 0 }
    for outcome, n in pairs(expect) do
      local series = ('resclean_resources_total{outcome="%s"}'):format(outcome)
      assert.are.equal(n, s[series], series)
      assert.are.equal(r.summary[outcome], s[series], series .. " against the summary line")
    end
    assert.are.equal(6, s.resclean_sweep_eligible)
    assert.are.equal(r.summary.eligible, s.resclean_sweep_eligible)
    assert.are.equal(0, s.resclean_sweep_last_exit_code)
    assert.are.equal(r.summary.duration_ms / 1000, s.resclean_sweep_duration_seconds)
    local oldest = s.resclean_pending_oldest_age_seconds
    assert.is_true(oldest ~= nil and oldest >= 5 * 86400 and oldest < 5 * 86400 + 120, tostring(oldest))
    local last = s.resclean_sweep_last_success_timestamp_seconds
    assert.is_true(last >= t0 and last <= t1, ("%s not in [%s, %s]"):format(last, t0, t1))
    assert.are.equal(86400, s.resclean_policy_max_age_seconds)
    assert.are.equal(1, s[('resclean_info{table="attack_resource_files",bucket="%s"}'):format(bucket)])
    -- the referenced row is kept on purpose, and not a backlog
    assert.are.equal(1, s['resclean_sweep_kept{reason="referenced"}'])
    assert.are.same({ referenced = 1 }, r.summary.skipped_reasons)
    for _, reason in ipairs({ "locked", "bad_key", "row_vanished" }) do
      assert.are.equal(0, s[('resclean_sweep_kept{reason="%s"}'):format(reason)], reason)
    end
    assert.are.equal(0, s.resclean_sweep_backlog)
  end)

  it("refuses a metrics file that is a symbolic link: exit 2 naming it, nothing written through it", function()
    local dir = h.tmpdir()
    local victim = h.write(dir .. "/victim", "precious\n")
    local path = dir .. "/resclean.prom"
    plant(victim, { path })
    local ids = fx.rows(conn, 1)
    fx.objects(client, ids)
    local r = sweep(path)
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("cannot write metrics file (--metrics-file) " .. path .. ": is a symbolic link", r.stderr, 1, true)
    assert.are.equal("precious\n", h.readall(victim))
    assert.is_true(is_link(path))
    assert.are.equal(1, fx.count_set(fx.existing_rows(conn, ids))) -- nothing swept either
  end)

  it("writes through no link planted at the temporary names the sweep's pid would give", function()
    local dir = h.tmpdir()
    local victim = h.write(dir .. "/victim", "precious\n")
    local path = dir .. "/resclean.prom"
    fx.objects(client, fx.rows(conn, 2))
    local first, n = pid_range()
    local planted = pid_names(path, first - 1, n)
    plant(victim, planted)
    local r = sweep(path)
    assert.are.equal(0, r.code, r.stderr)
    local pid = tonumber(r.summary.run_id:match("^%d+T%d+%-(%d+)%-"))
    assert.is_true(pid >= first and pid < first + n, ("the sweep's pid %s was not among the planted names"):format(pid))
    assert.are.equal("precious\n", h.readall(victim))
    assert.is_false(is_link(path))
    assert.are.equal(2, parse_prom(h.readall(path))['resclean_resources_total{outcome="object_deleted"}'])
    assert.are.equal(#planted + 2, #ls(dir))
    assert.are.equal(0, promtool(path))
  end)

  it("adds up the outcomes of successive runs", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local a = fx.rows(conn, 2)
    fx.objects(client, a)
    assert.are.equal(0, sweep(path).code)
    local b = fx.rows(conn, 3)
    fx.objects(client, b)
    fx.rows(conn, 1)
    assert.are.equal(0, sweep(path).code)
    local s = parse_prom(h.readall(path))
    assert.are.equal(5, s['resclean_resources_total{outcome="object_deleted"}'])
    assert.are.equal(1, s['resclean_resources_total{outcome="record_only"}'])
    assert.are.equal(2, s['resclean_sweep_cycles_total{exit_code="0"}'])
    assert.are.equal(4, s.resclean_sweep_eligible)
  end)

  it("records an unreachable storage as exit code 3 without moving the last success", function()
    local path = h.tmpdir() .. "/resclean.prom"
    fx.objects(client, fx.rows(conn, 1))
    assert.are.equal(0, sweep(path).code)
    local before = parse_prom(h.readall(path))
    local r = sweep(path, { AWS_ENDPOINT_URL_S3 = "http://127.0.0.1:1" })
    assert.are.equal(3, r.code)
    local s = parse_prom(h.readall(path))
    assert.are.equal(3, s.resclean_sweep_last_exit_code)
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="3"}'])
    assert.are.equal(before.resclean_sweep_last_success_timestamp_seconds,
      s.resclean_sweep_last_success_timestamp_seconds)
    assert.is_true(s.resclean_sweep_last_run_timestamp_seconds > before.resclean_sweep_last_run_timestamp_seconds)
    assert.are.equal(0, promtool(path))
  end)

  it("writes the exit code of a --once run that fails on its policy, and resclean_policy_invalid 1", function()
    local path = h.tmpdir() .. "/resclean.prom"
    fx.objects(client, fx.rows(conn, 1))
    assert.are.equal(0, sweep(path).code)
    local bad = h.tmpfile("return { max_age = ", "policy.lua")
    local r = sweep(path, nil, { "--policy", bad })
    assert.are.equal(2, r.code, r.stderr)
    local s = parse_prom(h.readall(path))
    assert.are.equal(2, s.resclean_sweep_last_exit_code)
    assert.are.equal(1, s['resclean_sweep_cycles_total{exit_code="2"}'])
    assert.are.equal(1, s.resclean_policy_invalid)
    assert.are.equal(3600, s.resclean_policy_interval_seconds)
    -- a first deployment: no file before
    local first = h.tmpdir() .. "/first.prom"
    r = sweep(first, nil, { "--policy", bad })
    assert.are.equal(2, r.code, r.stderr)
    s = parse_prom(h.readall(first))
    assert.are.equal(2, s.resclean_sweep_last_exit_code)
    assert.are.equal(1, s.resclean_policy_invalid)
    assert.are.equal(0, promtool(first))
  end)

  it("counts the cycles of a key() that fits no row as stuck, the rows kept as bad_key", function()
    local path = h.tmpdir() .. "/resclean.prom"
    fx.objects(client, fx.rows(conn, 3))
    local typo = h.tmpfile("return { key = function(row) return row.ID end }", "policy.lua")
    for _ = 1, 3 do sweep(path, nil, { "--policy", typo }) end
    local s = parse_prom(h.readall(path))
    assert.are.equal(3, s['resclean_sweep_stuck_cycles{reason="nothing_removed"}'])
    assert.are.equal(3, s['resclean_sweep_kept{reason="bad_key"}'])
    assert.are.equal(3, fx.count(conn))
    assert.are.equal(0, sweep(path).code)
    s = parse_prom(h.readall(path))
    assert.are.equal(0, s['resclean_sweep_stuck_cycles{reason="nothing_removed"}'])
  end)

  it("sets resclean_policy_invalid while a live edit does not load, and clears it when fixed", function()
    local path = h.tmpdir() .. "/resclean.prom"
    local pol = h.tmpfile("return { interval = 1, jitter = 0 }", "policy.lua")
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", pol, "--metrics-file", path }, h.script_env(bucket))
    finally(function() if p.alive() then p.kill("KILL") end end)
    local function invalid()
      local f = io.open(path)
      if not f then return nil end
      local v = f:read("a"):match("\nresclean_policy_invalid (%d+)")
      f:close()
      return tonumber(v)
    end
    h.wait_for(function() return invalid() == 0 end, 20, "the first cycle's metrics")
    h.write(pol, "return { interval = 1, jitter = 0, ")
    h.wait_for(function() return invalid() == 1 end, 20, "resclean_policy_invalid 1 after a broken edit")
    h.write(pol, "return { interval = 1, jitter = 0 }")
    h.wait_for(function() return invalid() == 0 end, 20, "resclean_policy_invalid 0 after the fix")
    p.kill("TERM")
    assert.are.equal(0, p.wait(10))
  end)

  it("does not count a dry run's outcomes as work done", function()
    local path = h.tmpdir() .. "/resclean.prom"
    fx.objects(client, fx.rows(conn, 2))
    local r = sweep(path, nil, { "--dry-run" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(2, r.summary.object_deleted)
    local s = parse_prom(h.readall(path))
    assert.are.equal(0, s['resclean_resources_total{outcome="object_deleted"}'])
    assert.are.equal(1, s.resclean_sweep_dry_run)
    assert.are.equal(2, s.resclean_sweep_eligible)
    assert.is_nil(s.resclean_sweep_last_success_timestamp_seconds)
    assert.are.same({ "resclean.prom" }, ls(path:match("^(.*)/")))
  end)
end)
