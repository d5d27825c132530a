-- Cancel: clean up given pending resources now, through the batch's own
-- steps, with no age condition. Each id is locked on its own (the lock
-- timeout bounds the wait): a locked row is skipped, confirmed and
-- non-upload rows are refused, missing ones are already done. Exit 1 when
-- anything was left (skipped, refused or failed): the cancel did not do
-- what was asked.
local batch = require("resclean.batch")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local runs = require("resclean.run")
local session = require("resclean.session")

local M = {}

local cancel_ids, lock_all, lock_one

-- opts: pg, store, policy, conninfo, dry_run, run_id, ids. Returns exit
-- code, summary fields.
function M.run(opts)
  local code, summary = session.with(opts, "cancel", function(conn, sql, run)
    run.eligible = #opts.ids
    return M.ids(conn, sql, opts.store, run, opts.ids)
  end)
  return code, summary
end

-- Cancel ids on an open session; where a cancel ends. Returns exit code,
-- summary fields.
function M.ids(conn, sql, store, run, ids)
  local ok, err = cancel_ids(conn, sql, store, run, ids)
  if not ok then return runs.ended_on(err) end
  if run.counts.skipped > 0 then return runs.EXIT.failed end
  return run:exit_code()
end

-- Lock, check and settle the ids in one transaction. Returns true, or
-- nil, err (with what was decided logged).
function cancel_ids(conn, sql, store, run, ids)
  local tx <close>, err = conn:begin()
  if not tx then return nil, err end
  local ok
  ok, err = conn:query("SET CONSTRAINTS ALL IMMEDIATE")
  if not ok then return nil, err end
  local ctx = { conn = conn, tx = tx, sql = sql, store = store, run = run }
  local todo
  todo, err = lock_all(ctx, ids)
  if not todo then return nil, err end
  local ok_log, why = log.healthy()
  if not ok_log then return nil, runs.log_unwritable(why) end
  local done
  done, err = batch.settle(ctx, todo)
  if not done then return nil, err end
  run:log_decided(done)
  err = batch.stop_error(done)
  if err then return nil, err end
  return true
end

-- Lock each id once; those to clean up are returned, the rest logged.
-- Returns items, or nil, err.
function lock_all(ctx, ids)
  local todo, seen = {}, {}
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      local item, err = lock_one(ctx, id)
      if item then
        todo[#todo + 1] = item
      elseif err then
        return nil, err
      end
    end
  end
  return todo
end

-- Lock one id. Returns the item to clean up, false when its outcome is
-- decided and logged (locked, invalid, missing, confirmed, not an upload),
-- or nil, err.
function lock_one(ctx, id)
  local tx, run = ctx.tx, ctx.run
  local ok, err = tx:savepoint("lock")
  if not ok then return nil, err end
  local res
  res, err = ctx.conn:query(ctx.sql.lock_one, id)
  if not res then
    if err.code == "55P03" then
      tx:rollback_to("lock")
      run:outcome({ id = id }, "skipped", "locked")
    elseif err.code == "22P02" then
      tx:rollback_to("lock")
      run:outcome({ id = id }, "not_found", "invalid_id")
    else
      return nil, err
    end
    return false
  end
  tx:release("lock")
  if #res == 0 then
    run:outcome({ id = id }, "not_found")
    return false
  end
  local row = res[1]
  local item = { id = row.id, age_s = row.age_s, row = row }
  if row._uploaded then
    run:outcome(item, "refused", "confirmed")
  elseif not policy_mod.is_upload_type(run.policy, row._type) then
    run:outcome(item, "refused", "not_upload")
  else
    return item
  end
  return false
end

return M
