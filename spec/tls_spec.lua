-- TLS: the sweep and cancel against HTTPS in front of the harness's RGW, with a certificate
-- from a throwaway CA. resclean refuses it by default, and works when AWS_CA_BUNDLE names
-- the CA (the AWS CLI's variable; resclean's config passes it to the s3 client as ca_file).
local errors = require("resclean.errors")
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local s3 = require("resclean.s3")
local tls = require("support.tls_support")

local conn, pki, proxy, wrong_name
local GOOD, WRONG = "IP:127.0.0.1,DNS:localhost", "DNS:elsewhere.example"

describe("over TLS", function()
  setup(function()
    conn = fx.connect()
    pki = tls.pki({ GOOD, WRONG })
    proxy = tls.proxy(pki.certs[GOOD], os.getenv("AWS_ENDPOINT_URL_S3"))
    wrong_name = tls.proxy(pki.certs[WRONG], os.getenv("AWS_ENDPOINT_URL_S3"))
  end)

  teardown(function()
    if proxy then proxy.stop() end
    if wrong_name then wrong_name.stop() end
    if conn then conn:close() end
  end)

  it("refuses a certificate it cannot verify: exit 2 naming the certificate problem, nothing touched", function()
    local w = fs.world(conn, { stale = 6, with_objects = 3, tag = "tls-refuse" })
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = proxy.endpoint, AWS_CA_BUNDLE = false })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("AWS_CA_BUNDLE", r.stderr, 1, true)
    assert.matches("certificate", r.stderr, 1, true)
    assert.are.equal(0, proxy.connections(), "a TLS connection was completed without a trusted certificate")
    assert.is_nil(r.by.resource)
    assert.are.equal(6, (fs.stale_left(w)))
    fs.assert_invariants(w, "after a refused certificate")
  end)

  it("sweeps through HTTPS when AWS_CA_BUNDLE names the CA", function()
    local w = fs.world(conn, { stale = 6, with_objects = 3, tag = "tls-ok" })
    local before = proxy.connections()
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = proxy.endpoint, AWS_CA_BUNDLE = pki.ca })
    assert.are.equal(0, r.code, r.stderr)
    assert.is_true(proxy.connections() > before, "no request went through the TLS proxy")
    for _, id in ipairs(w.with_objects) do assert.are.equal("object_deleted", r.outcomes[id].outcome) end
    fs.assert_all_clean(w, "after a sweep over TLS")
  end)

  it("cancels through HTTPS with the CA bundle, and refuses without it", function()
    local w = fs.world(conn, { stale = 2, with_objects = 2, tag = "tls-cancel" })
    local id = w.with_objects[1]
    local env = fs.env(w.bucket, { AWS_ENDPOINT_URL_S3 = proxy.endpoint, AWS_CA_BUNDLE = false })
    local refused = fs.run({ "scripts/cancel.lua", id }, env)
    assert.are.equal(2, refused.code, refused.stderr)
    assert.is_true(fx.existing_rows(conn, { id })[id])
    env.AWS_CA_BUNDLE = pki.ca
    local r = fs.run({ "scripts/cancel.lua", id }, env)
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("object_deleted", r.outcomes[id].outcome)
    fs.assert_invariants(w, "after a cancel over TLS")
  end)

  it("refuses a certificate from the trusted CA that names another host", function()
    local w = fs.world(conn, { stale = 4, with_objects = 2, tag = "tls-name" })
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = wrong_name.endpoint, AWS_CA_BUNDLE = pki.ca })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("certificate", r.stderr:lower(), 1, true)
    assert.are.equal(4, (fs.stale_left(w)))
    fs.assert_invariants(w, "after a certificate for another name")
  end)

  it("exits 2 for http:// against the TLS port, naming AWS_ENDPOINT_URL_S3 and https://", function()
    local w = fs.world(conn, { stale = 2, with_objects = 1, tag = "tls-plain" })
    local plain = proxy.endpoint:gsub("^https://", "http://")
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = plain, AWS_CA_BUNDLE = pki.ca })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("AWS_ENDPOINT_URL_S3 " .. plain .. " serves TLS? write https://", r.stderr, 1, true)
    assert.are.equal(2, (fs.stale_left(w)))
    fs.assert_invariants(w, "after http:// against a TLS port")
  end)

  it("exits 2 for https:// against a plain HTTP port, naming AWS_ENDPOINT_URL_S3", function()
    local w = fs.world(conn, { stale = 2, with_objects = 1, tag = "tls-tlsplain" })
    local tls_to_plain = os.getenv("AWS_ENDPOINT_URL_S3"):gsub("^http://", "https://")
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = tls_to_plain, AWS_CA_BUNDLE = pki.ca })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("AWS_ENDPOINT_URL_S3 " .. tls_to_plain .. " serves http://", r.stderr, 1, true)
    assert.are.equal(2, (fs.stale_left(w)))
  end)

  it("treats an AWS_CA_BUNDLE that cannot be read as a configuration error (exit 2)", function()
    local w = fs.world(conn, { stale = 2, with_objects = 1, tag = "tls-badca" })
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = proxy.endpoint,
      AWS_CA_BUNDLE = pki.dir .. "/no-such-ca.pem" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("no-such-ca.pem", r.stderr, 1, true)
    fs.assert_invariants(w, "with a missing CA bundle")
  end)

  it("verifies in the s3 client by default, and accepts the CA as ca_file", function()
    local opts = fx.s3_options("tls-client", { endpoint = proxy.endpoint, max_attempts = 1 })
    local c = assert(s3.client(opts))
    local res, err = c:list({ max = 1 })
    assert.is_nil(res)
    assert.are.equal("tls", err.code)
    assert.is_false(errors.retryable(err))
    c:close()
    opts.ca_file = pki.ca
    c = assert(s3.client(opts))
    fx.check(c:create_bucket())
    fx.check(c:put("k", "v"))
    assert.is_true(fx.check(c:head("k")).exists)
    c:close()
  end)
end)
