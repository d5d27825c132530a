-- Standbys and failover, on the harness's PostgreSQL and a streaming standby of it that
-- stack.sh starts on demand (pg_basebackup -R, `stack.sh standby DIR`):
--   * DATABASE_URL at the standby: the sweep and cancel exit 3 (transient: a failover in
--     progress heals) with a message that says "standby" and names target_session_attrs;
--     reconcile --apply exits 2 and deletes nothing (a lagging standby lacks the newest rows,
--     whose objects would look orphaned); status runs and says it is on a standby.
--   * Failover mid-sweep: a long-running sweep on the multi-host URL (primary, standby,
--     target_session_attrs=read-write); the primary is stopped (immediate) and the standby
--     promoted while it sweeps. The sweep goes on on the new primary, and the log gives every id
--     one final outcome, in this sense:
--       - the last resource line of an id is its final outcome;
--       - an earlier line is allowed only when it is not final: `failed` (the row was kept, a
--         later cycle retries it) or `in_doubt` (a commit whose answer was lost), or when the
--         failover took back the commit that line reported: the old primary acknowledged it, the
--         standby had not received it yet (asynchronous replication), so the row is there again
--         on the new primary and the next cycle reports it `record_only` (its object was already
--         deleted), after a `failover` warning that says why. The spec knows which ids those are:
--         the rows the standby holds once the old primary is down, before it is promoted.
--     And the invariants hold on the new primary: no object without its row, every control
--     (confirmed, fresh, ...) keeps row and object, every stale resource is gone.
-- The failover spec stops the stack's primary: it starts it again at the end (its data, on
-- its own timeline, is what later specs see; they reset the tables) and removes the standby.
local fx = require("support.fixtures")
local fs = require("support.faults_support")
local h = require("support.helpers")
local pg = require("resclean.pg")

local OLD = 3 -- seconds: --older-than of the reconcile runs (the policy sets url_lifetime = 1)

local conn, sb

