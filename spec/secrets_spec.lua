-- Secrets never reach the output: with debug logging on, a sweep, a cancel, a status report,
-- failed logins to PostgreSQL and to S3, and an error carrying a presigned URL print neither
-- the S3 secret key, nor a database password (the right one or a wrong one tried), nor any
-- request signature.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local s3 = require("resclean.s3")

local conn, w

local function db_password()
  local url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL is not set")
  return assert(url:match("://[^:/@]+:([^@]+)@"), "DATABASE_URL carries no password")
end

-- Secrets used by the stack and the wrong ones these specs try.
local WRONG_DB = "wrongDbPassw0rd-" .. ("%08x"):format(math.random(0, 0x7fffffff))
local WRONG_S3 = "wrongSecretKey/" .. ("%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))

local function secrets()
  return {
    ["the S3 secret key"] = os.getenv("AWS_SECRET_ACCESS_KEY"),
    ["the database password"] = db_password(),
    ["PGPASSWORD"] = os.getenv("PGPASSWORD"),
    ["the wrong database password tried"] = WRONG_DB,
    ["the wrong S3 secret tried"] = WRONG_S3,
  }
end

-- No secret, nor any 12 consecutive bytes of one, nor a signature in the output.
local function assert_clean(r, what)
  local out = r.stdout .. "\n" .. r.stderr
  for name, secret in pairs(secrets()) do
    assert(secret and #secret >= 12, name .. " is too short to test")
    for i = 1, #secret - 11 do
      local piece = secret:sub(i, i + 11)
      assert(not out:find(piece, 1, true), ("%s: the output shows part of %s (%q)"):format(what, name, piece))
    end
  end
  local sig = out:match("[Ss]ignature[=:\"%s]+(%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x"
    .. "%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x)")
  assert(not sig, what .. ": the output shows a signature " .. tostring(sig))
  -- A SigV4 signature is 64 hex digits; resclean logs nothing else of that shape.
  local hex64 = out:match("%f[%x]" .. ("%x"):rep(64) .. "%f[^%x]")
  assert(not hex64, what .. ": the output shows a 64-hex-digit value (a signature?) " .. tostring(hex64))
  assert(not out:find("SignatureProvided", 1, true), what .. ": the output echoes S3's SignatureProvided")
end

local function debug_env(extra)
  local e = fs.env(w.bucket, { RESCLEAN_LOG_LEVEL = "debug" })
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

describe("secrets, with debug logging on", function()
  setup(function()
    conn = fx.connect()
    w = fs.world(conn, { stale = 8, with_objects = 4, tag = "secrets" })
  end)

  teardown(function()
    if conn then conn:close() end
  end)

  it("stay out of a sweep's output", function()
    local r = fs.run({ "scripts/sweep.lua", "--once", "--log-level", "debug" }, debug_env())
    assert.are.equal(0, r.code, r.stderr)
    assert.is_table(r.by.batch, "no debug lines: debug logging is not on")
    assert.is_true(#r.by.resource >= 8)
    assert_clean(r, "sweep")
  end)

  it("stay out of a cancel's output", function()
    local id = fx.rows(conn, 1, { age_s = 10 })[1]
    fx.check(w.client:put(id, "x"))
    local r = fs.run({ "scripts/cancel.lua", "--log-level", "debug", id }, debug_env())
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("object_deleted", r.outcomes[id].outcome)
    assert_clean(r, "cancel")
  end)

  it("stay out of a status report", function()
    local r = h.run({ "run", "scripts/status.lua" }, debug_env())
    assert.is_true(r.code == 0 or r.code == 1, r.stderr)
    assert_clean(r, "status")
  end)

  it("stay out of a failed database login, with the password in a URL or in a conninfo string", function()
    local url = os.getenv("DATABASE_URL"):gsub("://([^:]+):[^@]*@", "://%1:" .. WRONG_DB .. "@")
    local port = os.getenv("PGPORT")
    local conninfo = ("host=127.0.0.1 port=%s dbname=resclean user=resclean password=%s"):format(port, WRONG_DB)
    for _, dsn in ipairs({ url, conninfo, ("postgres://resclean:%s@127.0.0.1:1/resclean"):format(WRONG_DB) }) do
      for _, argv in ipairs({ { "scripts/sweep.lua", "--once" }, { "scripts/cancel.lua", w.stale[1] } }) do
        local r = fs.run(argv, debug_env({ DATABASE_URL = dsn }))
        -- A wrong password is 2 (configuration); the closed port of the last DSN is 3.
        assert.are.equal(dsn:find("127.0.0.1:1/", 1, true) and 3 or 2, r.code, r.stderr)
        assert.is_true(#r.stderr > 0, "no error message")
        assert_clean(r, "failed login " .. argv[1])
      end
    end
  end)

  it("stay out of a failed S3 login (wrong secret key)", function()
    for _, argv in ipairs({ { "scripts/sweep.lua", "--once" }, { "scripts/cancel.lua", w.stale[1] } }) do
      local r = fs.run(argv, debug_env({ AWS_SECRET_ACCESS_KEY = WRONG_S3 }))
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("SignatureDoesNotMatch", r.stderr, 1, true)
      assert_clean(r, "failed S3 login " .. argv[1])
    end
  end)

  it("are redacted from an error message that carries a presigned URL", function()
    local c = assert(s3.client(fx.s3_options(w.bucket)))
    local url = fx.check(c:presign("PUT", "some-key", 600))
    c:close()
    assert.matches("X%-Amz%-Signature=%x+", url)
    local script = h.tmpfile(([[
      local app = require("resclean.app")
      local log = require("resclean.log")
      log.set_level("debug")
      log.debug("upload", { url = %q })
      return app.fail(3, "upload to " .. %q .. " failed")]]):format(url, url))
    local r = fs.run({ script }, debug_env())
    assert.are.equal(3, r.code, r.stderr)
    assert.matches("X-Amz-Signature=", r.stdout, 1, true)
    assert_clean(r, "an error with a presigned URL")
  end)
end)
