-- resclean as an operator gets it: `make install PREFIX=$tmp`, then the installed binary run from
-- / with a bare environment, its help taken at its word (every command it prints runs, every
-- flag it prints is accepted), its manuals (paths of this install, every environment variable
-- resclean reads, every Lua function the host registers, an example that runs), the systemd
-- units through systemd-analyze, and `make uninstall` leaving $tmp empty.
local fx = require("support.fixtures")
local h = require("support.helpers")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")

local sh, have = h.sh, h.have

local function first_line_of(s) return s:match("^[^\n]*") end

local function ls(dir)
  local names = {}
  local p = assert(io.popen("ls -A " .. h.q(dir) .. " 2>/dev/null"))
  for name in p:lines() do names[#names + 1] = name end
  p:close()
  table.sort(names)
  return names
end

-- Environment variables the code reads by name: getenv("X") in Lua and C, and config.lua's env("X").
local function variables_read()
  local found = {}
  for _, glob in ipairs({ "lib/resclean/*.lua", "scripts/*.lua", "src/*.c" }) do
    local p = assert(io.popen(("ls %s/%s"):format(h.q(ROOT), glob)))
    for file in p:lines() do
      local text = h.readall(file)
      for name in text:gmatch("getenv%(%s*\"([%u%d_]+)\"") do found[name] = file end
      if file:match("%.lua$") then
        for name in text:gmatch("[^%w_]env%(%s*\"([%u%d_]+)\"") do found[name] = file end
      end
    end
    p:close()
  end
  return found
end

describe("the installed resclean (make install PREFIX=$tmp, run from /)", function()
  local tmp, bin, help

  -- The installed binary from /, with nothing in the environment but PATH and what is given.
  local function run(args, env)
    local parts = { "cd / && env -i PATH=/usr/bin:/bin" }
    for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. h.q(v) end
    parts[#parts + 1] = h.q(bin)
    for _, a in ipairs(args) do parts[#parts + 1] = h.q(a) end
    return sh(table.concat(parts, " "))
  end

  -- A manual rendered as text (MANWIDTH 200: no line breaks inside identifiers).
  local function manual(section, name)
    local out, code = sh(("MANWIDTH=200 man -l %s/share/man/man%d/%s.%d"):format(h.q(tmp), section, name, section))
    assert.are.equal(0, code, out)
    return out
  end

  setup(function()
    tmp = h.tmpdir()
    local out, code = sh(("make -s -C %s install PREFIX=%s"):format(h.q(ROOT), h.q(tmp)))
    assert(code == 0, "make install failed: " .. out)
    bin = tmp .. "/bin/resclean"
    help = assert(run({ "help" }))
  end)

  it("installs the operator scripts only, each named in resclean help", function()
    local expected = {}
    for _, f in ipairs(ls(ROOT .. "/scripts")) do
      if f:match("%.lua$") then expected[#expected + 1] = f end
    end
    assert.are.same(expected, ls(tmp .. "/share/resclean/scripts"))
    for _, f in ipairs(expected) do
      assert.is_nil(f:match("^bench") or f:match("^demo"), f .. " is not an operator command")
      assert.matches("\n  resclean run " .. f:gsub("%.lua$", "") .. " ", help, 1, true)
    end
  end)

  it("runs every command its help prints, and accepts every flag printed for it", function()
    local _, code = run({ "version" })
    assert.are.equal(0, code, "resclean version")
    -- "  resclean run NAME [--flag VALUE] ..." and its continuation lines.
    local commands, current = {}, nil
    for line in help:gmatch("[^\n]*") do
      local name, rest = line:match("^  resclean run (%S+)(.*)$")
      if name then
        current = { name = name, text = rest }
        commands[#commands + 1] = current
      elseif current and line:match("^%s+%[") then
        current.text = current.text .. line
      else
        current = nil
      end
    end
    assert.is_true(#commands >= 4, "no shipped scripts in the help:\n" .. help)
    local values = { FILE = tmp .. "/some-file", LEVEL = "info", L = "info", DURATION = "2d", D = "2d", N = "10",
                   SECONDS = "300", URL = "http://127.0.0.1:9091" }
    for _, cmd in ipairs(commands) do
      local out, rc = run({ "run", cmd.name, "--help" })
      assert.are.equal(0, rc, "resclean run " .. cmd.name .. " --help: " .. out)
      assert.matches("^usage: resclean run " .. cmd.name .. " ", out)
      for flag, arg in cmd.text:gmatch("%[(%-%-[%w%-]+)%s*(%u*)%]") do
        local argv = { "run", cmd.name, flag }
        if arg ~= "" then argv[#argv + 1] = assert(values[arg], "no sample value for " .. arg) end
        argv[#argv + 1] = "--help"
        out, rc = run(argv)
        assert.are.equal(0, rc, ("resclean run %s %s: the help prints it, the script refuses it: %s")
          :format(cmd.name, flag, out))
      end
    end
  end)

  it("runs a shipped script by name from a folder that holds a folder of that name", function()
    -- CI's machine has a /check folder: a folder must not shadow "run check".
    local cwd = h.tmpdir()
    for _, name in ipairs({ "check", "sweep.lua" }) do
      assert(os.execute(("mkdir -p %s/%s"):format(h.q(cwd), h.q(name))))
    end
    for _, name in ipairs({ "check", "sweep.lua" }) do
      local out, code = sh(("cd %s && env -i PATH=/usr/bin:/bin %s run %s --help")
        :format(h.q(cwd), h.q(bin), h.q(name)))
      assert.are.equal(0, code, "resclean run " .. name .. " --help beside a folder " .. name .. ": " .. out)
      assert.matches("^usage: resclean run ", out)
    end
  end)

  it("names every environment variable resclean reads, in its help and its manuals", function()
    local manuals = manual(1, "resclean") .. manual(7, "resclean-lua")
    for name, file in pairs(variables_read()) do
      assert.truthy(manuals:find(name, 1, true), name .. " (read in " .. file .. ") is not in the manuals")
      -- libpq's own are covered by "PG*"; JOURNAL_STREAM is set by systemd, not by an operator.
      if not (name:match("^PG") and help:find("PG*", 1, true)) and name ~= "JOURNAL_STREAM" then
        assert.truthy(help:find(name, 1, true), name .. " (read in " .. file .. ") is not in resclean help")
      end
    end
  end)

  it("installs both manuals with this install's paths, and FILES names what is there", function()
    for _, page in ipairs({ "man1/resclean.1", "man7/resclean-lua.7" }) do
      local path = tmp .. "/share/man/" .. page
      assert.is_nil(h.readall(path):find("@%u+@"), page .. " still has a placeholder")
      local out, code = sh(("groff -man -Tutf8 -ww -z %s"):format(h.q(path)))
      assert.are.equal(0, code, out)
      assert.are.equal("", out, page .. ": groff warnings")
    end
    local text = manual(1, "resclean")
    local files = assert(text:match("\nFILES\n(.-)\n%u"), "no FILES section")
    local named = 0
    for path in files:gmatch("(" .. tmp:gsub("%p", "%%%0") .. "[^%s]*)") do
      named = named + 1
      local kind = path:match("/$") and "-d" or "-f"
      assert.are.equal(0, select(2, sh(("test %s %s"):format(kind, h.q(path)))), "FILES names " .. path)
    end
    assert.is_true(named >= 5, "FILES names too few installed paths:\n" .. files)
    assert.matches(tmp .. "/share/resclean/examples/", files, 1, true)
    assert.is_nil(text:find("/usr/local", 1, true), "resclean(1) still says /usr/local")
  end)

  it("documents in resclean-lua(7) every function and method the host registers", function()
    local text = manual(7, "resclean-lua")
    local reg = debug.getregistry()
    local surfaces = {
      { "sys.", require("resclean.sys") }, { "pg.", require("resclean.pg") },
      { "s3.", require("resclean.s3") }, { "sigv4.", require("resclean.sigv4") },
      { "conn:", reg["resclean.pg.conn"].__index }, { "tx:", reg["resclean.pg.tx"].__index },
      { "c:", reg["resclean.s3.client"].__index },
    }
    local n = 0
    for _, s in ipairs(surfaces) do
      for name in pairs(s[2]) do
        if not name:match("^_") then
          n = n + 1
          assert.truthy(text:find(s[1] .. name, 1, true), s[1] .. name .. " is not in resclean-lua(7)")
        end
      end
    end
    assert.is_true(n > 40)
  end)

  it("runs the example of resclean-lua(7) as printed", function()
    local text = manual(7, "resclean-lua")
    local block = assert(text:match("\nEXAMPLE\n(.-)\n%u"), "no EXAMPLE section")
    local code_lines = {}
    for line in block:gmatch("[^\n]*") do
      local src = line:match("^           (.*)$")
      if src then code_lines[#code_lines + 1] = src end
    end
    local script = h.tmpfile(table.concat(code_lines, "\n") .. "\n", "example.lua")
    local conn = fx.connect()
    fx.reset(conn)
    fx.rows(conn, 3)
    fx.rows(conn, 2, { age_s = 60 })
    conn:close()
    local out, code = sh(("%s run %s"):format(h.q(bin), h.q(script)))
    assert.are.equal(0, code, out)
    assert.matches("^3%s+stale;%s+0%s+HEADs failed\n$", out)
  end)

  it("ships systemd units that systemd-analyze verify accepts, naming the installed binary and manual", function()
    if not have("systemd-analyze") then
      pending("systemd-analyze is not installed")
      return
    end
    local dir = tmp .. "/share/resclean/examples/"
    local units = {}
    for _, f in ipairs(ls(dir)) do
      if f:match("%.service$") or f:match("%.timer$") then units[#units + 1] = h.q(dir .. f) end
    end
    assert.are.equal(3, #units)
    local out, code = sh(("MANPATH=%s systemd-analyze verify %s"):format(h.q(tmp .. "/share/man"),
      table.concat(units, " ")))
    assert.are.equal(0, code, out)
    assert.are.equal("", out)
    for _, f in ipairs({ "resclean-sweep.service", "resclean-sweep-once.service" }) do
      local unit = h.readall(dir .. f)
      assert.matches("\nExecStart=" .. bin:gsub("%p", "%%%0") .. " run sweep ", unit)
      assert.matches("\nRestartPreventExitStatus=[%d ]*2", unit)
      assert.matches("\nEnvironment=PGSSLROOTCERT=/", unit)
    end
  end)

  it("make uninstall removes everything make install put, leaving $tmp empty", function()
    local out, code = sh(("make -s -C %s uninstall PREFIX=%s"):format(h.q(ROOT), h.q(tmp)))
    assert.are.equal(0, code, out)
    assert.are.same({}, ls(tmp), "left behind in " .. tmp)
  end)
end)

-- Upgrades by `make install`: SHAREDIR/MANIFEST names what an install put; the next install
-- removes what it listed and the new version does not install, and the files of 0.1.0 (which
-- wrote no manifest); only the install's own paths, whatever a manifest says.
describe("make install over an older install (PREFIX=$tmp)", function()
  local tmp, share, manifest

  local function make(target)
    local out, code = sh(("make -s -C %s %s PREFIX=%s"):format(h.q(ROOT), target, h.q(tmp)))
    assert(code == 0, "make " .. target .. " failed: " .. out)
    return out
  end

  -- Every file and link under $tmp, as paths.
  local function files()
    local list = {}
    local p = assert(io.popen("find " .. h.q(tmp) .. " ! -type d | LC_ALL=C sort"))
    for path in p:lines() do list[#list + 1] = path end
    p:close()
    return list
  end

  local function exists(path) return select(2, sh("test -e " .. h.q(path))) == 0 end

  local function listed()
    local list = {}
    for line in h.readall(manifest):gmatch("[^\n]+") do
      if not line:match("^#") then list[#list + 1] = line end
    end
    table.sort(list)
    return list
  end

  local function resclean(args)
    return sh(("cd / && env -i PATH=/usr/bin:/bin %s %s"):format(h.q(tmp .. "/bin/resclean"), args))
  end

  setup(function()
    tmp = h.tmpdir()
    share = tmp .. "/share/resclean"
    manifest = share .. "/MANIFEST"
    make("install")
  end)

  it("writes SHAREDIR/MANIFEST: the version, then every file the install put", function()
    local version = first_line_of(h.run({ "--version" }).stdout):match("^resclean (%S+)")
    assert.matches("^# resclean " .. version:gsub("%p", "%%%0") .. ":", h.readall(manifest))
    local expected = {}
    for _, f in ipairs(files()) do
      if f ~= manifest and f ~= share .. "/installed-dirs" then expected[#expected + 1] = f end
    end
    assert.are.same(expected, listed())
  end)

  it("removes the files 0.1.0 installed that this version does not (0.1.0 wrote no MANIFEST)", function()
    -- As 0.1.0 left an install: demo and bench among the scripts, and no MANIFEST.
    os.remove(manifest)
    h.write(share .. "/scripts/demo.lua", "return 0\n")
    h.write(share .. "/scripts/bench.lua", "return 0\n")
    h.write(share .. "/examples/README-operations.md", "0.1.0's operations notes\n")
    local out, code = resclean("run demo")
    assert.are.equal(0, code, "the stale script should run before the upgrade: " .. out)
    out = make("install")
    for _, f in ipairs({ "scripts/demo.lua", "scripts/bench.lua", "examples/README-operations.md" }) do
      assert.is_false(exists(share .. "/" .. f), f .. " of 0.1.0 is still installed")
      assert.matches("RM  " .. share .. "/" .. f, out, 1, true)
    end
    out, code = resclean("run demo")
    assert.are.equal(2, code, out)
    assert.matches("cannot open demo", out, 1, true)
  end)

  it("removes what an earlier MANIFEST lists and this version does not install, and nothing not its own", function()
    local retired = { share .. "/examples/retired.example", share .. "/lib/resclean/retired.lua",
      tmp .. "/lib/resclean/resclean_old.so" }
    -- Listed too, but not the install's to remove: a file of PREFIX outside SHAREDIR and LIBDIR,
    -- and one reached through "..".
    local foreign = { tmp .. "/share/operator-notes.txt", share .. "/../operator-notes2.txt" }
    for _, f in ipairs(retired) do h.write(f, "an earlier version's\n") end
    for _, f in ipairs(foreign) do h.write(f, "not resclean's\n") end
    local f = assert(io.open(manifest, "a"))
    f:write(table.concat(retired, "\n"), "\n", table.concat(foreign, "\n"), "\n")
    f:close()
    local out = make("install")
    for _, path in ipairs(retired) do assert.is_false(exists(path), path .. " is still installed") end
    for _, path in ipairs(foreign) do
      assert.is_true(exists(path), path .. " was removed")
      assert.matches("SKIP " .. path, out, 1, true)
    end
    for _, path in ipairs(listed()) do assert.is_true(exists(path), path .. " listed, not installed") end
    assert.is_nil(h.readall(manifest):find("retired", 1, true), "the new MANIFEST still lists the retired files")
  end)

  it("make uninstall then leaves only what was not resclean's", function()
    make("uninstall")
    assert.are.same({ tmp .. "/share/operator-notes.txt", tmp .. "/share/operator-notes2.txt" }, files())
  end)
end)
