-- Structured logging: JSON lines with fixed fields, levels, redaction.
local cjson = require("cjson")
local h = require("support.helpers")
local log = require("resclean.log")

local function capture(fn)
  local path = h.tmpdir() .. "/log"
  local f = assert(io.open(path, "w"))
  log.set_output(f)
  local ok, err = pcall(fn)
  log.set_output(io.stdout)
  f:close()
  assert(ok, err)
  local lines = {}
  for line in io.lines(path) do lines[#lines + 1] = cjson.decode(line) end
  return lines
end

describe("the log", function()
  after_each(function() log.set_level("info"); log.set_base({}) end)

  it("writes one JSON object a line with ts, level and event", function()
    local lines = capture(function()
      log.info("resource", { resource_id = "x", outcome = "record_only", age_s = 90000 })
    end)
    assert.are.equal(1, #lines)
    local l = lines[1]
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", l.ts)
    assert.are.equal("info", l.level)
    assert.are.equal("resource", l.event)
    assert.are.equal(90000, l.age_s)
  end)

  it("drops lines below the level", function()
    local lines = capture(function()
      log.set_level("warn")
      log.info("a")
      log.warn("b")
    end)
    assert.are.equal(1, #lines)
    assert.are.equal("b", lines[1].event)
  end)

  it("writes each line at once, and between hold() and release() when the batch ends", function()
    local path = h.tmpdir() .. "/log"
    local f = assert(io.open(path, "w"))
    f:setvbuf("full", 1 << 16)
    local function on_disk()
      local n = 0
      for _ in io.lines(path) do n = n + 1 end
      return n
    end
    log.set_output(f)
    local ok, err = pcall(function()
      log.info("before")
      assert.are.equal(1, on_disk())
      log.hold()
      log.hold() -- nested: only the outer release() writes
      for i = 1, 3 do log.info("resource", { n = i }) end
      log.release()
      assert.are.equal(1, on_disk())
      log.release()
      assert.are.equal(4, on_disk())
      log.release() -- one too many: harmless, and lines go out at once again
      log.info("after")
      assert.are.equal(5, on_disk())
    end)
    log.set_output(io.stdout)
    f:close()
    assert(ok, err)
  end)

  it("leaves strings without '=' or '@' as they are, and still redacts the rest", function()
    local plain = "attack_resources/4f9c/wordlist: file.txt"
    assert.are.equal(plain, log.redact(plain))
    assert.are.equal("user:***@host", log.redact("user:***@host"))
    assert.are.equal("https://u:***@h", log.redact("https://u:pw@h"))
    assert.are.equal("Signature=***", log.redact("Signature=abc123"))
  end)

  it("refuses an unknown level", function()
    assert.has_error(function() log.set_level("loud") end)
  end)

  it("redacts passwords in URLs and conninfo, and presigned signatures", function()
    assert.are.equal("postgres://u:***@h/db", log.redact("postgres://u:s3cret@h/db"))
    assert.are.equal("host=h password=*** user=u", log.redact("host=h password=s3cret user=u"))
    local url = "http://h/b/k?X-Amz-Credential=AKIA%2F2015&X-Amz-Signature=abcdef0123"
    local r = log.redact(url)
    assert.is_nil(r:find("abcdef0123", 1, true))
    assert.is_nil(r:find("AKIA", 1, true))
  end)

  it("applies redaction to every string field", function()
    local lines = capture(function() log.error("error", { message = "connect postgres://a:pw@h failed" }) end)
    assert.is_nil(lines[1].message:find("pw@", 1, true))
  end)
end)
