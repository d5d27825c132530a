-- Reconcile never deletes what a row names, on the harness's PostgreSQL and RGW:
-- owners left out of the policy, a key(row) that is not the bare id, keys whose
-- owner cannot be proven, and the mass-delete valve. Each case has its own
-- bucket; the objects are put once and the spec waits (database clock) until
-- they are older than OLD, as in reconcile_spec.lua.
local fx = require("support.fixtures")
local h = require("support.helpers")
local rs = require("support.reconcile_support")

local OLD = rs.OLD

local conn
local B = {} -- case -> {name, client, keys = {...}}

local function uuids(n) return rs.uuids(conn, n) end
local function upload_rows(ids) rs.upload_rows(conn, ids) end
local function bucket(case, keys) return rs.bucket(B, "rcs-", case, keys) end
local concat, bucket_keys, sorted, sorted_list, outcomes = rs.concat, rs.bucket_keys, rs.sorted, rs.sorted_list,
  rs.outcomes

-- Run reconcile --json on bucket b with a policy (Lua source of the table's fields).
local function reconcile(b, policy_fields, flags) return rs.reconcile(b.name, policy_fields, flags) end

local function map(list, fn)
  local out = {}
  for i, v in ipairs(list) do out[i] = fn(v) end
  return out
end

local UUID = 'require("resclean.policy").UUID_PATTERN:sub(2)'
-- key(row) = "wl/" .. id, as the sweep supports
local PREFIXED = ([[key = function(r) return "wl/" .. r.id end, key_pattern = "^wl/" .. %s,]]):format(UUID)
-- key(row) = the id without dashes: no UUID in the key
local DASHLESS = [[key = function(r) return "x/" .. r.id:gsub("-", "") end, key_pattern = "^x/%x+$",]]
local DASHLESS_INVERSE = [[key_id = function(k)
    local x = k:match("^x/(%x+)$")
    return x and #x == 32 and (x:sub(1, 8) .. "-" .. x:sub(9, 12) .. "-" .. x:sub(13, 16) .. "-" .. x:sub(17, 20)
      .. "-" .. x:sub(21)) or nil
  end,]]
local function dashless(id) return "x/" .. id:gsub("-", "") end

local cases = {}

