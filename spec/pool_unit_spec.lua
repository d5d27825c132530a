-- pool.transaction_pooled's reasoning on fake connections (the real PgBouncer is in
-- pgbouncer_spec.lua): a session keeps its backend and no other session gets it; a transaction
-- pool hands a backend to the next transaction of any client.
local pool = require("resclean.pool")

-- A fake pg module. backends(client, in_tx) -> the backend pid a statement of client runs on.
local function fake(backends)
  local m = { connects = 0 }
  function m.connect(conninfo)
    if conninfo == "down" then return nil, { kind = "pg", code = "connection", message = "refused" } end
    m.connects = m.connects + 1
    local client = { id = m.connects }
    local mt = { __index = {}, __close = function() end }
    function mt.__index.query(self) return { { pid = backends(self, false) } } end
    function mt.__index.close() end
    function mt.__index.backend_pid() return m.key_pid or -1 end -- a pooler's own key unless set
    function mt.__index.begin(self)
      local owner = self
      return setmetatable({}, { __index = { query = function() return { { pid = backends(owner, true) } } end,
                                               rollback = function() end },
                                __close = function() end })
    end
    return setmetatable(client, mt)
  end
  return m
end

describe("pool.transaction_pooled", function()
  it("says no for sessions: each client keeps its own backend", function()
    local pg = fake(function(client) return 1000 + client.id end)
    assert.is_false(pool.transaction_pooled(pg, "session-a"))
  end)

  it("says no at once when the backend key is the server's own pid (no pooler in between)", function()
    local pg = fake(function() return 4242 end)
    pg.key_pid = 4242
    assert.is_false(pool.transaction_pooled(pg, "direct"))
    assert.are.equal(1, pg.connects)
  end)

  it("says yes when a second client's transaction gets the backend the first just used", function()
    local pg = fake(function() return 4242 end) -- one server connection, handed from client to client
    assert.is_true(pool.transaction_pooled(pg, "pool-lifo"))
  end)

  it("says yes when the first client's next statement lands on another backend", function()
    local n = 0
    local pg = fake(function(_, in_tx)
      if in_tx then return 7 end -- the second client always gets another backend
      n = n + 1
      return n < 4 and 100 or 101 -- the first client stays twice, then moves
    end)
    assert.is_true(pool.transaction_pooled(pg, "pool-moving"))
  end)

  it("keeps the answer for the process, and asks again after a connection error", function()
    local pg = fake(function(client) return 1000 + client.id end)
    assert.is_false(pool.transaction_pooled(pg, "session-b"))
    local used = pg.connects
    assert.is_false(pool.transaction_pooled(pg, "session-b"))
    assert.are.equal(used, pg.connects)
    local ok, err = pool.transaction_pooled(pg, "down")
    assert.is_nil(ok)
    assert.are.equal("refused", err.message)
  end)

  it("check_session names RESCLEAN_DIRECT_DATABASE_URL through a transaction pool (a configuration error)", function()
    local pg = fake(function() return 4242 end)
    local ok, err = pool.check_session(pg, "pool-check", "DATABASE_URL", "LISTEN")
    assert.is_nil(ok)
    assert.matches("RESCLEAN_DIRECT_DATABASE_URL", err.message, 1, true)
    assert.matches("DATABASE_URL leads to a transaction pool", err.message, 1, true)
    assert.are.equal(2, require("resclean.errors").exit_code(err))
  end)
end)
