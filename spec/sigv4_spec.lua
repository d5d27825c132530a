-- resclean.sigv4 against the AWS Signature V4 known answers in ../shared/testdata/sigv4:
-- aws-c-auth's v4 suite (header signing and presigning, honouring context.json), the classic
-- botocore suite and the worked examples of the Amazon S3 API Reference, byte for byte.
local sigv4 = require("resclean.sigv4")
local cases = require("support.sigv4_cases")
local cjson = require("cjson")

local ROOT = cases.root()
local EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

-- Cases whose expected canonical URI is the *normalised* path (dot segments removed, slashes
-- collapsed). They hold for generic services; S3 never normalises, so they are not run with S3
-- rules (the README says so; their *-unnormalized twins are the S3 rule).
local NORMALISING_AWS_C_AUTH = {
  ["get-relative-normalized"] = true,
  ["get-relative-relative-normalized"] = true,
  ["get-slash-dot-slash-normalized"] = true,
  ["get-slash-normalized"] = true,
  ["get-slash-pointless-dot-normalized"] = true,
  ["get-slashes-normalized"] = true,
}
local NORMALISING_BOTOCORE = {
  ["normalize-path/get-relative"] = true,
  ["normalize-path/get-relative-relative"] = true,
  ["normalize-path/get-slash"] = true,
  ["normalize-path/get-slash-dot-slash"] = true,
  ["normalize-path/get-slash-pointless-dot"] = true,
  ["normalize-path/get-slashes"] = true,
}

-- A copy of t, with the fields of extra set and the field drop removed.
local function copy(t, extra, drop)
  local out = {}
  for k, v in pairs(t) do
    out[k] = v
  end
  for k, v in pairs(extra or {}) do
    out[k] = v
  end
  if drop then
    out[drop] = nil
  end
  return out
end

-- Signing options for a suite's parsed request, with fields (credentials, context) added.
local function from_request(req, fields)
  return copy({ method = req.method, query = req.query, headers = req.headers, body = req.body }, fields)
end

-- Signing options for an example of the S3 API Reference, with fields added.
local function from_example(ex, fields)
  return copy({
    method = ex.method,
    path = ex.path,
    access_key = ex.access_key,
    secret_key = ex.secret_key,
    region = ex.region,
    service = ex.service,
    time = ex.date,
    s3 = true,
  }, fields)
end

-- How a suite case is run: with generic rules (path, the request line's path as sent, is
-- encoded once more for the canonical URI) and, unless the case expects a normalised path,
-- with S3 rules (the same bytes as the raw key path).
local function modes(base, path, normalising, normalize)
  local out = { { label = "generic", opts = copy(base, { path = path, path_encoded = true, normalize = normalize }) } }
  if not normalising then
    out[2] = { label = "S3 rules", opts = copy(base, { path = cases.percent_decode(path), s3 = true }) }
  end
  return out
end

