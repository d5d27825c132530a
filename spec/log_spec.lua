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
