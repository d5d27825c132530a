-- What fuzzing found (spec/fuzz), kept as regressions: each input is replayed through the real
-- resclean.s3 client against a scripted server on loopback.
--  * A DeleteObjects reply that does not say a key was deleted must never make delete_many
--    report it deleted: the sweep deletes the row of every key reported deleted, so a wrong
--    "deleted" leaves an object without its row.
--  * A request for a key must name that key: a shorter one (cut at a NUL byte) is another
--    object, which a DELETE would remove.
local fx = require("support.fixtures")
local h = require("support.helpers")
local s3 = require("resclean.s3")
local s3h = require("support.s3_helpers")

local sigv4 = require("resclean.sigv4")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local ROOT = here .. "/fuzz/regressions"
local DIR = ROOT .. "/delete_result"

-- The keys delete_result_fuzz.c always asks for, besides those of the input's first line.
local FIXED_KEYS = { "a", "b", "a b", "x&y", "\u{FC}", "0f8fad5b-d9cb-469f-a165-70867728950e", "k/../k", "A" }

local function inputs(dir)
  local p = assert(io.popen("ls " .. h.q(dir)))
  local names = {}
  for name in p:lines() do names[#names + 1] = name end
  p:close()
  assert(#names > 0, "no regression inputs in " .. dir)
  return names
end

-- keys (line one, split on '|', plus the fixed ones), body (the rest).
local function parse(data)
  local line, body = data:match("^([^\n]*)\n(.*)$")
  assert(line, "a regression input starts with a line of keys")
  local keys, seen = {}, {}
  local function add(k)
    if k ~= "" and utf8.len(k) and not k:find("%c") and not seen[k] then
      seen[k] = true
      keys[#keys + 1] = k
    end
  end
  for _, k in ipairs(FIXED_KEYS) do add(k) end
  for k in (line .. "|"):gmatch("([^|]*)|") do add(k) end
  return keys, body
end

-- The scripted server and a client on it, for one describe block.
local function start_fake()
  local fake = s3h.fake_server()
  local client = assert(s3.client({ endpoint = fake.endpoint, access_key = "AKFAKE", secret_key = "fake-secret",
    bucket = "fuzz", max_attempts = 1 }))
  return fake, client
end

local function stop_fake(fake, client)
  if client then client:close() end
  if fake then fake.stop() end
end

describe("fuzz regressions: DeleteObjects replies", function()
  local fake, client

  setup(function() fake, client = start_fake() end)
  teardown(function() stop_fake(fake, client) end)

  it("has a replay that can tell: a well-formed reply does delete its keys", function()
    fake.config({ delete_objects = { status = 200, echo = true } })
    local res, failed = client:delete_many({ "a", "b" })
    assert.are.equal(0, failed)
    assert.is_true(res[1].deleted and res[2].deleted)
  end)

  for _, name in ipairs(inputs(DIR)) do
    it("reports no key deleted for the malformed reply " .. name, function()
      local keys, body = parse(h.readall(DIR .. "/" .. name))
      fake.config({ delete_objects = { status = 200, body_file = h.tmpfile(body, "reply.xml") } })
      fake.clear()
      local res = client:delete_many(keys)
      assert.are.equal(1, fake.count("delete_objects"))
      for i, k in ipairs(keys) do
        assert.are.equal(k, res[i].key)
        assert.is_false(res[i].deleted, ("key %q reported deleted"):format(k))
        assert.is_table(res[i].err)
      end
    end)
  end
end)

describe("fuzz regressions: object keys in requests", function()
  local fake, client

  setup(function() fake, client = start_fake() end)
  teardown(function() stop_fake(fake, client) end)

  for _, name in ipairs(inputs(ROOT .. "/s3_request")) do
    it("names exactly the key " .. name .. " in HEAD, DELETE and presigned URLs", function()
      local key = h.readall(ROOT .. "/s3_request/" .. name)
      local want = "/fuzz/" .. sigv4.uri_encode(key, true)
      fake.clear()
      client:head(key)
      client:delete(key)
      local log = fake.log()
      assert.are.equal(2, #log)
      for _, r in ipairs(log) do assert.are.equal(want, r.path, r.method .. " names another key") end
      local url = fx.check(client:presign("DELETE", key, 60))
      assert.are.equal(fake.endpoint .. want, url:match("^[^?]*"))
    end)
  end
end)
