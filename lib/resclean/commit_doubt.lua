-- Commits in doubt: the answer to a batch's COMMIT was lost (batch.lua's
-- end_settle), so the server may have committed or not. resolve asks a
-- fresh session which of the batch's rows are still there; the ids it
-- could not ask about are kept, and the next cycle settles them first
-- (settle_in_doubt).
local errors = require("resclean.errors")
local log = require("resclean.log")
local session = require("resclean.session")

local M = {}

-- A transaction's end without commit (rolls back; never raises).
local function close_tx(tx)
  local mt = getmetatable(tx)
  if mt and mt.__close then mt.__close(tx) end
end

-- The connection failed on COMMIT (err.code "connection": no answer came
-- back): the server may have committed or not. A server's own refusal
-- (a serialization failure, a deferred constraint) is an answer: rolled
-- back, failed/commit as ever.
function M.answer_lost(err)
  return type(err) == "table" and err.kind == "pg" and err.code == "connection"
end

-- Ids whose outcome waits for the database, across the cycles of this
-- process: { id, key, age_s, outcome, reason, run_id } each. The next
-- cycle settles them first (settle_in_doubt). At most IN_DOUBT_MAX kept.
M.in_doubt = {}
M.IN_DOUBT_MAX = 100000

-- Which of ids still have a row, asked on conn (a session whose
-- transactions start with the policy's timeouts: session.per_transaction)
-- in a transaction of its own. FOR KEY SHARE waits (at most lock_timeout) for a transaction that
-- still holds their rows, the one whose COMMIT is in doubt included, so
-- the answer is that transaction's end, never a view from before it.
-- Returns the set of ids still there, or nil, err.
function M.rows_there(conn, p, ids)
  local there = {}
  if #ids == 0 then return there end
  local tx, err = conn:begin()
  if not tx then return nil, err end
  local q = function(x) return conn:quote_ident(x) end
  local res
  res, err = conn:query(("SELECT %s::text AS id FROM %s WHERE %s = ANY($1) FOR KEY SHARE")
    :format(q(p.id_column), q(p.table), q(p.id_column)), ids)
  close_tx(tx)
  if not res then return nil, err end
  for _, r in ipairs(res) do there[r.id] = true end
  return there
end

-- The answer to this batch's COMMIT was lost: ask a fresh session which of
-- its deleted rows are still there, and log each item as what happened:
-- its decided outcome when its row is gone (the commit happened), failed
-- (commit) when its row is still there (it did not). When the database
-- cannot be asked, in_doubt (reason commit): remembered, and the next cycle
-- of a long-running sweep settles it (settle_in_doubt).
function M.resolve(ctx, done, err)
  local run = ctx.run
  local ids, asked = {}, {}
  for _, it in ipairs(done) do
    if it.outcome ~= "failed" then -- failed: its row was put back before the commit
      ids[#ids + 1] = it.id
      asked[#asked + 1] = it
    end
  end
  local there, why
  if #ids > 0 then
    if run.pg and run.conninfo then
      local conn
      conn, why = run.pg.connect(run.conninfo)
      if conn then
        conn:per_transaction(session.per_transaction(run.policy))
        there, why = M.rows_there(conn, run.policy, ids)
        conn:close()
      end
    else
      why = "no session to ask on"
    end
  end
  local gone = 0
  for _, it in ipairs(asked) do
    if not there then
      if #M.in_doubt < M.IN_DOUBT_MAX then
        M.in_doubt[#M.in_doubt + 1] = { id = it.id, key = it.key, age_s = it.age_s, outcome = it.outcome,
                                        reason = it.reason, run_id = run.run_id }
      end
      it.outcome, it.reason = "in_doubt", "commit"
    elseif there[it.id] then
      it.outcome, it.reason = "failed", "commit"
    else
      gone = gone + 1
    end
  end
  if #asked > 0 then
    run.emit("warn", "commit_lost", { run_id = run.run_id, resources = #asked,
      committed = there and (gone == #asked) or nil, detail = errors.message(err),
      message = there and ("the answer to COMMIT was lost; asked on a new session: %d of %d rows are gone")
        :format(gone, #asked)
        or ("the answer to COMMIT was lost and the database could not be asked (%s): logged in_doubt")
          :format(errors.message(why)) })
  end
  run:log_decided(done)
end

-- The ids a lost COMMIT left in doubt, settled at the start of a cycle on
-- its session: a row gone is logged with the outcome its batch decided
-- (field in_doubt_run_id names the run that logged it in_doubt); a row still
-- there gets an in_doubt_settled line (outcome kept) and is swept again as
-- usual. Returns true (those still in doubt kept for the next cycle when
-- the rows are locked), or nil, err.
function M.settle_in_doubt(conn, run)
  local list = M.in_doubt
  if #list == 0 then return true end
  local ids = {}
  for i, d in ipairs(list) do ids[i] = d.id end
  local there, err = M.rows_there(conn, run.policy, ids)
  if not there then
    if type(err) == "table" and err.code == "55P03" then
      run.emit("info", "in_doubt_wait", { run_id = run.run_id, resources = #list,
        message = "rows of a commit in doubt are still locked: settled at the next cycle" })
      return true
    end
    return nil, err
  end
  M.in_doubt = {}
  log.hold()
  for _, d in ipairs(list) do
    if there[d.id] then
      run.emit("info", "in_doubt_settled", { run_id = run.run_id, resource_id = d.id, key = d.key,
        outcome = "kept", in_doubt_run_id = d.run_id,
        message = "its row is still there: that commit did not happen; swept again as usual" })
    else
      run:outcome({ id = d.id, key = d.key, age_s = d.age_s, in_doubt_run_id = d.run_id }, d.outcome, d.reason)
    end
  end
  log.release()
  return true
end

return M
