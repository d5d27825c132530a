-- verify_list on the real stack: the listing of a small bucket is taken before the deletes,
-- so a key absent from it is not proof that there was no object. An object that lands after
-- the listing is deleted with its row, and must not be logged record_only ("there was no
-- object"): it is logged deleted (reason not_listed).
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")

describe("with verify_list, the sweep", function()
  local conn
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  it("never logs record_only for an object that landed after the listing (deleted, not_listed)", function()
    local w = fs.world(conn, { stale = 600, with_objects = 100, tag = "late-object" })
    -- Claimed last (the newest of the stale rows), without an object when the listing is taken.
    local with = h.set(w.with_objects)
    local late = {}
    for _, id in ipairs(w.stale) do
      if not with[id] and #late < 5 then late[#late + 1] = id end
    end
    local pol = fs.policy("return { batch_size = 10 }")
    local p = h.spawn({ "run", "scripts/sweep.lua", "--once", "--policy", pol, "--log-level", "debug" },
      fs.env(w.bucket))
    finally(function() if p.alive() then p.kill("KILL") end end)
    h.wait_for(function() return fs.output(p):find('"event":"verify_by_list"', 1, true) end, 60,
      "the sweep's listing of the bucket")
    fx.objects(w.client, late, "landed after the listing")
    local r = fs.proc_result(p, p.wait(120))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(1, #(r.by.verify_by_list or {}), "expected one listing for the cycle")
    local in_time = 0
    for _, id in ipairs(late) do
      local l = r.outcomes[id]
      assert.is_table(l, "no line for " .. id)
      assert.are_not.equal("record_only", l.outcome, id .. ": its object landed after the listing and was deleted")
      assert.are.same({ "deleted", "not_listed" }, { l.outcome, l.reason }, id)
      in_time = in_time + 1
    end
    assert.are.equal(#late, in_time)
    -- The late objects are gone with their rows: no object without its row.
    assert.are.equal(0, fx.count_set(fx.existing_objects(w.client, late)))
    fs.assert_invariants(w, "after the sweep")
    fs.assert_log_honest(w, r, "after the sweep")
  end)
end)
