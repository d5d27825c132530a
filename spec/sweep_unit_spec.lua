-- The sweep in-process, without servers: a fake PostgreSQL connection (a
-- table of rows, foreign-key references, transactions with savepoints that
-- abort on an error like the real one) and a fake store drive sweep.cycle
-- and cancel.run. They reach what the real stack does not: the 23503
-- fallback (the catalog pre-check finds single-column keys first there),
-- the row the error's detail names, the halving when it names nothing.
-- Plus the pure outcome decision's table of cases, and storage failures
-- that roll back only the failed items' rows.
-- luacheck: ignore 212/self
local cancel = require("resclean.cancel")
local outcome = require("resclean.outcome")
local policy = require("resclean.policy")
local sweep = require("resclean.sweep")
local set = require("support.helpers").set
local fake_stores = require("support.fake_store")

local function uuid(i) return ("%08x-0000-4000-8000-%012x"):format(i, i) end

local function pgerr(code, message, detail)
  return { kind = "pg", code = code, message = message, detail = detail, retryable = false }
end

-- A fake database of n stale pending rows (ids uuid(1..n), oldest first).
-- opts.referenced: set of ids a foreign key still points at; opts.detail(id):
-- the 23503 error's detail for the first referenced id of a DELETE (nil:
-- none); opts.precheck: answer the catalog query, so the pre-check is used.
local function fake_db(n, opts)
  opts = opts or {}
  local db = { rows = {}, referenced = opts.referenced or {}, deletes = 0, savepoints = {},
               fail_delete = opts.fail_delete, fail_commit = opts.fail_commit }
  for i = 1, n do
    local id = uuid(i)
    db.rows[id] = { id = id, _created = ("2020-01-01 00:00:%06d"):format(i), age_s = 90000 + n - i,
                    _type = "WORD_LIST", _uploaded = false }
  end

  -- Every connection has its own transaction: { gone = {id = true}, locked
  -- = {id = true}, stack = {{name, gone}}, aborted }. Rows another open
  -- transaction locked or deleted are skipped (FOR UPDATE SKIP LOCKED).
  db.open = {}
  local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
  end
  local function new_conn()
    local tx
    local function present(id) return db.rows[id] and not (tx and tx.gone[id]) end
    local function taken(id)
      for other in pairs(db.open) do
        if other ~= tx and (other.locked[id] or other.gone[id]) then return true end
      end
      return false
    end
    local function ends()
      if tx then db.open[tx] = nil end
      tx = nil
    end
    local function aborted()
      if tx and tx.aborted then
        return nil, pgerr("25P02", "current transaction is aborted, commands ignored until end of transaction block")
      end
    end
    local function fail(err)
      if tx then tx.aborted = true end
      return nil, err
    end

    local function delete(ids)
      db.deletes = db.deletes + 1
      if db.fail_delete and (not opts.fail_delete_at or opts.fail_delete_at == db.deletes) then
        return fail(db.fail_delete)
      end
      for _, id in ipairs(ids) do
        if present(id) and db.referenced[id] then
          return fail(pgerr("23503", 'update or delete on table "attack_resource_files" violates foreign key'
            .. ' constraint on table "attacks"', opts.detail and opts.detail(id)))
        end
      end
      local out = {}
      for _, id in ipairs(ids) do
        if present(id) then
          tx.gone[id] = true
          out[#out + 1] = { id = id }
        end
      end
      return out
    end

    local function claim(limit, after_created, after_id)
      local list = {}
      for id, r in pairs(db.rows) do
        if present(id) and not taken(id) and (not after_created or r._created > after_created
            or (r._created == after_created and id > after_id)) then
          list[#list + 1] = r
        end
      end
      table.sort(list, function(a, b) return a._created < b._created end)
      local out = {}
      for i = 1, math.min(limit, #list) do
        out[i] = copy(list[i])
        tx.locked[list[i].id] = true
      end
      if db.sessions then db.sessions[#db.sessions + 1] = "claim " .. #out end
      return out
    end

    local Tx = {}
    Tx.__index = Tx
    Tx.__close = function() ends() end
    function Tx:savepoint(name)
      local bad, e = aborted()
      if e then return bad, e end
      db.savepoints[#db.savepoints + 1] = name
      tx.stack[#tx.stack + 1] = { name = name, gone = copy(tx.gone) }
      return true
    end
    function Tx:rollback_to(name)
      for i = #tx.stack, 1, -1 do
        if tx.stack[i].name == name then
          for j = #tx.stack, i + 1, -1 do tx.stack[j] = nil end
          tx.gone, tx.aborted = copy(tx.stack[i].gone), false
          return true
        end
      end
      error("no savepoint " .. name)
    end
    function Tx:release(name)
      local bad, e = aborted()
      if e then return bad, e end
      for i = #tx.stack, 1, -1 do
        if tx.stack[i].name == name then
          for j = #tx.stack, i, -1 do tx.stack[j] = nil end
          return true
        end
      end
      error("no savepoint " .. name)
    end
    function Tx:commit()
      if db.fail_commit then
        ends()
        return nil, db.fail_commit
      end
      assert(not tx.aborted, "commit of an aborted transaction")
      for id in pairs(tx.gone) do db.rows[id] = nil end
      db.commits[#db.commits + 1] = tx.gone
      if opts.trace then
        local count = 0
        for _ in pairs(tx.gone) do count = count + 1 end
        opts.trace[#opts.trace + 1] = "commit " .. count
      end
      ends()
      return true
    end
    function Tx:rollback() ends() return true end

    local conn = {}
    function conn:begin()
      assert(not tx, "a transaction is already open")
      tx = { gone = {}, locked = {}, stack = {} }
      db.open[tx] = true
      return setmetatable({}, Tx)
    end
    function conn:quote_ident(s) return '"' .. s .. '"' end
    function conn:backend_pid() return 4242 end
    function conn:close() db.closes = db.closes + 1 end
    function conn:prepare() return true end
    function conn:per_transaction() end
    function conn:query(sql, ...)
      local bad, e = aborted()
      if e then return bad, e end
      if sql:find("^SET ") then return {} end
      if sql:find("information_schema.columns", 1, true) then
        return { { c = "id", t = "uuid" }, { c = "is_uploaded", t = "boolean" },
                 { c = "created_at", t = "timestamp with time zone" }, { c = "resource_type", t = "USER-DEFINED" } }
      end
      if sql:find("pg_enum", 1, true) then return {} end
      if sql:find("pg_is_in_recovery", 1, true) then -- session.server_role
        return { { standby = false, read_only = false, server = "127.0.0.1:5432" } }
      end
      if sql:find("pg_walfile_name", 1, true) then -- session.note_failover
        return { { system = "7000000000000000001", walfile = "000000010000000000000001" } }
      end
      if sql:find("current_user", 1, true) then return { { role = "resclean" } } end -- cancel: who asks
      if sql:find("pg_locks", 1, true) then return {} end -- presence: no other sweeper
      if sql:find("^SELECT pg_backend_pid%(%)") then return { { pid = 4242 } } end -- pool: no pooler
      if sql:find("pg_constraint", 1, true) then
        return opts.precheck and { { tbl = "attacks", col = "word_list_id" } } or {}
      end
      if sql:find("^SELECT count%(%*%)") then
        local n_left = 0
        for id in pairs(db.rows) do if present(id) then n_left = n_left + 1 end end
        return { { n = n_left, oldest = 90000 + n } }
      end
      if sql:find("AS _uploaded", 1, true) then -- cancel's lock of one row
        local id = ...
        return { present(id) and copy(db.rows[id]) or nil }
      end
      error("fake database: unexpected query " .. sql)
    end
    function conn:exec_prepared(name, a, _, c, d, e)
      local bad, err = aborted()
      if err then return bad, err end
      if name == "resclean_claim_first" then return claim(c) end
      if name == "resclean_claim_next" then return claim(c, d, e) end
      if name == "resclean_delete" then return delete(a) end
      if name == "resclean_referenced" then
        if #a > 0 then db.prechecks = (db.prechecks or 0) + 1 end -- open() tries it with none
        local out = {}
        for _, id in ipairs(a) do
          if db.referenced[id] then out[#out + 1] = { id = id } end
        end
        return out
      end
      error("fake database: unexpected statement " .. name)
    end
    return conn
  end

  db.connects, db.closes, db.commits = 0, 0, {}
  -- db.max_connects: sessions open at once (a role's CONNECTION LIMIT); db.sessions (a list):
  -- "connect" for each session opened, "connect, rows locked" when a transaction held rows then.
  db.max_connects = opts.max_connects
  db.pg = { connect = function()
    if db.max_connects and db.connects - db.closes >= db.max_connects then
      return nil, pgerr("53300", "too many connections for role \"resclean\"")
    end
    if db.sessions then
      local locked = false
      for tx in pairs(db.open) do locked = locked or next(tx.locked) ~= nil or next(tx.gone) ~= nil end
      db.sessions[#db.sessions + 1] = locked and "connect, rows locked" or "connect"
    end
    db.connects = db.connects + 1
    return new_conn()
  end }
  db.left = function()
    local ids = {}
    for id in pairs(db.rows) do ids[#ids + 1] = id end
    table.sort(ids)
    return ids
  end
  return db
end

-- The shared fake store (spec/support/fake_store.lua, held to the S3 store's
-- contract by store_contract_spec) with an object for each id given.
-- opts.fail[key]: that key's delete error; opts.fail_all: every key's.
-- opts.trace (a list): the store has delete_start, and notes "start N" and
-- "finish N" there; without it the store has none (the sweep deletes at once).
local function fake_store(ids, opts)
  opts = opts or {}
  return fake_stores.new(ids, { fail = opts.fail, fail_all = opts.fail_all, trace = opts.trace,
                                delete_start = opts.trace ~= nil })
end

local function ids(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = uuid(i) end
  return t
end

local function sorted(list)
  local t = { table.unpack(list) }
  table.sort(t)
  return t
end

-- Run one sweep cycle on db and store; returns code, summary, the resource
-- lines by id, and every line.
local function cycle(db, store, over, dry_run)
  local lines, by_id = {}, {}
  local opts = { pg = db.pg, store = store, policy = assert(policy.build(over or {})), conninfo = "fake",
                 dry_run = dry_run,
                 emit = function(level, event, fields)
                   lines[#lines + 1] = { level = level, event = event, fields = fields }
                   if event == "resource" then
                     assert.is_nil(by_id[fields.resource_id], "two lines for " .. fields.resource_id)
                     by_id[fields.resource_id] = { level = level, outcome = fields.outcome, reason = fields.reason }
                   end
                 end }
  local code, summary = sweep.cycle(opts)
  return code, summary, by_id, lines
end

local function outcomes_of(by_id, list)
  local t = {}
  for _, id in ipairs(list) do t[#t + 1] = by_id[id] and (by_id[id].outcome .. "/" .. tostring(by_id[id].reason)) end
  return t
end

local function rep(v, n)
  local t = {}
  for i = 1, n do t[i] = v end
  return t
end

describe("sweep (in-process): a foreign key found by the DELETE (23503)", function()
  local function naming(id) return ("Key (id)=(%s) is still referenced from table \"attacks\"."):format(id) end

  it("skips the row the error's detail names as referenced and deletes the rest, one retry per named row", function()
    local refd = { uuid(3), uuid(7) }
    local db = fake_db(10, { referenced = set(refd), detail = naming })
    local store = fake_store(ids(1, 10))
    local code, summary, by_id = cycle(db, store)
    assert.are.equal(0, code, summary.error)
    assert.are.same(sorted(refd), db.left())
    assert.are.same({ "skipped/referenced", "skipped/referenced" }, outcomes_of(by_id, refd))
    for _, id in ipairs(ids(1, 10)) do
      if not set(refd)[id] then
        assert.are.same({ level = "info", outcome = "object_deleted" }, by_id[id], id)
        assert.is_nil(store.objects[id], id)
      end
    end
    assert.is_true(store.objects[uuid(3)] and store.objects[uuid(7)])
    assert.are.equal(2, summary.skipped)
    assert.are.equal(8, summary.object_deleted)
    assert.are.same({ referenced = 2 }, summary.skipped_reasons)
    -- Fails on uuid(3), fails on uuid(7), deletes the other eight: no halving.
    assert.are.equal(3, db.deletes)
    assert.are.same({ "rows" }, db.savepoints)
    assert.is_nil(db.prechecks)
  end)

  it("halves the set when the detail names nothing and still finds every referenced row", function()
    local refd = { uuid(3), uuid(11) }
    local db = fake_db(16, { referenced = set(refd) })
    local store = fake_store(ids(1, 16))
    local code, summary, by_id = cycle(db, store)
    assert.are.equal(0, code, summary.error)
    assert.are.same(sorted(refd), db.left())
    assert.are.same({ "skipped/referenced", "skipped/referenced" }, outcomes_of(by_id, refd))
    assert.are.equal(14, summary.object_deleted)
    assert.are.equal(14, #store.deleted)
    assert.is_true(#db.savepoints > 1)
    for i = 2, #db.savepoints do assert.are.equal("part", db.savepoints[i]) end
  end)

  it("halves when the detail names a value that is none of the batch's ids (a translated message)", function()
    local refd = { uuid(5) }
    local db = fake_db(8, { referenced = set(refd),
      detail = function() return "Schlüssel (id)=(nicht-unsere-id) wird noch referenziert." end })
    local code, summary, by_id = cycle(db, fake_store(ids(1, 8)))
    assert.are.equal(0, code, summary.error)
    assert.are.same(refd, db.left())
    assert.are.same({ "skipped/referenced" }, outcomes_of(by_id, refd))
    assert.are.equal(7, summary.object_deleted)
    assert.are.equal("part", db.savepoints[2])
  end)

  it("takes four named rows, then halves for the rest", function()
    local refd = { uuid(2), uuid(4), uuid(6), uuid(8), uuid(10), uuid(12) }
    local db = fake_db(12, { referenced = set(refd), detail = naming })
    local code, summary, by_id = cycle(db, fake_store(ids(1, 12)))
    assert.are.equal(0, code, summary.error)
    assert.are.same(sorted(refd), db.left())
    assert.are.same(rep("skipped/referenced", 6), outcomes_of(by_id, refd))
    assert.are.equal(6, summary.object_deleted)
    -- Four named retries on "rows", then the halving's "part" savepoints.
    assert.are.same({ "rows", "part" }, { db.savepoints[1], db.savepoints[2] })
  end)

  it("skips a batch of one referenced row without a detail", function()
    local db = fake_db(1, { referenced = { [uuid(1)] = true } })
    local code, summary, by_id = cycle(db, fake_store(ids(1, 1)))
    assert.are.equal(0, code, summary.error)
    assert.are.same({ uuid(1) }, db.left())
    assert.are.same({ "skipped/referenced" }, outcomes_of(by_id, { uuid(1) }))
    assert.are.equal(1, db.deletes) -- the failing one, none after
  end)

  it("leaves referenced rows out before the DELETE when the catalog names the foreign key", function()
    local refd = { uuid(2) }
    local db = fake_db(4, { referenced = set(refd), precheck = true })
    local code, summary, by_id = cycle(db, fake_store(ids(1, 4)))
    assert.are.equal(0, code, summary.error)
    assert.are.same(refd, db.left())
    assert.are.same({ "skipped/referenced" }, outcomes_of(by_id, refd))
    assert.are.equal(1, db.deletes)
    assert.are.equal(1, db.prechecks)
  end)
end)

describe("sweep (in-process): storage failures", function()
  it("rolls back only the rows of objects it could not delete, and reports those failed (exit 1)", function()
    local bad = { uuid(2), uuid(5) }
    local per_key = { kind = "s3", code = "AccessDenied", status = 200, message = "Access Denied" }
    local db = fake_db(6)
    local store = fake_store(ids(1, 6), { fail = { [uuid(2)] = per_key, [uuid(5)] = per_key } })
    local code, summary, by_id = cycle(db, store)
    assert.are.equal(1, code)
    assert.is_nil(summary.error)
    assert.are.same(sorted(bad), db.left())
    assert.are.same({ "failed/AccessDenied", "failed/AccessDenied" }, outcomes_of(by_id, bad))
    assert.are.equal("warn", by_id[uuid(2)].level)
    assert.is_true(store.objects[uuid(2)] and store.objects[uuid(5)])
    for _, id in ipairs({ uuid(1), uuid(3), uuid(4), uuid(6) }) do
      assert.are.equal("object_deleted", by_id[id].outcome, id)
    end
    assert.are.same({ 2, 4, 1 }, { summary.failed, summary.object_deleted, summary.exit_code })
  end)

  it("ends the cycle when every object delete fails for one reason outside the items (unreachable 3, refused 2)",
    function()
    for _, case in ipairs({
      { err = { kind = "s3", code = "connection", message = "Connection refused" }, code = 3,
        prefix = "storage unreachable: " },
      { err = { kind = "s3", code = "AccessDenied", status = 403, message = "Access Denied" }, code = 2,
        prefix = "storage refused: " },
    }) do
      local db = fake_db(3)
      local code, summary, by_id = cycle(db, fake_store(ids(1, 3), { fail_all = case.err }))
      assert.are.equal(case.code, code)
      assert.are.equal(case.code, summary.exit_code)
      assert.are.equal(1, summary.error:find(case.prefix, 1, true), summary.error)
      assert.are.same(ids(1, 3), db.left())
      assert.are.same(rep("failed/" .. case.err.code, 3), outcomes_of(by_id, ids(1, 3)))
    end
  end)

  it("deletes nothing and reports what it would do on a dry run", function()
    local db = fake_db(3)
    local store = fake_store({ uuid(1), uuid(3) })
    local code, summary, by_id, lines = cycle(db, store, nil, true)
    assert.are.equal(0, code, summary.error)
    assert.are.same(ids(1, 3), db.left())
    assert.are.same({}, store.deleted)
    assert.is_true(store.objects[uuid(1)] and store.objects[uuid(3)])
    assert.are.same({ "object_deleted/nil", "record_only/nil", "object_deleted/nil" }, outcomes_of(by_id, ids(1, 3)))
    assert.is_true(summary.dry_run)
    for _, l in ipairs(lines) do
      if l.event == "resource" then assert.is_true(l.fields.dry_run) end
    end
  end)
end)

describe("sweep (in-process): database failures", function()
  it("logs every item of the batch failed (database) and rolls back when the DELETE fails (exit 3)", function()
    local db = fake_db(3, { fail_delete = pgerr("57014", "canceling statement due to statement timeout") })
    local store = fake_store(ids(1, 3))
    local code, summary, by_id = cycle(db, store)
    assert.are.equal(3, code)
    assert.matches("statement timeout", summary.error)
    assert.are.same(ids(1, 3), db.left())
    assert.are.same({}, store.deleted)
    assert.are.same(rep("failed/database", 3), outcomes_of(by_id, ids(1, 3)))
  end)

  it("reports the batch failed (commit) when the commit fails, by the error's class", function()
    local db = fake_db(2, { fail_commit = pgerr("08006", "server closed the connection unexpectedly") })
    local code, summary, by_id = cycle(db, fake_store(ids(1, 2)))
    assert.are.equal(3, code)
    assert.matches("server closed the connection", summary.error)
    assert.are.same(rep("failed/commit", 2), outcomes_of(by_id, ids(1, 2)))
    assert.are.same(ids(1, 2), db.left())
  end)
end)

describe("sweep (in-process): two batches in flight", function()
  it("claims the next batch on a second session while the deletes of one are out, and commits each after them",
    function()
    local trace = {}
    local db = fake_db(10, { trace = trace })
    local store = fake_store(ids(1, 10), { trace = trace })
    local code, summary = cycle(db, store, { batch_size = 3, verify = false })
    assert.are.equal(0, code, summary.error)
    assert.are.same({}, db.left())
    assert.are.equal(10, #store.deleted)
    assert.are.same({ 10, 0 }, { summary.deleted, summary.failed })
    -- 3 + 3 + 3 + 1 rows: the next batch starts before the one in flight
    -- ends; the last claim finds nothing (its empty transaction commits).
    assert.are.same({ "start 1", "start 2", "finish 1", "commit 3", "start 3", "finish 2", "commit 3",
                      "start 4", "finish 3", "commit 3", "finish 4", "commit 1", "commit 0" }, trace)
    assert.are.same({ 2, 2 }, { db.connects, db.closes })
  end)

  it("keeps one session when the first batch is not full", function()
    local trace = {}
    local db = fake_db(2, { trace = trace })
    local code = cycle(db, fake_store(ids(1, 2), { trace = trace }), { batch_size = 3 })
    assert.are.equal(0, code)
    assert.are.same({ "start 1", "finish 1", "commit 2", "commit 0" }, trace)
    assert.are.same({ 1, 1 }, { db.connects, db.closes })
  end)

  it("goes one batch after the other, and says so once, when no second session can be opened", function()
    local trace = {}
    local db = fake_db(7, { trace = trace, max_connects = 1 })
    local code, summary, _, lines = cycle(db, fake_store(ids(1, 7), { trace = trace }), { batch_size = 3 })
    assert.are.equal(0, code, summary.error)
    assert.are.same({}, db.left())
    assert.are.same({ "start 1", "finish 1", "commit 3", "start 2", "finish 2", "commit 3", "start 3", "finish 3",
                      "commit 1", "commit 0" }, trace)
    local off = {}
    for _, l in ipairs(lines) do
      if l.event == "pipeline_off" then off[#off + 1] = l end
    end
    assert.are.equal(1, #off)
    assert.matches("too many connections", off[1].fields.detail)
  end)

  it("finishes and commits the batch in flight when the next one's DELETE fails, then ends (exit 3)", function()
    local trace = {}
    local db = fake_db(6, { trace = trace, fail_delete = pgerr("57014", "canceling statement due to statement timeout"),
                            fail_delete_at = 2 })
    local store = fake_store(ids(1, 6), { trace = trace })
    local code, summary, by_id = cycle(db, store, { batch_size = 3 })
    assert.are.equal(3, code)
    assert.matches("statement timeout", summary.error)
    assert.are.same(ids(4, 6), db.left())
    assert.are.same(rep("object_deleted/nil", 3), outcomes_of(by_id, ids(1, 3)))
    assert.are.same(rep("failed/database", 3), outcomes_of(by_id, ids(4, 6)))
    assert.are.same({ "start 1", "finish 1", "commit 3" }, trace)
    assert.is_true(store.objects[uuid(4)] and store.objects[uuid(6)])
  end)

  it("finishes the batch in flight too when storage is unreachable for one (exit 3, every row kept)", function()
    local trace = {}
    local db = fake_db(6, { trace = trace })
    local err = { kind = "s3", code = "connection", message = "Connection refused" }
    local code, summary, by_id = cycle(db, fake_store(ids(1, 6), { trace = trace, fail_all = err }), { batch_size = 3 })
    assert.are.equal(3, code)
    assert.are.equal(1, summary.error:find("storage unreachable: ", 1, true), summary.error)
    assert.are.same(ids(1, 6), db.left())
    assert.are.same(rep("failed/connection", 6), outcomes_of(by_id, ids(1, 6)))
    assert.are.same({ "start 1", "start 2", "finish 1", "commit 0", "finish 2", "commit 0" }, trace)
  end)
end)

describe("cancel (in-process)", function()
  it("skips a referenced id (exit 1) and cleans the others", function()
    local db = fake_db(3, { referenced = { [uuid(2)] = true } })
    local store = fake_store(ids(1, 3))
    local lines = {}
    local code, summary = cancel.run({ pg = db.pg, store = store, policy = assert(policy.build({})),
      ids = ids(1, 3), emit = function(_, event, f) if event == "resource" then lines[f.resource_id] = f end end })
    assert.are.equal(1, code, summary.error)
    assert.are.same({ uuid(2) }, db.left())
    assert.are.same({ "object_deleted", "skipped", "object_deleted" },
      { lines[uuid(1)].outcome, lines[uuid(2)].outcome, lines[uuid(3)].outcome })
    assert.are.equal("referenced", lines[uuid(2)].reason)
  end)
end)

describe("a resource's outcome (pure)", function()
  local transient = { kind = "s3", code = "connection", message = "refused" }
  local config = { kind = "s3", code = "InvalidAccessKeyId", status = 403, message = "no such key id" }
  local per_key = { kind = "s3", code = "InternalError", status = 200, message = "try again" }

  it("decides from the HEAD and the delete results", function()
    for _, c in ipairs({
      -- exists (HEAD), deleted, outcome, reason
      { true, true, "object_deleted" },
      { false, true, "record_only" },
      { "unlisted", true, "deleted", "not_listed" }, -- not in a listing: it may have landed after
      { nil, true, "deleted" },                  -- verify off: not checked
      { transient, true, "deleted" },            -- HEAD failed: not known
      { true, per_key, "failed", "InternalError" },
      { false, config, "failed", "InvalidAccessKeyId" },
      { nil, { kind = "s3" }, "failed", "s3" },  -- no code: the kind
      { true, "boom", "failed", "boom" },
      { true, nil, "failed", "nil" },            -- no result at all
    }) do
      local o, r = outcome.decide(c[1], c[2])
      assert.are.same({ c[3], c[4] }, { o, r }, ("%s, %s"):format(tostring(c[1]), tostring(c[2])))
    end
  end)

  it("ends the cycle only when every item failed for the same reason outside the items", function()
    local function items(...)
      local t = {}
      for i, e in ipairs({ ... }) do
        t[i] = e == true and { outcome = "object_deleted" } or { outcome = "failed", err = e }
      end
      return t
    end
    local t2 = { kind = "s3", code = "timeout", message = "timed out" }
    assert.are.equal(transient, outcome.batch_stop(items(transient, t2, transient)))
    assert.are.equal(config, outcome.batch_stop(items(config, config)))
    assert.is_nil(outcome.batch_stop(items(transient, config)))      -- two reasons
    assert.is_nil(outcome.batch_stop(items(transient, true)))         -- one went through
    assert.is_nil(outcome.batch_stop(items(true, transient)))
    assert.is_nil(outcome.batch_stop(items(config, true)))
    assert.is_nil(outcome.batch_stop(items(per_key, per_key)))        -- the items' own
    assert.is_nil(outcome.batch_stop(items(transient, per_key)))
    assert.is_nil(outcome.batch_stop({}))
  end)
end)

describe("sweep (in-process): the second session", function()
  it("is opened before the first claim, never while a batch holds rows locked", function()
    local db = fake_db(10)
    db.sessions = {}
    local code, summary = cycle(db, fake_store(ids(1, 10)), { batch_size = 3 })
    assert.are.equal(0, code, summary.error)
    assert.are.same({ "connect", "connect", "claim 3", "claim 3", "claim 3", "claim 1", "claim 0" }, db.sessions)
    assert.are.same({ 2, 2 }, { db.connects, db.closes })
  end)

  it("is not opened when one batch takes everything due", function()
    local db = fake_db(3)
    db.sessions = {}
    assert.are.equal(0, (cycle(db, fake_store(ids(1, 3)), { batch_size = 3 })))
    assert.are.same({ "connect", "claim 3", "claim 0" }, db.sessions)
    db = fake_db(10)
    db.sessions = {}
    assert.are.equal(0, (cycle(db, fake_store(ids(1, 10)), { batch_size = 3, max_deletes_per_run = 2 })))
    assert.are.same({ "connect", "claim 2" }, db.sessions)
  end)

  it("that could not be opened under a connection limit is tried again by the next cycle", function()
    local db = fake_db(12, { max_connects = 1 })
    db.sessions = {}
    local code, summary, _, lines = cycle(db, fake_store(ids(1, 12)), { batch_size = 3, max_deletes_per_run = 6 })
    assert.are.equal(0, code, summary.error)
    local off = 0
    for _, l in ipairs(lines) do
      if l.event == "pipeline_off" then off = off + 1 end
    end
    assert.are.equal(1, off)
    assert.are.same({ "connect", "claim 3", "claim 3" }, db.sessions)
    -- sessions free up: the next cycle has two again
    db.max_connects, db.sessions = 2, {}
    code, summary, _, lines = cycle(db, fake_store(ids(7, 12)), { batch_size = 3 })
    assert.are.equal(0, code, summary.error)
    assert.are.same({ "connect", "connect", "claim 3", "claim 3", "claim 0" }, db.sessions)
    for _, l in ipairs(lines) do assert.are_not.equal("pipeline_off", l.event) end
    assert.are.same({}, db.left())
  end)
end)
