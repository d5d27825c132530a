-- Cancel from the application: the long-running sweep LISTENs on cancel_channel and cancels
-- the ids an application's committed NOTIFY names, on the real PostgreSQL and RGW.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

local CHANNEL = "resclean_cancel"

describe("cancel on notification", function()
  local conn, bucket, client, p, metrics_file

  -- The resource lines (and other events) a spawned sweeper wrote so far.
  local function events(proc, event)
    local out = {}
    for _, l in ipairs(fs.partial_log(fs.output(proc))) do
      if l.event == event then out[#out + 1] = l end
    end
    return out
  end

  local function resource_line(proc, id)
    for _, l in ipairs(events(proc, "resource")) do
      if l.resource_id == id then return l end
    end
  end

  local function notify(payload)
    local tx = assert(conn:begin())
    fx.check(conn:query("SELECT pg_notify($1, $2)", CHANNEL, payload))
    fx.check(tx:commit())
  end

  local function listener_pid()
    local res = fx.check(conn:query("SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
      .. "AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()", fs.APPNAME))
    return res[1] and res[1].pid
  end

  setup(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "notify")
    -- Nothing is stale for the hour: every cancel below comes from a notification.
    metrics_file = h.tmpdir() .. "/resclean.prom"
    p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }"),
      "--metrics-file", metrics_file }, fs.env(bucket))
    h.wait_for(function() return #events(p, "listening") > 0 and #events(p, "sweep") > 0 end, 30,
      "the sweeper to listen and finish its first cycle")
  end)

  teardown(function()
    if p and p.alive() then p.kill("KILL") end
    if conn then conn:close() end
  end)

  it("removes a fresh pending row and its object within 2 s of the committing NOTIFY, and logs it", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    local t0 = sys.monotime()
    notify(id)
    local l = h.wait_for(function() return resource_line(p, id) end, 5, "the resource line")
    local took = sys.monotime() - t0
    assert.is_true(took < 2, ("took %.2f s"):format(took))
    assert.are.equal("object_deleted", l.outcome)
    assert.are.equal("notify", l.via)
    assert.is_nil(fx.existing_rows(conn, { id })[id])
    assert.is_nil(fx.existing_objects(client, { id })[id])
    -- Counted in the metrics like a cycle's resources.
    local text = h.wait_for(function()
      local t = h.readall(metrics_file)
      return t:find('resclean_resources_total{outcome="object_deleted"} 1', 1, true) and t
    end, 5, "the cancel in the metrics file")
    assert.matches('resclean_sweep_cycles_total{exit_code="0"} 1', text, 1, true)
  end)

  it("does nothing for a NOTIFY inside a transaction that rolls back", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    local tx = assert(conn:begin())
    fx.check(conn:query("SELECT pg_notify($1, $2)", CHANNEL, id))
    fx.check(tx:rollback())
    -- A marker sent after it is handled, so by then the rolled-back one would have been too.
    local marker = fx.rows(conn, 1, { age_s = 60 })[1]
    notify(marker)
    h.wait_for(function() return resource_line(p, marker) end, 5, "the marker's line")
    assert.is_nil(resource_line(p, id))
    assert.is_true(fx.existing_rows(conn, { id })[id])
    assert.is_true(fx.existing_objects(client, { id })[id])
  end)

  it("refuses a confirmed resource, and cancels ids that arrive together in one transaction", function()
    local confirmed = fx.rows(conn, 1, { uploaded = true })[1]
    fx.objects(client, { confirmed })
    local ids = fx.rows(conn, 3, { age_s = 60 })
    notify(confirmed .. "," .. table.concat(ids, " "))
    h.wait_for(function() return resource_line(p, confirmed) end, 5, "the confirmed resource's line")
    local l = resource_line(p, confirmed)
    assert.are.equal("refused", l.outcome)
    assert.are.equal("confirmed", l.reason)
    assert.is_true(fx.existing_rows(conn, { confirmed })[confirmed])
    local runs = {}
    for _, id in ipairs(ids) do
      local r = h.wait_for(function() return resource_line(p, id) end, 5, "line of " .. id)
      assert.are.equal("record_only", r.outcome)
      runs[r.run_id] = true
    end
    local n = 0
    for _ in pairs(runs) do n = n + 1 end
    assert.are.equal(1, n, "ids of one payload were cancelled in several runs")
  end)

  it("warns about a payload that is not an id, touches nothing, and keeps running", function()
    local before = #events(p, "notify_ignored")
    notify("'; DROP TABLE attack_resource_files; --")
    h.wait_for(function() return #events(p, "notify_ignored") > before end, 5, "the warning")
    local w = events(p, "notify_ignored")[before + 1]
    assert.are.equal("warn", w.level)
    assert.matches("DROP", w.tokens, 1, true)
    assert.is_true(p.alive())
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    notify(id)
    assert.are.equal("record_only", h.wait_for(function() return resource_line(p, id) end, 5, "a later id").outcome)
  end)

  it("listens again after its connection is terminated, and acts on the next NOTIFY", function()
    local victim = h.wait_for(listener_pid, 5, "the listening session")
    fx.check(conn:query("SELECT pg_terminate_backend($1)", victim))
    h.wait_for(function()
      local pid = listener_pid()
      return pid and pid ~= victim
    end, 15, "a new listening session")
    assert.is_true(#events(p, "listen_lost") >= 1)
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    notify(id)
    local l = h.wait_for(function() return resource_line(p, id) end, 5, "the line after the reconnect")
    assert.are.equal("object_deleted", l.outcome)
  end)

  it("sends ids with cancel --notify, which the listening sweeper cancels end to end", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    -- No S3 credentials needed where --notify runs.
    local r = h.run_script({ "scripts/cancel.lua", "--notify", id }, fs.env(bucket,
      { AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false }))
    assert.are.equal(0, r.code, r.stderr)
    assert.is_table(r.by.notify_sent)
    local l = h.wait_for(function() return resource_line(p, id) end, 5, "the notified cancel")
    assert.are.equal("object_deleted", l.outcome)
    assert.are.equal("notify", l.via)
  end)

  it("exits 0 at once on SIGTERM while listening", function()
    local t0 = sys.monotime()
    p.kill("TERM")
    assert.are.equal(0, p.wait(10))
    assert.is_true(sys.monotime() - t0 < 3)
  end)
end)
