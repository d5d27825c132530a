-- Cancel on request: the pure parts (old-style payloads, wake-ups, the bounded warning) with a
-- fake listening connection.
local notify = require("resclean.notify")
local policy = require("resclean.policy")

local A = "0b3f8a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
local B = "1b3f8a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b"

describe("an old-style payload", function()
  it("is counted by its ids (each once, in lower case), never acted on", function()
    assert.are.same({ A }, (notify.parse_payload(A)))
    assert.are.same({ A, B }, (notify.parse_payload(" " .. A:upper() .. " ,\n\t" .. B .. " " .. A .. " ")))
  end)

  it("names what is not an id, shortened", function()
    local ids, bad = notify.parse_payload("drop table; " .. A .. " " .. ("x"):rep(200))
    assert.are.same({ A }, ids)
    assert.are.same({ "drop", "table;" }, { bad[1], bad[2] })
    assert.are.equal(64, #bad[3])
  end)
end)

describe("the listener's wake-ups", function()
  -- A Cancels with a fake listening connection handing out `batches` of notifications.
  local function listener(batches)
    local lines = {}
    local p = assert(policy.validate(policy.defaults()))
    local c = notify.new({ channel = "resclean_cancel", policy = function() return p end,
      emit = function(level, event, f) lines[#lines + 1] = { level = level, event = event, f = f } end })
    local i = 0
    c.conn = { notifications = function()
      i = i + 1
      return batches[i] or {}
    end }
    return c, lines
  end

  local function notes(n, payload)
    local out = {}
    for k = 1, n do out[k] = { channel = "resclean_cancel", payload = payload or "", pid = 42 } end
    return out
  end

  it("wake on any notification of the channel, and only of the channel", function()
    local c = listener({ { { channel = "other", payload = "", pid = 1 } }, notes(1) })
    assert.is_false(c:waiting())
    assert.is_true(c:waiting())
  end)

  it("turn a flood of payloads with ids into one warning a minute naming the fix, whatever the count", function()
    local batches = {}
    for k = 1, 500 do batches[k] = notes(2, A .. "," .. B) end
    local c, lines = listener(batches)
    for _ = 1, 500 do c:drain() end
    assert.are.equal(1, #lines)
    local w = lines[1]
    assert.are.equal("warn", w.level)
    assert.are.equal("notify_payload_ignored", w.event)
    assert.are.equal(2, w.f.notifications)
    assert.are.equal(4, w.f.ids)
    assert.matches("resclean_cancel_requests", w.f.message, 1, true)
    assert.matches("examples/cancel-requests.sql", w.f.message, 1, true)
    assert.is_true(c.woken)
    -- The ones held back are counted on the next warning, a minute later.
    assert.are.equal(998, c.ignored)
    c.warned_at = c.warned_at - notify.PAYLOAD_WARN_EVERY
    c.conn.notifications = function() return {} end
    c:drain()
    assert.are.equal(2, #lines)
    assert.are.equal(998, lines[2].f.notifications)
    assert.are.equal(1996, lines[2].f.ids)
  end)

  it("say nothing for empty payloads (the table's trigger sends those)", function()
    local c, lines = listener({ notes(100) })
    c:drain()
    assert.are.equal(0, #lines)
    assert.is_true(c.woken)
  end)
end)

describe("the policy's cancel_requests_table", function()
  it("is a table name or false, else an error naming the field and the SQL file", function()
    local d = policy.defaults()
    assert.are.equal("resclean_cancel_requests", d.cancel_requests_table)
    d.cancel_requests_table = false
    assert.is_table(policy.validate(d))
    d.cancel_requests_table = "bad name;"
    local p, err = policy.validate(d)
    assert.is_nil(p)
    assert.matches("field 'cancel_requests_table'", err.message, 1, true)
    assert.matches("examples/cancel-requests.sql", err.message, 1, true)
  end)
end)
