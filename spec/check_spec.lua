-- resclean run check, the preflight, on the real PostgreSQL and RGW: it passes on a
-- stack set up as the README says, and fails with exit 2, naming the cause and the fix,
-- for each thing a sweep would trip on; it deletes nothing.
local cjson = require("cjson")
local check = require("resclean.check")
local check_db = require("resclean.check_db")
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")

-- Run check; argv after "check". Returns {code, stdout, stderr, items (by name), lines}.
local function run_check(bucket, argv, env, prefix)
  local args = { "run", "scripts/check.lua", "--json" }
  for _, a in ipairs(argv or {}) do args[#args + 1] = a end
  local e = h.script_env(bucket, env)
  local r
  if prefix then
    -- A wrapper that preloads a library (faketime) comes before the ASan runtime of
    -- `make asan test`'s binary, which refuses that unless told it is fine.
    e.ASAN_OPTIONS = ((os.getenv("ASAN_OPTIONS") or "") .. ":verify_asan_link_order=0"):gsub("^:", "")
    local parts = {}
    for k, v in pairs(e) do parts[#parts + 1] = v == false and ("-u " .. k) or (k .. "=" .. h.q(v)) end
    table.sort(parts)
    local line = {}
    for _, p in ipairs(prefix) do line[#line + 1] = h.q(p) end
    line[#line + 1] = h.q(h.bin())
    for _, a in ipairs(args) do line[#line + 1] = h.q(a) end
    local dir = h.tmpdir()
    local _, _, code = os.execute(("env %s %s </dev/null >%s 2>%s"):format(table.concat(parts, " "),
      table.concat(line, " "), h.q(dir .. "/out"), h.q(dir .. "/err")))
    r = { code = code, stdout = h.readall(dir .. "/out"), stderr = h.readall(dir .. "/err") }
  else
    r = h.run(args, e)
  end
  r.items, r.lines = {}, {}
  for line in r.stdout:gmatch("[^\n]+") do
    local ok, it = pcall(cjson.decode, line)
    assert(ok, "check --json wrote a line that is not JSON: " .. line .. "\nstderr: " .. r.stderr)
    r.lines[#r.lines + 1] = it
    assert(r.items[it.item] == nil, "item twice: " .. it.item)
    r.items[it.item] = it
  end
  return r
end

local function failing(r)
  local out = {}
  for _, it in ipairs(r.lines) do
    if it.status == "fail" or it.status == "unreachable" then out[#out + 1] = it.item end
  end
  table.sort(out)
  return table.concat(out, " ")
end

local function report(r)
  return ("exit %s\n%s%s"):format(tostring(r.code), r.stdout, r.stderr)
end

local function deny(client, bucket, action)
  fx.check(client:put_bucket_policy(([[{"Version":"2012-10-17","Statement":[{"Effect":"Deny",
    "Principal":{"AWS":["*"]},"Action":["%s"],"Resource":["arn:aws:s3:::%s/*"]}]}]]):format(action, bucket)))
end

local ITEMS = { "policy", "max_age", "database", "primary", "pooler", "schema", "grants", "index", "keys",
  "bucket", "head", "delete", "clock", "metrics", "cancel",
  "sweepers" }

describe("resclean run check", function()
  local conn, bucket, client, ids

  before_each(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "check")
    ids = fx.rows(conn, 4)            -- stale
    fx.rows(conn, 2, { age_s = 60 })  -- fresh
    fx.objects(client, { ids[1], ids[2] })
  end)

  after_each(function()
    if client then client:close() end
    if conn then conn:close() end
  end)

  it("passes on the stack: every item on one line, exit 0, and nothing deleted", function()
    local r = run_check(bucket, { "--metrics-file", h.tmpdir() .. "/resclean.prom" })
    assert.are.equal(0, r.code, report(r))
    for i, name in ipairs(ITEMS) do
      assert.are.equal(name, r.lines[i] and r.lines[i].item, report(r))
      assert.is_string(r.lines[i].message)
    end
    assert.are.equal(#ITEMS, #r.lines)
    assert.are.equal("", failing(r))
    assert.are.equal("ok", r.items.pooler.status)
    assert.matches("no transaction pool", r.items.pooler.message, 1, true)
    assert.are.equal(4, r.items.keys.sampled)
    assert.matches("2 found", r.items.head.message, 1, true)
    assert.are.equal("ok", r.items.delete.status)
    assert.are.equal("ok", r.items.clock.status)
    assert.are.equal(6, fx.count(conn))
    assert.are.equal(2, fx.count_set(fx.existing_objects(client, ids)))
    -- The human form: the same items, one line each, and a closing count.
    local human = h.run({ "run", "check" }, h.script_env(bucket))
    assert.are.equal(0, human.code, human.stdout .. human.stderr)
    local n = 0
    for line in human.stdout:gmatch("[^\n]+") do
      n = n + 1
      if n <= #ITEMS then assert.matches("^%S+%s+" .. ITEMS[n] .. " ", line) end
    end
    assert.are.equal(#ITEMS + 1, n, human.stdout)
    assert.matches("0 to fix, 0 unreachable", human.stdout, 1, true)
  end)

  it("fails with exit 2 for a role without DELETE, naming the grant to run", function()
    local role = ("resclean_nodelete_%d"):format(require("resclean.sys").pid())
    local admin = fx.check(pg.connect(("host=%s port=%s user=postgres dbname=resclean"):format(
      os.getenv("RESCLEAN_PG_SOCKDIR"), os.getenv("RESCLEAN_PG_PORT"))))
    finally(function()
      admin:query("DROP OWNED BY " .. role)
      admin:query("DROP ROLE IF EXISTS " .. role)
      admin:close()
    end)
    fx.check(admin:query(("CREATE ROLE %s LOGIN PASSWORD 'check-spec-pw'"):format(role)))
    fx.check(admin:query(("GRANT SELECT, UPDATE (updated_at) ON attack_resource_files TO %s"):format(role)))
    local url = ("postgres://%s:check-spec-pw@127.0.0.1:%s/resclean?sslmode=disable"):format(role,
      os.getenv("RESCLEAN_PG_PORT"))
    local r = run_check(bucket, {}, { DATABASE_URL = url })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("grants", failing(r), report(r))
    assert.matches("lacks DELETE", r.items.grants.message, 1, true)
    assert.matches(('GRANT DELETE ON "attack_resource_files" TO "%s"'):format(role), r.items.grants.fix, 1, true)
    assert.is_nil(r.stdout:find("check-spec-pw", 1, true))
    -- Without UPDATE on any column, SELECT ... FOR UPDATE is refused: named too.
    fx.check(admin:query(("REVOKE UPDATE ON attack_resource_files FROM %s"):format(role)))
    fx.check(admin:query(("GRANT DELETE ON attack_resource_files TO %s"):format(role)))
    r = run_check(bucket, {}, { DATABASE_URL = url })
    assert.are.equal(2, r.code, report(r))
    assert.matches("UPDATE", r.items.grants.message, 1, true)
    assert.matches('GRANT UPDATE ("updated_at")', r.items.grants.fix, 1, true)
  end)

  it("fails with exit 2 for a missing bucket, naming it", function()
    local r = run_check("no-such-bucket-" .. require("resclean.sys").pid())
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("bucket", failing(r), report(r))
    assert.matches("NoSuchBucket", r.items.bucket.message, 1, true)
    assert.matches("RESCLEAN_BUCKET", r.items.bucket.fix, 1, true)
  end)

  it("fails with exit 2 when HEAD is refused (no s3:GetObject), and deletes nothing", function()
    deny(client, bucket, "s3:GetObject")
    local r = run_check(bucket)
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("head", failing(r), report(r))
    assert.matches("HEAD refused", r.items.head.message, 1, true)
    assert.matches("s3:GetObject", r.items.head.fix, 1, true)
    assert.matches("verify = false", r.items.head.fix, 1, true)
    fx.check(client:delete_bucket_policy())
    assert.are.equal(2, fx.count_set(fx.existing_objects(client, ids)))
    assert.are.equal(6, fx.count(conn))
  end)

  it("fails with exit 2 when DeleteObjects is refused (no s3:DeleteObject)", function()
    deny(client, bucket, "s3:DeleteObject")
    local r = run_check(bucket)
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("delete", failing(r), report(r))
    assert.matches("AccessDenied", r.items.delete.message, 1, true)
    assert.matches("s3:DeleteObject", r.items.delete.fix, 1, true)
    fx.check(client:delete_bucket_policy())
  end)

  it("fails with exit 2 for max_age below url_lifetime, naming both, and for one within the margin", function()
    local r = run_check(bucket, { "--policy", h.tmpfile("return { max_age = 1440 }", "policy.lua") })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("policy", failing(r))
    assert.matches("max_age", r.items.policy.message, 1, true)
    assert.matches("url_lifetime", r.items.policy.message, 1, true)
    r = run_check(bucket, { "--policy", h.tmpfile('return { max_age = "65m" }', "policy.lua") })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("max_age", failing(r), report(r))
    assert.matches("url_lifetime + 15m", r.items.max_age.fix, 1, true)
  end)

  it("fails with exit 2 for a key() that fits no row, naming key() and a row id", function()
    local r = run_check(bucket, { "--policy", h.tmpfile("return { key = function(row) return row.ID end }",
      "policy.lua") })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("keys", failing(r), report(r))
    assert.matches("key() fits none of the 4 stale rows", r.items.keys.message, 1, true)
    local named = false
    for _, id in ipairs(ids) do named = named or r.items.keys.message:find(id, 1, true) ~= nil end
    assert.is_true(named, r.items.keys.message)
    -- A few bad keys among good ones are a warning: the sweep keeps those rows.
    r = run_check(bucket, { "--policy", h.tmpfile(([[return { key = function(row)
      if row.id == %q then return "BAD KEY" end return row.id end }]]):format(ids[3]), "policy.lua") })
    assert.are.equal(0, r.code, report(r))
    assert.are.equal("warn", r.items.keys.status)
    assert.matches(ids[3], r.items.keys.message, 1, true)
  end)

  it("fails with exit 2 for a host clock 20 minutes off", function()
    if not h.have("faketime") then pending("faketime is not installed (Debian package faketime, in DEB_TEST)") end
    local r = run_check(bucket, {}, nil, { "faketime", "+20 minutes" })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("fail", r.items.clock.status, report(r))
    assert.matches("1200 s ahead of the database's now()", r.items.clock.message, 1, true)
    assert.matches("NTP", r.items.clock.fix, 1, true)
    -- S3 refuses the skewed signatures: named as such.
    assert.matches("RequestTimeTooSkewed", r.items.bucket.message, 1, true)
  end)

  it("fails with exit 2 for a metrics file that cannot be written", function()
    local r = run_check(bucket, { "--metrics-file", "/nonexistent-folder/resclean.prom" })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("metrics", failing(r), report(r))
    assert.matches("/nonexistent-folder/resclean.prom", r.items.metrics.message, 1, true)
  end)

  it("exits 3 when the database does not answer, and still checks the storage", function()
    local r = run_check(bucket, {}, { DATABASE_URL = "postgres://resclean:x@127.0.0.1:1/resclean?connect_timeout=2" })
    assert.are.equal(3, r.code, report(r))
    assert.are.equal("unreachable", r.items.database.status)
    assert.are.equal("skip", r.items.schema.status)
    assert.are.equal("ok", r.items.bucket.status)
    assert.are.equal("ok", r.items.delete.status)
  end)

  it("warns, exit 0, when a cancel requests table is there but the role cannot read and delete it", function()
    local admin = fx.check(pg.connect(("host=%s port=%s user=postgres dbname=resclean"):format(
      os.getenv("RESCLEAN_PG_SOCKDIR"), os.getenv("RESCLEAN_PG_PORT"))))
    finally(function() admin:close() end)
    if fx.check(admin:query("SELECT to_regclass('resclean_cancel_requests') IS NOT NULL AS t"))[1].t then
      -- The stack's table (examples/cancel-requests.sql): its grants taken away for this spec.
      fx.check(admin:query("REVOKE SELECT, DELETE ON resclean_cancel_requests FROM resclean"))
      finally(function() admin:query("GRANT SELECT, DELETE ON resclean_cancel_requests TO resclean") end)
    else
      fx.check(admin:query("CREATE TABLE resclean_cancel_requests (id bigserial PRIMARY KEY, resource_ids uuid[])"))
      finally(function() admin:query("DROP TABLE IF EXISTS resclean_cancel_requests") end)
    end
    local r = run_check(bucket)
    assert.are.equal(0, r.code, report(r))
    assert.are.equal("warn", r.items.cancel.status, report(r))
    assert.matches("lacks SELECT or DELETE", r.items.cancel.message, 1, true)
    assert.matches('GRANT SELECT, DELETE ON "resclean_cancel_requests" TO "resclean"', r.items.cancel.fix, 1, true)
    fx.check(admin:query("GRANT SELECT, DELETE ON resclean_cancel_requests TO resclean"))
    r = run_check(bucket)
    assert.are.equal("ok", r.items.cancel.status, report(r))
    assert.matches("SELECT and DELETE granted", r.items.cancel.message, 1, true)
  end)

  it("fails with exit 2 on a standby, naming target_session_attrs=read-write, and deletes nothing", function()
    local fs = require("support.faults_support")
    -- bash stack.sh CMD DIR: its stdout (NAME=value lines for `standby`), asserting success.
    local function stack(cmd)
      local _, dir = fs.stack_env()
      local err = h.tmpdir() .. "/stack.err"
      local p = assert(io.popen(("bash %s %s %s 2>%s"):format(h.q(fs.here .. "/stack.sh"), cmd, h.q(dir), h.q(err))))
      local out = p:read("a")
      assert(p:close(), ("stack.sh %s failed:\n%s"):format(cmd, h.readall(err)))
      return out
    end
    local sb = {}
    for k, v in stack("standby"):gmatch("([%w_]+)=([^\n]*)") do sb[k] = v end
    finally(function() stack("standby-stop") end)
    assert(sb.RESCLEAN_STANDBY_URL, "stack.sh standby printed no RESCLEAN_STANDBY_URL")
    -- The standby has replayed the rows (stack.sh standby returns once caught up with what
    -- the primary had then; these rows were written before).
    local r = run_check(bucket, {}, { DATABASE_URL = sb.RESCLEAN_STANDBY_URL })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("fail", r.items.primary.status, report(r))
    assert.matches("standby", r.items.primary.message, 1, true)
    assert.matches("target_session_attrs=read-write", r.items.primary.fix, 1, true)
    assert.are.equal("primary", failing(r), report(r))
    assert.are.equal("skip", r.items.cancel.status, report(r)) -- LISTEN is refused during recovery
    assert.is_nil(r.stdout:find(sb.RESCLEAN_STANDBY_URL:match("://[^:]*:([^@]*)@") or "\0", 1, true))
    assert.are.equal(6, fx.count(conn))
    assert.are.equal(2, fx.count_set(fx.existing_objects(client, ids)))
  end)
end)

describe("resclean run check through PgBouncer in transaction pooling", function()
  local conn, bucket, client, TX
  local function stack(cmd)
    local dir = assert(os.getenv("RESCLEAN_STACK_DIR"))
    local out, code = h.sh(("bash spec/support/stack.sh %s %s"):format(cmd, h.q(dir)))
    assert(code == 0, ("stack.sh %s failed: %s"):format(cmd, out))
    return out
  end

  setup(function()
    assert(h.have("pgbouncer"), "pgbouncer is not installed (make deps)")
    TX = assert(stack("pgbouncer"):match("RESCLEAN_PGBOUNCER_TX_URL=(%S+)"), "stack.sh printed no TX URL")
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "check-pool")
    fx.rows(conn, 3)
  end)

  -- Stopped after: its idle server connections would count as the role's sessions in later specs.
  teardown(function()
    if client then client:close() end
    if conn then conn:close() end
    stack("pgbouncer-stop")
  end)

  it("names the transaction pool and RESCLEAN_DIRECT_DATABASE_URL, and leaves the pool clean", function()
    -- The default policy LISTENs for cancels: a warning (requests are still taken every cycle).
    local r = run_check(bucket, {}, { DATABASE_URL = TX, RESCLEAN_DIRECT_DATABASE_URL = false })
    assert.are.equal(0, r.code, report(r))
    assert.are.equal("warn", r.items.pooler.status, report(r))
    assert.is_true(r.items.pooler.transaction_pool)
    assert.matches("transaction pool detected", r.items.pooler.message, 1, true)
    assert.matches("LISTEN", r.items.pooler.message, 1, true)
    assert.matches("RESCLEAN_DIRECT_DATABASE_URL", r.items.pooler.fix, 1, true)
    assert.matches("LISTEN not tried through the transaction pool", r.items.cancel.message, 1, true)
    -- A singleton policy cannot run so: to fix, exit 2.
    r = run_check(bucket, { "--policy", h.tmpfile("return { singleton = true }", "policy.lua") },
      { DATABASE_URL = TX, RESCLEAN_DIRECT_DATABASE_URL = false })
    assert.are.equal(2, r.code, report(r))
    assert.are.equal("pooler", failing(r), report(r))
    assert.matches("singleton", r.items.pooler.message, 1, true)
    assert.matches("singleton = false", r.items.pooler.fix, 1, true)
    -- With the direct URL set: all good.
    r = run_check(bucket, { "--policy", h.tmpfile("return { singleton = true }", "policy.lua") },
      { DATABASE_URL = TX, RESCLEAN_DIRECT_DATABASE_URL = os.getenv("DATABASE_URL") })
    assert.are.equal(0, r.code, report(r))
    assert.are.equal("ok", r.items.pooler.status, report(r))
    assert.matches("RESCLEAN_DIRECT_DATABASE_URL gives one", r.items.pooler.message, 1, true)
    -- ... and a direct URL that is the pool again is to fix.
    r = run_check(bucket, {}, { DATABASE_URL = TX, RESCLEAN_DIRECT_DATABASE_URL = TX })
    assert.are.equal(2, r.code, report(r))
    assert.matches("RESCLEAN_DIRECT_DATABASE_URL leads to a transaction pool too", r.items.pooler.message, 1, true)
    -- Nothing was left on the server: no LISTEN, no advisory lock.
    local a = fx.check(pg.connect(TX))
    local left = fx.check(a:query("SELECT (SELECT count(*) FROM pg_listening_channels())::int AS listening"))[1]
    a:close()
    assert.are.equal(0, left.listening)
    local locks = fx.check(conn:query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'"))[1]
    assert.are.equal(0, locks.n)
    -- Straight to PostgreSQL: no pool.
    r = run_check(bucket)
    assert.are.equal("ok", r.items.pooler.status, report(r))
    assert.is_false(r.items.pooler.transaction_pool)
  end)
end)

describe("check's primary item", function()
  it("fails on a standby, naming target_session_attrs=read-write", function()
    local it_ = check_db.check_primary({ standby = true })
    assert.are.equal("fail", it_.status)
    assert.matches("pg_is_in_recovery() is true", it_.message, 1, true)
    assert.matches("target_session_attrs=read-write", it_.fix, 1, true)
    assert.are.equal("ok", check_db.check_primary({ standby = false }).status)
  end)
end)

describe("check's exit code", function()
  it("is 2 when anything is to fix, else 3 when anything is unreachable, else 0", function()
    local function code(...)
      local items = {}
      for i, s in ipairs({ ... }) do items[i] = { status = s } end
      return check.exit_code(items)
    end
    assert.are.equal(0, code("ok", "warn", "skip"))
    assert.are.equal(3, code("ok", "unreachable", "warn"))
    assert.are.equal(2, code("unreachable", "fail", "ok"))
    assert.are.equal(2, code("fail"))
  end)
end)
