-- Reconcile's pure decisions, without servers: the UUIDs a key holds, what
-- key() does with a row (bare id, embedded uuid columns, a wrong inverse),
-- the mass-delete valve, and the policy fields reconcile adds; and the
-- listing's times, read in C (a scripted fake S3 serves the listing).
local policy = require("resclean.policy")
local s3h = require("support.s3_helpers")

local U1 = "3f2b8c1e-9a4d-4e7f-8b21-0c5d6e7f8091"
local U2 = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"

local function build(over)
  return assert(policy.build(over))
end

describe("reconcile: UUIDs embedded in a key", function()
  local rec = require("resclean.reconcile_owners")

  it("finds a bare UUID, a prefixed one, and each of several", function()
    assert.are.same({ U1 }, rec.embedded_uuids(U1))
    assert.are.same({ U1 }, rec.embedded_uuids("wl/" .. U1))
    assert.are.same({ U1, U2 }, rec.embedded_uuids("p/" .. U1 .. "/" .. U2 .. ".bin"))
    assert.are.same({ U1 }, rec.embedded_uuids(U1 .. "/" .. U1))
  end)

  it("lower-cases an upper-case UUID and finds one glued to hex digits", function()
    assert.are.same({ U1 }, rec.embedded_uuids("X/" .. U1:upper()))
    assert.are.same({ U1 }, rec.embedded_uuids("abcdef" .. U1))
  end)

  it("finds none in a key without one", function()
    assert.are.same({}, rec.embedded_uuids("x/" .. U1:gsub("-", "")))
    assert.are.same({}, rec.embedded_uuids("notes/readme.txt"))
    assert.are.same({}, rec.embedded_uuids(U1:sub(2)))
  end)
end)

describe("reconcile: what key() does with a row", function()
  local rec = require("resclean.reconcile_owners")

  local UUIDS = { id = "uuid", guid = "uuid", checksum = "text", project_id = "integer integer" }

  it("sees the default key as the bare id", function()
    local s = rec.key_shape(build({}), UUIDS)
    assert.is_true(s.bare)
    assert.are.same({ "id" }, s.embeds)
  end)

  it("sees a prefixed key embed the id, not as the bare id", function()
    local s = rec.key_shape(build({ key = function(r) return "wl/" .. r.id end, key_pattern = "^wl/" }), UUIDS)
    assert.is_false(s.bare)
    assert.are.same({ "id" }, s.embeds)
  end)

  it("sees which uuid columns a key embeds, and not text columns", function()
    local s = rec.key_shape(build({ key_columns = { "id", "guid", "checksum" },
      key = function(r) return r.checksum .. "/" .. r.guid end }), UUIDS)
    assert.is_false(s.bare)
    assert.are.same({ "guid" }, s.embeds)
  end)

  it("sees nothing it can look up in a key without the UUID's dashes, or in one that raises", function()
    local s = rec.key_shape(build({ key = function(r) return "x/" .. r.id:gsub("-", "") end }), UUIDS)
    assert.is_false(s.bare)
    assert.are.same({}, s.embeds)
    s = rec.key_shape(build({ key = function() error("boom") end }), UUIDS)
    assert.is_false(s.bare)
    assert.are.same({}, s.embeds)
    assert.matches("boom", s.error)
  end)

  it("checks that key_id inverts key()", function()
    local key = function(r) return "x/" .. r.id:gsub("-", "") end
    local good = function(k)
      local x = k:match("^x/(%x+)$")
      return x:sub(1, 8) .. "-" .. x:sub(9, 12) .. "-" .. x:sub(13, 16) .. "-" .. x:sub(17, 20) .. "-" .. x:sub(21)
    end
    assert.is_nil(rec.key_shape(build({ key = key, key_id = good }), UUIDS).inverse_error)
    assert.matches("not the row's id", rec.key_shape(build({ key = key, key_id = function(k) return k end }),
      UUIDS).inverse_error)
    assert.matches("key_id%(%) raised", rec.key_shape(build({ key = key, key_id = function() error("x") end }),
      UUIDS).inverse_error)
  end)
end)

