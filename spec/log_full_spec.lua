-- No deletion without its line: the sweep's stdout on a small tmpfs that fills up mid-run
-- (ENOSPC), on the real stack. Every row the sweep deleted must have a resource line in what
-- reached the file: a batch whose lines cannot be written is rolled back, the one in flight
-- too, and no claim starts after a failed write. With the second session (batches come back
-- full: two batches in flight) and without it (a proxy that allows one connection).
local cjson = require("cjson")
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"

-- A tmpfs of `size` mounted on a new folder, or nil and why not (not root, no mount).
local function small_fs(size)
  local dir = h.tmpdir() .. "/fs"
  assert(os.execute("mkdir -p " .. h.q(dir)))
  local out, code = h.sh(("mount -t tmpfs -o size=%s tmpfs %s"):format(size, h.q(dir)))
  if code ~= 0 then return nil, out end
  return dir
end

local function unmount(dir)
  os.execute(("umount %s >/dev/null 2>&1"):format(h.q(dir)))
end

-- Run the sweep --once with stdout to the file `out`; env as helpers.run takes it.
local function sweep_to(out, env, policy)
  local parts = {}
  for k, v in pairs(env) do
    parts[#parts + 1] = v == false and ("-u " .. k) or (k .. "=" .. h.q(v))
  end
  table.sort(parts)
  local err = h.tmpdir() .. "/err"
  local cmd = ("env %s %s run scripts/sweep.lua --once --policy %s </dev/null >%s 2>%s"):format(
    table.concat(parts, " "), h.q(h.bin()), h.q(policy), h.q(out), h.q(err))
  local _, _, code = os.execute(cmd)
  return code, h.readall(err)
end

-- The resource lines that reached the file (a cut last line left out): id -> line.
local function logged(path)
  local ids, events = {}, {}
  for line in h.readall(path):gmatch("[^\n]+") do
    local ok, rec = pcall(cjson.decode, line)
    if ok and type(rec) == "table" then
      events[rec.event] = (events[rec.event] or 0) + 1
      if rec.event == "resource" then ids[rec.resource_id] = rec end
    end
  end
  return ids, events
end

-- The sweep on a full log: zero rows gone without a line; the invariants hold; a later run
-- with a working log finishes the work.
local function full_log_run(conn, tag, env_extra)
  local fsdir, why = small_fs("640k")
  if not fsdir then
    print(("\n  skipped: cannot mount a tmpfs here (%s)"):format((why or ""):gsub("%s+$", "")))
    return nil
  end
  finally(function() unmount(fsdir) end)
  local w = fs.world(conn, { stale = 6000, with_objects = 3000, tag = tag })
  local pol = fs.policy("return { batch_size = 1000 }")
  local out = fsdir .. "/sweep.log"
  local code, stderr = sweep_to(out, fs.env(w.bucket, env_extra), pol)
  assert.are.equal(2, code, stderr)
  assert.matches("the log cannot be written", stderr, 1, true)
  local lines, events = logged(out)
  local rows = fs.rows(w)
  local gone, unlogged = 0, {}
  for _, id in ipairs(w.stale) do
    if not rows[id] then
      gone = gone + 1
      if not lines[id] then unlogged[#unlogged + 1] = id end
    end
  end
  assert.is_true(gone > 0, "nothing was deleted before the log filled up: the tmpfs is too small for the spec")
  assert.is_true(gone < 6000, "everything was deleted: the tmpfs never filled up")
  assert.are.equal(0, #unlogged, ("%d of %d rows deleted without a resource line (e.g. %s)")
    :format(#unlogged, gone, tostring(unlogged[1])))
  fs.assert_invariants(w, "after the log filled up")
  fs.assert_final_run_cleans(w, "after the log filled up")
  return events
end

describe("with its log on a full file system (ENOSPC), the sweep", function()
  local conn
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  it("deletes no row without its resource line, with two batches in flight", function()
    full_log_run(conn, "enospc-pipe")
  end)

  it("deletes no row without its resource line, on one session (the second cannot be opened)", function()
    local url = assert(os.getenv("DATABASE_URL"))
    local host, port = url:match("@([^:/]+):(%d+)/")
    local proxy = h.start_server(here .. "/support/commit_drop_proxy.py", { host, port, "--drops", "0",
      "--max-conns", "1" })
    finally(function() os.execute("kill " .. proxy.pid) end)
    local proxied = url:gsub("@([^:/]+):(%d+)/", "@127.0.0.1:" .. proxy.port .. "/", 1)
    local events = full_log_run(conn, "enospc-one", { DATABASE_URL = proxied })
    if events then
      assert.is_true((events.pipeline_off or 0) >= 1, "the sweep used a second session through the proxy")
    end
  end)
end)
