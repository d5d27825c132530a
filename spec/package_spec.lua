-- The Debian package as an operator meets it: `make deb` (lintian reports no error), `apt-get
-- install ./resclean_*.deb` of an older version (0.1.0-1: a copy of this tree with that version
-- and the demo script 0.1.0 installed), the upgrade to this version by the same command, resclean
-- run from / as the resclean user against the stack, and `apt-get purge`, after which /etc, /usr
-- and /var/lib/systemd hold the same paths as before and there is no resclean user or group.
--
-- It installs into this system, so it runs only as root, refuses (pending, saying why) where a
-- resclean package, user, group or installed file is there already, and purges what it installed
-- whatever happens. The two packages are built once (make deb; build/deb-old) and reused while
-- the tree is unchanged: `make test` then `make asan test` build them once.
local cjson = require("cjson")
local fx = require("support.fixtures")
local h = require("support.helpers")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")
local OLD = "0.1.0"
local SNAPSHOT_DIRS = "/etc /usr /var/lib/systemd"
local APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=300"
  .. " -o Dpkg::Options::=--force-confold"
-- What the stack gives the commands run from the package (values from this process's environment).
local STACK_ENV = { "DATABASE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION" }

local sh, have = h.sh, h.have

local function trim(s) return (s:gsub("%s+$", "")) end
local function exists(path) return select(2, sh("test -e " .. h.q(path) .. " -o -L " .. h.q(path))) == 0 end
local function first_line(s) return s:match("^[^\n]*") end

-- dpkg's status of resclean ("ii", "rc", ...), or nil when dpkg does not know it.
local function dpkg_status()
  local out, code = sh("dpkg-query -W -f='${db:Status-Abbrev}' resclean")
  if code ~= 0 then return nil end
  local s = out:match("^(%a%a)")
  if s == nil or s == "un" or s == "pn" then return nil end
  return s
end

local function deb_version(deb)
  return trim(sh("dpkg-deb -f " .. h.q(deb) .. " Version"))
end

-- Why this spec cannot run here, or nil.
local function why_not()
  for _, tool in ipairs({ "dpkg-buildpackage", "dh", "lintian", "apt-get", "dpkg-query", "runuser" }) do
    if not have(tool) then return tool .. " is not installed (make deps installs the packaging tools)" end
  end
  if trim(sh("id -u")) ~= "0" then return "not root: this spec installs the package into the system" end
  local status = dpkg_status()
  if status then
    return "dpkg knows a resclean package here (status " .. status .. ") that this spec did not install: left alone"
  end
  for _, db in ipairs({ "passwd", "group" }) do
    if select(2, sh("getent " .. db .. " resclean")) == 0 then
      return "a " .. (db == "passwd" and "user" or "group") .. " resclean exists that this spec did not make"
        .. " (the package's purge would remove it): left alone"
    end
  end
  for _, path in ipairs({ "/etc/resclean", "/usr/bin/resclean", "/usr/share/resclean", "/usr/lib/resclean" }) do
    if exists(path) then return path .. " exists (a resclean installed otherwise than by this spec): left alone" end
  end
  return nil
end

-- A copy of the tree as the older version: VERSION and debian/changelog's top entry say OLD, and
-- it installs a script 0.1.0 had (demo) that this version does not. Built once per new .deb.
local function old_package(new_deb)
  local dir = ROOT .. "/build/deb-old"
  local arch = trim(sh("dpkg --print-architecture"))
  local deb = ("%s/tree/build/deb/resclean_%s-1_%s.deb"):format(dir, OLD, arch)
  if select(2, sh(("test %s -nt %s"):format(h.q(deb), h.q(new_deb)))) == 0 then return deb end
  local tree = dir .. "/tree"
  local out, code = sh("{ " .. table.concat({
    "rm -rf " .. h.q(dir), "mkdir -p " .. h.q(tree),
    ("cd %s && tar -c --anchored --exclude=./build --exclude=./.git --exclude=./spec --exclude=./resclean"
      .. " --exclude=./resclean_net.so --exclude=./.version . | tar -x -C %s"):format(h.q(ROOT), h.q(tree)),
    ("echo %s >%s/VERSION"):format(OLD, h.q(tree)),
    ("sed -i '1s/^resclean ([^)]*)/resclean (%s-1)/' %s/debian/changelog"):format(OLD, h.q(tree)),
    ("printf 'print(\"the demo of %s\")\\nreturn 0\\n' >%s/scripts/demo.lua"):format(OLD, h.q(tree)),
    ("make -s -C %s deb LINTIAN="):format(h.q(tree)),
  }, " && ") .. "; }")
  assert(code == 0, "building the " .. OLD .. " package failed: " .. out)
  assert(exists(deb), "no " .. deb .. " after building the older package: " .. out)
  return deb
end

local function snapshot(path)
  local out, code = sh(("find %s -xdev 2>/dev/null | grep -v '/__pycache__' | LC_ALL=C sort >%s")
    :format(SNAPSHOT_DIRS, h.q(path)))
  assert(code == 0, out)
end

describe("the Debian package (make deb, apt-get install, upgrade, purge)", function()
  local skip = why_not()
  local new_deb, old_deb, installed, before, dir, bucket

  local function apt(args)
    installed = true -- from the first attempt on, the teardown purges
    local out, code = sh(APT .. " " .. args)
    assert(code == 0, "apt-get " .. args .. " failed:\n" .. out)
    return out
  end

  -- /usr/bin/resclean from /, as the resclean user, with only PATH and the stack's environment.
  local function resclean(args, extra)
    local env = { "PATH=/usr/bin:/bin" }
    for _, name in ipairs(STACK_ENV) do
      if os.getenv(name) then env[#env + 1] = name .. "=" .. h.q(os.getenv(name)) end
    end
    for k, v in pairs(extra or {}) do env[#env + 1] = k .. "=" .. h.q(v) end
    return sh(("cd / && runuser -u resclean -- env -i %s /usr/bin/resclean %s </dev/null")
      :format(table.concat(env, " "), args))
  end

  if skip then
    it("is skipped: " .. skip, function() pending(skip) end)
    return
  end

  setup(function()
    local out, code = sh(("make -s -C %s deb"):format(h.q(ROOT)))
    assert(code == 0, "make deb failed:\n" .. out)
    local version = trim(sh(("awk 'NR == 1 { gsub(/[()]/, \"\", $2); print $2 }' %s/debian/changelog")
      :format(h.q(ROOT))))
    new_deb = ("%s/build/deb/resclean_%s_%s.deb"):format(ROOT, version, trim(sh("dpkg --print-architecture")))
    assert(exists(new_deb), "make deb made no " .. new_deb)
    old_deb = old_package(new_deb)
    -- Nothing but resclean may come with it, or the purge could not leave the system as it was.
    local sim = sh(APT .. " -s install " .. h.q(new_deb))
    local others = {}
    for name in sim:gmatch("\nInst (%S+)") do
      if name ~= "resclean" then others[#others + 1] = name end
    end
    assert(#others == 0, "the package's dependencies " .. table.concat(others, " ")
      .. " are not installed: install them first (make deps)")
    dir = h.tmpdir()
    before = dir .. "/before"
    snapshot(before)
  end)

  teardown(function()
    if installed and dpkg_status() then
      local out, code = sh(APT .. " purge resclean")
      if code ~= 0 then io.stderr:write("package_spec: could not purge resclean:\n", out, "\n") end
    end
  end)

  it("make deb gives a package lintian reports no error in", function()
    local report = h.readall((new_deb:gsub("%.deb$", ".lintian")))
    assert.is_nil(report:match("\nE: ") or report:match("^E: "), "lintian errors:\n" .. report)
    local info = sh("dpkg-deb -f " .. h.q(new_deb) .. " Package Depends")
    for _, dep in ipairs({ "libpq5", "libcurl4", "liblua5.4-0", "lua-cjson", "lua-argparse", "adduser" }) do
      assert.matches(dep, info, 1, true)
    end
  end)

  it("installs the older version: the resclean user, /etc/resclean/env root:resclean 0640, no unit enabled", function()
    assert.are.equal(OLD .. "-1", deb_version(old_deb))
    apt("install " .. h.q(old_deb))
    assert.are.equal("ii", dpkg_status())
    local pw = trim(sh("getent passwd resclean"))
    local uid, home, shell = pw:match("^resclean:[^:]*:(%d+):%d+:[^:]*:([^:]*):(.*)$")
    assert.truthy(uid, pw)
    assert.is_true(tonumber(uid) < 1000, "not a system user: " .. pw)
    assert.are.equal("/nonexistent", home)
    assert.are.equal("/usr/sbin/nologin", shell)
    assert.are.equal("root:resclean 640", trim(sh("stat -c '%U:%G %a' /etc/resclean/env")))
    assert.matches("/etc/resclean/env", sh("dpkg-query -W -f='${Conffiles}' resclean"), 1, true)
    for _, unit in ipairs({ "resclean-sweep.service", "resclean-sweep-once.service", "resclean-sweep.timer" }) do
      local text = h.readall("/lib/systemd/system/" .. unit)
      assert.is_nil(text:find("/usr/local", 1, true), unit .. " names /usr/local")
    end
    assert.are.equal("", sh("find /etc/systemd -name 'resclean*'"), "a unit is enabled")
    local out, code = resclean("run demo")
    assert.are.equal(0, code, out)
    assert.matches("the demo of " .. OLD, out, 1, true)
    -- The operator fills in the environment file.
    local f = assert(io.open("/etc/resclean/env", "a"))
    f:write("# filled in by the operator\n")
    f:close()
  end)

  it("upgrades to this version by apt-get install ./resclean_*.deb: the edited env kept, 0.1.0's files gone", function()
    local uid = trim(sh("id -u resclean"))
    apt("install " .. h.q(new_deb))
    assert.are.equal(deb_version(new_deb), trim(sh("dpkg-query -W -f='${Version}' resclean")))
    assert.are.equal(uid, trim(sh("id -u resclean")), "the upgrade made another user")
    assert.matches("# filled in by the operator\n", h.readall("/etc/resclean/env"), 1, true)
    assert.are.equal("root:resclean 640", trim(sh("stat -c '%U:%G %a' /etc/resclean/env")))
    assert.is_false(exists("/usr/share/resclean/scripts/demo.lua"), "0.1.0's demo script is still installed")
    local out, code = resclean("run demo")
    assert.are.equal(2, code, out)
    for path in sh("dpkg -L resclean"):gmatch("[^\n]+") do
      assert.is_true(exists(path), "dpkg lists " .. path .. ", which is not there")
    end
  end)

  it("runs resclean help, --version, run status (and check) from / as the resclean user against the stack", function()
    local out, code = resclean("help")
    assert.are.equal(0, code, out)
    assert.matches("^usage: resclean ", out)
    out, code = resclean("--version")
    assert.are.equal(0, code, out)
    assert.are.equal(first_line(h.run({ "--version" }).stdout), first_line(out))
    local conn = fx.connect()
    bucket = fx.unique_bucket("package")
    fx.bucket(bucket)
    conn:close()
    out, code = resclean("run status --json", { RESCLEAN_BUCKET = bucket })
    assert.are.equal(0, code, out)
    assert.is_number(cjson.decode(out).pending.total, out)
    if exists(ROOT .. "/scripts/check.lua") then
      out, code = resclean("run check", { RESCLEAN_BUCKET = bucket })
      assert.are.equal(0, code, out)
    end
    assert.are.equal(0, select(2, sh("{ man -w resclean && man -w resclean-lua; }")))
  end)

  it("apt-get purge leaves nothing: the same paths as before, no user, no group, nothing in dpkg", function()
    apt("purge resclean")
    assert.is_nil(dpkg_status())
    assert.are_not.equal(0, select(2, sh("getent passwd resclean")), "the user resclean is left")
    assert.are_not.equal(0, select(2, sh("getent group resclean")), "the group resclean is left")
    assert.are.equal("", sh("ls /var/lib/dpkg/info/ | grep '^resclean[.:]'"))
    local after = dir .. "/after"
    snapshot(after)
    local diff = sh(("LC_ALL=C comm -3 %s %s"):format(h.q(before), h.q(after)))
    assert.are.equal("", diff, "paths that differ from before the install (left: gone, right: new)")
  end)
end)
