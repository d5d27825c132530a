-- The command line: run, exit codes, arg, package.path, version, help. (The installed
-- binary, its help taken at its word and its manuals: deploy_spec.)
local h = require("support.helpers")

describe("resclean command line", function()
  it("returns the script's integer as the exit code", function()
    local path = h.tmpfile("return 7\n")
    local r = h.run({ "run", path })
    assert.are.equal(7, r.code)
  end)

  it("exits 0 when the script returns nothing", function()
    local r = h.run({ "run", h.tmpfile("local x = 1\n") })
    assert.are.equal(0, r.code)
    assert.are.equal("", r.stderr)
  end)

  it("gives the script its arguments as the standalone lua does", function()
    local path = h.tmpfile('io.write(#arg, "|", arg[0], "|", arg[1], "|", arg[2], "|", select("#", ...), "|", ...)\n')
    local r = h.run({ "run", path, "a b", "c" })
    assert.are.equal(0, r.code)
    assert.are.equal("2|" .. path .. "|a b|c|2|a bc", r.stdout)
  end)

  it("prints an uncaught error with a traceback and exits 1", function()
    local r = h.run({ "run", h.tmpfile('local function f() error("boom") end\nf()\n') })
    assert.are.equal(1, r.code)
    assert.matches("^resclean: [^\n]*boom", r.stderr)
    assert.matches("stack traceback", r.stderr)
  end)

  it("renders an error table with its kind, code and message", function()
    local r = h.run({ "run", h.tmpfile('error({kind="pg", code="23503", message="fk"})\n') })
    assert.are.equal(1, r.code)
    assert.matches("pg error 23503: fk", r.stderr, 1, true)
  end)

  it("names a missing script in one line and exits 2", function()
    local r = h.run({ "run", "/nonexistent/script.lua" })
    assert.are.equal(2, r.code)
    assert.matches("/nonexistent/script.lua", r.stderr, 1, true)
    assert.are.equal(1, select(2, r.stderr:gsub("\n", "")))
  end)

  it("exits 2 when run has no script", function()
    assert.are.equal(2, h.run({ "run" }).code)
  end)

  it("prints the usage and exits 2 on an unknown command", function()
    local r = h.run({ "frobnicate" })
    assert.are.equal(2, r.code)
    assert.matches("unknown command 'frobnicate'", r.stderr, 1, true)
    assert.matches("usage: resclean", r.stderr, 1, true)
  end)

  it("prints help with help and --help, naming the shipped scripts as they run from any folder", function()
    for _, cmd in ipairs({ "help", "--help" }) do
      local r = h.run({ cmd })
      assert.are.equal(0, r.code)
      assert.matches("usage: resclean", r.stdout, 1, true)
      for _, script in ipairs({ "check", "sweep", "cancel", "status", "reconcile" }) do
        assert.matches("\n  resclean run " .. script .. " [", r.stdout, 1, true)
      end
      assert.is_nil(r.stdout:find("scripts/", 1, true), "help names a path that works only in the source tree")
    end
  end)

  it("runs a shipped script by name from any folder", function()
    local out = h.tmpdir() .. "/out"
    local ok = os.execute(("cd / && %s run sweep --help >%s 2>&1"):format(h.q(h.bin()), h.q(out)))
    assert.is_true(ok, h.readall(out))
    assert.matches("^usage: resclean run sweep ", h.readall(out))
  end)

  it("prints its own version and its libraries' versions", function()
    local r = h.run({ "version" })
    assert.are.equal(0, r.code)
    assert.matches("^resclean %d+%.%d+%.%d+[%w+.]*\n", r.stdout) -- 0.2.0, or 0.2.0+g<commit> from git
    for _, lib in ipairs({ "Lua 5%.4", "libpq %d+", "libcurl %d", "OpenSSL %d", "expat_%d" }) do
      assert.matches(lib, r.stdout)
    end
  end)

  it("loads libcurl and libpq only when a script requires resclean.pg, s3 or sigv4", function()
    local path = h.tmpfile([[
      local function loaded()
        local f = assert(io.open("/proc/self/maps"))
        local maps = f:read("a")
        f:close()
        return tostring(maps:find("libcurl", 1, true) ~= nil) .. "," .. tostring(maps:find("libpq", 1, true) ~= nil)
      end
      local before = loaded()
      require("resclean.sys")
      require("cjson")
      local mid = loaded()
      require("resclean.sigv4")
      io.write(before, "|", mid, "|", loaded())
    ]])
    local r = h.run({ "run", path })
    assert.are.equal("", r.stderr)
    assert.are.equal("false,false|false,false|true,true", r.stdout)
  end)

  it("without resclean_net.so runs other scripts and names the library when one needs it", function()
    local installed = io.open("/usr/local/lib/resclean/resclean_net.so")
    if installed then
      installed:close()
      pending("an installed resclean_net.so would be found")
      return
    end
    local dir = h.tmpdir()
    assert(os.execute(("cp %s %s/resclean"):format(h.q(h.bin()), h.q(dir))))
    local function run(script)
      local out = dir .. "/out"
      local _, _, code = os.execute(("%s/resclean run %s >%s 2>&1"):format(h.q(dir), h.q(h.tmpfile(script)), h.q(out)))
      return code, h.readall(out)
    end
    local code, out = run('io.write(require("cjson").encode({ 1 }))\n')
    assert.are.equal(0, code)
    assert.are.equal("[1]", out)
    code, out = run('require("resclean.pg")\n')
    assert.are.equal(1, code)
    assert.matches("cannot load resclean.pg: [^\n]*resclean_net.so", out)
  end)

  it("finds modules in the script's folder and in resclean's lib/", function()
    local dir = h.tmpdir()
    h.write(dir .. "/mymod.lua", "return { v = 42 }\n")
    h.write(dir .. "/main.lua", 'local m = require("mymod")\nlocal log = require("resclean.log")\n'
      .. 'io.write(m.v, type(log))\n')
    local r = h.run({ "run", dir .. "/main.lua" })
    assert.are.equal("", r.stderr)
    assert.are.equal("42table", r.stdout)
  end)

  it("puts LUA_PATH first, with ;; standing for the defaults", function()
    local dir, other = h.tmpdir(), h.tmpdir()
    h.write(dir .. "/main.lua", 'io.write(require("mymod").v, "|", package.path)\n')
    h.write(dir .. "/mymod.lua", "return { v = 'script' }\n")
    h.write(other .. "/mymod.lua", "return { v = 'env' }\n")
    local r = h.run({ "run", dir .. "/main.lua" }, { LUA_PATH = other .. "/?.lua;;" })
    assert.are.equal("", r.stderr)
    local v, path = r.stdout:match("^([^|]*)|(.*)$")
    assert.are.equal("env", v)
    assert.matches("/usr/share/lua/5.4/?.lua", path, 1, true)
    assert.is_nil(path:find(";;", 1, true))
  end)

  it("has cjson and the resclean modules in package.preload", function()
    local r = h.run({ "run", h.tmpfile('local c = require("cjson")\n'
      .. 'for _, m in ipairs({"resclean.pg","resclean.s3","resclean.sigv4","resclean.sys","cjson.safe"}) do\n'
      .. '  assert(type(require(m)) == "table", m) end\n'
      .. 'io.write(c.encode({a = 1}))\n') })
    assert.are.equal("", r.stderr)
    assert.are.equal('{"a":1}', r.stdout)
  end)
end)
