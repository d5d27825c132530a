-- The example alert rules: promtool checks them, its unit tests
-- (spec/alerts/resclean-alerts.test.yml) prove what fires and what does not,
-- and every series the rules and the tests read is one a real sweep writes,
-- with the labels it writes, so an alert can never wait on a series resclean
-- does not write.
local fx = require("support.fixtures")
local h = require("support.helpers")

local RULES = "examples/resclean-alerts.yml"
local TESTS = "spec/alerts/resclean-alerts.test.yml"

-- Labels Prometheus adds at scrape time, not resclean.
local TARGET_LABELS = { instance = true, job = true }

-- Without promtool the test is reported pending, with the reason (pending() ends it).
local function need_promtool()
  if h.have("promtool") then return end
  pending("promtool is not installed (Debian package prometheus, in the Makefile's DEB_TEST): "
    .. "the alert rules are not checked")
end

-- "k=v,..." of a label set without the target labels, sorted: one key per series shape.
local function shape(labels)
  local parts = {}
  for k, v in pairs(labels) do
    if not TARGET_LABELS[k] then parts[#parts + 1] = k .. "=" .. v end
  end
  table.sort(parts)
  return table.concat(parts, ",")
end

local function parse_labels(text)
  local labels = {}
  for k, v in (text or ""):gmatch('([%w_]+)%s*=%s*"([^"]*)"') do labels[k] = v end
  return labels
end

-- The written file: name -> list of label sets.
local function series_of(text)
  local names = {}
  for line in text:gmatch("[^\n]+") do
    if not line:match("^#") then
      local name, labels = line:match("^([%w_:]+)(%b{}) %S+$")
      if not name then name = assert(line:match("^([%w_:]+) %S+$"), "not a sample line: " .. line) end
      names[name] = names[name] or {}
      table.insert(names[name], parse_labels(labels))
    end
  end
  return names
end

local function names_of(written)
  local out = {}
  for k in pairs(written) do out[#out + 1] = k end
  table.sort(out)
  return table.concat(out, " ")
end

local function shapes_of(list)
  local out = {}
  for _, labels in ipairs(list) do out[#out + 1] = "{" .. shape(labels) .. "}" end
  return table.concat(out, " ")
end

describe("the example alert rules", function()
  it("pass promtool check rules", function()
    need_promtool()
    local out, code = h.sh("promtool check rules " .. h.q(RULES))
    assert(code == 0, "promtool check rules " .. RULES .. " failed:\n" .. out)
  end)

  it("fire, and stay quiet, as the promtool unit tests expect", function()
    need_promtool()
    local out, code = h.sh("promtool test rules " .. h.q(TESTS))
    assert(code == 0, "promtool test rules " .. TESTS .. " failed:\n" .. out)
    assert.matches("SUCCESS", out)
  end)

  describe("read only series a real sweep writes", function()
    local written

    setup(function()
      local conn = fx.connect()
      local bucket, client = fx.fresh_bucket(conn, "alerts")
      fx.objects(client, fx.rows(conn, 2, { age_s = 3 * 86400 }))
      local referenced = fx.rows(conn, 1, { age_s = 4 * 86400 })
      fx.reference(conn, referenced[1]) -- kept on purpose: resclean_sweep_kept{reason="referenced"}
      conn:close()
      local path = h.tmpdir() .. "/resclean.prom"
      local r = h.run_script({ "scripts/sweep.lua", "--once", "--metrics-file", path }, h.script_env(bucket))
      assert(r.code == 0, r.stderr)
      written = series_of(h.readall(path))
    end)

    it("every metric the rules name, in expressions and annotations", function()
      local used = 0
      for name in h.readall(RULES):gmatch("resclean_[%w_]+") do
        assert(written[name], ("%s names %s, which the sweep does not write (it writes: %s)")
          :format(RULES, name, names_of(written)))
        used = used + 1
      end
      assert.is_true(used >= 10, "too few metric names found in " .. RULES)
    end)

    it("every label the rules match on, with the values they match", function()
      local n = 0
      for name, matchers in h.readall(RULES):gmatch("(resclean_[%w_]+)(%b{})") do
        for k, op, v in matchers:gmatch('([%w_]+)%s*(=~?)%s*"([^"]*)"') do
          -- every alternative of an =~ must be written, not just one
          for alt in (op == "=" and v or v:gsub("|", "\n")):gmatch("[^\n]+") do
            local hit = false
            for _, labels in ipairs(written[name] or {}) do hit = hit or labels[k] == alt end
            assert(hit, ("%s matches %s{%s%s%q}; the sweep writes no %s=%q (it writes %s)")
              :format(RULES, name, k, op, v, k, alt, shapes_of(written[name] or {})))
          end
          n = n + 1
        end
      end
      assert.is_true(n >= 3)
    end)

    it("every series the promtool tests feed in, with the same labels", function()
      local n = 0
      for name, labels in h.readall(TESTS):gmatch("series: '([%w_:]+)(%b{})'") do
        if name ~= "up" then
          local want = shape(parse_labels(labels))
          assert(written[name], ("%s feeds %s, which the sweep does not write"):format(TESTS, name))
          local hit = false
          for _, l in ipairs(written[name]) do hit = hit or shape(l) == want end
          assert(hit, ("%s feeds %s{%s}; the sweep writes %s"):format(TESTS, name, want, shapes_of(written[name])))
          n = n + 1
        end
      end
      assert.is_true(n >= 50, "too few series found in " .. TESTS)
    end)
  end)
end)