describe("reconcile: the mass-delete valve", function()
  local rec = require("resclean.reconcile_run")

  it("allows up to the fraction of the candidates", function()
    assert.are.same({ true, 10 }, { rec.valve(10, 100, 0.10) })
    assert.are.same({ true, 0 }, { rec.valve(0, 0, 0.10) })
    local ok, msg = rec.valve(11, 100, 0.10)
    assert.is_nil(ok)
    assert.matches("would delete 11 of 100 candidates (11.0%; candidates: objects matching key_pattern", msg, 1, true)
    assert.matches("limit 10 (reconcile_max_delete_fraction 0.1 of the candidates)", msg, 1, true)
    assert.matches("--max-delete 11", msg, 1, true)
    assert.matches("nothing was deleted", msg, 1, true)
  end)

  it("takes --max-delete instead of the fraction, both ways", function()
    assert.are.same({ true, 50 }, { rec.valve(50, 100, 0.10, 50) })
    local ok, msg = rec.valve(5, 100, 0.10, 4)
    assert.is_nil(ok)
    assert.matches("would delete 5 of 100 candidates (5.0%; ", msg, 1, true)
    assert.matches("limit 4 (--max-delete 4)", msg, 1, true)
    assert.is_nil((rec.valve(1, 100, 0.10, 0)))
  end)
end)

describe("reconcile: the listing's bound", function()
  local rec = require("resclean.reconcile_run")

  local function page(keys, token)
    local p = { keys = {}, truncated = token ~= nil, next_continuation = token }
    for i, k in ipairs(keys) do p.keys[i] = { key = k } end
    return p
  end

  it("lets a listing that moves on pass, to its last page", function()
    local check = rec.listing_guard()
    assert.is_nil(check(page({ "a", "b" }, "t1")))
    assert.is_nil(check(page({ "c" }, "t2")))
    assert.is_nil(check(page({}, "t3"))) -- an empty truncated page now and then is S3's right
    assert.is_nil(check(page({ "d" })))
  end)

  it("ends on a repeated continuation token, even one from pages ago", function()
    local check = rec.listing_guard()
    assert.is_nil(check(page({ "a" }, "t1")))
    assert.matches("repeats a continuation token after 2 pages and 1 object:", check(page({ "b" }, "t1")), 1, true)
    check = rec.listing_guard()
    assert.is_nil(check(page({ "a" }, "t1")))
    assert.is_nil(check(page({ "b" }, "t2")))
    assert.is_truthy(check(page({ "c" }, "t1")))
  end)

  it("ends on a key that is not after the one before it, on this page or the last", function()
    local check = rec.listing_guard()
    assert.is_nil(check(page({ "a", "b" }, "t1")))
    assert.matches('key "b" came after "b"', check(page({ "b", "c" }, "t2")), 1, true)
    assert.is_truthy(rec.listing_guard()(page({ "b", "a" })))
  end)

  it("ends on a truncated page without a token, and on too many pages without an object", function()
    assert.matches("no continuation token", rec.listing_guard()(page({ "a" }, "")), 1, true)
    local check, n, msg = rec.listing_guard(), 0
    repeat
      n = n + 1
      msg = check(page({}, "t" .. n))
    until msg or n > 1000
    assert.are.equal(rec.EMPTY_PAGES + 1, n)
    assert.matches("more than 100 pages without an object", msg, 1, true)
  end)
end)

describe("reconcile: policy fields", function()
  it("defaults the delete fraction to 0.10 and has no key_id", function()
    local p = build({})
    assert.are.equal(0.10, p.reconcile_max_delete_fraction)
    assert.is_nil(p.key_id)
  end)

  it("rejects a fraction outside 0..1 and a key_id that is not a function, naming the field", function()
    local p, err = policy.build({ reconcile_max_delete_fraction = 1.5 }, "x.lua")
    assert.is_nil(p)
    assert.matches("field 'reconcile_max_delete_fraction'", err.message, 1, true)
    p, err = policy.build({ key_id = "id" }, "x.lua")
    assert.is_nil(p)
    assert.matches("field 'key_id'", err.message, 1, true)
    assert.is_function(build({ key_id = function(k) return k end }).key_id)
  end)
end)

describe("reconcile: S3 times", function()
  local fake
  lazy_setup(function() fake = s3h.fake_server() end)
  lazy_teardown(function() if fake then fake.stop() end end)

  -- The mtime of a listed object whose LastModified is lm: parsed in C as the
  -- listing is read (resclean.s3 client:list), not in Lua.
  local function parse_time(lm)
    fake.script({ { status = 200, body = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key>"
      .. "<LastModified>" .. lm .. "</LastModified></Contents></ListBucketResult>" } })
    local c = fake.client({ max_attempts = 1 })
    local page = assert(c:list({}))
    c:close()
    assert.are.equal(lm, page.keys[1].last_modified)
    return page.keys[1].mtime
  end

  it("parses RFC 3339 times with Z or an offset", function()
    assert.are.equal(0, parse_time("1970-01-01T00:00:00Z"))
    assert.are.equal(1.5, parse_time("1970-01-01T00:00:01.500Z"))
    assert.are.equal(-3600, parse_time("1970-01-01T00:00:00+01:00"))
    assert.is_nil(parse_time("yesterday"))
  end)
end)
