-- Who may cancel: the right to cancel is the grant to write a cancel request
-- (examples/cancel-requests.sql, loaded by the harness with resclean_app as the application's
-- role), not the ability to connect. Roles made here: one with LOGIN and no grant at all, one
-- member of resclean_app. A long-running sweeper listens; the flood's cost is bounded; the
-- sweeper's sessions stay within the documented three while requests arrive.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")
local sys = require("resclean.sys")

local CHANNEL = "resclean_cancel"
local TAG = sys.pid()
local STRANGER = "resclean_stranger_" .. TAG
local APP = "resclean_webapp_" .. TAG
local PASSWORD = ("pw%x%x"):format(TAG, math.floor(sys.time() * 1000) % 0xffffff)

-- psql as the superuser through the stack's socket folder (local connections are trusted).
local function superuser_sql(sql)
  local out = h.tmpdir() .. "/psql.out"
  local ok = os.execute(("psql -X -q -v ON_ERROR_STOP=1 -h %s -p %s -U postgres -d resclean -c %s >%s 2>&1")
    :format(h.q(os.getenv("RESCLEAN_PG_SOCKDIR")), h.q(os.getenv("RESCLEAN_PG_PORT")), h.q(sql), h.q(out)))
  assert(ok, "psql failed: " .. h.readall(out))
end

-- DATABASE_URL for another role of the stack's server.
local function url_as(role)
  return ("postgres://%s:%s@127.0.0.1:%s/resclean?sslmode=disable"):format(role, PASSWORD,
    assert(os.getenv("PGPORT")))
end

local events = fs.events

local function resource_line(proc, id)
  for _, l in ipairs(events(proc, "resource")) do
    if l.resource_id == id then return l end
  end
end

local function request(conn, ids, reason, request_id)
  local tx = assert(conn:begin())
  local ok, err = conn:query("INSERT INTO resclean_cancel_requests (resource_ids, reason, request_id) "
    .. "VALUES ($1::uuid[], $2, $3)", ids, reason, request_id)
  if not ok then
    tx:rollback()
    return nil, err
  end
  return fx.check(tx:commit())
end

local function random_ids(conn, n)
  local res = fx.check(conn:query("SELECT gen_random_uuid()::text AS id FROM generate_series(1, $1::int)", n))
  local ids = {}
  for i, r in ipairs(res) do ids[i] = r.id end
  return ids
end

