-- Metrics: the Prometheus textfile the sweep writes with --metrics-file,
-- checked with promtool and against the outcomes of real runs on the
-- harness's PostgreSQL and RGW.
local fx = require("support.fixtures")
local h = require("support.helpers")
local metrics = require("resclean.metrics")
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

-- promtool check metrics: exit 0 and nothing to say.
local function promtool(path)
  local out = h.tmpdir() .. "/promtool.out"
  local _, _, code = os.execute(("promtool check metrics <%s >%s 2>&1"):format(h.q(path), h.q(out)))
  return code, h.readall(out)
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function ls(dir)
  local p = assert(io.popen("ls -A " .. h.q(dir)))
  local names = {}
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  return names
end

local SUMMARY = { run_id = "r", eligible = 9, duration_ms = 1500, rate = 6, total = 9, object_deleted = 4,
                  record_only = 2, deleted = 0, failed = 1, skipped = 2, not_found = 0, refused = 0,
                  oldest_age_s = 90061 }
local POLICY = { max_age = 86400, interval = 3600, table = "attack_resource_files", bucket = "b\"1" }

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

  it("is replaced by a rename, leaving no temporary file behind", function()
    local dir = h.tmpdir()
    local path = dir .. "/resclean.prom"
    h.write(path, "old content\n")
    local m = metrics.new(path, { fresh = true })
    assert.is_true(m:record(SUMMARY, 0, POLICY))
    assert.are.same({ "resclean.prom" }, ls(dir))
    assert.matches("^# HELP ", h.readall(path))
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
    assert.is_false(exists(path .. ".tmp." .. sys.pid()))
  end)
end)

describe("the example alert rules", function()
  it("pass promtool check rules and use only metrics the sweep writes", function()
    local out = h.tmpdir() .. "/promtool.out"
    local _, _, code = os.execute(("promtool check rules examples/resclean-alerts.yml >%s 2>&1"):format(h.q(out)))
    assert.are.equal(0, code, h.readall(out))
    local known = {}
    for _, fam in ipairs(metrics.FAMILIES) do known[fam[1]] = true end
    local used = 0
    for name in h.readall("examples/resclean-alerts.yml"):gmatch("resclean_[%w_]+") do
      assert.is_true(known[name], "unknown metric in the alert rules: " .. name)
      used = used + 1
    end
    assert.is_true(used >= 4)
  end)
end)
