-- Cancel from the application: it writes a request (examples/cancel-requests.sql), the table's
-- trigger wakes the long-running sweep listening on cancel_channel, and the sweep cancels the
-- ids, on the real PostgreSQL and RGW. A NOTIFY's payload is never a source of ids.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

local CHANNEL = "resclean_cancel"

describe("cancel on request", function()
  local conn, bucket, client, p, metrics_file

  local events = fs.events

  local function resource_line(proc, id)
    for _, l in ipairs(events(proc, "resource")) do
      if l.resource_id == id then return l end
    end
  end

  local function request_line(proc, request_id)
    for _, l in ipairs(events(proc, "cancel_request")) do
      if l.request_id == request_id then return l end
    end
  end

  -- A request for ids in a transaction of its own, as the application writes it.
  local function request(ids, reason, request_id)
    local tx = assert(conn:begin())
    fx.check(conn:query("INSERT INTO resclean_cancel_requests (resource_ids, reason, request_id) "
      .. "VALUES ($1::uuid[], $2, $3)", ids, reason, request_id))
    fx.check(tx:commit())
  end

  local function notify(payload)
    local tx = assert(conn:begin())
    fx.check(conn:query("SELECT pg_notify($1, $2)", CHANNEL, payload))
    fx.check(tx:commit())
  end

  local function pending_requests()
    return fx.check(conn:query("SELECT count(*)::int AS n FROM resclean_cancel_requests"))[1].n
  end

  local function listener_pid()
    local res = fx.check(conn:query("SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
      .. "AND (query ILIKE 'LISTEN%' OR query LIKE 'SELECT EXISTS (SELECT 1 FROM%') AND pid <> pg_backend_pid()",
      fs.APPNAME))
    return res[1] and res[1].pid
  end

  setup(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "notify")
    -- Nothing is stale for the hour: every cancel below comes from a request.
    metrics_file = h.tmpdir() .. "/resclean.prom"
    p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }"),
      "--metrics-file", metrics_file }, fs.env(bucket))
    h.wait_for(function() return #events(p, "listening") > 0 and #events(p, "sweep") > 0 end, 30,
      "the sweeper to listen and finish its first cycle")
  end)

  teardown(function()
    if p and p.alive() then p.kill("KILL") end
    if conn then
      fx.check(conn:query("DELETE FROM resclean_cancel_requests"))
      conn:close()
    end
  end)

  it("removes a fresh pending row and its object within 2 s of the committed request, naming who asked", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    local t0 = sys.monotime()
    request({ id }, "user cancelled the upload", "req-1")
    local l = h.wait_for(function() return resource_line(p, id) end, 5, "the resource line")
    local took = sys.monotime() - t0
    assert.is_true(took < 2, ("took %.2f s"):format(took))
    assert.are.equal("object_deleted", l.outcome)
    assert.are.equal("request", l.via)
    assert.are.equal("resclean", l.requested_by)
    assert.are.equal("user cancelled the upload", l.request_reason)
    assert.are.equal("req-1", l.request_id)
    assert.is_nil(fx.existing_rows(conn, { id })[id])
    assert.is_nil(fx.existing_objects(client, { id })[id])
    -- One line for the request, saying what became of its ids; the request is gone.
    local r = h.wait_for(function() return request_line(p, "req-1") end, 5, "the request's line")
    assert.are.equal(1, r.ids)
    assert.are.equal(1, r.object_deleted)
    assert.are.equal(0, r.not_found)
    assert.are.equal(0, pending_requests())
    -- Counted in the metrics like a cycle's resources.
    local text = h.wait_for(function()
      local t = h.readall(metrics_file)
      return t:find('resclean_resources_total{outcome="object_deleted"} 1', 1, true) and t
    end, 5, "the cancel in the metrics file")
    assert.matches('resclean_sweep_cycles_total{exit_code="0"} 1', text, 1, true)
  end)

  it("does nothing for a request whose transaction rolls back", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    local tx = assert(conn:begin())
    fx.check(conn:query("INSERT INTO resclean_cancel_requests (resource_ids) VALUES ($1::uuid[])", { id }))
    fx.check(tx:rollback())
    -- A marker sent after it is handled, so by then the rolled-back one would have been too.
    local marker = fx.rows(conn, 1, { age_s = 60 })[1]
    request({ marker })
    h.wait_for(function() return resource_line(p, marker) end, 5, "the marker's line")
    assert.is_nil(resource_line(p, id))
    assert.is_true(fx.existing_rows(conn, { id })[id])
    assert.is_true(fx.existing_objects(client, { id })[id])
  end)

  it("refuses a confirmed resource, and cancels the ids of one request together", function()
    local confirmed = fx.rows(conn, 1, { uploaded = true })[1]
    fx.objects(client, { confirmed })
    local ids = fx.rows(conn, 3, { age_s = 60 })
    request({ confirmed, ids[1], ids[2], ids[3] }, nil, "req-together")
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
    assert.are.equal(1, fx.count_set(runs), "ids of one request were cancelled in several runs")
    local r = h.wait_for(function() return request_line(p, "req-together") end, 5, "the request's line")
    assert.are.equal(4, r.ids)
    assert.are.equal(3, r.record_only)
    assert.are.equal(1, r.refused)
  end)

  it("ignores the ids in a NOTIFY payload (one warning naming the fix) and keeps running", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    local before = #events(p, "notify_payload_ignored")
    notify(id .. ",'; DROP TABLE attack_resource_files; --")
    notify(id)
    h.wait_for(function() return #events(p, "notify_payload_ignored") > before end, 5, "the warning")
    local w = events(p, "notify_payload_ignored")[before + 1]
    assert.are.equal("warn", w.level)
    assert.matches("resclean_cancel_requests", w.message, 1, true)
    assert.matches("cancel-requests.sql", w.message, 1, true)
    assert.is_true(p.alive())
    -- A request written after it is taken; the notified id is still there.
    local marker = fx.rows(conn, 1, { age_s = 60 })[1]
    request({ marker })
    assert.are.equal("record_only", h.wait_for(function() return resource_line(p, marker) end, 5, "a later id").outcome)
    assert.is_nil(resource_line(p, id))
    assert.is_true(fx.existing_rows(conn, { id })[id])
    assert.is_true(fx.existing_objects(client, { id })[id])
  end)

  it("listens again after its connection is terminated, and takes the requests written meanwhile", function()
    local victim = h.wait_for(listener_pid, 5, "the listening session")
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    -- Terminated, then a request written before it listens again: not lost.
    fx.check(conn:query("SELECT pg_terminate_backend($1)", victim))
    request({ id })
    h.wait_for(function()
      local pid = listener_pid()
      return pid and pid ~= victim
    end, 15, "a new listening session")
    assert.is_true(#events(p, "listen_lost") >= 1)
    local l = h.wait_for(function() return resource_line(p, id) end, 10, "the line after the reconnect")
    assert.are.equal("object_deleted", l.outcome)
    local later = fx.rows(conn, 1, { age_s = 60 })[1]
    request({ later })
    h.wait_for(function() return resource_line(p, later) end, 5, "a request after the reconnect")
  end)

  it("writes a request with cancel --notify, which the listening sweeper takes end to end", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    -- No S3 credentials needed where --notify runs.
    local r = h.run_script({ "scripts/cancel.lua", "--notify", "--reason", "operator", "--request-id", "ops-7", id },
      fs.env(bucket, { AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false }))
    assert.are.equal(0, r.code, r.stderr)
    local w = r.by.cancel_requested[1]
    assert.are.equal(1, w.requests)
    assert.are.equal(1, w.ids)
    assert.are.equal("resclean", w.requested_by)
    local l = h.wait_for(function() return resource_line(p, id) end, 5, "the requested cancel")
    assert.are.equal("object_deleted", l.outcome)
    assert.are.equal("request", l.via)
    assert.are.equal("resclean", l.requested_by)
    assert.are.equal("operator", l.request_reason)
    assert.are.equal("ops-7", l.request_id)
  end)

  it("takes requests written while no sweeper listened at the start of the next cycle, --once too", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    -- Taken by a cron sweep before the listening sweeper sees them: stop listening first.
    p.kill("STOP")
    request({ id }, "while nobody listened", "req-once")
    local r = fs.sweep(bucket, { "--once" })
    p.kill("CONT")
    assert.are.equal(0, r.code, r.stderr)
    local l = r.outcomes[id]
    assert.are.equal("object_deleted", l.outcome)
    assert.are.equal("request", l.via)
    assert.are.equal("while nobody listened", l.request_reason)
    assert.are.equal(1, #r.by.cancel_request)
    assert.are.equal(0, pending_requests())
  end)

  it("exits 0 at once on SIGTERM while listening", function()
    local t0 = sys.monotime()
    p.kill("TERM")
    assert.are.equal(0, p.wait(10))
    assert.is_true(sys.monotime() - t0 < 3)
  end)
end)
