-- Bad input, end to end on the real stack: broken policy files, keys that must never reach
-- storage, a broken environment, cancel ids that are not UUIDs, and S3 replies no sane server
-- sends. Each ends in a clear message and the documented exit code, with nothing touched.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local s3 = require("resclean.s3")
local s3h = require("support.s3_helpers")

local conn, w

-- The world is intact: every stale row and object of the setup and every control.
local function assert_untouched(when)
  local rows, objects = fs.assert_invariants(w, when)
  for _, id in ipairs(w.stale) do assert.is_true(rows[id], when .. ": stale row gone: " .. id) end
  for _, id in ipairs(w.with_objects) do assert.is_true(objects[id], when .. ": object gone: " .. id) end
end

local function no_traceback(r)
  assert.is_nil(r.stderr:find("traceback", 1, true), "resclean crashed:\n" .. r.stderr)
end

describe("bad input", function()
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  describe("in a policy file", function()
    setup(function()
      w = fs.world(conn, { stale = 6, with_objects = 3, tag = "badpol" })
    end)

    -- {what, file text, text the message must contain (besides the file's path)}
    local cases = {
      { "a syntax error", "return {", "syntax error" },
      { "a file that raises", 'error("no policy today")', "no policy today" },
      { "a file returning no table", "return 42", "return a table" },
      { "a wrong type", 'return { batch_size = "big" }', "field 'batch_size'" },
      { "a negative age", "return { max_age = -5 }", "field 'max_age'" },
      { "a zero age", "return { max_age = 0 }", "field 'max_age'" },
      { "a zero lock timeout", "return { lock_timeout = 0 }", "field 'lock_timeout'" },
      { "an absurd batch size", "return { batch_size = 1e9 }", "field 'batch_size'" },
      { "a zero batch size", "return { batch_size = 0 }", "field 'batch_size'" },
      { "a fractional batch size", "return { batch_size = 2.5 }", "field 'batch_size'" },
      { "an unknown field", "return { batchsize = 10 }", "field 'batchsize'" },
      { "an invalid key pattern", 'return { key_pattern = "[" }', "field 'key_pattern'" },
      { "an identifier carrying SQL", 'return { table = "x; DROP TABLE attacks" }', "field 'table'" },
      { "a table that does not exist", 'return { table = "no_such_table" }', "'table'" },
      { "an id column that does not exist", 'return { id_column = "nope" }', "'id_column'" },
      { "a key column that does not exist", 'return { key_columns = { "id", "nope" } }', "'key_columns" },
      { "an uploaded column that is not boolean", 'return { uploaded_column = "file_name" }', "'uploaded_column'" },
      { "a created column that is not a time", 'return { created_column = "file_name" }', "'created_column'" },
    }
    for _, c in ipairs(cases) do
      it("with " .. c[1] .. " exits 2 naming the file and what is wrong, and touches nothing", function()
        local path = fs.policy(c[2])
        for _, script in ipairs({ "scripts/sweep.lua", "scripts/cancel.lua" }) do
          local argv = { script, "--policy", path }
          if script == "scripts/sweep.lua" then argv[#argv + 1] = "--once" else argv[#argv + 1] = w.stale[1] end
          local r = fs.run(argv, fs.env(w.bucket))
          assert.are.equal(2, r.code, script .. ": " .. r.stderr)
          no_traceback(r)
          assert.matches(path, r.stderr, 1, true)
          assert.matches(c[3], r.stderr, 1, true)
          assert.is_nil(r.by.resource)
        end
        assert_untouched("after a policy with " .. c[1])
      end)
    end
  end)

  describe("in computed keys", function()
    -- key() by the row's file_name, so each kind of bad key is one row.
    local POLICY = [[
return {
  key_columns = { "id", "file_name" },
  key_pattern = "^k/",
  key = function(row)
    local kind, id = row.file_name, row.id
    if kind == "empty" then return "" end
    if kind == "nomatch" then return "x/" .. id end
    if kind == "dotdot" then return "k/../" .. id end
    if kind == "nul" then return "k/\0" .. id end
    if kind == "ctrl" then return "k/\t" .. id end
    if kind == "newline" then return "k/" .. id .. "\n" end
    if kind == "long" then return "k/" .. id .. ("a"):rep(1024) end
    if kind == "raise" then error("no key for " .. id) end
    if kind == "number" then return 42 end
    return "k/" .. id
  end,
}]]
    local KINDS = { "empty", "nomatch", "dotdot", "nul", "ctrl", "newline", "long", "raise", "number" }

    it("skips an empty, unmatched, '..', NUL, control-character or over-long key as bad_key, never sent", function()
      fx.reset(conn)
      local bucket = fx.unique_bucket("badkey")
      local client = fx.bucket(bucket)
      local ids = fx.rows(conn, #KINDS + 3)
      local bad, good = {}, {}
      for i, kind in ipairs(KINDS) do
        bad[kind] = ids[i]
        fx.check(conn:query("UPDATE attack_resource_files SET file_name = $1 WHERE id = $2", kind, ids[i]))
      end
      for i = #KINDS + 1, #ids do good[#good + 1] = ids[i] end
      -- Objects where a careless client would land with each bad key: the key itself where
      -- S3 can hold it, what a path normaliser makes of '..', what a C string makes of the
      -- NUL key, and the bare id.
      local planted = { "x/" .. bad.nomatch, bad.dotdot, "k/", "k/\t" .. bad.ctrl, "k", "x" }
      for _, id in ipairs(ids) do planted[#planted + 1] = id end
      for _, key in ipairs(planted) do fx.check(client:put(key, "keep me")) end
      for _, id in ipairs(good) do fx.check(client:put("k/" .. id, "stale")) end

      local r = fs.run({ "scripts/sweep.lua", "--once", "--policy", fs.policy(POLICY) }, fs.env(bucket))
      assert.are.equal(0, r.code, r.stderr)
      no_traceback(r)
      for kind, id in pairs(bad) do
        local l = r.outcomes[id]
        assert.is_table(l, "no log line for the " .. kind .. " key")
        assert.are.equal("skipped", l.outcome, kind)
        assert.are.equal("bad_key", l.reason, kind)
      end
      for _, id in ipairs(good) do assert.are.equal("object_deleted", r.outcomes[id].outcome) end
      local rows = fx.existing_rows(conn, ids)
      for kind, id in pairs(bad) do assert.is_true(rows[id], "the row of the " .. kind .. " key is gone") end
      for _, key in ipairs(planted) do
        local head = fx.check(client:head(key))
        assert.is_true(head.exists, ("object %q was deleted"):format(key))
      end
      for _, id in ipairs(good) do assert.is_false(fx.check(client:head("k/" .. id)).exists) end
    end)

    it("never lets the s3 client act on a shorter key than the one given (a key with a NUL byte)", function()
      local client = fx.bucket(fx.unique_bucket("nulkey"))
      local kept = "k/abc"
      fx.check(client:put(kept, "keep me"))
      local key = kept .. "\0zzz"
      local head = client:head(key)
      assert.is_not_true(head and head.exists, "HEAD of the NUL key answered for " .. kept)
      client:delete(key)
      assert.is_true(fx.check(client:head(kept)).exists, "delete of the NUL key deleted " .. kept)
      local res = client:delete_many({ key })
      assert.are.equal(key, res[1].key)
      assert.is_true(fx.check(client:head(kept)).exists, "delete_many of the NUL key deleted " .. kept)
    end)
  end)

  describe("in the environment", function()
    setup(function()
      w = fs.world(conn, { stale = 6, with_objects = 3, tag = "badenv" })
    end)

    local function sweep_with(env)
      local r = fs.sweep(w.bucket, { "--once" }, env)
      no_traceback(r)
      return r
    end

    local port = (os.getenv("AWS_ENDPOINT_URL_S3") or ""):match(":(%d+)/?$") or "9000"
    local malformed = { "ftp://127.0.0.1:" .. port, "127.0.0.1:" .. port, "http://",
      "http://127.0.0.1:" .. port .. "/some/path", "http://127.0.0.1:" .. port .. "?x=1", "http://a b:" .. port }
    for _, ep in ipairs(malformed) do
      it(("refuses the malformed endpoint %q as a configuration error (exit 2)"):format(ep), function()
        local r = sweep_with({ AWS_ENDPOINT_URL_S3 = ep })
        assert.are.equal(2, r.code, r.stderr)
        assert.matches("endpoint", r.stderr, 1, true)
        assert_untouched("after a malformed endpoint")
      end)
    end

    -- {what, environment, text the one stderr line holds, exit code, the setting it names}
    local causes = {
      { "an unknown host", { AWS_ENDPOINT_URL_S3 = "http://no-such-host.invalid:" .. port }, "resolve", 3,
        "AWS_ENDPOINT_URL_S3" },
      { "a closed port", { AWS_ENDPOINT_URL_S3 = "http://127.0.0.1:1" }, "connect", 3, "AWS_ENDPOINT_URL_S3" },
      { "an unreachable database", { DATABASE_URL = "postgres://resclean@127.0.0.1:1/resclean" }, "connection", 3,
        "DATABASE_URL" },
      { "a wrong secret key", { AWS_SECRET_ACCESS_KEY = ("x"):rep(40) }, "SignatureDoesNotMatch", 2,
        "AWS_SECRET_ACCESS_KEY" },
      { "an unknown access key", { AWS_ACCESS_KEY_ID = "AKIAUNKNOWNUNKNOWN00" }, "InvalidAccessKeyId", 2,
        "AWS_ACCESS_KEY_ID" },
      { "an unknown bucket", { RESCLEAN_BUCKET = "no-such-bucket-resclean" }, "NoSuchBucket", 2, "RESCLEAN_BUCKET" },
      { "a wrong database password", { DATABASE_URL = (os.getenv("DATABASE_URL") or "")
        :gsub("://([^:]+):[^@]*@", "://%1:wrong-password@") }, "password authentication failed", 2, "DATABASE_URL" },
      { "an unknown database", { DATABASE_URL = (os.getenv("DATABASE_URL") or ""):gsub("/[^/]*$", "/nodb") },
        "does not exist", 2, "DATABASE_URL" },
      { "a malformed DATABASE_URL", { DATABASE_URL = "postgres://[bad" }, "connection string", 2, "DATABASE_URL" },
      { "a CA bundle that is a key file", { AWS_CA_BUNDLE = h.tmpfile("-----BEGIN PRIVATE KEY-----\n"
        .. "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n",
        "ca-bundle.pem") }, "no PEM certificate", 2, "AWS_CA_BUNDLE" },
    }
    -- One line on stderr naming the cause and the setting, the code not said twice.
    local function assert_one_clear_line(r, c, script)
      local lines = {}
      for l in r.stderr:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(1, #lines, script .. " with " .. c[1] .. " wrote: " .. r.stderr)
      assert.matches(c[3], lines[1], 1, true)
      assert.matches(c[5], lines[1], 1, true)
      local code = lines[1]:match("(%u%w+): ")
      if code then assert.is_nil(lines[1]:find(code .. ": " .. code, 1, true), lines[1]) end
    end
    for _, c in ipairs(causes) do
      local what = c[4] == 2 and "a configuration error (exit 2)" or "transient (exit 3)"
      it(("treats %s as %s in every script, before any row is deleted"):format(c[1], what), function()
        local r = sweep_with(c[2])
        assert.are.equal(c[4], r.code, r.stderr)
        assert_one_clear_line(r, c, "sweep")
        assert.is_nil(r.by.resource)
        assert_untouched("after " .. c[1])
        local cancel = fs.run({ "scripts/cancel.lua", w.stale[1] }, fs.env(w.bucket, c[2]))
        no_traceback(cancel)
        assert.are.equal(c[4], cancel.code, cancel.stderr)
        assert_one_clear_line(cancel, c, "cancel")
        assert_untouched("after a cancel with " .. c[1])
        -- status reads only the database; reconcile both: the same cause, the same code.
        local env = fs.env(w.bucket, c[2])
        if not c[2].AWS_ENDPOINT_URL_S3 and not c[2].AWS_SECRET_ACCESS_KEY and not c[2].AWS_ACCESS_KEY_ID
          and not c[2].RESCLEAN_BUCKET and not c[2].AWS_CA_BUNDLE then
          local status = fs.run({ "scripts/status.lua" }, env)
          no_traceback(status)
          assert.are.equal(c[4], status.code, status.stderr)
        end
        local rec = fs.run({ "scripts/reconcile.lua" }, env)
        no_traceback(rec)
        assert.are.equal(c[4], rec.code, rec.stderr)
        assert_untouched("after a reconcile with " .. c[1])
      end)
    end

    it("exits 2 when the S3 credentials are missing", function()
      local r = sweep_with({ AWS_SECRET_ACCESS_KEY = false })
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("AWS_SECRET_ACCESS_KEY", r.stderr, 1, true)
      assert_untouched("without credentials")
    end)
  end)

  describe("in cancel ids", function()
    setup(function()
      w = fs.world(conn, { stale = 4, with_objects = 2, tag = "badids" })
    end)

    local bad_ids = {
      "not-a-uuid",
      "'; DROP TABLE attack_resource_files; --",
      "00000000-0000-4000-8000-000000000000' OR '1'='1",
      "00000000-0000-4000-8000-00000000000",
      "{00000000-0000-4000-8000-000000000000}",
      "00000000-0000-4000-8000-000000000000\n",
      "",
      "\u{FF10}0000000-0000-4000-8000-000000000000", -- a full-width digit
      ("9"):rep(10000),
    }
    for i, bad in ipairs(bad_ids) do
      it(("refuses malformed id #%d as a usage error (exit 2), touching nothing"):format(i), function()
        local r = fs.run({ "scripts/cancel.lua", w.stale[1], bad }, fs.env(w.bucket))
        assert.are.equal(2, r.code, r.stderr)
        no_traceback(r)
        assert.matches("is not a UUID", r.stderr, 1, true)
        assert.is_true(#r.stderr < 2000, "the error echoes the whole argument")
        assert.is_nil(r.by.resource)
        assert_untouched("after cancel " .. bad:sub(1, 40))
      end)
    end

    it("treats an upper-case UUID as the same id, as data", function()
      local id = w.with_objects[1]
      local r = fs.run({ "scripts/cancel.lua", id:upper() }, fs.env(w.bucket))
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("object_deleted", r.outcomes[id].outcome)
      assert.is_nil(fx.existing_rows(conn, { id })[id])
      fs.assert_invariants(w, "after cancel of an upper-case id")
    end)
  end)

  describe("in S3 replies (a misbehaving server on loopback)", function()
    local fake
    setup(function()
      fake = s3h.fake_server()
    end)
    teardown(function()
      if fake then fake.stop() end
    end)

    local function huge_result()
      return { status = 200, body = "<Deleted><Key>x</Key></Deleted>", ["repeat"] = 1100000 } -- ~34 MB
    end

    -- {what, reply to DeleteObjects, exit codes allowed}
    local cases = {
      { "an HTML page with status 200", { status = 200, body = "<html><body>Welcome</body></html>" } },
      { "a truncated DeleteResult", { status = 200, body = "<?xml version=\"1.0\"?><DeleteResult><Deleted><Key>" } },
      { "a DeleteResult larger than 32 MiB", huge_result() },
      { "an <Error> document with status 200", { status = 200, body = "<Error><Code>InternalError</Code></Error>" } },
      { "an empty body with status 200", { status = 200, body = "" } },
      { "a DeleteResult naming other keys", { status = 200,
        body = "<DeleteResult><Deleted><Key>someone-else</Key></Deleted></DeleteResult>" } },
      { "a DeleteResult with an entity-expanding DTD", { status = 200, body = '<!DOCTYPE d [<!ENTITY a "aaaa">'
        .. '<!ENTITY b "&a;&a;&a;&a;">]><DeleteResult><Deleted><Key>&b;</Key></Deleted></DeleteResult>' } },
      { "status 204 without a body", { status = 204 } },
      { "status 500 with an S3 error", { status = 500, body = "<Error><Code>InternalError</Code></Error>" } },
      { "status 503 with an HTML page", { status = 503, body = "<html><h1>Service Unavailable</h1></html>" } },
      { "status 404 NoSuchBucket", { status = 404, body = "<Error><Code>NoSuchBucket</Code></Error>" } },
      { "a redirect", { status = 301, headers = { Location = "http://127.0.0.1:1/" } } },
      { "an unknown status", { status = 299, body = "<DeleteResult></DeleteResult>" } },
      { "a reply cut short", { status = 200, body = ("<DeleteResult>" .. ("<Deleted/>"):rep(100)), short = 20 } },
      { "a closed connection", { drop = true } },
    }
    -- A reply that refuses the request itself (no such bucket, a redirect to
    -- another region) is configuration to fix: exit 2; the rest 1 or 3.
    local config_error = { ["status 404 NoSuchBucket"] = true, ["a redirect"] = true }
    for _, c in ipairs(cases) do
      it("reports failure, never a crash or a deleted row, for " .. c[1] .. " to DeleteObjects", function()
        fx.reset(conn)
        local ids = fx.rows(conn, 5)
        fake.config({ delete_objects = c[2] })
        fake.clear()
        local r = fs.run({ "scripts/sweep.lua", "--once", "--policy",
          fs.policy("return { s3_max_attempts = 2, s3_timeout = 5 }") },
          fs.env("fake-bucket", { AWS_ENDPOINT_URL_S3 = fake.endpoint }))
        no_traceback(r)
        if config_error[c[1]] then
          assert.are.equal(2, r.code, r.stderr)
        else
          assert.is_true(r.code == 1 or r.code == 3, ("exit %s: %s"):format(tostring(r.code), r.stderr))
        end
        assert.is_true(fake.count("delete_objects") >= 1, "DeleteObjects was never sent")
        for _, id in ipairs(ids) do
          assert.are.equal("failed", r.outcomes[id].outcome)
        end
        assert.are.equal(5, fx.count(conn))
      end)
    end

    it("never lets a content type smuggle a header into a request (CR LF in put's content_type)", function()
      fake.config({})
      fake.clear()
      local c = assert(s3.client({ endpoint = fake.endpoint, access_key = "AKFAKE", secret_key = "fake-secret",
        bucket = "fake-bucket", max_attempts = 1 }))
      pcall(c.put, c, "k", "body", { content_type = "text/plain\r\nX-Injected: yes" })
      c:close()
      for _, r in ipairs(fake.log()) do
        assert.is_nil(r.headers["x-injected"], "a header was injected into " .. r.method .. " " .. r.path)
      end
    end)

    for _, c in ipairs({
      { "an HTML page", { status = 200, body = "<html><body>login</body></html>" }, 3 },
      { "a 403 with an HTML page", { status = 403, body = "<html>Forbidden</html>" }, 2 },
      { "a truncated listing", { status = 200, body = "<ListBucketResult><IsTruncated>true</IsTruncated>" }, 3 },
    }) do
      it("exits " .. c[3] .. " before touching anything when the bucket check gets " .. c[1], function()
        fx.reset(conn)
        fx.rows(conn, 3)
        fake.config({ list = c[2] })
        fake.clear()
        local r = fs.run({ "scripts/sweep.lua", "--once" },
          fs.env("fake-bucket", { AWS_ENDPOINT_URL_S3 = fake.endpoint }))
        no_traceback(r)
        assert.are.equal(c[3], r.code, r.stderr)
        assert.are.equal(0, fake.count("delete_objects") + fake.count("delete"))
        assert.are.equal(3, fx.count(conn))
      end)
    end
  end)
end)
