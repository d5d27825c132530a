-- The supervisor's side of the long-running sweep, with a fake clock and notify
-- (lib/resclean/daemon.lua), and the Pushgateway URL (lib/resclean/push.lua).
local daemon = require("resclean.daemon")
local push = require("resclean.push")

local function fake(env)
  local t, sent, stop = 0, {}, false
  local d = daemon.new({
    notify = function(s) sent[#sent + 1] = s return true end,
    getenv = function(k) return env[k] end,
    monotime = function() return t end,
    stopping = function() return stop end,
  })
  return d, sent, function(dt) t = t + dt end, function() stop = "SIGTERM" end
end

local function count(list, prefix)
  local n = 0
  for _, s in ipairs(list) do if s:sub(1, #prefix) == prefix then n = n + 1 end end
  return n
end

describe("daemon (systemd notify and watchdog)", function()
  it("feeds the watchdog at half WATCHDOG_USEC from the batches of a long cycle", function()
    local d, sent, advance = fake({ WATCHDOG_USEC = "10000000" })
    assert.are.equal(5, d.watchdog)
    d:cycle_started()
    for _ = 1, 60 do -- a cycle of 60 batches, 1 s each
      advance(1)
      d:tick(true)
    end
    assert.are.equal(12, count(sent, "WATCHDOG=1"))
    assert.are.equal(1, count(sent, "READY=1")) -- at the first batch, once
  end)

  it("feeds it while waiting: the sleep is cut into steps of half the period", function()
    local d, sent, advance = fake({ WATCHDOG_USEC = "2000000" })
    local steps = {}
    local sleep = d:sleeper(function(s) steps[#steps + 1] = s advance(s) return true end)
    assert.is_true(sleep(10))
    for _, s in ipairs(steps) do assert.is_true(s <= 1 + 1e-9) end
    assert.is_true(count(sent, "WATCHDOG=1") >= 9)
  end)

  it("ignores a watchdog meant for another process, and sends STOPPING=1 once on a stop signal", function()
    local d, sent, _, stop = fake({ WATCHDOG_USEC = "2000000", WATCHDOG_PID = "1" })
    assert.is_nil(d.watchdog)
    local sleep = d:sleeper(function() stop() return false end)
    assert.is_false(sleep(5))
    d:tick()
    d:stopping()
    assert.are.equal(1, count(sent, "STOPPING=1"))
  end)

  it("is READY after a first cycle that ended in a retry", function()
    local d, sent = fake({})
    d:cycle_started()
    assert.are.equal(0, count(sent, "READY=1"))
    d:waiting(5, 3)
    assert.are.equal(1, count(sent, "READY=1"))
    assert.are.equal("STATUS=last cycle exit 3, next retry in 5 s", sent[#sent])
  end)

  it("reads --metrics-listen's ADDR:PORT, loopback when no address is given", function()
    assert.are.same({ "127.0.0.1", 9469 }, { daemon.parse_listen("9469") })
    assert.are.same({ "127.0.0.1", 9469 }, { daemon.parse_listen(":9469") })
    assert.are.same({ "0.0.0.0", 80 }, { daemon.parse_listen("0.0.0.0:80") })
    assert.are.same({ "::1", 9469 }, { daemon.parse_listen("[::1]:9469") })
    for _, bad in ipairs({ "", "host", "1.2.3.4:0", "1.2.3.4:70000", "::1:9469" }) do
      local h, msg = daemon.parse_listen(bad)
      assert.is_nil(h, bad)
      assert.matches("--metrics-listen", msg, 1, true)
    end
  end)
end)

describe("push (the Pushgateway's grouping key)", function()
  it("is job resclean and the host's name, escaped; a URL that names a group is used as given", function()
    assert.are.equal("http://gw:9091/metrics/job/resclean/instance/web-1",
      push.url("http://gw:9091/", "web-1"))
    assert.are.equal("http://gw:9091/metrics/job/resclean/instance/a%2Fb%20c", push.url("http://gw:9091", "a/b c"))
    assert.are.equal("https://gw/metrics/job/resclean/instance/cronjob",
      push.url("https://gw/metrics/job/resclean/instance/cronjob", "x"))
    assert.is_nil(push.url("gw:9091", "x"))
  end)

  it("names the gateway without its password when it refuses", function()
    local ok, msg = push.send("http://u:s3cret@gw/metrics/job/resclean/instance/x", "a 1\n",
      function() return 400, "text format parsing error in line 1\n" end)
    assert.is_nil(ok)
    assert.is_nil(msg:find("s3cret", 1, true), msg)
    assert.matches("answered 400: text format parsing error in line 1$", msg)
  end)
end)
