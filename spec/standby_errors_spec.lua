-- A standby (or a failover in progress) in the error classification (pure Lua, no servers):
-- transient (exit 3, so that a failover heals at the next cycle) with a hint that names
-- target_session_attrs=read-write and a multi-host DATABASE_URL.
local errors = require("resclean.errors")

local function pg(code, message, retryable)
  return { kind = "pg", code = code, message = message or "m", retryable = retryable }
end

describe("a standby in the error classification", function()
  it("calls a write refused mid-run (25006, a primary demoted under us) transient and names the setting", function()
    local e = pg("25006", "cannot execute SELECT FOR UPDATE in a read-only transaction")
    assert.are.equal(3, errors.exit_code(e))
    local m = errors.message(e)
    assert.matches("standby", m, 1, true)
    assert.matches("target_session_attrs=read-write", m, 1, true)
    assert.matches("host1:5432,host2:5432", m, 1, true)
  end)

  it("calls 'no host takes writes' at connect transient, and says a failover may be in progress", function()
    for _, msg in ipairs({
      'connection to server at "127.0.0.1", port 5432 failed: Connection refused; connection to server at '
        .. '"127.0.0.1", port 5433 failed: session is read-only',
      'connection to server at "10.0.0.2", port 5432 failed: server is in hot standby mode',
    }) do
      local e = pg("connection", msg, true)
      assert.are.equal(3, errors.exit_code(e), msg)
      local m = errors.message(e)
      assert.matches("failover is in progress", m, 1, true)
      assert.matches("standby", m, 1, true)
    end
  end)
end)
