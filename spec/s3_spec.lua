-- resclean.s3 against the real Ceph RGW that spec/support starts (AWS_ENDPOINT_URL_S3,
-- AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION: missing ones fail these specs),
-- and, for the failure modes no real server produces on demand (HTML, truncated and huge
-- replies, 5xx, dropped connections), against the scripted spec/support/fake_s3.py.
local errors = require("resclean.errors")
local s3 = require("resclean.s3")
local sys = require("resclean.sys")
local cjson = require("cjson")
local helpers = require("support.helpers")
local h = require("support.s3_helpers")

-- Keys that break naive signing, URL building or XML handling.
local AWKWARD = {
  "with space", "plus+sign", "per%cent", "per%25cent", "eq=ual", "amp&ersand", "til~de", "quo'te",
  "ünïcødé/日本語/ключ", "emoji😀", "nested/a/b/c.txt", "double//slash", "/leading-slash", "trailing/",
  "dot/./segment", "dotdot/../x", "q?mark", "hash#tag", "<angle>&\"quotes\"", "  spaces around  ",
  "a+b c%2Bd", "semi;colon,comma@at$dollar", "back\\slash", "star*[x]{y}^|`",
}

local set = helpers.set

local function curl_status(args)
  local p = assert(io.popen("curl -sS -o /dev/null -w '%{http_code}' " .. args .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

-- Every string in a table, recursively, joined: to look for secrets.
local function strings_of(v, out)
  out = out or {}
  if type(v) == "table" then
    for k, x in pairs(v) do
      strings_of(k, out)
      strings_of(x, out)
    end
  elseif v ~= nil then
    out[#out + 1] = tostring(v)
  end
  return table.concat(out, "\n")
end

describe("resclean.s3 on RGW", function()
  local env, bucket, c, rec

  lazy_setup(function()
    env = h.env()
    bucket = h.unique_bucket("s3spec")
    rec = h.recorder()
    c = h.client(bucket, { trace = rec.fn })
    assert(c:create_bucket())
  end)

  lazy_teardown(function()
    if c then
      h.destroy_bucket(c)
      c:close()
    end
  end)

  before_each(function() rec.reset() end)

  it("creates a bucket, and creating it again counts as success", function()
    assert.is_true(c:create_bucket())
    assert.is_true(c:create_bucket())
    assert.is_true(c:head_bucket())
  end)

  it("puts an object and heads it: exists, size, etag and last modified", function()
    local put = assert(c:put("obj/one", "hello world", { content_type = "text/plain" }))
    assert.equal("5eb63bbbe01eeed093cb22bb8f5acdc3", put.etag) -- md5("hello world")
    local r = assert(c:head("obj/one"))
    assert.is_true(r.exists)
    assert.equal(11, r.size)
    assert.equal(put.etag, r.etag)
    assert.matches("GMT$", r.last_modified)
    assert.is_true(math.abs(r.mtime - sys.time()) < 600)
    local body, meta = c:get("obj/one")
    assert.equal("hello world", body)
    assert.equal("text/plain", meta.content_type)
    assert.is_true(c:delete("obj/one"))
  end)

  it("heads a missing key as exists=false, not as an error", function()
    local r, err = c:head("obj/never-written")
    assert.is_nil(err)
    assert.is_false(r.exists)
    assert.is_nil(r.size)
    assert.equal(1, rec.count())
  end)

  it("gives the server's clock (Date) as server_time, on a missing key and in an answered error", function()
    local r = assert(c:head("obj/never-written"))
    assert.are.equal("integer", math.type(r.server_time))
    assert.is_true(math.abs(r.server_time - os.time()) <= 5, "server_time " .. r.server_time)
    local bad = h.client(bucket, { secret_key = "wrong-" .. env.AWS_SECRET_ACCESS_KEY:reverse() })
    local _, err = bad:head("obj/never-written")
    bad:close()
    assert.equal(403, err.status)
    assert.is_true(math.abs(err.server_time - os.time()) <= 5, "server_time " .. tostring(err.server_time))
  end)

  it("round-trips awkward keys through put, head, get, list and delete_many", function()
    for _, k in ipairs(AWKWARD) do
      assert(c:put(k, k), k)
      local r = assert(c:head(k))
      assert.is_true(r.exists, k)
      assert.equal(#k, r.size, k)
      assert.equal(k, (c:get(k)), k)
    end
    -- the path is encoded exactly once
    local put_urls = {}
    for _, call in ipairs(rec.calls) do
      if call.method == "PUT" then put_urls[#put_urls + 1] = call.url end
    end
    assert.equal(("%s/%s/with%%20space"):format(env.AWS_ENDPOINT_URL_S3, bucket), put_urls[1])
    assert.equal(("%s/%s/per%%2525cent"):format(env.AWS_ENDPOINT_URL_S3, bucket), put_urls[4])
    assert.equal(("%s/%s//leading-slash"):format(env.AWS_ENDPOINT_URL_S3, bucket), put_urls[13])

    local listed = set(h.list_all(c))
    for _, k in ipairs(AWKWARD) do assert.is_true(listed[k] == true, "not listed: " .. k) end

    rec.reset()
    local res, nfailed = c:delete_many(AWKWARD)
    assert.equal(0, nfailed)
    for i, k in ipairs(AWKWARD) do
      assert.equal(k, res[i].key)
      assert.is_true(res[i].deleted, k)
      assert.is_nil(res[i].err)
    end
    assert.equal(1, rec.count(h.is_delete_objects))
    assert.equal(1, rec.count()) -- every key went in the XML body, no single DELETE
    assert.same(AWKWARD, h.body_keys(rec.calls[1].body))
    for _, k in ipairs(AWKWARD) do assert.is_false(assert(c:head(k)).exists, k) end
  end)

  it("lists by prefix and delimiter, after start_after, and page by page", function()
    local keys = { "lp/a/1", "lp/a/2", "lp/b/1", "lp/c" }
    for _, k in ipairs(keys) do assert(c:put(k, "x")) end
    finally(function() c:delete_many(keys) end)

    local r = assert(c:list({ prefix = "lp/a/" }))
    assert.same({ "lp/a/1", "lp/a/2" }, { r.keys[1].key, r.keys[2].key })
    assert.equal(2, #r.keys)
    assert.is_false(r.truncated)
    assert.is_nil(r.next_continuation)
    assert.equal(1, r.keys[1].size)
    assert.equal("9dd4e461268c8034f5c8564e155c67a6", r.keys[1].etag) -- md5("x")
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", r.keys[1].last_modified)

    r = assert(c:list({ prefix = "lp/", delimiter = "/" }))
    assert.same({ "lp/c" }, { r.keys[1].key })
    assert.equal(1, #r.keys)
    assert.same({ "lp/a/", "lp/b/" }, r.prefixes)

    r = assert(c:list({ prefix = "lp/", start_after = "lp/a/2" }))
    assert.same({ "lp/b/1", "lp/c" }, { r.keys[1].key, r.keys[2].key })

    r = assert(c:list({ prefix = "lp/", max = 3 }))
    assert.equal(3, #r.keys)
    assert.is_true(r.truncated)
    assert.is_string(r.next_continuation)
    local r2 = assert(c:list({ prefix = "lp/", max = 3, continuation = r.next_continuation }))
    assert.same({ "lp/c" }, { r2.keys[1].key })
    assert.is_false(r2.truncated)
  end)

  describe("with 2,500 keys", function()
    local keys

    lazy_setup(function()
      keys = h.put_many(c, "many/", 2500)
    end)

    it("pages through them with continuation tokens, 1,000 at a time", function()
      local seen, sizes, token = {}, {}, nil
      repeat
        local page = assert(c:list({ prefix = "many/", max = 1000, continuation = token }))
        sizes[#sizes + 1] = #page.keys
        for _, e in ipairs(page.keys) do seen[#seen + 1] = e.key end
        token = page.next_continuation
        assert.equal(page.truncated, token ~= nil)
      until not page.truncated
      assert.same({ 1000, 1000, 500 }, sizes)
      assert.same(keys, seen) -- all, once each, in order
    end)

    it("deletes them with delete_many in three DeleteObjects requests, each with a correct Content-MD5", function()
      local res, nfailed = c:delete_many(keys)
      assert.equal(0, nfailed)
      for i = 1, #keys do
        assert.equal(keys[i], res[i].key)
        assert.is_true(res[i].deleted)
      end
      assert.equal(3, rec.count(h.is_delete_objects))
      assert.equal(3, rec.count())
      local sent = {}
      for _, call in ipairs(rec.calls) do
        local md5 = call.headers["content-md5"]
        assert.is_string(md5)
        assert.equal(h.md5_base64(call.body), md5) -- recomputed outside resclean
        assert.matches("content%-md5", call.headers.authorization) -- and signed
        local ks = h.body_keys(call.body)
        assert.is_true(#ks <= 1000)
        for _, k in ipairs(ks) do sent[#sent + 1] = k end
      end
      table.sort(sent)
      assert.same(keys, sent)
      assert.same({}, h.list_all(c, "many/"))
    end)
  end)

  it("deletes a key, and deleting a missing key also succeeds", function()
    assert(c:put("del/x", "x"))
    assert.is_true(c:delete("del/x"))
    assert.is_false(assert(c:head("del/x")).exists)
    assert.is_true(c:delete("del/x"))
  end)

  it("falls back to a single DELETE for a key XML 1.0 cannot carry", function()
    local keys = { "ctl\1char", "tab\tkey", "ok/key", "nl\nkey" }
    for _, k in ipairs(keys) do assert(c:put(k, "x")) end
    rec.reset()
    local res, nfailed = c:delete_many(keys)
    assert.equal(0, nfailed)
    for i = 1, #keys do assert.is_true(res[i].deleted) end
    assert.equal(1, rec.count(h.is_delete_objects))
    assert.equal(3, rec.count(function(call) return call.method == "DELETE" end))
    for _, call in ipairs(rec.calls) do
      if h.is_delete_objects(call) then assert.same({ "ok/key" }, h.body_keys(call.body)) end
    end
    for _, k in ipairs(keys) do assert.is_false(assert(c:head(k)).exists) end
  end)

  it("delete_start sends a DeleteObjects call that finish() ends with delete_many's results", function()
    local keys = { "ds/a", "ds/missing", "ds/b", "tab\tkey" }
    for _, k in ipairs(keys) do
      if k ~= "ds/missing" then assert(c:put(k, "x")) end
    end
    rec.reset()
    local d = c:delete_start(keys, { batch = 2 })
    -- Sent before finish: the server is deleting while the caller works.
    assert.is_true(rec.count(h.is_delete_objects) >= 1)
    local ok, err = pcall(c.head, c, "ds/a")
    assert.is_false(ok)
    assert.matches("busy", err)
    sys.sleep(0.05)
    assert.is_boolean(d:pump())
    local res, nfailed = d:finish()
    assert.equal(0, nfailed)
    for i, k in ipairs(keys) do
      assert.equal(k, res[i].key)
      assert.is_true(res[i].deleted, k)
    end
    assert.equal(2, rec.count(h.is_delete_objects))
    assert.equal(1, rec.count(function(call) return call.method == "DELETE" end))
    for _, k in ipairs(keys) do assert.is_false(assert(c:head(k)).exists) end
    assert.has_error(function() d:finish() end, "this delete_start was already finished")
  end)

  it("frees the client when a delete_start is dropped unfinished", function()
    assert(c:put("ds/dropped", "x"))
    do
      local d = c:delete_start({ "ds/dropped" }) -- luacheck: ignore 211
    end
    collectgarbage()
    collectgarbage()
    -- The client is free again; the key may or may not be gone.
    assert.is_table(assert(c:head("ds/dropped")))
    assert.is_true(c:delete("ds/dropped"))
    do
      local d <close> = c:delete_start({ "ds/closed" }) -- luacheck: ignore 211
    end
    assert.is_false(assert(c:head("ds/closed")).exists)
  end)

  it("reports a key a bucket policy protects as AccessDenied and deletes the others", function()
    local keys = { "pol/other-a", "pol/protected", "pol/other-b" }
    for _, k in ipairs(keys) do assert(c:put(k, "x")) end
    assert.is_true(c:put_bucket_policy(cjson.encode({
      Version = "2012-10-17",
      Statement = { {
        Sid = "KeepOne", Effect = "Deny", Principal = "*", Action = { "s3:DeleteObject" },
        Resource = { ("arn:aws:s3:::%s/pol/protected"):format(bucket) },
      } },
    })))
    finally(function()
      c:delete_bucket_policy()
      c:delete("pol/protected")
    end)
    local res, nfailed = c:delete_many(keys)
    assert.equal(1, nfailed)
    assert.is_true(res[1].deleted)
    assert.is_true(res[3].deleted)
    assert.is_false(res[2].deleted)
    assert.equal("s3", res[2].err.kind)
    assert.equal("AccessDenied", res[2].err.code)
    assert.equal("pol/protected", res[2].err.key)
    assert.is_false(errors.retryable(res[2].err))
    assert.is_true(assert(c:head("pol/protected")).exists)
    assert.is_false(assert(c:head("pol/other-a")).exists)
    -- a single DELETE of it fails the same way
    local ok, err = c:delete("pol/protected")
    assert.is_nil(ok)
    assert.equal(403, err.status)
    assert.equal("AccessDenied", err.code)
  end)

  it("refuses an empty key before sending anything", function()
    local before = c:stats().requests
    for _, call in ipairs({
      function() return c:head("") end,
      function() return c:get("") end,
      function() return c:delete("") end,
      function() return c:put("", "x") end,
      function() return c:presign("PUT", "", 60) end,
    }) do
      local ok, err = call()
      assert.is_nil(ok)
      assert.equal("EmptyKey", err.code)
      assert.is_false(errors.retryable(err))
    end
    local hm = c:head_many({ "" })
    assert.equal("EmptyKey", hm[1].err.code)
    local dm, nfailed = c:delete_many({ "" })
    assert.equal(1, nfailed)
    assert.is_false(dm[1].deleted)
    assert.equal("EmptyKey", dm[1].err.code)
    assert.equal(0, rec.count())
    assert.equal(before, c:stats().requests)
    assert.is_true(c:head_bucket()) -- the bucket is still there
  end)

  it("gives SignatureDoesNotMatch after exactly one attempt with a wrong secret", function()
    local wrong = "wrong-" .. env.AWS_SECRET_ACCESS_KEY:reverse()
    local bad_rec = h.recorder()
    local bad = h.client(bucket, { secret_key = wrong, trace = bad_rec.fn, max_attempts = 5 })
    local ok, err = bad:put("sig/x", "x")
    assert.is_nil(ok)
    assert.equal("s3", err.kind)
    assert.equal(403, err.status)
    assert.equal("SignatureDoesNotMatch", err.code)
    assert.is_false(errors.retryable(err))
    assert.equal(1, err.attempts)
    assert.is_string(err.request_id)
    assert.equal(1, bad_rec.count())
    -- HEAD replies have no body: the status names the error
    local _, herr = bad:head("sig/x")
    assert.equal(403, herr.status)
    assert.equal("Forbidden", herr.code)
    assert.equal(2, bad_rec.count())
    -- no secret in errors, traces or tostring
    local text = strings_of({ err, herr, bad_rec.calls, tostring(bad) })
    assert.is_nil(text:find(wrong, 1, true))
    assert.is_nil(text:find(env.AWS_SECRET_ACCESS_KEY, 1, true))
    assert.is_nil(text:find("Signature=%x%x%x%x"))
    bad:close()
  end)

  it("makes a presigned PUT URL that curl -T can upload to, until it expires", function()
    local key = "pre/upload file+1 ü"
    local file = helpers.tmpfile("uploaded by curl", "upload.txt")
    local url = assert(c:presign("PUT", key, 3))
    assert.is_nil(url:find(env.AWS_SECRET_ACCESS_KEY, 1, true))
    assert.equal("200", curl_status("-T " .. helpers.q(file) .. " " .. helpers.q(url)))
    assert.equal("uploaded by curl", (c:get(key)))
    -- the same URL is refused once its 3 s are over
    helpers.wait_for(function()
      return curl_status("-T " .. helpers.q(file) .. " " .. helpers.q(url)) == "403"
    end, 20, "the presigned URL to expire")
    assert(c:delete(key))
    assert.equal("403", curl_status("-T " .. helpers.q(file) .. " " .. helpers.q(url)))
    assert.is_false(assert(c:head(key)).exists)
    -- a GET URL works too
    assert(c:put(key, "abc"))
    local get = assert(c:presign("GET", key, 60))
    assert.equal("200", curl_status(helpers.q(get)))
    assert(c:delete(key))
  end)

  it("makes a presigned URL that is already expired when signed for a past time", function()
    local file = helpers.tmpfile("late", "late.txt")
    local url = assert(c:presign("PUT", "pre/late", 60, { now = math.floor(sys.time()) - 3600 }))
    assert.matches("X%-Amz%-Expires=60", url)
    assert.equal("403", curl_status("-T " .. helpers.q(file) .. " " .. helpers.q(url)))
    assert.is_false(assert(c:head("pre/late")).exists)
  end)

  it("heads many keys in parallel on one connection pool", function()
    local keys = h.put_many(c, "hm/", 40)
    for i = 41, 50 do keys[i] = ("hm/missing-%d"):format(i) end
    finally(function() c:delete_many(keys) end)
    local before = c:stats()
    rec.reset()
    local res, nfailed = c:head_many(keys, { concurrency = 8 })
    local after = c:stats()
    assert.equal(0, nfailed)
    for i, k in ipairs(keys) do
      assert.equal(k, res[i].key)
      assert.equal(i <= 40, res[i].exists)
      if i <= 40 then assert.equal(1, res[i].size) end
    end
    assert.equal(50, rec.count())
    assert.equal(50, after.requests - before.requests)
    assert.is_true(after.connections - before.connections <= 8)
    -- the next call reuses a pooled connection
    assert(c:head(keys[1]))
    assert.equal(after.connections, c:stats().connections)
  end)

  it("works virtual-hosted (bucket in the Host) when asked", function()
    local vrec = h.recorder()
    local ep = env.AWS_ENDPOINT_URL_S3:gsub("//127%.0%.0%.1:", "//localhost:")
    local v = h.client(bucket, { endpoint = ep, path_style = false, trace = vrec.fn })
    assert(v:put("vh/a b", "x"))
    assert.equal(ep:gsub("//", "//" .. bucket .. ".") .. "/vh/a%20b", vrec.calls[1].url)
    assert.same({ "vh/a b" }, h.list_all(v, "vh/"))
    assert.is_true(v:delete_many({ "vh/a b" })[1].deleted)
    v:close()
  end)

  it("raises on misuse", function()
    local opts = h.options(bucket)
    local function with(k, v)
      local o = {}
      for kk, vv in pairs(opts) do o[kk] = vv end
      o[k] = v
      return o
    end
    assert.has_error(function() s3.client() end)
    assert.has_error(function() s3.client(with("endpoint", nil)) end)
    assert.has_error(function() s3.client(with("endpoint", "ftp://x")) end)
    assert.has_error(function() s3.client(with("endpoint", opts.endpoint .. "/some/path")) end)
    assert.has_error(function() s3.client(with("bucket", nil)) end)
    assert.has_error(function() s3.client(with("secret_key", 42)) end)
    assert.has_error(function() s3.client(with("concurrency", 0)) end)
    assert.has_error(function() s3.client(with("trace", "print")) end)
    assert.has_error(function() s3.client(with("pathstyle", true)) end) -- a typo
    assert.has_error(function() c:head(nil) end)
    assert.has_error(function() c:head({}) end)
    assert.has_error(function() c:head_many("k") end)
    assert.has_error(function() c:head_many({ "a", 3 }) end)
    assert.has_error(function() c:head_many({ "a" }, { concurrency = 0 }) end)
    assert.has_error(function() c:delete_many({ "a" }, { batch = 1001 }) end)
    assert.has_error(function() c:list({ max = 0 }) end)
    assert.has_error(function() c:list({ prefix = 1 }) end)
    assert.has_error(function() c:presign("put", "k", 60) end)
    assert.has_error(function() c:presign("PUT", "k", 0) end)
    assert.has_error(function() c:put("k", nil) end)
    assert.has_error(function() c.head({}, "k") end)
    assert.equal(0, rec.count())

    local d = h.client(bucket)
    d:close()
    d:close() -- idempotent
    assert.matches("closed", tostring(d))
    assert.has_error(function() d:head("k") end, "attempt to use a closed s3 client")

    -- the trace hook may not call its own client; its error is raised; the client survives
    local t
    local calls = 0
    t = h.client(bucket, { trace = function()
      calls = calls + 1
      if calls == 1 then t:head("nested") end
      if calls == 2 then t:close() end
      if calls == 3 then error("hook failed") end
    end })
    assert.has_error(function() t:head("k") end, nil)
    assert.has_error(function() t:head("k") end)
    local ok, err = pcall(t.head, t, "k")
    assert.is_false(ok)
    assert.matches("hook failed", err)
    assert.is_false(assert(t:head("k")).exists)
    t:close()
  end)
end)

local function xml_err(code)
  return ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>scripted</Message>'
    .. '<RequestId>rid-%s</RequestId></Error>'):format(code, code)
end

describe("resclean.s3 failure modes (scripted fake server)", function()
  local f

  lazy_setup(function() f = h.fake_server() end)
  lazy_teardown(function() if f then f.stop() end end)
  before_each(function() f.clear() end)

  it("retries 5xx with backoff, then succeeds", function()
    f.script({ { status = 503, body = xml_err("SlowDown") }, { status = 500, body = xml_err("InternalError") },
      { status = 200, body = "" } })
    local rec = h.recorder()
    local c = f.client({ trace = rec.fn, max_attempts = 4 })
    local r = assert(c:head("k"))
    assert.is_true(r.exists)
    assert.same({ 1, 2, 3 }, { rec.calls[1].attempt, rec.calls[2].attempt, rec.calls[3].attempt })
    assert.equal(3, #f.log())
    assert.equal(2, c:stats().retries)
    c:close()
  end)

  it("retries 429 and a dropped connection", function()
    f.script({ { status = 429, body = xml_err("SlowDown") }, { drop = true }, { status = 200, body = "ok" } })
    local c = f.client({ max_attempts = 3 })
    assert.equal("ok", (c:get("k")))
    assert.equal(3, #f.log())
    c:close()
  end)

  it("never retries 403 or 404", function()
    local c = f.client({ max_attempts = 5 })
    for _, case in ipairs({ { 403, "AccessDenied" }, { 404, "NoSuchKey" } }) do
      f.clear()
      f.script({ { status = case[1], body = xml_err(case[2]) } })
      local ok, err = c:get("k")
      assert.is_nil(ok)
      assert.equal(case[1], err.status)
      assert.equal(case[2], err.code)
      assert.equal("scripted", err.message)
      assert.equal("rid-" .. case[2], err.request_id)
      assert.is_false(errors.retryable(err))
      assert.equal(1, err.attempts)
      assert.equal(1, #f.log())
    end
    c:close()
  end)

  it("gives up after max_attempts with the last error, marked retryable", function()
    f.script({ { status = 503, body = xml_err("ServiceUnavailable") } })
    local c = f.client({ max_attempts = 3 })
    local ok, err = c:delete("k")
    assert.is_nil(ok)
    assert.equal(503, err.status)
    assert.equal("ServiceUnavailable", err.code)
    assert.is_true(errors.retryable(err))
    assert.equal(3, err.attempts)
    assert.equal(3, #f.log())
    c:close()
  end)

  it("stops retrying when retry_max_seconds would be exceeded", function()
    f.script({ { status = 500, body = xml_err("InternalError") } })
    local c = f.client({ max_attempts = 100, retry_base_seconds = 0.2, retry_max_seconds = 1 })
    local t0 = sys.monotime()
    local _, err = c:head("k")
    local took = sys.monotime() - t0
    assert.equal("InternalError", err.code)
    assert.is_true(took < 2, "took " .. took)
    assert.is_true(err.attempts >= 2 and err.attempts < 10, "attempts " .. err.attempts)
    c:close()
  end)

  it("reports an unreachable endpoint as a retryable connection error", function()
    local c = s3.client({ endpoint = "http://127.0.0.1:1", access_key = "a", secret_key = "b", bucket = "fake",
      max_attempts = 2, retry_base_seconds = 0.01 })
    local ok, err = c:head("k")
    assert.is_nil(ok)
    assert.equal("connection", err.code)
    assert.is_nil(err.status)
    assert.is_true(errors.retryable(err))
    assert.equal(2, err.attempts)
    c:close()
  end)

  it("reports a host that does not resolve as a retryable dns error, printable like a pg error", function()
    local c = s3.client({ endpoint = "http://no-such-host.invalid", access_key = "a", secret_key = "b",
      bucket = "fake", max_attempts = 1 })
    local ok, err = c:head("k")
    assert.is_nil(ok)
    assert.same({ "s3", "dns", true }, { err.kind, err.code, errors.retryable(err) })
    assert.equal("resclean.error", getmetatable(err).__name)
    assert.equal("s3 dns: " .. err.message, tostring(err))
    c:close()
  end)

  it("reports a slow server as a timeout", function()
    f.script({ { status = 200, body = "late", delay = 2 } })
    local c = f.client({ timeout = 0.3, max_attempts = 1 })
    local ok, err = c:get("k")
    assert.is_nil(ok)
    assert.equal("timeout", err.code)
    assert.is_true(errors.retryable(err))
    c:close()
  end)

  it("sends DeleteObjects with a Content-MD5 the server verifies over the received body", function()
    f.script({ { delete_result = {} } })
    local c = f.client()
    local res, nfailed = c:delete_many(AWKWARD)
    assert.equal(0, nfailed)
    local log = f.log()
    assert.equal(1, #log)
    assert.is_true(log[1].md5_ok)
    assert.equal("POST", log[1].method)
    assert.equal("/fake?delete=", log[1].path)
    assert.same(AWKWARD, log[1].keys) -- escaped so that a real XML parser reads them back
    for i = 1, #AWKWARD do assert.is_true(res[i].deleted) end
    c:close()
  end)

  it("sends a key that is not valid UTF-8 as a single DELETE, not in the XML", function()
    f.script({ { delete_result = {} } })
    local c = f.client()
    local res, nfailed = c:delete_many({ "ok", "bad\255utf8", "surrogate\237\160\128" })
    assert.equal(0, nfailed)
    local log = f.log()
    table.sort(log, function(a, b) return a.method > b.method end)
    assert.same({ "POST", "DELETE", "DELETE" }, { log[1].method, log[2].method, log[3].method })
    assert.same({ "ok" }, log[1].keys)
    for i = 1, 3 do assert.is_true(res[i].deleted) end
    c:close()
  end)

  it("splits delete_many into requests of `batch` keys, sent in parallel", function()
    f.script({ { delete_result = {}, delay = 0.3 } })
    local c = f.client()
    local keys = { "a", "b", "c", "d", "e" }
    local t0 = sys.monotime()
    local res, nfailed = c:delete_many(keys, { batch = 2, concurrency = 3 })
    assert.is_true(sys.monotime() - t0 < 0.85) -- three 0.3 s requests at once
    assert.equal(0, nfailed)
    for i = 1, 5 do assert.is_true(res[i].deleted) end
    local log = f.log()
    assert.equal(3, #log)
    for _, e in ipairs(log) do
      assert.is_true(#e.keys <= 2)
      assert.is_true(e.md5_ok)
    end
    c:close()
  end)

  it("does not report keys missing from a DeleteObjects reply as deleted", function()
    f.script({ { delete_result = { omit = { "b" } } } })
    local c = f.client()
    local res, nfailed = c:delete_many({ "a", "b", "c" })
    assert.equal(1, nfailed)
    assert.is_true(res[1].deleted)
    assert.is_false(res[2].deleted)
    assert.equal("NotInReply", res[2].err.code)
    assert.is_true(res[3].deleted)
    c:close()
  end)

  it("reports per-key errors of a DeleteObjects reply with their codes", function()
    f.script({ { delete_result = { errors = { b = "InternalError", c = "AccessDenied" } } } })
    local c = f.client()
    local res, nfailed = c:delete_many({ "a", "b", "c" })
    assert.equal(2, nfailed)
    assert.is_true(res[1].deleted)
    -- a per-key code in a reply that succeeded is that key's (resclean.storage retries it alone)
    assert.same({ false, "InternalError", "item", 200 },
      { res[2].deleted, res[2].err.code, errors.classify(res[2].err), res[2].err.status })
    assert.same({ false, "AccessDenied", false },
      { res[3].deleted, res[3].err.code, errors.retryable(res[3].err) })
    assert.equal("no", res[3].err.message)
    c:close()
  end)

  it("in Quiet mode, counts keys the reply does not mention as deleted", function()
    f.script({ { delete_result = { omit = { "a", "c" }, errors = { b = "AccessDenied" } } } })
    local c = f.client()
    local res, nfailed = c:delete_many({ "a", "b", "c" }, { quiet = true })
    assert.equal(1, nfailed)
    assert.is_true(res[1].deleted)
    assert.equal("AccessDenied", res[2].err.code)
    assert.is_true(res[3].deleted)
    c:close()
  end)

  it("trusts no key of a DeleteObjects reply that names a key the request did not carry, Quiet or not", function()
    for _, quiet in ipairs({ true, false }) do
      f.script({ { status = 200, body = "<DeleteResult><Deleted><Key>a</Key></Deleted>"
        .. "<Deleted><Key>someone-else</Key></Deleted></DeleteResult>" } })
      local c = f.client({ max_attempts = 1 })
      local res, nfailed = c:delete_many({ "a", "b" }, { quiet = quiet })
      c:close()
      assert.equal(2, nfailed, "quiet " .. tostring(quiet))
      for i = 1, 2 do assert.equal("MalformedReply", res[i].err.code) end
    end
  end)

  it("trusts no key of a DeleteObjects reply that is HTML, truncated, keyless, empty, an Error or has a DTD",
    function()
      local c = f.client({ max_attempts = 1 })
      for _, reply in ipairs({
        { status = 200, body = "<html><body>Welcome to nginx</body></html>",
          headers = { ["Content-Type"] = "text/html" } },
        { status = 200, body = '<?xml version="1.0"?><DeleteResult><Deleted><Key>a</Key></Deleted><Deleted><Ke' },
        { delete_result = { nokey = true } },
        { status = 200, body = "" },
        { status = 200, body = xml_err("InternalError") },
        { status = 200, body = '<!DOCTYPE d [<!ENTITY x "a">]><DeleteResult><Deleted><Key>&x;</Key></Deleted>'
          .. "</DeleteResult>" },
        { status = 200, body = "not xml at all" },
      }) do
        f.script({ reply })
        local res, nfailed = c:delete_many({ "a", "b" })
        assert.equal(2, nfailed)
        for i = 1, 2 do
          assert.is_false(res[i].deleted)
          assert.equal("MalformedReply", res[i].err.code)
        end
      end
      c:close()
    end)

  it("gives an error, not a crash, for a reply larger than 32 MiB, announced or streamed", function()
    local c = f.client({ max_attempts = 3, timeout = 60 })
    for _, chunked in ipairs({ false, true }) do
      f.script({ { status = 200, body = ("x"):rep(1024 * 1024), ["repeat"] = 33, chunked = chunked } })
      local ok, err = c:get("k")
      assert.is_nil(ok)
      assert.equal("ReplyTooLarge", err.code)
      assert.is_false(errors.retryable(err))
      assert.equal(1, err.attempts)
      local _, lerr = c:list({})
      assert.equal("ReplyTooLarge", lerr.code)
    end
    -- just under the limit is fine
    f.script({ { status = 200, body = ("y"):rep(1024 * 1024), ["repeat"] = 32, chunked = true } })
    local body = assert(c:get("k"))
    assert.equal(32 * 1024 * 1024, #body)
    c:close()
  end)

  it("heads objects of any size: the reply limit is for bodies only", function()
    f.script({ { status = 200, length = 5 * 1024 * 1024 * 1024, headers = { ETag = '"abc"' } } })
    local c = f.client()
    local r = assert(c:head("big"))
    assert.is_true(r.exists)
    assert.equal(5 * 1024 * 1024 * 1024, r.size)
    assert.equal("abc", r.etag)
    c:close()
  end)

  it("rejects list replies that are malformed or truncated without a token", function()
    local c = f.client({ max_attempts = 1 })
    for _, body in ipairs({
      "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
      "<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>bad%zz</Key></Contents></ListBucketResult>",
      "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
      "<html>oops</html>",
      "<ListBucketResult><Contents><Key>a</Key>",
    }) do
      f.script({ { status = 200, body = body } })
      local ok, err = c:list({})
      assert.is_nil(ok)
      assert.equal("MalformedReply", err.code)
    end
    f.script({ { status = 200, body = "<ListBucketResult><EncodingType>url</EncodingType><IsTruncated>false"
      .. "</IsTruncated><Contents><Key>a%2Bb+c%25</Key><Size>3</Size></Contents></ListBucketResult>" } })
    local r = assert(c:list({}))
    assert.equal("a+b c%", r.keys[1].key) -- '+' is a space in S3's url encoding
    c:close()
  end)

  it("names a 502 HTML page by its status and retries it", function()
    f.script({ { status = 502, body = "<html>bad gateway</html>", headers = { ["Content-Type"] = "text/html" } } })
    local c = f.client({ max_attempts = 2 })
    local ok, err = c:list({})
    assert.is_nil(ok)
    assert.equal(502, err.status)
    assert.equal("BadGateway", err.code)
    assert.is_true(errors.retryable(err))
    assert.equal(2, err.attempts)
    assert.equal("fake-2", err.request_id)
    c:close()
  end)

  it("sends the session token and shows the trace hook only redacted credentials", function()
    f.script({ { status = 200, body = "" } })
    local rec = h.recorder()
    local c = f.client({ session_token = "tok-SECRET-123", trace = rec.fn })
    assert(c:head("k"))
    local sent = f.log()[1].headers
    assert.equal("tok-SECRET-123", sent["x-amz-security-token"])
    assert.matches("Signature=%x+$", sent.authorization)
    local seen = rec.calls[1].headers
    assert.equal("<redacted>", seen["x-amz-security-token"])
    local text = strings_of(rec.calls)
    assert.is_nil(text:find("tok-SECRET-123", 1, true))
    assert.is_nil(text:find("fake-secret-value", 1, true))
    assert.is_nil(text:find("AKFAKE", 1, true))
    assert.is_nil(text:find("Signature=%x"))
    assert.matches("x%-amz%-security%-token", seen.authorization) -- signed
    c:close()
  end)
end)

describe("resclean.s3 over TLS (scripted fake server)", function()
  local f, by_name -- a certificate for 127.0.0.1 only; by_name reaches it as "localhost"

  lazy_setup(function()
    f = h.fake_server({ tls = "127.0.0.1" })
    f.script({ { status = 200, body = "" } })
    by_name = (f.endpoint:gsub("127%.0%.0%.1", "localhost"))
  end)
  lazy_teardown(function()
    if f then f.stop() end
  end)

  it("verifies the server certificate by default", function()
    local c = f.client({ max_attempts = 3 })
    local ok, err = c:head("k")
    assert.is_nil(ok)
    assert.equal("tls", err.code)
    assert.is_nil(err.status)
    assert.is_false(errors.retryable(err))
    assert.equal(1, err.attempts)
    c:close()
  end)

  it("trusts the CA bundle given as ca_file, and still checks the name", function()
    local c = f.client({ ca_file = f.cert })
    assert.is_true(assert(c:head("k")).exists)
    c:close()
    local w = f.client({ endpoint = by_name, ca_file = f.cert, max_attempts = 1 })
    local ok, err = w:head("k")
    assert.is_nil(ok)
    assert.equal("tls", err.code)
    w:close()
  end)

  it("skips verification only when verify_tls=false", function()
    local c = f.client({ endpoint = by_name, verify_tls = false })
    assert.is_true(assert(c:head("k")).exists)
    c:close()
  end)
end)