describe("who may cancel", function()
  local conn, stranger, app, bucket, client, p

  setup(function()
    superuser_sql(("DROP ROLE IF EXISTS %s; DROP ROLE IF EXISTS %s; "
      .. "CREATE ROLE %s LOGIN PASSWORD '%s'; CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE resclean_app")
      :format(STRANGER, APP, STRANGER, PASSWORD, APP, PASSWORD))
    conn = fx.connect()
    stranger = fx.check(pg.connect(url_as(STRANGER)))
    app = fx.check(pg.connect(url_as(APP)))
    bucket, client = fx.fresh_bucket(conn, "auth")
    p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }") },
      fs.env(bucket))
    h.wait_for(function() return #events(p, "listening") > 0 and #events(p, "sweep") > 0 end, 30,
      "the sweeper to listen and finish its first cycle")
  end)

  teardown(function()
    if p and p.alive() then p.kill("KILL") end
    for _, c in ipairs({ stranger, app }) do c:close() end
    if conn then
      fx.check(conn:query("DELETE FROM resclean_cancel_requests"))
      conn:close()
    end
    superuser_sql(("DROP ROLE IF EXISTS %s; DROP ROLE IF EXISTS %s"):format(STRANGER, APP))
  end)

  it("is nobody with LOGIN and no grant, by any path: pg_notify, INSERT, cancel --notify, cancel", function()
    -- Uploads in progress, 5 s old, with their objects.
    local ids = fx.rows(conn, 3, { age_s = 5 })
    fx.objects(client, ids)
    local warned = #events(p, "notify_payload_ignored")
    -- 1. NOTIFY with the ids (any role may send one): a wake-up, its payload ignored.
    local tx = assert(stranger:begin())
    fx.check(stranger:query("SELECT pg_notify($1, $2)", CHANNEL, table.concat(ids, ",")))
    fx.check(tx:commit())
    -- 2. A request: no grant.
    local ok, err = request(stranger, ids, "mine now")
    assert.is_nil(ok)
    assert.are.equal("42501", err.code)
    -- Nor may it read, change or delete requests, or forge who asked.
    for _, sql in ipairs({ "SELECT * FROM resclean_cancel_requests",
                           "UPDATE resclean_cancel_requests SET requested_by = 'x'",
                           "DELETE FROM resclean_cancel_requests" }) do
      local res, e = stranger:query(sql)
      assert.is_nil(res, sql)
      assert.are.equal("42501", e.code, sql)
    end
    -- 3. cancel --notify as that role: exit 2, naming the grant to give.
    local env = fs.env(bucket, { DATABASE_URL = url_as(STRANGER), PGUSER = STRANGER, PGPASSWORD = PASSWORD })
    local r = h.run_script({ "scripts/cancel.lua", "--notify", table.unpack(ids) }, env)
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("GRANT INSERT (resource_ids, reason, request_id) ON resclean_cancel_requests TO " .. STRANGER,
      r.stderr, 1, true)
    assert.is_nil(r.stderr:find(PASSWORD, 1, true))
    -- 4. cancel as that role: its own authority is none.
    r = h.run_script({ "scripts/cancel.lua", table.unpack(ids) }, env)
    assert.are.equal(2, r.code, r.stderr)
    assert.matches('table "attack_resource_files" exists but role ' .. STRANGER .. " has no privilege on it",
      r.stderr, 1, true)
    assert.are.same({}, r.outcomes)
    -- The sweeper had time to act: a marker requested by the application after all this is done.
    local marker = fx.rows(conn, 1, { age_s = 60 })[1]
    assert(request(app, { marker }))
    h.wait_for(function() return resource_line(p, marker) end, 10, "the marker's line")
    h.wait_for(function() return #events(p, "notify_payload_ignored") > warned end, 5, "the payload warning")
    for _, id in ipairs(ids) do assert.is_nil(resource_line(p, id), id) end
    assert.are.equal(3, fx.count_set(fx.existing_rows(conn, ids)))
    assert.are.equal(3, fx.count_set(fx.existing_objects(client, ids)))
  end)

  it("is a role with the documented grant, and the sweeper's lines name it", function()
    local ids = fx.rows(conn, 2, { age_s = 5 })
    fx.objects(client, ids)
    assert(request(app, { ids[1] }, "user pressed cancel", "web-4711"))
    local l = h.wait_for(function() return resource_line(p, ids[1]) end, 5, "the cancel's line")
    assert.are.equal("object_deleted", l.outcome)
    assert.are.equal("request", l.via)
    assert.are.equal(APP, l.requested_by)
    assert.are.equal("user pressed cancel", l.request_reason)
    assert.are.equal("web-4711", l.request_id)
    local req = h.wait_for(function()
      for _, x in ipairs(events(p, "cancel_request")) do if x.request_id == "web-4711" then return x end end
    end, 5, "the request's line")
    assert.are.equal(APP, req.requested_by)
    -- Who asked cannot be forged: the column is not the application's to give.
    local tx = assert(app:begin())
    local ok, err = app:query("INSERT INTO resclean_cancel_requests (resource_ids, requested_by) "
      .. "VALUES ($1::uuid[], 'resclean')", { ids[2] })
    tx:rollback()
    assert.is_nil(ok)
    assert.are.equal("42501", err.code)
    -- cancel --notify as the application's role: stored, taken, named.
    local r = h.run_script({ "scripts/cancel.lua", "--notify", ids[2] }, fs.env(bucket,
      { DATABASE_URL = url_as(APP), PGUSER = APP, PGPASSWORD = PASSWORD,
        AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false }))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(APP, r.by.cancel_requested[1].requested_by)
    l = h.wait_for(function() return resource_line(p, ids[2]) end, 5, "the --notify cancel's line")
    assert.are.equal(APP, l.requested_by)
    assert.is_nil(fx.existing_rows(conn, ids)[ids[2]])
  end)

  it("names the operator's own role when it cancels directly", function()
    local id = fx.rows(conn, 1, { age_s = 5 })[1]
    local r = h.run_script({ "scripts/cancel.lua", "--reason", "ticket 12", id }, fs.env(bucket))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("resclean", r.outcomes[id].requested_by)
    assert.are.equal("ticket 12", r.outcomes[id].request_reason)
    assert.are.equal("resclean", r.summary.requested_by)
  end)

  it("bounds a flood: 1,000 unknown ids and duplicates cost a few lines and seconds", function()
    local before = #events(p)
    local t0 = sys.monotime()
    -- From the application: 1,000 unknown ids, then 300 ids each named twice, and a real one.
    local unknown = random_ids(conn, 1000)
    assert(request(app, unknown, "flood"))
    local twice = random_ids(conn, 150)
    for i = 1, 150 do twice[#twice + 1] = twice[i] end
    local marker = fx.rows(conn, 1, { age_s = 60 })[1]
    twice[#twice + 1] = marker
    assert(request(app, twice, "flood", "flood-2"))
    -- From a stranger: 200 NOTIFYs of 200 random ids each, one transaction each.
    local payload_ids = random_ids(conn, 200)
    local payload = table.concat(payload_ids, ",")
    for _ = 1, 200 do
      local tx = assert(stranger:begin())
      fx.check(stranger:query("SELECT pg_notify($1, $2)", CHANNEL, payload))
      fx.check(tx:commit())
    end
    h.wait_for(function() return resource_line(p, marker) end, 30, "the marker after the flood")
    h.wait_for(function()
      for _, x in ipairs(events(p, "cancel_request")) do if x.request_id == "flood-2" then return x end end
    end, 5, "the flood's last request line")
    local took = sys.monotime() - t0
    assert.is_true(took < 20, ("the flood took %.1f s"):format(took))
    -- Let the rest of the wake-ups come in; nothing more is written for them.
    local deadline = sys.monotime() + 1
    while sys.monotime() < deadline do sys.sleep(0.1) end
    local lines = {}
    for i, l in ipairs(events(p)) do
      if i > before then lines[#lines + 1] = l end
    end
    local names = {}
    for _, l in ipairs(lines) do names[#names + 1] = l.event end
    -- Two request lines, the marker's resource line, at most two turn summaries, one warning.
    assert.is_true(#lines <= 6, ("%d lines: %s"):format(#lines, table.concat(names, " ")))
    local flood
    for _, l in ipairs(lines) do
      if l.event == "cancel_request" and l.request_id == nil then flood = l end
    end
    assert.are.equal(1000, flood.not_found)
    local samples = 0
    for _ in flood.not_found_ids:gmatch("%S+") do samples = samples + 1 end
    assert.are.equal(3, samples)
    local second
    for _, l in ipairs(lines) do
      if l.event == "cancel_request" and l.request_id == "flood-2" then second = l end
    end
    assert.are.equal(301, second.ids)
    assert.are.equal(150, second.duplicates)
    assert.are.equal(150, second.not_found)
    assert.are.equal(1, second.record_only)
    assert.are.equal(0, fx.check(conn:query("SELECT count(*)::int AS n FROM resclean_cancel_requests"))[1].n)
  end)

  it("bounds a flood of 1,000 one-id requests: 20 request lines and one summary for the turn", function()
    local before = #events(p)
    local tx = assert(app:begin())
    fx.check(app:query("INSERT INTO resclean_cancel_requests (resource_ids, reason) "
      .. "SELECT ARRAY[gen_random_uuid()], 'many' FROM generate_series(1, 1000)"))
    fx.check(tx:commit())
    local summary = h.wait_for(function()
      for _, l in ipairs(events(p, "cancel")) do if l.requests == 1000 then return l end end
    end, 20, "the turn's summary")
    assert.are.equal(980, summary.requests_unlogged)
    assert.are.equal(1000, summary.not_found)
    local deadline = sys.monotime() + 1
    while sys.monotime() < deadline do sys.sleep(0.1) end
    local lines = #events(p) - before
    assert.is_true(lines <= 21, ("%d lines for the flood"):format(lines))
    assert.are.equal(0, fx.check(conn:query("SELECT count(*)::int AS n FROM resclean_cancel_requests"))[1].n)
  end)
end)

describe("a sweeper whose cancel requests table is missing or not granted", function()
  local conn, bucket

  setup(function()
    conn = fx.connect()
    bucket = fx.fresh_bucket(conn, "notable")
  end)

  teardown(function() if conn then conn:close() end end)

  -- A long-running sweeper on policy text until its first cycle ended; returns its lines.
  local function first_cycle(policy_text)
    local proc = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy(policy_text) }, fs.env(bucket))
    h.wait_for(function() return #events(proc, "sweep") > 0 end, 30, "the first cycle")
    -- Past the first cycle's look at the table, and one more second of waiting.
    local deadline = sys.monotime() + 1
    while sys.monotime() < deadline do sys.sleep(0.1) end
    proc.kill("TERM")
    assert.are.equal(0, proc.wait(20))
    return proc
  end

  it("warns once naming the SQL file to run, does not listen, and sweeps on", function()
    fx.rows(conn, 2)
    local proc = first_cycle("return { interval = 3600, jitter = 0, cancel_requests_table = 'resclean_no_requests' }")
    local w = events(proc, "cancel_requests_missing")
    assert.are.equal(1, #w)
    assert.are.equal("warn", w[1].level)
    assert.matches("examples/cancel-requests.sql", w[1].message, 1, true)
    assert.are.same({}, events(proc, "listening"))
    assert.are.equal(2, events(proc, "sweep")[1].record_only)
    -- cancel --notify says the same, exit 2.
    local r = h.run_script({ "scripts/cancel.lua", "--notify", "--policy",
      fs.policy("return { cancel_requests_table = 'resclean_no_requests' }"), random_ids(conn, 1)[1] }, fs.env(bucket))
    assert.are.equal(2, r.code)
    assert.matches("examples/cancel-requests.sql", r.stderr, 1, true)
  end)

  it("warns once naming the GRANT when the role may not delete requests, and does not listen", function()
    -- A table resclean may read and not delete: the harness's throwaway marker.
    local proc = first_cycle(
      "return { interval = 3600, jitter = 0, cancel_requests_table = 'resclean_throwaway_stack' }")
    local w = events(proc, "cancel_requests_forbidden")
    assert.are.equal(1, #w)
    assert.matches("GRANT SELECT, DELETE ON resclean_throwaway_stack TO resclean", w[1].message, 1, true)
    assert.are.same({}, events(proc, "listening"))
  end)
end)

describe("the sweeper's sessions while requests arrive", function()
  local APPNAME = "resclean-sessions"
  local conn, bucket, client, p

  setup(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "sessions")
  end)

  teardown(function()
    if p and p.alive() then p.kill("KILL") end
    if conn then
      fx.check(conn:query("DELETE FROM resclean_cancel_requests"))
      conn:close()
    end
  end)

  it("stay within the three the docs state, during cycles and between them", function()
    -- Cycles long enough to take requests between their batches, on two sessions, one a second.
    fx.rows(conn, 20000)
    p = h.spawn({ "run", "scripts/sweep.lua", "--policy",
      fs.policy("return { interval = 1, jitter = 0, batch_size = 200, verify = false }") },
      fs.env(bucket, { PGAPPNAME = APPNAME }))
    h.wait_for(function() return #events(p, "listening") > 0 end, 30, "the sweeper to listen")
    local most, seen = 0, {}
    local asked = {}
    -- Until 3 s after the first cycle ended (at most 60 s).
    local deadline = sys.monotime() + 60
    local next_request = 0
    while sys.monotime() < deadline do
      if #events(p, "sweep") > 0 then deadline = math.min(deadline, sys.monotime() + 3) end
      local n = fx.check(conn:query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
        APPNAME))[1].n
      most = math.max(most, n)
      seen[n] = true
      if sys.monotime() >= next_request then
        next_request = sys.monotime() + 0.3
        local id = fx.rows(conn, 1, { age_s = 60 })[1]
        fx.objects(client, { id })
        asked[#asked + 1] = id
        fx.check(conn:query("INSERT INTO resclean_cancel_requests (resource_ids) VALUES ($1::uuid[])", { id }))
      end
      sys.sleep(0.005)
    end
    -- Every request was taken, during a cycle and between cycles.
    local during, between = 0, 0
    h.wait_for(function()
      for _, id in ipairs(asked) do if not resource_line(p, id) then return false end end
      return true
    end, 10, "every requested cancel")
    local first_cycle_end = events(p, "sweep")[1]
    for _, id in ipairs(asked) do
      local l = resource_line(p, id)
      if first_cycle_end and l.ts < first_cycle_end.ts then during = during + 1 else between = between + 1 end
    end
    assert.is_true(during > 0, "no request was taken during the first cycle")
    assert.is_true(between > 0, "no request was taken between cycles")
    local counts = {}
    for n in pairs(seen) do counts[#counts + 1] = n end
    table.sort(counts)
    assert.is_true(most <= 3, ("the sweeper held %d sessions (seen: %s)"):format(most, table.concat(counts, ",")))
    assert.is_true(seen[3] == true, "never saw the pipeline's two sessions beside the listener: "
      .. table.concat(counts, ","))
    p.kill("TERM")
    assert.are.equal(0, p.wait(20))
  end)
end)
