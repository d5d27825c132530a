-- One classification of errors for every script (pure Lua, no servers).
local errors = require("resclean.errors")

local function pg(code, message, retryable)
  return { kind = "pg", code = code, message = message or "m", retryable = retryable }
end
local function s3(code, status, message)
  return { kind = "s3", code = code, status = status, message = message or code }
end

describe("the error classification", function()
  it("calls what the operator must fix configuration (exit 2)", function()
    for _, e in ipairs({
      pg("28P01"), pg("28000"), pg("42501"), pg("3D000"), pg("42P01"), pg("42703"),
      pg("connection", 'connection to server at "h" failed: FATAL:  password authentication failed for user "u"', true),
      pg("connection", 'FATAL:  database "nodb" does not exist', true),
      pg("connection", 'FATAL:  role "nobody" does not exist', true),
      pg("connection", "FATAL:  no pg_hba.conf entry for host", true),
      pg("connection", 'root certificate file "/nonexistent/.postgresql/root.crt" does not exist', true),
      pg("connection", "invalid connection string: missing \"]\"", false),
      s3("InvalidAccessKeyId", 403), s3("SignatureDoesNotMatch", 403), s3("AccessDenied", 403),
      s3("NoSuchBucket", 404), s3("tls"), s3("RequestTimeTooSkewed", 403), s3("Forbidden", 403),
      { kind = "policy", message = "policy x: field 'table': ..." },
    }) do
      assert.are.equal(2, errors.exit_code(e), tostring(e.code) .. " " .. tostring(e.message))
    end
  end)

  it("calls unreachable, timed out and overloaded transient (exit 3)", function()
    for _, e in ipairs({
      pg("connection", "could not connect to server: Connection refused", true), pg("08006"), pg("57P01"),
      pg("57P03"), pg("53300"), pg("57014"), pg("40001"),
      s3("connection"), s3("timeout"), s3("dns"), s3("InternalError", 500), s3("SlowDown", 503),
      s3("HTTP502", 502), s3("TooManyRequests", 429),
      -- by its code, whatever the status: S3 sends RequestTimeout as a 400
      s3("RequestTimeout", 400), s3("SlowDown"), s3("OperationAborted", 409), s3("ServiceUnavailable"),
      { kind = "s3", code = "SomethingNew", retryable = true },
    }) do
      assert.are.equal(3, errors.exit_code(e), tostring(e.code) .. " " .. tostring(e.message))
    end
  end)

  it("calls TLS required but not offered configuration (exit 2), naming sslmode", function()
    local e = pg("connection", 'connection to server at "127.0.0.1", port 5432 failed: server does not support SSL, '
      .. "but SSL was required", true)
    assert.are.equal(2, errors.exit_code(e))
    assert.matches("sslmode", errors.message(e), 1, true)
    assert.is_nil(errors.message(e):find("is PostgreSQL up", 1, true))
  end)

  it("says a statement timeout is a timeout, not an unreachable server (still transient)", function()
    local e = pg("57014", "ERROR:  canceling statement due to statement timeout", true)
    assert.are.equal(3, errors.exit_code(e))
    assert.matches("statement_timeout", errors.message(e), 1, true)
    assert.is_nil(errors.message(e):find("is PostgreSQL up", 1, true))
  end)

  it("names the connection limit when the server has no session left (transient)", function()
    for _, e in ipairs({
      pg("53300", "too many connections for role \"resclean\""),
      pg("connection", "connection to server failed: FATAL:  sorry, too many clients already", true),
      pg("connection", "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute", true),
    }) do
      assert.are.equal(3, errors.exit_code(e))
      assert.matches("CONNECTION LIMIT", errors.message(e), 1, true)
    end
  end)

  it("keeps a lock timeout, an oversized or malformed reply and a per-key error to the resource (exit 1)", function()
    for _, e in ipairs({
      pg("55P03"), s3("ReplyTooLarge"), s3("MalformedReply", 200), s3("NotInReply", 200),
      s3("AccessDenied", 200), s3("InternalError", 200), s3("no_result"),
      -- a per-key SlowDown in a DeleteObjects reply that succeeded is the key's
      s3("SlowDown", 200),
      -- an unknown code with no status and not retryable: not "unreachable" for lack of a status
      s3("SomethingNew"), s3("InvalidArgument", 400),
    }) do
      assert.are.equal("item", errors.classify(e), tostring(e.code))
      assert.are.equal(1, errors.exit_code(e))
    end
  end)

  it("keeps a lock timeout (55P03) to its resource: item, not retryable, decided here alone", function()
    -- lock_timeout while claiming or locking one resource: that resource is skipped and
    -- a later run claims it again; the run goes on (exit 1), it is not retried within it.
    -- The binding reports only the SQLSTATE; an error saying retryable does not change it.
    for _, e in ipairs({ pg("55P03", "canceling statement due to lock timeout"),
                         pg("55P03", "could not obtain lock on row in relation \"t\"", true) }) do
      assert.are.equal("item", errors.classify(e))
      assert.is_false(errors.retryable(e))
      assert.are.equal(1, errors.exit_code(e))
    end
  end)

  it("calls retryable exactly what is transient", function()
    for _, e in ipairs({ pg("57014"), pg("40001"), pg("08006"), s3("connection"), s3("SlowDown", 503) }) do
      assert.is_true(errors.retryable(e), e.code)
    end
    for _, e in ipairs({ pg("42501"), pg("23503"), s3("AccessDenied", 403), s3("InternalError", 200),
                         s3("EmptyKey"), s3("tls"), { kind = "policy", message = "bad" } }) do
      assert.is_false(errors.retryable(e), e.code)
    end
  end)

  it("says the code once, then the message, then what to check", function()
    assert.are.equal("SignatureDoesNotMatch (check AWS_SECRET_ACCESS_KEY (and AWS_REGION))",
      errors.message(s3("SignatureDoesNotMatch", 403)))
    assert.are.equal("NoSuchBucket: The specified bucket does not exist (check RESCLEAN_BUCKET or the policy's bucket)",
      errors.message(s3("NoSuchBucket", 404, "The specified bucket does not exist")))
    local m = errors.message(pg("connection", "connection to server failed: FATAL:  password authentication failed"
      .. " for user \"u\"\n", true))
    assert.matches("password authentication failed", m, 1, true)
    assert.matches("DATABASE_URL", m, 1, true)
    assert.is_nil(m:find("\n", 1, true))
    assert.is_nil(m:find("connection: ", 1, true))
  end)

  it("never prints credentials carried in a message", function()
    local m = errors.message(pg("connection", "could not parse postgresql://u:s3cr3t@h/db", false))
    assert.is_nil(m:find("s3cr3t", 1, true))
  end)
end)
