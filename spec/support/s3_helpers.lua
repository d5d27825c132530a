-- Helpers for the resclean.s3 specs: a client on the harness's RGW, unique buckets,
-- a trace recorder, Content-MD5 recomputed outside resclean, and the scripted fake
-- server (spec/support/fake_s3.py) for failure modes a real server will not produce.
local s3 = require("resclean.s3")
local sys = require("resclean.sys")
local cjson = require("cjson")
local helpers = require("support.helpers")

local M = {}

local REQUIRED = { "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION" }

-- The harness's S3 settings; a missing one is an error (specs fail, never skip).
function M.env()
  local e, missing = {}, {}
  for _, name in ipairs(REQUIRED) do
    e[name] = sys.getenv(name)
    if not e[name] or e[name] == "" then missing[#missing + 1] = name end
  end
  if #missing > 0 then
    error("S3 specs need " .. table.concat(missing, ", ") ..
      " (run them under spec/support/with-stack.sh)", 2)
  end
  return e
end

-- A bucket name no other spec file or run uses (3..63 characters, lower case).
function M.unique_bucket(tag)
  local n = math.floor((sys.time() * 1000) % 1e9)
  return ("rc-%s-%d-%d"):format(tag, sys.pid(), n):sub(1, 63)
end

-- Options for s3.client on the harness's RGW, with extra overrides.
function M.options(bucket, extra)
  local e = M.env()
  local o = {
    endpoint = e.AWS_ENDPOINT_URL_S3,
    region = e.AWS_REGION,
    access_key = e.AWS_ACCESS_KEY_ID,
    secret_key = e.AWS_SECRET_ACCESS_KEY,
    bucket = bucket,
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function M.client(bucket, extra)
  return s3.client(M.options(bucket, extra))
end

-- A trace hook that records every request sent: rec.fn is the hook, rec.calls the
-- requests {method, url, headers, body, attempt}.
function M.recorder()
  local rec = { calls = {} }
  function rec.fn(method, url, headers, body, attempt)
    rec.calls[#rec.calls + 1] = { method = method, url = url, headers = headers, body = body, attempt = attempt }
  end
  function rec.reset() rec.calls = {} end
  function rec.count(pred)
    local n = 0
    for _, c in ipairs(rec.calls) do
      if not pred or pred(c) then n = n + 1 end
    end
    return n
  end
  return rec
end

function M.is_delete_objects(call)
  return call.method == "POST" and call.url:match("%?delete=?$") ~= nil
end

-- base64(md5(s)) computed by coreutils, not by resclean.
function M.md5_base64(s)
  local path = helpers.tmpfile(s, "body")
  local p = assert(io.popen("md5sum " .. helpers.q(path)))
  local hex = p:read("l"):match("^(%x+)")
  p:close()
  local bytes = hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #bytes, 3 do
    local a, b, c = bytes:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for j = 3, 0, -1 do
      local idx = (n // (64 ^ j)) % 64
      chars[#chars + 1] = b64:sub(idx + 1, idx + 1)
    end
    if not b then chars[3], chars[4] = "=", "=" elseif not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

-- The <Key> values of a DeleteObjects body, unescaped (entities S3 uses).
function M.body_keys(body)
  local keys = {}
  for k in body:gmatch("<Key>(.-)</Key>") do
    keys[#keys + 1] = k:gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&quot;", '"'):gsub("&apos;", "'")
      :gsub("&amp;", "&")
  end
  return keys
end

-- Every key of the bucket (all pages).
function M.list_all(c, prefix)
  local keys, token = {}, nil
  repeat
    local page = assert(c:list({ prefix = prefix, continuation = token }))
    for _, e in ipairs(page.keys) do keys[#keys + 1] = e.key end
    token = page.next_continuation
  until not page.truncated
  return keys
end

-- The set of keys the bucket holds now: { key = true }.
function M.key_set(c, prefix)
  local set = {}
  for _, k in ipairs(M.list_all(c, prefix)) do set[k] = true end
  return set
end

-- Empty the bucket and delete it (best effort: for teardown).
function M.destroy_bucket(c)
  pcall(function()
    c:delete_bucket_policy()
    local keys = M.list_all(c)
    if #keys > 0 then c:delete_many(keys) end
    c:delete_bucket()
  end)
end

-- Put n keys prefix..i ("%05d"), in parallel with curl would need signing: use the
-- client, sequentially. Returns the keys.
function M.put_many(c, prefix, n)
  local keys = {}
  for i = 1, n do
    local k = ("%s%05d"):format(prefix, i)
    assert(c:put(k, "x"))
    keys[i] = k
  end
  return keys
end

-- ------------------------------------------------------------------ fake server

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/support"

-- A self-signed certificate for name (a DNS name or an IP address): cert, key paths.
function M.self_signed(dir, name)
  local san = name:match("^[%d%.]+$") and ("IP:" .. name) or ("DNS:" .. name)
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  assert(os.execute(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
    .. "-subj /CN=%s -addext subjectAltName=%s -keyout %s -out %s >/dev/null 2>&1")
    :format(name, san, helpers.q(key), helpers.q(cert))))
  return cert, key
end

-- Start fake_s3.py: {endpoint, config(replies by kind), script(list of replies), log(),
-- count(kind), clear(), stop(), client(opts)}. It answers by request kind until script() is
-- called (see fake_s3.py). opts.tls = a name: serve HTTPS with a self-signed certificate for
-- that name (f.cert).
function M.fake_server(opts)
  opts = opts or {}
  local f, args = {}, {}
  if opts.tls then
    local cert, key = M.self_signed(helpers.tmpdir(), opts.tls)
    f.cert, args = cert, { cert, key }
  end
  local server = helpers.start_server(here .. "/fake_s3.py", args)
  f.pid, f.port = server.pid, server.port
  f.endpoint = ("%s://127.0.0.1:%d"):format(opts.tls and "https" or "http", f.port)
  local function control(method, path, body)
    local p = assert(io.popen(("curl -sS -f -k -X %s --data-binary @%s %s%s"):format(method,
      helpers.q(helpers.tmpfile(body or "", "control.json")), f.endpoint, path)))
    local out = p:read("a")
    assert(p:close(), "fake S3 control request failed: " .. method .. " " .. path)
    return out
  end
  function f.config(replies) control("PUT", "/__config", cjson.encode(replies or {})) end
  function f.script(replies) control("PUT", "/__script", cjson.encode(replies)) end
  function f.log() return cjson.decode(control("GET", "/__log")) end
  function f.clear() control("DELETE", "/__log") end
  function f.stop() os.execute(("kill %d 2>/dev/null"):format(f.pid)) end
  -- Requests of one kind (list, head, delete_objects, delete, put, other) received so far.
  function f.count(kind)
    local n = 0
    for _, r in ipairs(f.log()) do if r.kind == kind then n = n + 1 end end
    return n
  end
  -- Client options for this server (fast retries), extra fields on top.
  function f.options(extra)
    local o = {
      endpoint = f.endpoint, region = "us-east-1", access_key = "AKFAKE", secret_key = "fake-secret-value",
      bucket = "fake", retry_base_seconds = 0.01, timeout = 5,
    }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end
  function f.client(extra) return s3.client(f.options(extra)) end
  -- The sweep's storage adapter (resclean.storage) on this server.
  function f.store(extra) return require("resclean.storage").new(f.options(extra)) end
  return f
end

return M
