-- The schedule and the command-line parser, with fakes for time.
local config = require("resclean.config")
local schedule = require("resclean.schedule")

describe("the schedule", function()
  it("adds up to the jitter to the interval", function()
    assert.are.equal(60, schedule.next_delay(60, 0))
    assert.are.equal(60, schedule.next_delay(60, 10, function() return 0 end))
    assert.are.equal(65, schedule.next_delay(60, 10, function() return 0.5 end))
  end)

  it("runs once and returns the cycle's code with once", function()
    local n = 0
    local code = schedule.loop({ once = true, cycle = function() n = n + 1; return 3 end,
                                 delay = function() return 1 end })
    assert.are.equal(3, code)
    assert.are.equal(1, n)
  end)

  it("cycles at once and after every delay until the sleep is interrupted", function()
    local n, slept = 0, {}
    local code = schedule.loop({
      cycle = function() n = n + 1; return 1 end,
      delay = function() return 5 end,
      stopping = function() return false end,
      sleep = function(s) slept[#slept + 1] = s; return #slept < 3 end,
    })
    assert.are.equal(0, code)
    assert.are.equal(3, n)
    assert.are.same({ 5, 5, 5 }, slept)
  end)

  it("does not sleep after a cycle that saw a stop signal", function()
    local slept = false
    local code = schedule.loop({ cycle = function() return 0 end, delay = function() return 5 end,
                                 stopping = function() return "SIGTERM" end,
                                 sleep = function() slept = true; return true end })
    assert.are.equal(0, code)
    assert.is_false(slept)
  end)
end)

describe("the argument parser", function()
  local spec = { once = "flag", policy = "value" }
  it("parses flags, values and positionals", function()
    local o, rest = config.parse_args({ "--once", "--policy", "p.lua", "a", "--", "--b" }, spec)
    assert.are.same({ once = true, policy = "p.lua" }, o)
    assert.are.same({ "a", "--b" }, rest)
    o = config.parse_args({ "--policy=q.lua" }, spec)
    assert.are.equal("q.lua", o.policy)
  end)

  it("reports unknown options and missing values", function()
    local o, msg = config.parse_args({ "--nope" }, spec)
    assert.is_nil(o)
    assert.matches("unknown option --nope", msg, 1, true)
    o, msg = config.parse_args({ "--policy" }, spec)
    assert.is_nil(o)
    assert.matches("needs a value", msg, 1, true)
    o, msg = config.parse_args({ "--once=yes" }, spec)
    assert.is_nil(o)
    assert.matches("takes no value", msg, 1, true)
  end)
end)
