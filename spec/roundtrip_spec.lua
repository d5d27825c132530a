-- A randomized round trip of object keys on the real RGW: 2,000 random UTF-8 keys (ASCII
-- punctuation, accents, Greek and Cyrillic, CJK, emoji, combining marks, invisible
-- characters; 1 to 1,024 bytes; plus a fixed set of awkward ones) are put, listed, HEADed, read back and deleted with
-- resclean.s3. Each object's body is its own key, so a key that is encoded, signed or
-- decoded wrongly anywhere shows up as a missing, extra or mixed-up object.
-- RESCLEAN_SEED=N replays a run (the seed is in every failure message).
local fx = require("support.fixtures")

local N = 2000
local seed = tonumber(os.getenv("RESCLEAN_SEED") or "") or os.time()
math.randomseed(seed)

-- Code point ranges to draw from, with weights.
local RANGES = {
  { 0x20, 0x7E, 6 },       -- ASCII printable: space, % + ? # & = / \ " ' < > ~ and friends
  { 0xA0, 0x24F, 2 },      -- Latin-1 supplement and Latin extended
  { 0x300, 0x36F, 1 },     -- combining marks
  { 0x370, 0x4FF, 1 },     -- Greek, Cyrillic
  { 0x4E00, 0x9FFF, 2 },   -- CJK
  { 0x1F300, 0x1F64F, 1 }, -- emoji (4 bytes in UTF-8)
  { 0x200B, 0x200F, 1 },   -- zero-width and direction marks
  { 0xFEFF, 0xFEFF, 1 },   -- byte order mark
  { 0xFFFD, 0xFFFD, 1 },   -- replacement character
}
local TOTAL = 0
for _, r in ipairs(RANGES) do TOTAL = TOTAL + r[3] end

local function random_char()
  local pick = math.random(TOTAL)
  for _, r in ipairs(RANGES) do
    pick = pick - r[3]
    if pick <= 0 then return utf8.char(math.random(r[1], r[2])) end
  end
end

-- A random key of at most max bytes.
local function random_key(max)
  local len = math.random() < 0.05 and math.random(200, 400) or math.random(1, 40)
  local parts, bytes = {}, 0
  for _ = 1, len do
    local c = random_char()
    if bytes + #c > max then break end
    parts[#parts + 1] = c
    bytes = bytes + #c
  end
  if #parts == 0 then parts[1] = "k" end
  return table.concat(parts)
end

-- Keys a path normaliser, a URL parser or an XML writer gets wrong, always included: dot
-- segments, slashes, URL syntax, entities, control characters (sent as single DELETEs, as
-- XML 1.0 cannot carry them), the longest key S3 allows, in ASCII and in CJK.
local FIXED = { ".", "..", "./a", "a/../b", "a/./b", "../x", "a//b", "/leading", "trailing/", " spaced ", "%",
  "%2F", "a%b", "+", "a+b", "?x=1", "#frag", "a\\b", "~u", "*", "&amp;", "<Key>", "tab\tkey", "nl\nkey", "cr\rkey",
  "one\1key", "del\127key", ("k"):rep(1024), "a/" .. ("\u{4E2D}"):rep(340) }

local function keys_for(n)
  local keys, seen = table.move(FIXED, 1, #FIXED, 1, {}), {}
  for _, k in ipairs(keys) do seen[k] = true end
  while #keys < n do
    local k = random_key(1024)
    if not seen[k] then
      seen[k] = true
      keys[#keys + 1] = k
    end
  end
  return keys
end

local function show(k)
  return ("%q (%d bytes, seed %d)"):format(k, #k, seed)
end

describe("a round trip of 2,000 random UTF-8 keys on RGW", function()
  local client, keys

  setup(function()
    client = fx.bucket(fx.unique_bucket("roundtrip"))
    keys = keys_for(N)
  end)

  teardown(function()
    if client then
      pcall(function()
        client:delete_many(keys)
        client:delete_bucket()
      end)
      client:close()
    end
  end)

  it("puts every key, each object's body being its key", function()
    for _, k in ipairs(keys) do
      local res, err = client:put(k, k)
      assert(res, ("put %s: %s %s"):format(show(k), tostring(err and err.code), tostring(err and err.message)))
    end
  end)

  it("lists exactly those keys, each with its own size", function()
    local listed, token, n = {}, nil, 0
    repeat
      local page = fx.check(client:list({ continuation = token }))
      for _, e in ipairs(page.keys) do
        assert(listed[e.key] == nil, "listed twice: " .. show(e.key))
        listed[e.key] = e.size
        n = n + 1
      end
      token = page.next_continuation
    until not page.truncated
    for _, k in ipairs(keys) do
      assert(listed[k], "not listed: " .. show(k))
      assert(listed[k] == #k, ("listed with size %s: %s"):format(tostring(listed[k]), show(k)))
    end
    assert.are.equal(#keys, n)
  end)

  it("HEADs every key as existing, with its size, in parallel", function()
    local res, failed = client:head_many(keys, { concurrency = 16 })
    assert.are.equal(0, failed)
    for i, k in ipairs(keys) do
      assert.are.equal(k, res[i].key)
      assert(res[i].exists, "HEAD says missing: " .. show(k))
      assert(res[i].size == #k, ("HEAD size %s: %s"):format(tostring(res[i].size), show(k)))
    end
  end)

  it("reads back the body of a sample of keys: each object is the one its key names", function()
    for i = 1, #keys, 40 do
      local body = fx.check(client:get(keys[i]))
      assert(body == keys[i], "another object's body under " .. show(keys[i]))
    end
  end)

  it("deletes every key with delete_many, after which none is listed or HEADed", function()
    local res, failed = client:delete_many(keys)
    assert.are.equal(0, failed)
    for i, k in ipairs(keys) do
      assert(res[i].deleted, "not deleted: " .. show(k))
    end
    local page = fx.check(client:list({}))
    assert.are.equal(0, #page.keys, page.keys[1] and ("left over: " .. show(page.keys[1].key)))
    local heads, hfailed = client:head_many(keys, { concurrency = 16 })
    assert.are.equal(0, hfailed)
    for i, k in ipairs(keys) do
      assert(not heads[i].exists, "still there after delete: " .. show(k))
    end
  end)

  it("has a client that refuses nothing and retried nothing on the way", function()
    local st = client:stats()
    assert.is_true(st.requests >= 2 * N, "too few requests: " .. st.requests)
    assert.are.equal(0, st.retries)
  end)
end)

