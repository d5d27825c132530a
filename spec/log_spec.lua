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
    assert.are.equal("https://***@h", log.redact("https://u:pw@h"))
    assert.are.equal("Signature=***", log.redact("Signature=abc123"))
  end)

  it("refuses an unknown level", function()
    assert.has_error(function() log.set_level("loud") end)
  end)

  it("redacts passwords in URLs and conninfo, and presigned signatures", function()
    assert.are.equal("postgres://***@h/db", log.redact("postgres://u:s3cret@h/db"))
    assert.are.equal("host=h password=*** user=u", log.redact("host=h password=s3cret user=u"))
    assert.are.equal("host=h password='***' user=u", log.redact("host=h password='s3 c\\'ret' user=u"))
    assert.are.equal("host=h PASSWORD = *** user=u", log.redact("host=h PASSWORD = s3cret user=u"))
    local url = "http://h/b/k?X-Amz-Credential=AKIA%2F2015&X-Amz-Signature=abcdef0123"
    local r = log.redact(url)
    assert.is_nil(r:find("abcdef0123", 1, true))
    assert.is_nil(r:find("AKIA", 1, true))
  end)

  it("applies redaction to every string field", function()
    local lines = capture(function() log.error("error", { message = "connect postgres://a:pw@h failed" }) end)
    assert.is_nil(lines[1].message:find("pw@", 1, true))
  end)

  it("hides the whole user info of a URI up to the last @, a password with an @ included", function()
    local r = log.redact("postgresql://postgres:Tr0ub4dor@Zebra9@127.0.0.1:55432/db: failed")
    assert.are.equal("postgresql://***@127.0.0.1:55432/db: failed", r)
  end)

  it("replaces registered secrets wherever they appear, even cut apart by libpq", function()
    local config = require("resclean.config")
    for _, s in ipairs(config.conninfo_secrets("postgresql://postgres:Tr0ub4dor@Zebra9@127.0.0.1/db")) do
      log.add_secret(s)
    end
    local r = log.redact('could not translate host name "Zebra9@127.0.0.1" to address')
    assert.is_nil(r:find("Zebra9", 1, true))
    assert.are.same({}, config.conninfo_secrets(nil))
    assert.are.same({ "s3cr3t" }, config.conninfo_secrets("host=h password=s3cr3t"))
  end)

  it("starts every line with ts, level, event, then run_id, in that order, the rest in a fixed order", function()
    log.set_base({ run_id = "r1" })
    local path = h.tmpdir() .. "/ordered"
    local f = assert(io.open(path, "w"))
    log.set_output(f)
    log.info("resource", { zeta = 1, outcome = "record_only", alpha = "a", resource_id = "x" })
    log.warn("other", { beta = 2, alpha = 1 })
    log.set_output(io.stdout)
    f:close()
    local lines = {}
    for line in io.lines(path) do lines[#lines + 1] = line end
    assert.matches('^{"ts":"[^"]+","level":"info","event":"resource","run_id":"r1","resource_id":"x",'
      .. '"outcome":"record_only","alpha":"a","zeta":1}$', lines[1])
    assert.matches('^{"ts":"[^"]+","level":"warn","event":"other","run_id":"r1","alpha":1,"beta":2}$', lines[2])
  end)

  it("writes paths without escaping the slash, and other escapes as JSON needs them", function()
    local line = log.encode("info", "x", { path = "/var/lib/a", q = 'say "hi"\\/', n = "a\nb" })
    assert.matches('"path":"/var/lib/a"', line, 1, true)
    assert.is_nil(line:find("\\/", 1, true) and line:find('"path":"\\/', 1, true))
    local back = cjson.decode(line)
    assert.are.equal('say "hi"\\/', back.q)
    assert.are.equal("a\nb", back.n)
    assert.are.equal("/var/lib/a", back.path)
  end)

  it("logs ids and keys exactly, even when they look like credentials", function()
    local lines = capture(function()
      log.info("resource", { resource_id = "id", key = "wl/password=hunter22", message = "password=hunter22" })
    end)
    assert.are.equal("wl/password=hunter22", lines[1].key)
    assert.are.equal("password=***", lines[1].message)
  end)

  it("prefixes each line with its syslog priority only when the output is the journal", function()
    local path = h.tmpdir() .. "/journal"
    local out = assert(io.open(path, "w"))
    -- The stream JOURNAL_STREAM names is recognised by device and inode:
    -- spec/support runs a child whose stdout is this file with the variable set.
    local pipe = assert(io.popen(("stat -c '%%d:%%i' %s"):format(h.q(path))))
    local ino = pipe:read("l")
    pipe:close()
    local script = h.tmpdir() .. "/j.lua"
    h.write(script, [[
      local log = require("resclean.log")
      log.info("a"); log.warn("b"); log.error("c")
    ]])
    out:close()
    local cmd = ("JOURNAL_STREAM=%s %s run %s >> %s"):format(ino, h.q(h.bin()), h.q(script), h.q(path))
    assert.is_true(os.execute(cmd))
    local lines = {}
    for line in io.lines(path) do lines[#lines + 1] = line end
    assert.matches('^<6>{"ts"', lines[1])
    assert.matches('^<4>{"ts"', lines[2])
    assert.matches('^<3>{"ts"', lines[3])
    -- Another stream with the variable inherited: pure JSON.
    local other = h.tmpdir() .. "/plain"
    cmd = ("JOURNAL_STREAM=%s %s run %s > %s"):format(ino, h.q(h.bin()), h.q(script), h.q(other))
    assert.is_true(os.execute(cmd))
    for line in io.lines(other) do assert.matches('^{"ts"', line) end
  end)
end)

-- The event catalogue check (RESCLEAN_EVENT_CHECK, events.lua): the specs'
-- guard that every event the code logs is catalogued.
describe("the event catalogue check", function()
  -- Runs a script in a process of its own with the check writing to a file
  -- (value false: unset). Returns the process's result and what the check noted.
  local function run(body, check)
    local notes = h.tmpdir() .. "/notes"
    local r = h.run({ "run", h.tmpfile(body, "emit.lua") },
      { RESCLEAN_EVENT_CHECK = check ~= false and notes or false })
    local f = io.open(notes, "r")
    if not f then return r, "" end
    local text = f:read("a")
    f:close()
    return r, text
  end

  it("notes an event the code emits that the catalogue does not list, once, naming where", function()
    local r, notes = run([[
      local run = require("resclean.run").new({ policy = {} })
      run:summary("no_such_event"); run:summary("no_such_event")
      run:summary("sweep")
    ]])
    assert.are.equal(0, r.code, r.stderr)
    assert.matches('"event":"no_such_event"', r.stdout, 1, true) -- the line itself is written as ever
    local lines = {}
    for l in notes:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(1, #lines, notes)
    assert.matches("^info no_such_event at lib/resclean/run%.lua:%d+ %(pid %d+%)$", lines[1])
  end)

  it("notes a catalogued event at a level the catalogue does not give it", function()
    local r, notes = run([[
      local run = require("resclean.run").new({ policy = {} })
      run.emit("debug", "sweep", {})        -- the caller is this script: not the code's
      run:summary("sweep", {})              -- info: listed
      run:summary("progress", { error = "x" }) -- error: progress is info only
    ]])
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^error progress at lib/resclean/run%.lua:%d+ %(pid %d+%)\n$", notes)
  end)

  it("notes a field the catalogue does not list for the event, and none for listed and base fields", function()
    local r, notes = run([[
      local run = require("resclean.run").new({ policy = {} })
      run:summary("sweep", { stopped = true, via = "request" }) -- listed, a base field
      run:summary("sweep", { zeta = 1, alpha = 2 })
    ]])
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("^info sweep with unlisted field%(s%) alpha, zeta at lib/resclean/run%.lua:%d+ %(pid %d+%)\n$",
      notes)
  end)

  it("checks lines below the log level too", function()
    local r, notes = run([[
      require("resclean.log").set_level("error")
      require("resclean.run").new({ policy = {} }):summary("no_such_event")
    ]])
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("", r.stdout) -- not written
    assert.matches("^info no_such_event at ", notes)
  end)

  it("ignores what a spec or a script of its own logs", function()
    local _, notes = run('require("resclean.log").warn("anything_at_all", { n = 1 })')
    assert.are.equal("", notes)
  end)

  it("costs nothing and notes nothing when unset", function()
    local r = run([[
      require("resclean.run").new({ policy = {} }):summary("no_such_event")
      assert(package.loaded["resclean.events"] == nil, "the catalogue was loaded")
    ]], false)
    assert.are.equal(0, r.code, r.stderr)
  end)
end)
