-- Helpers that empty tables (the demo, the bench, fixtures.reset) run only on the throwaway stack
-- that with-stack.sh started: its database holds a random token (table resclean_throwaway_stack)
-- that must equal RESCLEAN_THROWAWAY_STACK. Here a second database on the same server plays the
-- production database a stray DATABASE_URL names: the upstream schema, a few rows, no marker.
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")
local s3 = require("resclean.s3")

local DEMO = "spec/demo/demo.lua"

-- psql as the superuser through the stack's socket folder (local connections are trusted).
local function superuser_sql(sql)
  local out = h.tmpdir() .. "/psql.out"
  local ok = os.execute(("psql -X -q -v ON_ERROR_STOP=1 -h %s -p %s -U postgres -d postgres -c %s >%s 2>&1")
    :format(h.q(os.getenv("RESCLEAN_PG_SOCKDIR")), h.q(os.getenv("RESCLEAN_PG_PORT")), h.q(sql), h.q(out)))
  assert(ok, "psql failed: " .. h.readall(out))
end

-- Row counts of the three upstream tables, e.g. "3|1|1".
local function counts(conn)
  local r = fx.check(conn:query([[SELECT (SELECT count(*) FROM attack_resource_files)::int AS a,
    (SELECT count(*) FROM attacks)::int AS t, (SELECT count(*) FROM upload_resource_files)::int AS u]]))[1]
  return ("%d|%d|%d"):format(r.a, r.t, r.u)
end

-- A bucket that the run must not have created.
local function assert_no_bucket(name)
  local c = fx.check(s3.client(fx.s3_options(name)))
  local ok, err = c:head_bucket()
  c:close()
  assert.is_nil(ok, "the refused run created bucket " .. name)
  assert.are.equal(404, err.status)
end

describe("the demo and the fixtures on a database that is not the throwaway stack", function()
  local other_db = ("resclean_prod_%d"):format(require("resclean.sys").pid())
  local stack_url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL is not set: run through with-stack.sh")
  local other_url = stack_url:gsub("/resclean%?", "/" .. other_db .. "?", 1)
  local other, main

  setup(function()
    assert(other_url ~= stack_url, "could not derive a second database's URL from DATABASE_URL")
    superuser_sql(("DROP DATABASE IF EXISTS %s WITH (FORCE)"):format(other_db))
    superuser_sql(("CREATE DATABASE %s OWNER resclean"):format(other_db))
    local out = h.tmpdir() .. "/schema.out"
    assert(os.execute(("psql %s -X -q -v ON_ERROR_STOP=1 -f examples/schema.sql >%s 2>&1")
      :format(h.q(other_url), h.q(out))), h.readall(out))
    other = fx.check(pg.connect(other_url))
    local ids = fx.rows(other, 4)
    fx.reference(other, ids[1])
    fx.check(other:query("INSERT INTO upload_resource_files VALUES (gen_random_uuid(), 'u.txt', false, now())"))
    main = fx.connect()
  end)

  teardown(function()
    if other then other:close() end
    if main then main:close() end
    superuser_sql(("DROP DATABASE IF EXISTS %s WITH (FORCE)"):format(other_db))
  end)

  it("the demo exits 2 naming the missing marker, and touches neither the rows nor S3", function()
    local bucket = fx.unique_bucket("demo-refused")
    local r = h.run({ "run", DEMO }, { DATABASE_URL = other_url, RESCLEAN_BUCKET = bucket })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("demo: refusing to run: database resclean@127%.0%.0%.1:%d+/" .. other_db
      .. " has no table resclean_throwaway_stack",
      r.stderr)
    assert.matches("with-stack.sh", r.stderr, 1, true)
    assert.are.equal("", r.stdout)
    assert.are.equal("4|1|1", counts(other))
    assert_no_bucket(bucket)
  end)

  it("the demo refuses the stack's own database without RESCLEAN_THROWAWAY_STACK or with another token", function()
    local ids = fx.rows(main, 2)
    local bucket = fx.unique_bucket("demo-refused")
    for _, case in ipairs({
      { false, "RESCLEAN_THROWAWAY_STACK is not set" },
      { "0123456789abcdef0123456789abcdef", "does not match RESCLEAN_THROWAWAY_STACK" },
    }) do
      local r = h.run({ "run", DEMO }, { RESCLEAN_THROWAWAY_STACK = case[1], RESCLEAN_BUCKET = bucket })
      assert.are.equal(2, r.code, r.stderr)
      assert.matches(case[2], r.stderr, 1, true)
      assert.are.equal(2, fx.count_set(fx.existing_rows(main, ids)))
    end
    assert_no_bucket(bucket)
  end)

  it("the demo exits 2 when DATABASE_URL is not set", function()
    local r = h.run({ "run", DEMO }, { DATABASE_URL = false })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("DATABASE_URL is not set", r.stderr, 1, true)
  end)

  it("fixtures.reset raises there and leaves every row", function()
    local ok, err = pcall(fx.reset, other)
    assert.is_false(ok)
    assert.matches("fixtures.reset refused: database [^\n]*has no table resclean_throwaway_stack", err)
    assert.are.equal("4|1|1", counts(other))
  end)

  it("a forged marker with another token is refused too", function()
    fx.check(other:query("CREATE TABLE resclean_throwaway_stack (token text NOT NULL)"))
    finally(function() other:query("DROP TABLE IF EXISTS resclean_throwaway_stack") end)
    fx.check(other:query("INSERT INTO resclean_throwaway_stack VALUES ('forged')"))
    local ok, err = pcall(fx.reset, other)
    assert.is_false(ok)
    assert.matches("does not match RESCLEAN_THROWAWAY_STACK", err, 1, true)
    local r = h.run({ "run", DEMO }, { DATABASE_URL = other_url, RESCLEAN_BUCKET = fx.unique_bucket("demo-refused") })
    assert.are.equal(2, r.code, r.stderr)
    assert.are.equal("4|1|1", counts(other))
  end)

  it("on the stack's own database the marker is accepted and the demo runs to the end (exit 0)", function()
    assert.is_true(fx.throwaway(main))
    fx.rows(main, 1)
    fx.reset(main)
    assert.are.equal("0|0|0", counts(main))
    local r = h.run({ "run", DEMO }, { RESCLEAN_BUCKET = fx.unique_bucket("demo") })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("after the sweep:", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("UNEXPECTED", 1, true), r.stdout)
  end)
end)
