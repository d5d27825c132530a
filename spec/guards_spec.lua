-- Do-nothing states made loud, on the real PostgreSQL and RGW:
--   * a key() that fits no row of a batch (a typo: row.ID) is a policy error, exit 2 naming
--     key() and one row id, nothing deleted; a few bad_key rows among good ones stay per-row
--     outcomes (skipped, bad_key) with one bad_keys warning a cycle (count and one id);
--   * HEAD refused for permission (no s3:GetObject) with verify on: the objects are deleted
--     (DeleteObject is allowed), the outcomes say unverified (deleted, reason head_refused),
--     and one head_refused warning a cycle names the fix.
local fx = require("support.fixtures")
local fs = require("support.faults_support")

local function deny(client, bucket, action)
  fx.check(client:put_bucket_policy(([[{"Version":"2012-10-17","Statement":[{"Effect":"Deny",
    "Principal":{"AWS":["*"]},"Action":["%s"],"Resource":["arn:aws:s3:::%s/*"]}]}]]):format(action, bucket)))
end

local function events(r, event) return r.by[event] or {} end

describe("guards in the batch", function()
  local conn, bucket, client

  before_each(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "guards")
  end)

  after_each(function()
    if client then client:close() end
    if conn then conn:close() end
  end)

  it("a key() that fits no row of a batch: exit 2 naming key() and a row id, nothing deleted", function()
    local ids = fx.rows(conn, 8)
    fx.objects(client, ids)
    local r = fs.sweep(bucket, { "--once", "--policy", fs.policy("return { key = function(row) return row.ID end }") })
    assert.are.equal(2, r.code, r.stdout .. r.stderr)
    local all = r.stdout .. r.stderr
    assert.matches("key() fits none of the 8 rows of a batch", all, 1, true)
    local named = false
    for _, id in ipairs(ids) do named = named or all:find("(row " .. id, 1, true) ~= nil end
    assert.is_true(named, all)
    assert.is_nil(r.by.resource, "a resource line was logged")
    assert.are.equal(8, fx.count(conn))
    assert.are.equal(8, fx.count_set(fx.existing_objects(client, ids)))
  end)

  it("a few bad_key rows among good ones: kept, and one bad_keys warning with the count and an id", function()
    local ids = fx.rows(conn, 6)
    fx.objects(client, ids)
    local bad = { [ids[2]] = true, [ids[5]] = true }
    local r = fs.sweep(bucket, { "--once", "--policy", fs.policy(([[return { key = function(row)
      if row.id == %q or row.id == %q then return "NOT A KEY" end return row.id end }]]):format(ids[2], ids[5])) })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    for _, id in ipairs(ids) do
      local o = r.outcomes[id]
      if bad[id] then
        assert.are.same({ "skipped", "bad_key" }, { o.outcome, o.reason })
      else
        assert.are.equal("object_deleted", o.outcome)
      end
    end
    local w = events(r, "bad_keys")
    assert.are.equal(1, #w, r.stdout)
    assert.are.equal("warn", w[1].level)
    assert.are.equal(2, w[1].count)
    assert.is_true(bad[w[1].resource_id], w[1].resource_id)
    assert.matches("key()", w[1].message, 1, true)
    assert.are.equal(2, fx.count(conn))
  end)

  it("HEAD refused (no s3:GetObject) with verify on: deleted, reason head_refused, one warning a cycle", function()
    local ids = fx.rows(conn, 4)
    fx.objects(client, { ids[1], ids[2] })
    deny(client, bucket, "s3:GetObject")
    finally(function() client:delete_bucket_policy() end)
    local r = fs.sweep(bucket, { "--once" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    for i, id in ipairs(ids) do
      if i <= 2 then
        assert.are.same({ "deleted", "head_refused" }, { r.outcomes[id].outcome, r.outcomes[id].reason })
      else -- RGW answers a HEAD of a missing key 404 even without s3:GetObject
        assert.are.equal("record_only", r.outcomes[id].outcome)
      end
    end
    local w = events(r, "head_refused")
    assert.are.equal(1, #w, r.stdout)
    assert.are.equal("warn", w[1].level)
    assert.are.equal(2, w[1].count)
    assert.matches("s3:GetObject", w[1].message, 1, true)
    assert.matches("verify = false", w[1].message, 1, true)
    fx.check(client:delete_bucket_policy())
    assert.are.equal(0, fx.count(conn))
    assert.are.equal(0, fx.count_set(fx.existing_objects(client, ids)))
    -- verify = false sends no HEAD: no warning, outcomes deleted without a reason.
    ids = fx.rows(conn, 2)
    deny(client, bucket, "s3:GetObject")
    r = fs.sweep(bucket, { "--once", "--policy", fs.policy("return { verify = false }") })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(0, #events(r, "head_refused"))
    assert.are.equal("deleted", r.outcomes[ids[1]].outcome)
    assert.is_nil(r.outcomes[ids[1]].reason)
  end)
end)