-- The request as sent after signing: the caller's headers, what sigv4 says to add, Authorization.
local function sent_headers(given, res)
  local out = {}
  for _, h in ipairs(given) do
    out[#out + 1] = h
  end
  for _, h in ipairs(res.add_headers) do
    out[#out + 1] = h
  end
  if res.authorization then
    out[#out + 1] = { "Authorization", res.authorization }
  end
  return out
end

local function without(headers, name)
  local out = {}
  for _, h in ipairs(headers) do
    if h[1]:lower() ~= name then
      out[#out + 1] = h
    end
  end
  return out
end

describe("resclean.sigv4", function()
  it("finds the test vectors (set RESCLEAN_SIGV4_TESTDATA to move them)", function()
    assert.is_true(cases.exists(ROOT .. "/README.md"), "no test data at " .. ROOT)
  end)

  describe("against the aws-c-auth v4 suite", function()
    local dir = ROOT .. "/aws-c-auth-v4"
    local names = cases.subdirs(dir)

    it("has all 38 cases", function()
      assert.are.equal(38, #names)
      for name in pairs(NORMALISING_AWS_C_AUTH) do
        assert.is_true(cases.exists(dir .. "/" .. name .. "/request.txt"), name)
      end
    end)

    for _, name in ipairs(names) do
      local cdir = dir .. "/" .. name
      local ctx = cases.json(cdir .. "/context.json")
      local req = cases.parse_request(cases.must_read(cdir .. "/request.txt"))
      local function expected(variant, what)
        return cases.must_read(("%s/%s-%s.txt"):format(cdir, variant, what))
      end

      local base = from_request(req, {
        access_key = ctx.credentials.access_key_id,
        secret_key = ctx.credentials.secret_access_key,
        session_token = ctx.credentials.token,
        region = ctx.region,
        service = ctx.service,
        time = ctx.timestamp,
        sign_body = ctx.sign_body,
        omit_session_token = ctx.omit_session_token == true,
      })

      for _, mode in ipairs(modes(base, req.path, NORMALISING_AWS_C_AUTH[name], ctx.normalize)) do
        it(("signs %s in the Authorization header (%s)"):format(name, mode.label), function()
          local res = sigv4.sign(mode.opts)
          assert.are.equal(expected("header", "canonical-request"), res.canonical_request)
          assert.are.equal(expected("header", "string-to-sign"), res.string_to_sign)
          assert.are.equal(expected("header", "signature"), res.signature)
          assert.is_nil(res.authorization:find("\n"))
          -- The signed request, compared as a set of headers (the library orders them its own way).
          local want = cases.parse_request(expected("header", "signed-request"))
          assert.are.equal(req.target, want.target)
          assert.are.same(cases.header_set(want.headers), cases.header_set(sent_headers(req.headers, res)))
          assert.are.equal(req.body, want.body)
        end)

        it(("presigns %s (%s)"):format(name, mode.label), function()
          local opts = copy(mode.opts)
          opts.expires = ctx.expiration_in_seconds
          local res = sigv4.sign(opts)
          assert.are.equal(expected("query", "canonical-request"), res.canonical_request)
          assert.are.equal(expected("query", "string-to-sign"), res.string_to_sign)
          assert.are.equal(expected("query", "signature"), res.signature)
          assert.is_nil(res.authorization)
          assert.are.same({}, res.add_headers)
          local want = cases.parse_request(expected("query", "signed-request"))
          assert.are.same(cases.query_set(want.query), cases.query_set(cases.parse_query(res.query)))
          assert.are.same(cases.header_set(want.headers), cases.header_set(req.headers))
          assert.are.equal(res.signature, res.query:match("X%-Amz%-Signature=(%x+)"))
        end)
      end
    end
  end)

  describe("against the botocore aws4 test suite", function()
    local dir = ROOT .. "/botocore-aws4-testsuite"
    local list = cases.botocore_cases(dir)

    it("has all 34 cases", function()
      assert.are.equal(34, #list)
      local seen = {}
      for _, c in ipairs(list) do
        seen[c.rel] = true
      end
      for rel in pairs(NORMALISING_BOTOCORE) do
        assert.is_true(seen[rel], rel)
      end
    end)

    for _, c in ipairs(list) do
      local req = cases.parse_request(cases.must_read(c.base .. ".req"))
      local sreq = cases.parse_request(cases.must_read(c.base .. ".sreq"))
      -- The suite signs with a session token that its .req leaves out (the .sreq shows it);
      -- post-sts-header-after adds it after signing (post-sts-token/readme.txt).
      local token
      if not cases.header(req, "x-amz-security-token") then
        token = cases.header(sreq, "x-amz-security-token")
      end
      local base = from_request(req, {
        access_key = "AKIDEXAMPLE",
        secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token = token,
        omit_session_token = c.name == "post-sts-header-after",
        region = "us-east-1",
        service = "service",
        time = "20150830T123600Z",
      })

      for _, mode in ipairs(modes(base, req.path, NORMALISING_BOTOCORE[c.rel])) do
        it(("signs %s (%s)"):format(c.rel, mode.label), function()
          local res = sigv4.sign(mode.opts)
          assert.are.equal(cases.must_read(c.base .. ".creq"), res.canonical_request)
          assert.are.equal(cases.must_read(c.base .. ".sts"), res.string_to_sign)
          local authz = cases.must_read(c.base .. ".authz")
          assert.are.equal(authz, res.authorization)
          assert.are.equal(authz:match("Signature=(%x+)$"), res.signature)
          -- .sreq as a set of headers; its Authorization is checked through .authz above (the
          -- suite's get-vanilla-with-session-token.sreq carries a signature that matches nothing).
          local sent = without(sent_headers(req.headers, res), "authorization")
          assert.are.same(cases.header_set(without(sreq.headers, "authorization")), cases.header_set(sent))
        end)
      end
    end
  end)

  describe("against the Amazon S3 API Reference examples", function()
    local doc = cases.json(ROOT .. "/s3-doc-examples.json")
    local seed_signature

    it("has every example kind", function()
      local kinds = {}
      for _, ex in ipairs(doc.examples) do
        kinds[ex.kind] = (kinds[ex.kind] or 0) + 1
      end
      assert.are.same({ ["authorization-header"] = 5, ["presigned-url"] = 1, ["chunk-signatures"] = 1 }, kinds)
    end)

    for _, ex in ipairs(doc.examples) do
      if ex.kind == "authorization-header" then
        it(("signs %s"):format(ex.name), function()
          local opts = from_example(ex, { query = ex.query, headers = ex.headers, payload_hash = ex.payload_sha256 })
          local res = sigv4.sign(opts)
          assert.are.equal(ex.canonical_uri, res.path)
          assert.are.equal(ex.expected_canonical_request, res.canonical_request)
          assert.are.equal(ex.expected_string_to_sign, res.string_to_sign)
          assert.are.equal(ex.expected_signed_headers, res.signed_headers)
          assert.are.equal(ex.expected_signature, res.signature)
          -- The S3 documentation writes "," where other SDKs write ", "; both are accepted.
          assert.are.equal(ex.expected_authorization, (res.authorization:gsub(", ", ",")))
          assert.are.same({}, res.add_headers) -- x-amz-date was given
          if ex.payload_text then
            opts.payload_hash, opts.body = nil, ex.payload_text
            assert.are.equal(ex.expected_signature, sigv4.sign(opts).signature)
          end
          if ex.name == "chunked-put-seed" then
            seed_signature = res.signature
          end
        end)
      elseif ex.kind == "presigned-url" then
        it(("presigns %s"):format(ex.name), function()
          assert.are.equal(cjson.null, ex.session_token)
          local query = {}
          for _, kv in ipairs(ex.extra_query) do
            query[#query + 1] = kv
          end
          local headers = { { "host", ex.host } }
          for _, kv in ipairs(ex.extra_signed_headers) do
            headers[#headers + 1] = kv
          end
          local res = sigv4.sign(from_example(ex, {
            query = query,
            headers = headers,
            payload_hash = ex.payload,
            expires = ex.expires,
          }))
          assert.are.equal(ex.canonical_uri, res.path)
          assert.are.equal(ex.expected_canonical_request, res.canonical_request)
          assert.are.equal(ex.expected_string_to_sign, res.string_to_sign)
          assert.are.equal(ex.expected_signature, res.signature)
          assert.are.equal(ex.expected_url_canonical_order, "https://" .. ex.host .. res.path .. "?" .. res.query)
        end)
      elseif ex.kind == "chunk-signatures" then
        local seed
        for _, other in ipairs(doc.examples) do
          if other.name == "chunked-put-seed" then
            seed = other
          end
        end
        for i, chunk in ipairs(ex.chunks) do
          it(("signs chunk %d of %s"):format(i, ex.name), function()
            local n, ch = chunk.chunk_bytes:match("^(%d+) x '(.)'$")
            local data = string.rep(ch, tonumber(n))
            assert.are.equal(chunk.chunk_sha256, sigv4.sha256_hex(data))
            if i == 1 then
              assert.are.equal(seed.expected_signature, chunk.previous_signature)
              if seed_signature then
                assert.are.equal(seed_signature, chunk.previous_signature)
              end
            else
              assert.are.equal(ex.chunks[i - 1].expected_signature, chunk.previous_signature)
            end
            -- The chunk given as its data or as its hash.
            local function sign_chunk(given)
              return sigv4.sign_chunk(copy({
                secret_key = seed.secret_key,
                region = seed.region,
                service = seed.service,
                time = seed.date,
                previous_signature = chunk.previous_signature,
              }, given))
            end
            local res = sign_chunk({ chunk = data })
            assert.are.equal(chunk.expected_string_to_sign, res.string_to_sign)
            assert.are.equal(chunk.expected_signature, res.signature)
            local by_hash = sign_chunk({ chunk_sha256 = chunk.chunk_sha256 })
            assert.are.equal(chunk.expected_signature, by_hash.signature)
          end)
        end
      end
    end
  end)

  describe("URI encoding", function()
    local function expect(b, keep_slash)
      local c = string.char(b)
      if c:match("^[A-Za-z0-9%-%._~]$") or (keep_slash and c == "/") then
        return c
      end
      return ("%%%02X"):format(b)
    end

    it("keeps exactly A-Za-z0-9-._~ and writes every other byte as upper-case %XX", function()
      local kept = 0
      for b = 0, 255 do
        local got = sigv4.uri_encode(string.char(b))
        assert.are.equal(expect(b, false), got, ("byte %d"):format(b))
        if #got == 1 then
          kept = kept + 1
        end
      end
      assert.are.equal(66, kept)
    end)

    it("keeps '/' only when asked (paths)", function()
      for b = 0, 255 do
        assert.are.equal(expect(b, true), sigv4.uri_encode(string.char(b), true), ("byte %d"):format(b))
      end
      assert.are.equal("%2F", sigv4.uri_encode("/", false))
    end)

    it("encodes a string of all 256 byte values, NUL included, byte by byte", function()
      local all, want = {}, {}
      for b = 0, 255 do
        all[#all + 1] = string.char(b)
        want[#want + 1] = expect(b, false)
      end
      assert.are.equal(table.concat(want), sigv4.uri_encode(table.concat(all)))
      assert.are.equal("", sigv4.uri_encode(""))
    end)

    local function sign(extra)
      local opts = {
        method = "GET",
        headers = { { "host", "example.com" } },
        access_key = "AK",
        secret_key = "SK",
        region = "us-east-1",
        service = "s3",
        time = 0,
      }
      for k, v in pairs(extra) do
        opts[k] = v
      end
      return sigv4.sign(opts)
    end

    it("encodes every byte of an S3 key once, keeping '/', on the wire and in the canonical URI", function()
      local raw, want = { "/" }, { "/" }
      for b = 1, 255 do
        raw[#raw + 1] = string.char(b)
        want[#want + 1] = expect(b, true)
      end
      local res = sign({ path = table.concat(raw), s3 = true })
      assert.are.equal(table.concat(want), res.path)
      assert.are.equal(table.concat(want), res.canonical_request:match("^GET\n([^\n]*)\n"))
    end)

    it("does not normalise S3 keys (a//b/../c stays as it is)", function()
      local res = sign({ path = "/bucket/a//b/../c/./d", s3 = true })
      assert.are.equal("/bucket/a//b/../c/./d", res.canonical_request:match("^GET\n([^\n]*)\n"))
    end)

    it("encodes raw paths twice for generic services and normalises them", function()
      local res = sign({ path = "/a b/./c//../d%", service = "service" })
      assert.are.equal("/a%20b/./c//../d%25", res.path)
      assert.are.equal("/a%2520b/d%2525", res.canonical_request:match("^GET\n([^\n]*)\n"))
    end)

    it("encodes every byte of query keys and values, sorting by encoded key then value", function()
      local q = {}
      for b = 255, 1, -1 do
        q[#q + 1] = { string.char(b), string.char(b) }
      end
      q[#q + 1] = { "k", "b" }
      q[#q + 1] = { "k", "a" }
      local res = sign({ query = q })
      local parts = {}
      for b = 1, 255 do
        local e = expect(b, false)
        parts[#parts + 1] = { e, e .. "=" .. e }
      end
      parts[#parts + 1] = { "k", "k=a" }
      parts[#parts + 1] = { "k", "k=b" }
      table.sort(parts, function(x, y) return x[2] < y[2] end)
      local want = {}
      for i, p in ipairs(parts) do
        want[i] = p[2]
      end
      assert.are.equal(table.concat(want, "&"), res.query)
      assert.are.equal(res.query, res.canonical_request:match("^GET\n[^\n]*\n([^\n]*)\n"))
    end)
  end)

  describe("behaviour", function()
    local base = {
      method = "GET",
      path = "/",
      headers = { { "Host", "example.amazonaws.com" } },
      access_key = "AKIDEXAMPLE",
      secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
      region = "us-east-1",
      service = "service",
      time = "20150830T123600Z",
    }
    local function with(extra)
      return copy(base, extra)
    end

    it("hashes and MACs like the SHA-256 and RFC 4231 vectors", function()
      assert.are.equal(EMPTY_SHA256, sigv4.sha256_hex(""))
      assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sigv4.sha256_hex("abc"))
      local mac = sigv4.hmac_sha256("Jefe", "what do ya want for nothing?")
      assert.are.equal(32, #mac)
      assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        (mac:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)))
    end)

    it("takes the time as epoch seconds or as either UTC string form", function()
      local a = sigv4.sign(with({ time = 1440938160 }))
      local b = sigv4.sign(with({ time = "2015-08-30T12:36:00Z" }))
      local c = sigv4.sign(base)
      assert.are.equal("20150830T123600Z", a.amz_date)
      assert.are.equal(a.signature, b.signature)
      assert.are.equal(a.signature, c.signature)
      assert.are.equal("20150830/us-east-1/service/aws4_request", a.credential_scope)
    end)

    it("accepts query and headers as maps as well as lists of pairs", function()
      local a = sigv4.sign(with({ query = { { "max-keys", 2 }, { "prefix", "J" } } }))
      local b = sigv4.sign(with({
        query = { prefix = "J", ["max-keys"] = 2 },
        headers = { host = "example.amazonaws.com" },
      }))
      assert.are.equal("max-keys=2&prefix=J", a.query)
      assert.are.equal(a.canonical_request, b.canonical_request)
      assert.are.equal(a.signature, b.signature)
    end)

    it("signs an empty payload when neither body nor payload_hash is given", function()
      local a = sigv4.sign(base)
      assert.are.equal(EMPTY_SHA256, a.canonical_request:match("\n(%x+)$"))
      assert.are.equal(a.signature, sigv4.sign(with({ body = "" })).signature)
      assert.are.equal(a.signature, sigv4.sign(with({ payload_hash = EMPTY_SHA256 })).signature)
    end)

    it("adds x-amz-date, the signed payload hash and the token for header signing", function()
      local res = sigv4.sign(with({ session_token = "TOKEN", sign_body = true, body = "x" }))
      assert.are.same({
        { "x-amz-date", "20150830T123600Z" },
        { "x-amz-content-sha256", sigv4.sha256_hex("x") },
        { "x-amz-security-token", "TOKEN" },
      }, res.add_headers)
      assert.are.equal("host;x-amz-content-sha256;x-amz-date;x-amz-security-token", res.signed_headers)
    end)

    it("sends but does not sign the token with omit_session_token", function()
      local res = sigv4.sign(with({ session_token = "TOKEN", omit_session_token = true }))
      assert.are.same({ { "x-amz-date", "20150830T123600Z" }, { "x-amz-security-token", "TOKEN" } }, res.add_headers)
      assert.are.equal("host;x-amz-date", res.signed_headers)
      local q = sigv4.sign(with({ session_token = "a/b", omit_session_token = true, expires = 60 }))
      assert.is_nil(q.canonical_request:find("Security", 1, true))
      assert.is_truthy(q.query:find("&X-Amz-Security-Token=a%2Fb", 1, true))
    end)

    it("does not add what the caller already gave (any case)", function()
      local res = sigv4.sign(with({
        session_token = "TOKEN",
        headers = { { "Host", "h" }, { "X-Amz-Date", "20150830T123600Z" }, { "X-AMZ-Security-Token", "TOKEN" } },
      }))
      assert.are.same({}, res.add_headers)
      assert.are.equal("host;x-amz-date;x-amz-security-token", res.signed_headers)
    end)

    it("presigns with the X-Amz-* parameters and leaves the Authorization header out", function()
      local res = sigv4.sign(with({ expires = 900, s3 = true, payload_hash = "UNSIGNED-PAYLOAD",
        path = "/bucket/a b+c", query = { { "versionId", "1" } } }))
      assert.is_nil(res.authorization)
      assert.are.equal("/bucket/a%20b%2Bc", res.path)
      local q = cases.parse_query(res.query)
      assert.are.same({
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request",
        "X-Amz-Date=20150830T123600Z",
        "X-Amz-Expires=900",
        "X-Amz-Signature=" .. res.signature,
        "X-Amz-SignedHeaders=host",
        "versionId=1",
      }, cases.query_set(q))
    end)

    it("never puts the secret key in what it returns", function()
      local res = sigv4.sign(with({ expires = 60 }))
      local h = sigv4.sign(base)
      for _, r in ipairs({ res, h }) do
        for _, v in pairs(r) do
          if type(v) == "string" then
            assert.is_nil(v:find(base.secret_key, 1, true))
          end
        end
      end
    end)
  end)

  describe("misuse", function()
    local base = {
      method = "GET",
      path = "/",
      headers = { { "host", "h" } },
      access_key = "AK",
      secret_key = "SK",
      region = "r",
      service = "s",
      time = 0,
    }
    local function with(extra, drop)
      return copy(base, extra, drop)
    end
    local function raises(pattern, opts)
      assert.error_matches(function() sigv4.sign(opts) end, pattern, 1, true)
    end

    it("raises for a missing or malformed required field, naming it", function()
      assert.has_no.errors(function() sigv4.sign(base) end)
      for _, f in ipairs({ "method", "access_key", "secret_key", "region", "service" }) do
        raises("field '" .. f .. "'", with({}, f))
        raises("field '" .. f .. "'", with({ [f] = 1 }))
        raises("field '" .. f .. "'", with({ [f] = "" }))
      end
      raises("field 'method'", with({ method = "get" }))
      raises("field 'path'", with({ path = "bucket/key" }))
      raises("field 'path'", with({ path = false }))
      raises("field 'headers'", with({}, "headers"))
      raises("field 'headers'", with({ headers = { { "x-other", "1" } } }))
      raises("field 'headers'", with({ headers = "host: h" }))
    end)

    it("raises for bad headers and query entries", function()
      raises("field 'headers'", with({ headers = { { "host", "h" }, { "x-a", "1\r\nx-b: 2" } } }))
      raises("field 'headers'", with({ headers = { { "host", "h" }, { "x a", "1" } } }))
      raises("field 'headers'", with({ headers = { { "host", "h" }, "x-a: 1" } }))
      raises("field 'headers'", with({ headers = { { "host", "h" }, { "x-a", {} } } }))
      raises("field 'query'", with({ query = { { {}, "v" } } }))
      raises("field 'query'", with({ query = { [true] = "v" } }))
      raises("field 'query'", with({ query = 5 }))
      -- the C API takes C strings: a NUL byte is refused rather than silently cutting the string
      raises("field 'query'", with({ query = { { "k\0x", "v" } } }))
      raises("field 'headers'", with({ headers = { { "host", "h\0x" } } }))
      raises("field 'path'", with({ path = "/a\0b" }))
    end)

    it("raises for a bad time, expiry, payload or flag", function()
      raises("field 'time'", with({ time = "2015-08-30 12:36:00" }))
      raises("field 'time'", with({ time = "20150230T000000Z" }))
      raises("field 'time'", with({ time = 1.5 }))
      raises("field 'time'", with({ time = -1 }))
      raises("field 'time'", with({ time = {} }))
      raises("field 'expires'", with({ expires = 0 }))
      raises("field 'expires'", with({ expires = 604801 }))
      raises("field 'expires'", with({ expires = "60" }))
      raises("field 'body'", with({ body = "x", payload_hash = EMPTY_SHA256 }))
      raises("field 'payload_hash'", with({ payload_hash = "" }))
      raises("field 's3'", with({ s3 = "yes" }))
      raises("field 'normalize'", with({ s3 = true, normalize = true }))
      raises("field 'session_token'", with({ session_token = 5 }))
    end)

    it("raises for wrong argument types to the helpers", function()
      assert.has_error(function() sigv4.sign() end)
      assert.has_error(function() sigv4.sign("GET") end)
      assert.has_error(function() sigv4.sha256_hex() end)
      assert.has_error(function() sigv4.sha256_hex({}) end)
      assert.has_error(function() sigv4.hmac_sha256("k") end)
      assert.has_error(function() sigv4.uri_encode(nil) end)
      assert.has_error(function() sigv4.uri_encode("a", "yes") end)
      assert.error_matches(function() sigv4.sign_chunk({ secret_key = "s", region = "r", service = "s",
        time = 0, previous_signature = "p" }) end, "field 'chunk'", 1, true)
    end)
  end)
end)
