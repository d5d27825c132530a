-- Reconcile: objects in the bucket that no row owns (orphans), and
-- confirmed rows whose object is missing. scripts/reconcile.lua parses the
-- flags and calls M.main, which composes the run from its parts:
--   reconcile_owners.lua  the ownership proof (which rows own which keys,
--                         and whether a key's owner can be proven)
--   reconcile_names.lua   the name scan (every readable column that names
--                         a key without owner)
--   reconcile_run.lua     the Run: plan every page, refuse, apply
--
-- An orphan is an object whose key matches the policy's key_pattern, that
-- was last modified before the cutoff, and that no owner (policy.owners)
-- holds. Orphans appear when a presigned PUT lands after its row was swept
-- or cancelled. Nothing any row names is deleted; a plan that refuses
-- deletes nothing.
local app = require("resclean.app")
local config = require("resclean.config")
local errors = require("resclean.errors")
local log = require("resclean.log")
local names_mod = require("resclean.reconcile_names")
local owners_mod = require("resclean.reconcile_owners")
local policy_mod = require("resclean.policy")
local run_mod = require("resclean.reconcile_run")
local runs = require("resclean.run")
local sys = require("resclean.sys")

local M = {}

M.PAGE = 1000 -- S3's most keys a list reply or a DeleteObjects request holds

-- The whole run over an open connection and store. ctx: owners, tables
-- and unreadable (reconcile_owners.check_owners, reconcile_names.name_columns).
-- opts: apply, json, older_than, page_size, max_delete. Returns exit
-- code[, message for stderr].
function M.reconcile(conn, store, ctx, p, opts)
  -- The start line's id (app.start_line), so every line of the run carries one id.
  local run = run_mod.new({ policy = p, apply = opts.apply, human = not opts.json,
                            page_size = opts.page_size or M.PAGE, run_id = app.run_id })
  local res, err = conn:query("SELECT extract(epoch FROM now())::float8 AS now")
  if not res then return run:stop_on(err) end
  local t0, db0 = sys.monotime(), res[1].now
  local function db_now() return db0 + (sys.monotime() - t0) end
  local cutoff = db0 - opts.older_than
  run:preamble(ctx, opts.older_than, cutoff)
  local ok
  ok, err = run:check_hidden(conn, ctx)
  if not ok then return run:stop_on(err) end
  -- 1. Plan every page; nothing is deleted.
  ok, err = run:plan_all(conn, store, ctx, db_now, cutoff)
  if not ok then return run:stop_on(err) end
  if sys.stopping() then
    run:summary("reconcile", { stopped = true })
    return errors.EXIT.ok
  end
  -- 2. Refuse a plan that would delete what a row names, or that is too big.
  local refusal = run:refusal()
  local within, limit_or_msg = run_mod.valve(run.counts.orphans, run.counts.candidates, p.reconcile_max_delete_fraction,
    opts.max_delete)
  if refusal or (opts.apply and not within) then
    if opts.apply then
      for _, e in ipairs(run.plan) do run:orphan(e, "planned") end
    end
    return run:stop_on(refusal or limit_or_msg)
  end
  -- 3. Apply, after asking again about row-level security (switched on
  -- while planning, it would hide rows from the re-checks).
  if opts.apply then
    ok, err = run:check_hidden(conn, ctx)
    if ok then ok, err = run:apply_plan(conn, store, ctx) end
    if not ok then return run:stop_on(err) end
  end
  local s = run:summary("reconcile", { older_than_s = opts.older_than,
    delete_limit = opts.apply and limit_or_msg or nil, stopped = sys.stopping() or nil })
  run:report(within, limit_or_msg)
  return s.failed > 0 and errors.EXIT.failed or errors.EXIT.ok
end

local STANDBY_REFUSAL = "reconcile must run against the primary: a standby replays the primary's changes "
  .. "with a delay, so it may lack the newest rows, and the objects they own would look orphaned and be deleted; "
  .. "point DATABASE_URL at the primary (or list every host with target_session_attrs=read-write)"

-- Every statement in a READ ONLY transaction of its own with the timeout
-- SET LOCAL: nothing stays on the server connection (a transaction pool
-- hands it to the application next).
local function connect(p)
  local conn, err = require("resclean.pg").connect(config.conninfo())
  if not conn then return nil, err end
  -- A lagging standby lacks the newest rows: their objects would look orphaned.
  local ok_role
  ok_role, err = require("resclean.session").server_role(conn, { refuse = STANDBY_REFUSAL })
  if not ok_role then
    conn:close()
    return nil, err
  end
  conn:per_transaction(("SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = %d")
    :format(math.ceil(p.statement_timeout * 1000)))
  return conn
end

-- From a loaded policy and options to an exit code: the database, the
-- owners and the columns that may name keys, the store (each failing with
-- app.fail), then the run.
-- opts: apply, json, older_than (seconds), page_size (default M.PAGE),
-- max_delete (or nil).
function M.start(p, opts)
  local conn, err = connect(p)
  if not conn then return app.fail(errors.exit_code(err), "database: " .. errors.message(err)) end
  local owners, cols
  owners, err = owners_mod.check_owners(conn, p, opts.page_size or M.PAGE)
  if owners then cols, err = names_mod.name_columns(conn, p, owners) end
  if not cols then
    conn:close()
    return app.fail(errors.exit_code(err), errors.message(err))
  end
  local store, code, msg = app.open_store(p, true)
  if not store then
    conn:close()
    return app.fail(code, msg)
  end
  code, msg = M.reconcile(conn, store, { owners = owners, tables = cols.tables, unreadable = cols.unreadable },
    p, opts)
  store:close()
  conn:close()
  if msg then log.stderr(log.redact(msg)) end
  return code
end

-- From the script's flags to an exit code. flags: cli.parse's (policy,
-- log-level, apply, json, older-than) with page_size and max_delete read;
-- usage(msg) reports a flag the policy refuses (exit 2).
function M.main(flags, usage)
  local p, err = app.load_policy(flags)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  -- The audit trail of a run that may delete: its first line written and checked.
  local ok_log, why = app.start_line("reconcile", p, { apply = flags.apply or nil })
  if not ok_log then return runs.ended_on(runs.log_unwritable(why)) end
  local older = p.max_age + p.url_lifetime
  if flags["older-than"] then
    older = policy_mod.duration(flags["older-than"])
    if not older or older < p.url_lifetime then
      return usage(("--older-than: expected a duration of at least the policy's url_lifetime (%ss): a younger "
        .. "object may still gain its row"):format(p.url_lifetime))
    end
  end
  return M.start(p, { apply = flags.apply, json = flags.json, older_than = older, page_size = flags.page_size,
                      max_delete = flags.max_delete })
end

return M
