-- The schedule and the benches' flag parser (spec/support/args.lua), with fakes for time.
local args = require("support.args")
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
    local o, rest = args.parse({ "--once", "--policy", "p.lua", "a", "--", "--b" }, spec)
    assert.are.same({ once = true, policy = "p.lua" }, o)
    assert.are.same({ "a", "--b" }, rest)
    o = args.parse({ "--policy=q.lua" }, spec)
    assert.are.equal("q.lua", o.policy)
  end)

  it("reports unknown options and missing values", function()
    local o, msg = args.parse({ "--nope" }, spec)
    assert.is_nil(o)
    assert.matches("unknown option --nope", msg, 1, true)
    o, msg = args.parse({ "--policy" }, spec)
    assert.is_nil(o)
    assert.matches("needs a value", msg, 1, true)
    o, msg = args.parse({ "--once=yes" }, spec)
    assert.is_nil(o)
    assert.matches("takes no value", msg, 1, true)
  end)
end)

describe("the long-running schedule and exit codes", function()
  local function run(codes, opts)
    local n, slept = 0, {}
    local o = {
      cycle = function() n = n + 1; return codes[n] or 0 end,
      delay = function() return 3600 end,
      retry_delay = function(k) return schedule.backoff(k, 3600, function() return 0 end) end,
      stopping = function() return false end,
      sleep = function(s) slept[#slept + 1] = s; return n < #codes end,
    }
    for k, v in pairs(opts or {}) do o[k] = v end
    return schedule.loop(o), n, slept
  end

  it("exits 2 at once on a configuration error before the first good cycle", function()
    local told
    local code, n, slept = run({ 2, 0 }, { on_config_error = function(c) told = c end })
    assert.are.equal(2, code)
    assert.are.equal(1, n)
    assert.are.same({}, slept)
    assert.are.equal(2, told)
  end)

  it("keeps running through a configuration error after a good cycle", function()
    local code, n = run({ 0, 2, 0 })
    assert.are.equal(0, code)
    assert.are.equal(3, n)
  end)

  it("retries transient errors with a backoff that grows to the interval, reset by success", function()
    local code, n, slept = run({ 3, 3, 3, 0, 3 })
    assert.are.equal(0, code)
    assert.are.equal(5, n)
    assert.are.same({ 5, 10, 20, 3600, 5 }, slept)
  end)

  it("keeps retrying transient errors before the first good cycle", function()
    local code, n = run({ 3, 3, 0 })
    assert.are.equal(0, code)
    assert.are.equal(3, n)
  end)

  it("caps the backoff at the interval and jitters it by at most a fifth", function()
    assert.are.equal(60, schedule.backoff(10, 60, function() return 0 end))
    assert.are.equal(72, schedule.backoff(10, 60, function() return 1 end))
    assert.are.equal(5, schedule.backoff(1, 60, function() return 0 end))
  end)

  it("ends with the cycle's code when the cycle says stop (the log failed)", function()
    local code = schedule.loop({ cycle = function() return 2, "stop" end, delay = function() return 1 end,
                                 stopping = function() return false end, sleep = function() return true end })
    assert.are.equal(2, code)
  end)
end)
