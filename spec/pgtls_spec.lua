-- PostgreSQL over TLS with sslmode=verify-full, the way a production DATABASE_URL reaches a
-- managed database. The stack's server has ssl=on with a certificate for 127.0.0.1 signed by a
-- CA made at stack start (RESCLEAN_PG_CA); DATABASE_URL_TLS logs in as resclean_tls, which
-- pg_hba.conf admits over TLS only, so a sweep that works through it has used TLS.
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")

local TLS_URL = os.getenv("DATABASE_URL_TLS")
local CA = os.getenv("RESCLEAN_PG_CA")

local function sweep(bucket, env)
  return h.run_script({ "scripts/sweep.lua", "--once" }, h.script_env(bucket, env))
end

-- TLS_URL with its query replaced.
local function tls_url(query)
  return (TLS_URL:gsub("%?.*$", "?" .. query))
end

-- A CA (and nothing it signed) that is not the server's.
local function other_ca()
  local dir = h.tmpdir()
  local out = dir .. "/openssl.out"
  assert(os.execute(("cd %s && openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
    .. " -keyout other.key -out other.crt -days 1 -subj '/CN=some other CA' >%s 2>&1"):format(h.q(dir), h.q(out))),
    h.readall(out))
  return dir .. "/other.crt"
end

describe("PostgreSQL over TLS (sslmode=verify-full)", function()
  local conn, bucket, client

  setup(function()
    assert(TLS_URL and CA, "DATABASE_URL_TLS and RESCLEAN_PG_CA are not set: run through with-stack.sh")
    conn = fx.connect()
  end)
  teardown(function() if conn then conn:close() end end)
  before_each(function() bucket, client = fx.fresh_bucket(conn, "pgtls") end)
  after_each(function() if client then client:close() end end)

  it("resclean.pg verifies the server against sslrootcert and the session is encrypted", function()
    local c = fx.check(pg.connect(TLS_URL))
    local row = fx.check(c:query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))[1]
    c:close()
    assert.is_true(row.ssl)
    assert.matches("^TLSv1%.[23]$", row.version)
  end)

  it("the TLS-only role is refused without TLS (so a sweep that works as it used TLS)", function()
    local c, err = pg.connect(tls_url("sslmode=disable"))
    assert.is_nil(c)
    assert.matches("pg_hba.conf rejects connection[^\n]*resclean_tls[^\n]*no encryption", err.message)
  end)

  it("the sweep connects over TLS and removes the stale rows and their objects", function()
    local stale = fx.rows(conn, 3)
    fx.objects(client, stale)
    local fresh = fx.rows(conn, 1, { age_s = 60 })
    local r = sweep(bucket, { DATABASE_URL = TLS_URL })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(0, fx.count_set(fx.existing_rows(conn, stale)))
    assert.are.equal(0, fx.count_set(fx.existing_objects(client, stale)))
    assert.are.equal(1, fx.count_set(fx.existing_rows(conn, fresh)))
    assert.are.equal(3, r.summary.object_deleted, r.stdout)
  end)

  it("takes sslrootcert from PGSSLROOTCERT too (as examples/env.example sets it)", function()
    local stale = fx.rows(conn, 2)
    local r = sweep(bucket, { DATABASE_URL = tls_url("sslmode=verify-full"), PGSSLROOTCERT = CA })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(0, fx.count_set(fx.existing_rows(conn, stale)))
  end)

  -- What an operator gets wrong: another CA, or no sslrootcert for a service user without a home
  -- (libpq then looks for ~/.postgresql/root.crt).
  for _, case in ipairs({
    { "a CA that did not sign the server's certificate", function()
      return { DATABASE_URL = tls_url("sslmode=verify-full&sslrootcert=" .. other_ca()) } end },
    { "no sslrootcert and no home folder", function()
      return { DATABASE_URL = tls_url("sslmode=verify-full"), HOME = "/nonexistent", PGSSLROOTCERT = false } end },
  }) do
    it("exits 2 naming sslrootcert, nothing touched, with " .. case[1], function()
      local stale = fx.rows(conn, 2)
      fx.objects(client, stale)
      local r = sweep(bucket, case[2]())
      assert.are.equal(2, r.code, r.stdout .. r.stderr)
      assert.matches("sslrootcert", r.stdout .. r.stderr, 1, true)
      assert.are.equal(2, fx.count_set(fx.existing_rows(conn, stale)))
      assert.are.equal(2, fx.count_set(fx.existing_objects(client, stale)))
      assert.is_nil((r.stdout .. r.stderr):find(os.getenv("PGPASSWORD"), 1, true), "the password was printed")
    end)
  end
end)
