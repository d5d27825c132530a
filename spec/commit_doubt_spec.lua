-- A commit whose answer is lost, on the real stack: a proxy between resclean and PostgreSQL
-- (spec/support/commit_drop_proxy.py) forwards the batch's COMMIT, lets the server commit, and
-- drops the connection before the answer. The log must say what happened: the decided
-- outcome when the rows are gone (asked on a fresh session), in_doubt when the database cannot
-- be asked (never failed), settled by the next cycle of the long-running sweep.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"

-- A proxy in front of the stack's PostgreSQL; returns it and DATABASE_URL through it.
local function proxy(args)
  local url = assert(os.getenv("DATABASE_URL"))
  local host, port = url:match("@([^:/]+):(%d+)/")
  local argv = { host, port }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local p = h.start_server(here .. "/support/commit_drop_proxy.py", argv)
  finally(function() os.execute("kill " .. p.pid .. " 2>/dev/null") end)
  local proxied = url:gsub("@([^:/]+):(%d+)/", "@127.0.0.1:" .. p.port .. "/", 1)
  return p, proxied
end

local function dropped(p)
  local f = io.open(p.dir .. "/dropped")
  if not f then return 0 end
  local n = tonumber(f:read("a"):match("%d+"))
  f:close()
  return n or 0
end

local POLICY = "return { batch_size = 50, interval = 1, jitter = 0 }"

describe("when the answer to a batch's COMMIT is lost, the sweep", function()
  local conn
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  it("asks a fresh session and logs what happened: the rows are gone, so object_deleted (not failed)", function()
    local w = fs.world(conn, { stale = 20, with_objects = 20, tag = "doubt-ok" })
    local p, url = proxy({ "--drops", "1" })
    local r = fs.sweep(w.bucket, { "--once", "--policy", fs.policy(POLICY) }, { DATABASE_URL = url })
    assert.are.equal(1, dropped(p), "the proxy dropped no COMMIT")
    assert.are.equal(3, r.code, r.stderr)
    assert.matches("COMMIT", r.stderr, 1, true)
    local rows = fs.rows(w)
    for _, id in ipairs(w.stale) do
      assert.is_nil(rows[id], "the server did not commit: " .. id .. " is still there")
      local l = r.outcomes[id]
      assert.is_table(l, "no resource line for " .. id)
      assert.are.equal("object_deleted", l.outcome, ("%s: %s/%s"):format(id, l.outcome, tostring(l.reason)))
    end
    assert.are.equal(1, #r.by.commit_lost)
    assert.is_true(r.by.commit_lost[1].committed)
    assert.are.equal(0, r.summary.failed)
    fs.assert_invariants(w, "after a lost COMMIT answer")
    fs.assert_log_honest(w, r, "after a lost COMMIT answer")
  end)

  it("logs in_doubt (never failed) when the database cannot be asked, and exits 3", function()
    local w = fs.world(conn, { stale = 20, with_objects = 20, tag = "doubt-off" })
    local p, url = proxy({ "--drops", "1", "--refuse-for", "-1" })
    local r = fs.sweep(w.bucket, { "--once", "--policy", fs.policy(POLICY) }, { DATABASE_URL = url })
    assert.are.equal(1, dropped(p), "the proxy dropped no COMMIT")
    assert.are.equal(3, r.code, r.stderr)
    for _, id in ipairs(w.stale) do
      local l = r.outcomes[id]
      assert.is_table(l, "no resource line for " .. id)
      assert.are.equal("in_doubt", l.outcome)
      assert.are.equal("commit", l.reason)
    end
    assert.are.equal(20, r.summary.in_doubt)
    assert.are.equal(0, r.summary.failed)
    assert.is_nil(r.by.commit_lost[1].committed)
    -- What a next --once run shows: the rows are gone (the server committed), so nothing.
    fs.assert_invariants(w, "after an unanswerable COMMIT")
    local again = fs.sweep(w.bucket, { "--once", "--policy", fs.policy(POLICY) })
    assert.are.equal(0, again.code, again.stderr)
    for _, id in ipairs(w.stale) do assert.is_nil(again.outcomes[id], "logged again: " .. id) end
  end)

  it("settles the ids in doubt at the next cycle of the long-running sweep, with their outcome", function()
    local w = fs.world(conn, { stale = 20, with_objects = 10, tag = "doubt-loop" })
    local objects = h.set(w.with_objects)
    local _, url = proxy({ "--drops", "1", "--refuse-for", "3" })
    local proc = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy(POLICY) },
      fs.env(w.bucket, { DATABASE_URL = url }))
    finally(function() if proc.alive() then proc.kill("KILL") end end)
    local function settled()
      local n = 0
      for _, l in ipairs(fs.partial_log(fs.output(proc))) do
        if l.event == "resource" and l.in_doubt_run_id then n = n + 1 end
      end
      return n
    end
    h.wait_for(function() return settled() >= 20 end, 60, "the in-doubt ids to be settled")
    proc.kill("TERM")
    assert.are.equal(0, proc.wait(30), proc.stderr())
    local doubt, final = {}, {}
    for _, l in ipairs(fs.partial_log(fs.output(proc))) do
      if l.event == "resource" and l.outcome == "in_doubt" then doubt[l.resource_id] = l end
      if l.event == "resource" and l.in_doubt_run_id then final[l.resource_id] = l end
    end
    for _, id in ipairs(w.stale) do
      assert.is_table(doubt[id], "not logged in_doubt first: " .. id)
      local l = final[id]
      assert.is_table(l, "never settled: " .. id)
      assert.are.equal(doubt[id].run_id, l.in_doubt_run_id)
      assert.are_not.equal(doubt[id].run_id, l.run_id)
      assert.are.equal(objects[id] and "object_deleted" or "record_only", l.outcome)
    end
    fs.assert_all_clean(w, "after the in-doubt ids were settled")
  end)
end)
