-- Releases: one version. VERSION holds it; `resclean --version`, `resclean version` and
-- sys.version() print it (a build from git adds +g<commit>, and .dirty with local changes, unless
-- HEAD is the clean tag vVERSION); CHANGELOG.md's top entry and debian/changelog's upstream
-- version are the same.
local h = require("support.helpers")
local sys = require("resclean.sys")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")

local sh = h.sh

local function first_line(s) return s:match("^[^\n]*") end

local function version_file()
  return (h.readall(ROOT .. "/VERSION"):gsub("%s+$", ""))
end

-- CHANGELOG.md's release entries, newest first: { {version, date, text}, ... }.
local function changelog_entries()
  local text = h.readall(ROOT .. "/CHANGELOG.md")
  local entries, current = {}, nil
  for line in text:gmatch("[^\n]*") do
    local head = line:match("^## (.*)$")
    if head then
      current = { head = head, text = "" }
      entries[#entries + 1] = current
    elseif current then
      current.text = current.text .. "\n" .. line
    end
  end
  local releases = {}
  for _, e in ipairs(entries) do
    if e.head ~= "[Unreleased]" then
      local v, date = e.head:match("^%[(%d+%.%d+%.%d+)%] %- (%d%d%d%d%-%d%d%-%d%d)$")
      assert(v, "CHANGELOG.md: a release heading must read '## [X.Y.Z] - YYYY-MM-DD', not '## " .. e.head .. "'")
      releases[#releases + 1] = { version = v, date = date, text = e.text }
    end
  end
  return releases
end

describe("the version", function()
  it("resclean --version equals CHANGELOG.md's top entry and the VERSION file", function()
    local r = h.run({ "--version" })
    assert.are.equal(0, r.code, r.stderr)
    local printed = assert(first_line(r.stdout):match("^resclean (%S+)$"), "resclean --version: " .. r.stdout)
    local release = printed:match("^([^+]+)")
    local top = assert(changelog_entries()[1], "CHANGELOG.md has no release entry")
    assert.are.equal(top.version, release, "resclean --version says " .. printed .. ", CHANGELOG.md's top entry is "
      .. top.version)
    assert.are.equal(version_file(), release)
  end)

  it("resclean version and sys.version() say the same", function()
    local long = h.run({ "--version" })
    local short = h.run({ "version" })
    assert.are.equal(0, short.code, short.stderr)
    assert.are.equal(long.stdout, short.stdout)
    assert.are.equal(first_line(long.stdout), "resclean " .. sys.version())
  end)

  it("names the commit of a build from git, unless HEAD is the tag of this version", function()
    local head, code = sh(("git -C %s rev-parse --show-toplevel HEAD 2>/dev/null"):format(h.q(ROOT)))
    local top, commit = head:match("^([^\n]+)\n(%x+)")
    local real = sh(("cd %s && pwd -P"):format(h.q(ROOT))):gsub("%s+$", "")
    local v = sys.version()
    if code ~= 0 or top ~= real then
      assert.are.equal(version_file(), v, "a build outside git says VERSION as it is")
      return
    end
    local hash = v:match("^%d+%.%d+%.%d+%+g(%x+)")
    if hash then
      assert.are.equal(commit:sub(1, #hash), hash, "resclean says commit " .. hash .. ", HEAD is " .. commit)
      assert.is_true(#hash >= 7)
    else
      local _, tagged = sh(("git -C %s describe --exact-match --tags --match v%s HEAD"):format(h.q(ROOT), v))
      assert.are.equal(0, tagged, "resclean " .. v .. " from git without +g<commit>, but HEAD is not tagged v" .. v)
    end
  end)

  it("CHANGELOG.md is in Keep a Changelog form: dated entries newest first, each with its sections", function()
    local releases = changelog_entries()
    assert.is_true(#releases >= 2)
    local known = { Added = true, Changed = true, Deprecated = true, Removed = true, Fixed = true,
      Security = true, ["Upgrade notes"] = true }
    local function key(v)
      local a, b, c = v:match("^(%d+)%.(%d+)%.(%d+)$")
      return tonumber(a) * 1e6 + tonumber(b) * 1e3 + tonumber(c)
    end
    for i, r in ipairs(releases) do
      local sections = 0
      for name in r.text:gmatch("\n### ([^\n]+)") do
        assert.truthy(known[name], r.version .. ": unknown section '" .. name .. "'")
        sections = sections + 1
      end
      assert.is_true(sections >= 1, r.version .. " has no section")
      if i > 1 then
        assert.is_true(key(releases[i - 1].version) > key(r.version), "entries newest first")
        assert.is_true(releases[i - 1].date >= r.date, "dates newest first")
      end
    end
  end)

  it("debian/changelog's top entry is VERSION with a Debian revision", function()
    local line = first_line(h.readall(ROOT .. "/debian/changelog"))
    local v = assert(line:match("^resclean %(([^)]+)%)"), "debian/changelog: " .. line)
    assert.are.equal(version_file(), v:match("^(.*)%-[^-]+$"), "debian/changelog's " .. v .. " and VERSION")
  end)
end)
