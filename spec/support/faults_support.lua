-- Shared by the reliability specs (faults, bad input, secrets, TLS): a "world" of stale
-- pending uploads plus controls on the harness's PostgreSQL and RGW, the sweep and cancel
-- run as separate resclean processes, and the invariants the README lists ("How it stays
-- safe") checked against the real servers:
--   * no object is left without its row;
--   * confirmed, fresh, non-upload and referenced resources keep their row and object.
local cjson = require("cjson")
local fx = require("support.fixtures")
local h = require("support.helpers")
local s3h = require("support.s3_helpers")
local sys = require("resclean.sys")

local M = {}

-- pg_stat_activity shows the sweepers of these specs under this name.
M.APPNAME = "resclean-faults"

-- Environment for a resclean process on bucket (helpers.script_env), under APPNAME.
function M.env(bucket, extra)
  return h.script_env(bucket, { PGAPPNAME = M.APPNAME }, extra)
end

-- Run a script to completion, its log decoded (helpers.run_script): argv after "run", e.g.
-- {"scripts/sweep.lua", "--once"}; prefix, a wrapper command (faketime ...) in front of the binary.
function M.run(argv, env, prefix)
  if prefix then
    local line = {}
    for _, p in ipairs(prefix) do line[#line + 1] = h.q(p) end
    line[#line + 1] = h.q(h.bin())
    line[#line + 1] = "run"
    for _, a in ipairs(argv) do line[#line + 1] = h.q(a) end
    local dir = h.tmpdir()
    -- A wrapper that preloads a library (faketime) comes before the ASan runtime of
    -- `make asan test`'s binary, which refuses that unless told it is fine.
    local e = { ASAN_OPTIONS = ((os.getenv("ASAN_OPTIONS") or "") .. ":verify_asan_link_order=0"):gsub("^:", "") }
    for k, v in pairs(env or {}) do e[k] = v end
    local parts = {}
    for k, v in pairs(e) do
      parts[#parts + 1] = v == false and ("-u " .. k) or (k .. "=" .. h.q(v))
    end
    table.sort(parts) -- env takes its -u options before the first NAME=VALUE
    local cmd = ("env %s %s </dev/null >%s 2>%s"):format(table.concat(parts, " "), table.concat(line, " "),
      h.q(dir .. "/out"), h.q(dir .. "/err"))
    local _, _, code = os.execute(cmd)
    return h.decode_run({ code = code, stdout = h.readall(dir .. "/out"), stderr = h.readall(dir .. "/err") })
  end
  return h.run_script(argv, env)
end

function M.sweep(bucket, args, extra_env)
  local argv = { "scripts/sweep.lua" }
  for _, a in ipairs(args or { "--once" }) do argv[#argv + 1] = a end
  return M.run(argv, M.env(bucket, extra_env))
end

function M.policy(text)
  return h.tmpfile(text, "policy.lua")
end

-- ------------------------------------------------------------------ the world

-- Stale pending uploads (half of them with an object) and one of each control, every
-- control with an object. opts: stale (count), with_objects (count), bucket tag.
function M.world(conn, opts)
  opts = opts or {}
  fx.reset(conn)
  local w = { conn = conn, bucket = fx.unique_bucket(opts.tag or "faults") }
  w.client = fx.bucket(w.bucket)
  w.stale = fx.rows(conn, opts.stale or 200)
  -- Objects spread evenly over the claim order (oldest first), so every stretch of a sweep
  -- has objects to delete, whenever a fault strikes.
  local n = math.min(opts.with_objects or #w.stale // 2, #w.stale)
  w.with_objects = {}
  for i = 1, n do w.with_objects[i] = w.stale[(i - 1) * #w.stale // n + 1] end
  w.controls = {}
  local function control(kind, ids)
    for _, id in ipairs(ids) do w.controls[#w.controls + 1] = { id = id, kind = kind } end
  end
  control("fresh", fx.rows(conn, 3, { age_s = 3600 }))
  control("confirmed", fx.rows(conn, 3, { uploaded = true, age_s = 30 * 86400 }))
  control("ephemeral", fx.rows(conn, 2, { type = "EPHEMERAL_WORD_LIST", content = '{"lines":["a"]}' }))
  control("dynamic", fx.rows(conn, 1, { type = "DYNAMIC_WORD_LIST", age_s = 10 * 86400 }))
  local referenced = fx.rows(conn, 2)
  for _, id in ipairs(referenced) do fx.reference(conn, id) end
  control("referenced", referenced)
  w.control_ids = {}
  for i, c in ipairs(w.controls) do w.control_ids[i] = c.id end
  fx.objects(w.client, w.control_ids)
  fx.objects(w.client, w.with_objects)
  return w
end

-- Every key in the world's bucket.
function M.objects(w)
  return s3h.key_set(w.client)
end

-- Every id with a row (stale and controls).
function M.rows(w)
  local res = fx.check(w.conn:query("SELECT id::text AS id FROM attack_resource_files"))
  local set = {}
  for _, r in ipairs(res) do set[r.id] = true end
  return set
end

-- Assert the invariants; `when` says at which moment (for the message). Returns the rows
-- and objects seen.
function M.assert_invariants(w, when)
  local objects = M.objects(w)
  local rows = M.rows(w)
  for key in pairs(objects) do
    assert(rows[key], ("%s: object %s is left without its row"):format(when, key))
  end
  for _, c in ipairs(w.controls) do
    assert(rows[c.id], ("%s: the %s control %s lost its row"):format(when, c.kind, c.id))
    assert(objects[c.id], ("%s: the %s control %s lost its object"):format(when, c.kind, c.id))
  end
  return rows, objects
end

-- Stale resources still there: rows, objects.
function M.stale_left(w)
  local rows, objects = M.rows(w), M.objects(w)
  local nr, no = 0, 0
  for _, id in ipairs(w.stale) do
    if rows[id] then nr = nr + 1 end
    if objects[id] then no = no + 1 end
  end
  return nr, no
end

-- Every resource the log says was cleaned has no row; every one it says failed or
-- skipped still has its row.
function M.assert_log_honest(w, r, when)
  local rows = M.rows(w)
  for _, l in ipairs(r.by.resource or {}) do
    if l.outcome == "object_deleted" or l.outcome == "record_only" or l.outcome == "deleted" then
      if not l.dry_run then
        assert(not rows[l.resource_id], ("%s: %s logged %s but its row is still there")
          :format(when, l.resource_id, l.outcome))
      end
    elseif l.outcome == "failed" or l.outcome == "skipped" then
      assert(rows[l.resource_id], ("%s: %s logged %s but its row is gone"):format(when, l.resource_id, l.outcome))
    end
  end
end

-- Every stale row and object is gone, and the invariants hold.
function M.assert_all_clean(w, when)
  local nr, no = M.stale_left(w)
  assert(nr == 0 and no == 0, ("%s: %d stale rows and %d stale objects are left"):format(when, nr, no))
  M.assert_invariants(w, when)
end

-- A normal run after the fault: exit 0, every stale row and object gone, controls intact.
function M.assert_final_run_cleans(w, when)
  M.wait_no_sweepers(w.conn)
  local r = M.sweep(w.bucket)
  assert(r.code == 0, ("%s: the final run exited %s: %s"):format(when, tostring(r.code), r.stderr))
  M.assert_all_clean(w, when .. ", after the final run")
  return r
end

-- ------------------------------------------------------------------ processes

-- Database sessions of sweepers started by these specs (not our own).
function M.sweeper_backends(conn, extra_where)
  local res = fx.check(conn:query(
    "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()"
    .. (extra_where and (" AND " .. extra_where) or ""), M.APPNAME))
  return res
end

-- Wait until killed sweepers' sessions are gone (the server notices the closed socket).
function M.wait_no_sweepers(conn, timeout)
  h.wait_for(function() return #M.sweeper_backends(conn) == 0 end, timeout or 30,
    "the sessions of killed sweepers to end")
end

-- The stack's current settings (DIR/env is rewritten when radosgw restarts).
function M.stack_env()
  local dir = os.getenv("RESCLEAN_STACK_DIR")
  assert(dir and dir ~= "", "RESCLEAN_STACK_DIR is not set: run the specs through spec/support/with-stack.sh")
  local env = {}
  for line in h.readall(dir .. "/env"):gmatch("[^\n]+") do
    local k, v = line:match("^export ([%w_]+)=(.*)$")
    if k then env[k] = v:gsub("^'(.*)'$", "%1") end
  end
  return env, dir
end

function M.rgw_pid()
  return assert(tonumber(M.stack_env().RESCLEAN_RGW_PID), "no RESCLEAN_RGW_PID in the stack's env")
end

function M.signal(pid, sig)
  assert(os.execute(("kill -%s %d"):format(sig, pid)), ("kill -%s %d failed"):format(sig, pid))
end

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/support"
M.here = here

-- Start radosgw again (after a spec killed it) and wait until it serves signed requests.
function M.restart_rgw()
  local _, dir = M.stack_env()
  local p = assert(io.popen(("bash %s/stack.sh restart-rgw %s 2>&1"):format(h.q(here), h.q(dir))))
  local out = p:read("a")
  local ok = p:close()
  assert(ok, "stack.sh restart-rgw failed:\n" .. out)
  return M.rgw_pid()
end

-- What a spawned process wrote so far. helpers.spawn returns once the pid is known, which
-- can be before the child's shell has created its output file: read that as "nothing yet".
function M.output(proc, which)
  local f = io.open(proc.dir .. "/" .. (which or "out"), "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- A spawned process that ended with code, its log decoded (helpers.decode_run).
function M.proc_result(proc, code)
  return h.decode_run({ code = code, stdout = M.output(proc), stderr = M.output(proc, "err") })
end

-- The resource lines logged so far by a spawned process.
function M.logged(proc)
  local n = 0
  for _ in M.output(proc):gmatch('"event":"resource"') do n = n + 1 end
  return n
end

-- Decode what a spawned process wrote, tolerating a last line cut by SIGKILL.
function M.partial_log(text)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    local ok, rec = pcall(cjson.decode, line)
    if ok then lines[#lines + 1] = rec end
  end
  return lines
end

-- The lines with this event (nil: every line) a spawned process wrote so far.
function M.events(proc, event)
  local out = {}
  for _, l in ipairs(M.partial_log(M.output(proc))) do
    if not event or l.event == event then out[#out + 1] = l end
  end
  return out
end

function M.elapsed(t0) return sys.monotime() - t0 end

return M