-- bash stack.sh CMD DIR ...: its stdout (NAME=value lines for `standby`), asserting success.
local function stack(cmd, ...)
  local _, dir = fs.stack_env()
  local args = { "bash", h.q(fs.here .. "/stack.sh"), cmd, h.q(dir) }
  for _, a in ipairs({ ... }) do args[#args + 1] = h.q(a) end
  local err = h.tmpdir() .. "/stack.err"
  local p = assert(io.popen(table.concat(args, " ") .. " 2>" .. h.q(err)))
  local out = p:read("a")
  local ok = p:close()
  assert(ok, ("stack.sh %s failed:\n%s"):format(cmd, h.readall(err)))
  return out
end

local function start_standby()
  local env = {}
  for k, v in stack("standby"):gmatch("([%w_]+)=([^\n]*)") do env[k] = v end
  assert(env.RESCLEAN_STANDBY_URL and env.RESCLEAN_FAILOVER_URL, "stack.sh standby printed no URLs")
  return env
end

-- A superuser session on the standby (its socket, trust): pause and resume replay.
local function standby_admin()
  return fx.check(pg.connect(("host=%s port=%s user=postgres dbname=resclean")
    :format(sb.RESCLEAN_STANDBY_SOCKDIR, sb.RESCLEAN_STANDBY_PORT)))
end

-- Wait until the standby has replayed everything the primary has written now.
local function wait_replayed()
  local lsn = fx.check(conn:query("SELECT pg_current_wal_lsn()::text AS l"))[1].l
  local s = fx.check(pg.connect(sb.RESCLEAN_STANDBY_URL))
  h.wait_for(function()
    return fx.check(s:query("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok", lsn))[1].ok
  end, 60, "the standby to replay the primary's changes")
  s:close()
end

local function count(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

describe("on a streaming standby", function()
  setup(function()
    conn = fx.connect()
    sb = start_standby()
  end)
  teardown(function()
    if conn then conn:close() end
    stack("standby-stop")
  end)

  local function on_standby(extra)
    local e = { DATABASE_URL = sb.RESCLEAN_STANDBY_URL }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  local function assert_standby_message(r, what)
    assert.are.equal(3, r.code, what .. ": " .. r.stderr)
    assert.matches("standby", r.stderr, 1, true)
    assert.matches("target_session_attrs=read-write", r.stderr, 1, true)
  end

  it("the sweep exits 3 saying standby and naming target_session_attrs=read-write, and touches nothing", function()
    local w = fs.world(conn, { stale = 40, with_objects = 20, tag = "sb-sweep" })
    wait_replayed()
    local r = fs.sweep(w.bucket, { "--once" }, on_standby())
    assert_standby_message(r, "sweep --once on the standby")
    assert.is_nil(r.by.resource, "a resource line was logged")
    local rows, objects = fs.stale_left(w)
    assert.are.same({ #w.stale, 20 }, { rows, objects })
    fs.assert_invariants(w, "after a sweep on the standby")
  end)

  it("cancel and cancel --notify exit 3 with the same message, and touch nothing", function()
    local w = fs.world(conn, { stale = 4, with_objects = 4, tag = "sb-cancel" })
    wait_replayed()
    local r = fs.run({ "scripts/cancel.lua", w.stale[1], w.stale[2] }, fs.env(w.bucket, on_standby()))
    assert_standby_message(r, "cancel on the standby")
    r = fs.run({ "scripts/cancel.lua", "--notify", w.stale[3] }, fs.env(w.bucket, on_standby()))
    assert_standby_message(r, "cancel --notify on the standby")
    local rows, objects = fs.stale_left(w)
    assert.are.same({ 4, 4 }, { rows, objects })
  end)

  it("status runs on the standby and says so", function()
    local w = fs.world(conn, { stale = 7, with_objects = 0, tag = "sb-status" })
    wait_replayed()
    local r = h.run({ "run", "scripts/status.lua" }, fs.env(w.bucket, on_standby()))
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("server: a standby", r.stdout, 1, true)
    r = h.run({ "run", "scripts/status.lua", "--json" }, fs.env(w.bucket, on_standby()))
    assert.are.equal(0, r.code, r.stderr)
    local j = require("cjson").decode(r.stdout)
    assert.are.equal("standby", j.server)
    -- on the primary: the same figures, and no server field
    r = h.run({ "run", "scripts/status.lua", "--json" }, fs.env(w.bucket))
    assert.are.equal(0, r.code, r.stderr)
    local jp = require("cjson").decode(r.stdout)
    assert.is_nil(jp.server)
    assert.are.equal(jp.eligible, j.eligible)
  end)

  it("reconcile --apply exits 2 (it must run against the primary) and deletes nothing, on a lagging standby",
    function()
      local w = fs.world(conn, { stale = 10, with_objects = 10, tag = "sb-reconcile" })
      wait_replayed()
      -- The standby lags: confirmed rows written on the primary since have not reached it,
      -- and their objects look orphaned there.
      local admin = standby_admin()
      fx.check(admin:query("SELECT pg_wal_replay_pause()"))
      finally(function()
        admin:query("SELECT pg_wal_replay_resume()")
        admin:close()
      end)
      local recent = fx.rows(conn, 5, { uploaded = true })
      fx.objects(w.client, recent)
      fx.wait_objects_older(conn, { w.client }, OLD)
      local before = fs.objects(w)
      local policy = h.tmpfile("return { url_lifetime = 1 }\n", "policy.lua")
      local r = h.run({ "run", "scripts/reconcile.lua", "--apply", "--max-delete", "100", "--policy", policy,
        "--older-than", tostring(OLD) }, fs.env(w.bucket, on_standby()))
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("standby", r.stderr, 1, true)
      assert.matches("must run against the primary", r.stderr, 1, true)
      assert.are.same(before, fs.objects(w))
      for _, id in ipairs(recent) do assert.is_true(before[id] ~= nil) end
      -- on the primary the same run finds nothing to delete
      r = h.run({ "run", "scripts/reconcile.lua", "--apply", "--policy", policy, "--older-than", tostring(OLD) },
        fs.env(w.bucket))
      assert.are.equal(0, r.code, r.stderr)
      assert.are.same(before, fs.objects(w))
    end)
end)

describe("a failover mid-sweep", function()
  local primary_down, new_primary

  setup(function()
    conn = fx.connect()
    sb = start_standby()
  end)
  teardown(function()
    if new_primary then new_primary:close() end
    if conn then conn:close() end
    stack("standby-stop")
    if primary_down then stack("pg-ctl", "-w", "-t", "60", "start") end
  end)

  it("goes on on the promoted standby, and every id ends with one final outcome in the log", function()
    local w = fs.world(conn, { stale = 1500, with_objects = 600, tag = "sb-failover" })
    wait_replayed()
    local pol = fs.policy("return { batch_size = 10, interval = 1, jitter = 0, cancel_channel = false }")
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", pol },
      fs.env(w.bucket, { DATABASE_URL = sb.RESCLEAN_FAILOVER_URL }))
    finally(function() if p.alive() then p.kill("KILL") end end)
    h.wait_for(function() return fs.logged(p) >= 200 end, 120, "200 resources cleaned on the primary")
    -- The old primary goes away at once (no shutdown checkpoint, no last WAL sent): commits it
    -- acknowledged but had not streamed yet are lost with it.
    conn:close()
    conn = nil
    stack("pg-ctl", "-m", "immediate", "-w", "stop")
    primary_down = true
    -- What survived the failover: the standby's rows once nothing more can reach it.
    local s = fx.check(pg.connect(sb.RESCLEAN_STANDBY_URL))
    local survived = {}
    for _, r in ipairs(fx.check(s:query("SELECT id::text AS id FROM attack_resource_files"))) do
      survived[r.id] = true
    end
    s:close()
    stack("promote")
    new_primary = fx.check(pg.connect(sb.RESCLEAN_STANDBY_URL))
    w.conn = new_primary
    h.wait_for(function()
      local nr, no = fs.stale_left(w)
      return nr == 0 and no == 0
    end, 180, "the sweep to clean every stale row on the new primary")
    p.kill("TERM")
    local code = p.wait(60)
    assert.are.equal(0, code, fs.output(p, "err"))

    local lines = fs.partial_log(fs.output(p))
    -- The cycle the failover cut: its summary is the first one that did not end with 0.
    local cut
    for i, l in ipairs(lines) do
      if l.event == "sweep" and l.exit_code ~= 0 then
        cut = i
        break
      end
    end
    assert.is_truthy(cut, "no cycle ended on the failover")
    assert.are.equal(3, lines[cut].exit_code, "the cycle cut by the failover did not end as transient")
    -- The next cycle on the new primary says so first (event failover, a warning).
    local failover
    for i, l in ipairs(lines) do
      if l.event == "failover" then
        failover = failover or i
        assert.are.equal("warn", l.level)
        assert.is_true(l.timeline > l.previous_timeline)
      end
    end
    assert.is_truthy(failover and failover > cut, "no failover line after the cycle the failover cut")
    local CLEANED = { deleted = true, record_only = true, object_deleted = true }
    local NOT_FINAL = { failed = true, in_doubt = true }
    local by_id = {}
    for i, l in ipairs(lines) do
      if l.event == "resource" then
        by_id[l.resource_id] = by_id[l.resource_id] or {}
        table.insert(by_id[l.resource_id], { i = i, outcome = l.outcome, reason = l.reason })
      end
    end
    local stale = h.set(w.stale)
    local lost = 0
    for id, seen in pairs(by_id) do
      if not stale[id] then
        -- a control: only the referenced ones are logged, skipped by every cycle
        for _, e in ipairs(seen) do
          assert.are.equal("skipped", e.outcome, ("control %s was logged %s"):format(id, e.outcome))
        end
        goto next_id
      end
      local final = seen[#seen]
      assert.is_true(CLEANED[final.outcome] == true, ("%s ends %s"):format(id, final.outcome))
      for k = 1, #seen - 1 do
        local e = seen[k]
        if CLEANED[e.outcome] then
          -- a commit reported before the failover, taken back by it: the row came back
          assert.is_true(e.i < cut and survived[id] == true,
            ("%s was logged %s, then %s: two final outcomes"):format(id, e.outcome, seen[k + 1].outcome))
          -- its object is gone: a HEAD finds nothing (record_only), or verify_list's listing lacks it
          -- (deleted, not_listed); never object_deleted
          local again = seen[k + 1]
          local gone = again.outcome == "record_only" or (again.outcome == "deleted" and again.reason == "not_listed")
          assert.is_true(gone,
            ("%s: its lost commit came back as %s (%s), not record_only"):format(id, again.outcome,
              tostring(again.reason)))
          assert.is_true(seen[k + 1].i > failover, id .. ": logged again before the failover line")
          lost = lost + 1
        else
          assert.is_true(NOT_FINAL[e.outcome] == true, ("%s: an earlier line %s"):format(id, e.outcome))
        end
      end
      ::next_id::
    end
    for _, id in ipairs(w.stale) do
      assert.is_truthy(by_id[id], id .. " has no resource line")
    end
    fs.assert_all_clean(w, "after the failover")
    -- For the report: how many commits the failover took back (0 is fine).
    print(("\nfailover: %d ids logged, %d commits acknowledged by the old primary were lost with it")
      :format(count(by_id), lost))
  end)
end)
