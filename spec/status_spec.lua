-- Status: scripts/status.lua against the harness's PostgreSQL; every figure
-- is checked against a count taken with SQL of its own.
local cjson = require("cjson")
local fx = require("support.fixtures")
local h = require("support.helpers")

local INDEX = "attack_resource_files_pending_created_idx"
local CREATE = 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "attack_resource_files_pending_created_idx" '
  .. 'ON "attack_resource_files" ("created_at") WHERE NOT "is_uploaded";'

local conn

local function status(args, env)
  local argv = { "run", "scripts/status.lua" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local e = { RESCLEAN_POLICY = false, RESCLEAN_LOG_LEVEL = false }
  for k, v in pairs(env or {}) do e[k] = v end
  return h.run(argv, e)
end

local function json_status(args)
  local a = { "--json" }
  for _, x in ipairs(args or {}) do a[#a + 1] = x end
  local r = status(a)
  assert.are.equal(0, r.code, r.stderr)
  return cjson.decode(r.stdout), r
end

-- Counts by type and age bucket, computed independently.
local function sql_counts()
  local res = fx.check(conn:query([[
    SELECT resource_type::text AS type, count(*)::int AS total,
      count(*) FILTER (WHERE created_at > now() - interval '1 hour')::int AS "<1h",
      count(*) FILTER (WHERE created_at <= now() - interval '1 hour'
                         AND created_at > now() - interval '1 day')::int AS "1h-24h",
      count(*) FILTER (WHERE created_at <= now() - interval '1 day'
                         AND created_at > now() - interval '7 days')::int AS "1d-7d",
      count(*) FILTER (WHERE created_at <= now() - interval '7 days')::int AS ">7d"
    FROM attack_resource_files WHERE NOT is_uploaded GROUP BY 1]]))
  local out = {}
  for _, r in ipairs(res) do out[r.type] = r end
  return out
end

local function sql_eligible()
  return fx.check(conn:query([[
    SELECT count(*)::int AS n FROM attack_resource_files
    WHERE NOT is_uploaded AND created_at < now() - interval '1 day'
      AND resource_type IN ('WORD_LIST', 'RULE_LIST', 'MASK_LIST', 'CHARSET')]]))[1].n
end

describe("status", function()
  setup(function()
    conn = fx.connect()
    fx.check(conn:query("DROP INDEX IF EXISTS " .. INDEX))
    fx.reset(conn)
    -- Ages sit well inside their buckets, so a slow run cannot move a row.
    fx.rows(conn, 2, { age_s = 600 })
    fx.rows(conn, 3, { age_s = 5 * 3600 })
    fx.rows(conn, 4, { age_s = 3 * 86400 })
    fx.rows(conn, 1, { age_s = 10 * 86400 })
    fx.rows(conn, 2, { age_s = 2 * 86400, type = "RULE_LIST" })
    fx.rows(conn, 1, { age_s = 1800, type = "MASK_LIST" })
    -- two minutes either side of the bucket edges
    for _, age in ipairs({ 3600 - 120, 86400 - 180, 7 * 86400 - 120, 7 * 86400 + 120 }) do
      fx.rows(conn, 1, { age_s = age, type = "MASK_LIST" })
    end
    fx.rows(conn, 3, { age_s = 20 * 86400, type = "EPHEMERAL_WORD_LIST", content = '["a"]' })
    fx.rows(conn, 5, { age_s = 3 * 86400, uploaded = true })
  end)

  teardown(function()
    if conn then
      conn:query("DROP INDEX IF EXISTS " .. INDEX)
      conn:close()
    end
  end)

  it("counts pending resources by type and age bucket as SQL does", function()
    local s = json_status()
    local want = sql_counts()
    assert.are.same({ "<1h", "1h-24h", "1d-7d", ">7d" }, s.buckets)
    local n = 0
    for t, w in pairs(want) do
      n = n + 1
      local got = s.by_type[t]
      assert.is_table(got, "type " .. t)
      assert.are.equal(w.total, got.total, t)
      for _, b in ipairs(s.buckets) do assert.are.equal(w[b], got.by_age[b], t .. " " .. b) end
    end
    assert.are.equal(n, fx.count_set(s.by_type))
    assert.are.same({ ["<1h"] = 2, ["1h-24h"] = 3, ["1d-7d"] = 4, [">7d"] = 1 }, s.by_type.WORD_LIST.by_age)
    assert.are.same({ ["<1h"] = 2, ["1h-24h"] = 1, ["1d-7d"] = 1, [">7d"] = 1 }, s.by_type.MASK_LIST.by_age)
    assert.are.equal(fx.count(conn, "NOT is_uploaded"), s.pending.total)
  end)

  it("reports eligible resources like the sweep's age rule, never ephemeral ones", function()
    local s = json_status()
    assert.are.equal(sql_eligible(), s.eligible)
    assert.are.equal(9, s.eligible)
    assert.are.equal(5, s.by_type.WORD_LIST.eligible)
    assert.are.equal(2, s.by_type.RULE_LIST.eligible)
    assert.are.equal(2, s.by_type.MASK_LIST.eligible)
    assert.is_false(s.by_type.EPHEMERAL_WORD_LIST.upload)
    assert.are.equal(0, s.by_type.EPHEMERAL_WORD_LIST.eligible)
  end)

  it("gives the oldest pending upload's age by the database clock", function()
    local s = json_status()
    local want = fx.check(conn:query([[
      SELECT extract(epoch FROM now() - min(created_at))::float8 AS age FROM attack_resource_files
      WHERE NOT is_uploaded AND resource_type IN ('WORD_LIST', 'RULE_LIST', 'MASK_LIST', 'CHARSET')]]))[1].age
    -- the 20-day ephemeral rows do not count; the 10-day word list does
    assert.is_true(math.abs(s.oldest_pending_age_s - want) < 30, s.oldest_pending_age_s .. " vs " .. want)
    assert.is_true(s.oldest_pending_age_s < 11 * 86400)
    assert.are.equal(s.oldest_pending_age_s, s.oldest_eligible_age_s)
  end)

  it("prints the same figures in the human report", function()
    local r = status()
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("\n%s+WORD_LIST%s+2%s+3%s+4%s+1%s+10%s+5\n", r.stdout)
    assert.matches("\n%s+RULE_LIST%s+0%s+0%s+2%s+0%s+2%s+2\n", r.stdout)
    assert.matches("EPHEMERAL_WORD_LIST%s+0%s+0%s+0%s+3%s+3%s+%-%s+%(never stale", r.stdout)
    assert.matches("\n%s+MASK_LIST%s+2%s+1%s+1%s+1%s+5%s+2\n", r.stdout)
    assert.matches("eligible now:%s+9 %(oldest 10d 0h%)", r.stdout)
    assert.matches("oldest pending upload: 10d 0h", r.stdout)
  end)

  it("says the claim scans the table and gives the exact CREATE INDEX statement", function()
    local s = json_status()
    assert.is_false(s.claim.uses_index)
    assert.are.equal(CREATE, s.claim.create_index)
    local r = status()
    assert.matches("claim query: scans the table", r.stdout, 1, true)
    assert.matches(CREATE, r.stdout, 1, true)
  end)

  it("says the claim uses the index once that statement has been run", function()
    local s = json_status()
    fx.check(conn:query(s.claim.create_index))
    -- A table large enough that the planner prefers the partial index.
    fx.rows(conn, 20000, { age_s = 86400 * 30, uploaded = true })
    fx.check(conn:query("ANALYZE attack_resource_files"))
    s = json_status()
    assert.is_true(s.claim.uses_index, s.claim.plan)
    assert.are.equal(INDEX, s.claim.index)
    assert.is_nil(s.claim.create_index)
    assert.are.equal(sql_eligible(), s.eligible)
    local r = status()
    assert.matches("claim query: uses index " .. INDEX, r.stdout, 1, true)
    assert.not_matches("CREATE INDEX", r.stdout, 1, true)
  end)

  it("finds the index that examples/partial-index.sql creates", function()
    fx.check(conn:query("DROP INDEX IF EXISTS " .. INDEX))
    local s = json_status()
    assert.is_false(s.claim.uses_index)
    local out = h.tmpdir() .. "/psql.out"
    local _, _, code = os.execute(("psql %s -X -q -v ON_ERROR_STOP=1 -f examples/partial-index.sql >%s 2>&1")
      :format(h.q(os.getenv("DATABASE_URL")), h.q(out)))
    assert.are.equal(0, code, h.readall(out))
    fx.check(conn:query("ANALYZE attack_resource_files"))
    s = json_status()
    assert.is_true(s.claim.uses_index, s.claim.plan)
    assert.are.equal(INDEX, s.claim.index)
  end)

  it("exits 2 on a policy that does not validate", function()
    local r = status({ "--policy", h.tmpfile("return { max_age = 5 }\n", "policy.lua") })
    assert.are.equal(2, r.code)
    assert.matches("max_age", r.stderr)
  end)

  it("exits 2 when the policy names a table that does not exist", function()
    local r = status({ "--policy", h.tmpfile('return { table = "no_such_table" }\n', "policy.lua") })
    assert.are.equal(2, r.code)
    assert.matches("no_such_table", r.stderr)
  end)

  it("exits 3 when the database cannot be reached, without showing the password", function()
    local r = status({ "--json" }, { DATABASE_URL = "postgres://resclean:hunter2secret@127.0.0.1:1/resclean" })
    assert.are.equal(3, r.code)
    assert.not_matches("hunter2secret", r.stdout .. r.stderr, 1, true)
  end)
end)