describe("reconcile's safety", function()
  setup(function()
    conn = fx.connect()
    fx.reset(conn)
    -- narrowed owners: 40 objects of upload_resource_files (same key scheme, same bucket),
    -- 2 of attack_resource_files, 1 true orphan
    local c = {}
    c.upload = uuids(40)
    upload_rows(c.upload)
    c.attack = fx.rows(conn, 2, { uploaded = true })
    -- listed first: a run that deleted page by page would delete it before meeting the 40
    c.orphan = { "00000000" .. uuids(1)[1]:sub(9) }
    c.all = concat(c.upload, c.attack, c.orphan)
    bucket("narrow", c.all)
    cases.narrow = c
    -- prefixed key: "wl/<id>" of 3 confirmed and 5 pending rows, "wl/<id>" of an
    -- upload_resource_files row, 1 true orphan: 10 listed, so the default valve allows 1
    c = {}
    c.confirmed = fx.rows(conn, 3, { uploaded = true })
    c.pending = fx.rows(conn, 5)
    c.upload = uuids(1)
    upload_rows(c.upload)
    c.orphan = uuids(1)
    c.owned = map(concat(c.confirmed, c.pending, c.upload), function(id) return "wl/" .. id end)
    c.all = concat(c.owned, map(c.orphan, function(id) return "wl/" .. id end))
    bucket("prefixed", c.all)
    cases.prefixed = c
    -- valve: 10 owned bare keys, 3 orphans (3 of 13 listed; the default limit is 1)
    c = {}
    c.owned = fx.rows(conn, 10, { uploaded = true })
    c.orphans = uuids(3)
    bucket("valve", concat(c.owned, c.orphans))
    cases.valve = c
    -- unprovable: keys without a UUID (the id without dashes), 9 owned, 1 orphan
    c = {}
    c.owned = map(fx.rows(conn, 9, { uploaded = true }), dashless)
    c.orphan = map(uuids(1), dashless)
    bucket("dashless", concat(c.owned, c.orphan))
    cases.dashless = c
    -- a guid (a column no owner covers) naming an object, among 10 owned objects
    c = {}
    c.owned = fx.rows(conn, 10, { uploaded = true })
    c.guid = fx.check(conn:query("SELECT guid::text AS g FROM attack_resource_files WHERE id = $1::uuid",
      c.owned[1]))[1].g
    bucket("guid", concat(c.owned, { c.guid }))
    cases.guid = c
    -- an old key scheme: "old/<id>" of a row whose key(row) is the bare id, among 10 owned
    c = {}
    c.owned = fx.rows(conn, 10, { uploaded = true })
    c.old = "old/" .. c.owned[1]
    bucket("kept", concat(c.owned, { c.old }))
    cases.kept = c
    local clients = {}
    for _, b in pairs(B) do clients[#clients + 1] = b.client end
    fx.wait_objects_older(conn, clients, OLD)
  end)

  teardown(function()
    if conn then conn:close() end
  end)

  it("refuses with exit 2, naming upload_resource_files.id, and deletes nothing when owners leave it out", function()
    local b, c = B.narrow, cases.narrow
    local before = bucket_keys(b)
    assert.are.equal(#c.all, #sorted(before))
    local narrow = [[owners = { { table = "attack_resource_files", key_column = "id" } },]]
    for _, flags in ipairs({ { "--apply", "--max-delete", "1000", "--page-size", "1" }, { "--apply" }, {} }) do
      local r = reconcile(b, narrow, flags)
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("upload_resource_files.id", r.stderr, 1, true)
      assert.matches('add { table = "upload_resource_files", key_column = "id" } to owners', r.stderr, 1, true)
      assert.matches("nothing deleted", r.stderr, 1, true)
      assert.are.same(sorted(before), sorted(bucket_keys(b)))
      -- every one of the 40 is reported as refused, the true orphan as planned only
      assert.are.same(sorted_list(c.upload), sorted(outcomes(r, "refused")))
      for _, k in ipairs(c.upload) do
        assert.are.equal("upload_resource_files.id", r.orphans[k].named_by)
      end
      assert.are.same(c.orphan, sorted(outcomes(r, "planned")))
      assert.are.equal(0, r.summary.object_deleted)
    end
    -- with the owner listed, the true orphan (1 of 43 listed, within the valve) goes, nothing else
    local r = reconcile(b, "", { "--apply" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same(c.orphan, sorted(outcomes(r, "object_deleted")))
    local after = bucket_keys(b)
    assert.are.equal(#c.all - 1, #sorted(after))
    assert.is_nil(after[c.orphan[1]])
  end)

  it("owns objects through key(row) when the key is not the bare id, and deletes a true orphan", function()
    local b, c = B.prefixed, cases.prefixed
    local r = reconcile(b, PREFIXED, { "--apply" })
    assert.are.equal(0, r.code, r.stderr)
    local after = bucket_keys(b)
    for _, k in ipairs(c.owned) do assert.is_true(after[k], "deleted an owned object: " .. k) end
    assert.is_nil(after["wl/" .. c.orphan[1]], "the orphan is still there")
    assert.are.same({ "wl/" .. c.orphan[1] }, sorted(outcomes(r, "object_deleted")))
    assert.are.equal(#c.owned, r.summary.owned)
    assert.are.equal(1, r.summary.object_deleted)
    assert.are.equal(10, r.summary.listed)
    -- no confirmed row of the prefixed table is reported missing (its objects are "wl/<id>")
    for _, l in ipairs(r.by.missing_object or {}) do
      assert.are_not.equal("attack_resource_files", l.table)
    end
  end)

  it("refuses above the delete fraction, deleting nothing, and deletes with --max-delete", function()
    local b, c = B.valve, cases.valve
    local before = bucket_keys(b)
    local r = reconcile(b, "", { "--apply", "--page-size", "2" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("would delete 3 of 13 candidates", r.stderr, 1, true)
    assert.matches("limit 1", r.stderr, 1, true)
    assert.matches("--max-delete 3", r.stderr, 1, true)
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
    assert.are.same(sorted_list(c.orphans), sorted(outcomes(r, "planned")))
    -- a count below the plan refuses too, naming it
    r = reconcile(b, "", { "--apply", "--max-delete", "2" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("would delete 3 of 13 candidates (23.1%; ", r.stderr, 1, true)
    assert.matches("limit 2 (--max-delete 2)", r.stderr, 1, true)
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
    -- the limit comes from the policy's fraction: 0.2 of 13 is 2
    r = reconcile(b, "reconcile_max_delete_fraction = 0.2,", { "--apply" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("limit 2 (reconcile_max_delete_fraction 0.2 of the candidates)", r.stderr, 1, true)
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
    -- --max-delete allows the plan
    r = reconcile(b, "", { "--apply", "--max-delete", "3" })
    assert.are.equal(0, r.code, r.stderr)
    local after = bucket_keys(b)
    for _, k in ipairs(c.orphans) do assert.is_nil(after[k], "orphan still there: " .. k) end
    for _, k in ipairs(c.owned) do assert.is_true(after[k], "deleted an owned object: " .. k) end
    assert.are.equal(3, r.summary.object_deleted)
    assert.are.equal(3, r.summary.delete_limit)
  end)

  it("refuses with exit 2, deleting nothing, when it cannot prove who owns a key, and uses key_id", function()
    local b, c = B.dashless, cases.dashless
    local before = bucket_keys(b)
    local r = reconcile(b, DASHLESS, { "--apply", "--max-delete", "100" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("set key_id in", r.stderr, 1, true)
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
    assert.are.equal(0, r.summary.object_deleted)
    -- without an inverse no row can be found for such a key: none is proven either way
    assert.are.equal(0, r.summary.owned)
    assert.are.same(sorted_list(concat(c.owned, c.orphan)), sorted(outcomes(r, "unprovable")))
    -- with the inverse, the orphan is proven and deleted; the owned objects stay
    r = reconcile(b, DASHLESS .. DASHLESS_INVERSE, { "--apply" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(#c.owned, r.summary.owned)
    assert.are.same(c.orphan, sorted(outcomes(r, "object_deleted")))
    local after = bucket_keys(b)
    assert.is_nil(after[c.orphan[1]])
    for _, k in ipairs(c.owned) do assert.is_true(after[k], "deleted an owned object: " .. k) end
  end)

  it("refuses a key_id that does not invert key()", function()
    local r = reconcile(B.dashless, DASHLESS .. [[key_id = function(k) return k end,]], { "--apply" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("field 'key_id'", r.stderr, 1, true)
  end)

  it("refuses when a column no owner entry covers (attack_resource_files.guid) names an object", function()
    local b, c = B.guid, cases.guid
    local before = bucket_keys(b)
    local r = reconcile(b, "", { "--apply" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("attack_resource_files.guid", r.stderr, 1, true)
    assert.are.same({ c.guid }, sorted(outcomes(r, "refused")))
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
    -- with that column among the owners, the object is owned
    r = reconcile(b, [[owners = { { table = "attack_resource_files", key_column = "id" },
      { table = "upload_resource_files", key_column = "id" },
      { table = "attack_resource_files", key_column = "guid" } },]], { "--apply" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(#c.owned + 1, r.summary.owned)
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
  end)

  it("keeps an object a row of an owner names even when no key(row) is its key", function()
    local b, c = B.kept, cases.kept
    local before = bucket_keys(b)
    local r = reconcile(b, [[key_pattern = "^[%w/%-]+$",]], { "--apply", "--max-delete", "10" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(#c.owned, r.summary.owned)
    assert.are.same({ c.old }, sorted(outcomes(r, "kept")))
    assert.are.equal("attack_resource_files.id", r.orphans[c.old].named_by)
    assert.are.equal(0, r.summary.orphans)
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
  end)

  it("warns about tables the role cannot read, naming them", function()
    fx.check(conn:query("CREATE TABLE reconcile_hidden (ref uuid)"))
    finally(function() fx.check(conn:query("DROP TABLE reconcile_hidden")) end)
    fx.check(conn:query("REVOKE ALL ON reconcile_hidden FROM CURRENT_USER"))
    local r = reconcile(B.valve, "", {})
    assert.are.equal(0, r.code, r.stderr)
    local w = r.by.unreadable_tables and r.by.unreadable_tables[1]
    assert.is_truthy(w, r.stdout)
    assert.are.equal("warn", w.level)
    assert.matches("reconcile_hidden", w.tables, 1, true)
  end)

  it("gives key() the row the sweep gives it", function()
    local p = assert(require("resclean.policy").build({ key_columns = { "id", "checksum", "guid" } }))
    local rec = require("resclean.reconcile_owners")
    local sweep_sql = require("resclean.session").build_sql(conn, p).lock_ids
    local mine = rec.row_select(conn, p)
    assert.are.equal(mine .. " WHERE", sweep_sql:sub(1, #mine + 6))
  end)
end)

describe("reconcile's command line", function()
  local function run(argv, env)
    local a = { "run", "scripts/reconcile.lua" }
    for _, v in ipairs(argv) do a[#a + 1] = v end
    return h.run(a, env or h.script_env("reconcile-cli"))
  end

  it("lists every flag in --help", function()
    local r = run({ "--help" })
    assert.are.equal(0, r.code)
    for _, f in ipairs({ "--apply", "--max-delete N", "--json", "--older-than", "--page-size", "--policy",
                         "--log-level", "--help" }) do
      assert.matches("[\n,]%s+" .. f:gsub("%-", "%%-"), r.stdout)
    end
  end)

  it("exits 2 on usage errors", function()
    for _, argv in ipairs({ { "--max-delete", "x" }, { "--max-delete", "-1" }, { "--max-delete" },
                            { "--page-size", "0" }, { "--nope" }, { "extra" }, { "--older-than", "1" },
                            { "--log-level", "loud" } }) do
      local r = run(argv)
      assert.are.equal(2, r.code, table.concat(argv, " ") .. ": " .. r.stderr)
      assert.matches("usage: resclean run reconcile", r.stderr, 1, true)
    end
  end)

  it("exits 2 on a malformed DATABASE_URL and 3 on an unreachable database, naming DATABASE_URL", function()
    local r = run({}, h.script_env("reconcile-cli", { DATABASE_URL = "postgresql://u@[::1/db" }))
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("DATABASE_URL", r.stderr, 1, true)
    r = run({}, h.script_env("reconcile-cli", { DATABASE_URL = "postgresql://u@127.0.0.1:1/db?connect_timeout=2" }))
    assert.are.equal(3, r.code, r.stderr)
    assert.matches("DATABASE_URL", r.stderr, 1, true)
  end)
end)
