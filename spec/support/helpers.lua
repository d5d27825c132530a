-- Helpers shared by specs: run the resclean binary, temporary files,
-- shell quoting, polling with a deadline.
local sys = require("resclean.sys")

local M = {}

local tmp_root

local function readall(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
M.readall = readall

function M.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The binary running these specs (also the ASan build under `make asan test`).
function M.bin()
  if not M._bin then
    local p = assert(io.popen("readlink /proc/" .. sys.pid() .. "/exe"))
    M._bin = p:read("l")
    p:close()
  end
  return M._bin
end

function M.tmpdir()
  if not tmp_root then
    local p = assert(io.popen("mktemp -d /tmp/resclean-spec.XXXXXX"))
    tmp_root = p:read("l")
    p:close()
    M.count = 0
  end
  M.count = M.count + 1
  local dir = ("%s/%d"):format(tmp_root, M.count)
  assert(os.execute("mkdir -p " .. M.q(dir)))
  return dir
end

function M.write(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

function M.tmpfile(content, name)
  return M.write(M.tmpdir() .. "/" .. (name or "script.lua"), content)
end

local function envprefix(env)
  local parts = {}
  for k, v in pairs(env or {}) do
    if v == false then
      parts[#parts + 1] = "-u " .. k
    else
      parts[#parts + 1] = k .. "=" .. M.q(v)
    end
  end
  table.sort(parts)
  return #parts > 0 and ("env " .. table.concat(parts, " ") .. " ") or ""
end

-- Run the resclean binary: argv (without the binary), env overrides
-- (value false unsets). Returns {code, stdout, stderr}.
function M.run(argv, env, opts)
  opts = opts or {}
  local dir = M.tmpdir()
  local cmd = { M.q(M.bin()) }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = M.q(a) end
  local line = ("%s%s <%s >%s 2>%s"):format(envprefix(env), table.concat(cmd, " "),
    opts.stdin and M.q(M.write(dir .. "/stdin", opts.stdin)) or "/dev/null",
    M.q(dir .. "/out"), M.q(dir .. "/err"))
  local _, _, code = os.execute(line)
  return { code = code, stdout = readall(dir .. "/out"), stderr = readall(dir .. "/err"), dir = dir }
end

-- Run a shell command: its output (stdout and stderr together) and exit code.
function M.sh(cmd)
  local out = M.tmpdir() .. "/out"
  local _, _, code = os.execute(("%s >%s 2>&1"):format(cmd, M.q(out)))
  return readall(out), code
end

-- Is tool on the PATH?
function M.have(tool)
  return select(2, M.sh("command -v " .. M.q(tool))) == 0
end

-- Environment for a resclean script on bucket: no policy or log level inherited, then each
-- table of overrides in turn (a value false unsets).
function M.script_env(bucket, ...)
  local e = { RESCLEAN_BUCKET = bucket, RESCLEAN_POLICY = false, RESCLEAN_LOG_LEVEL = false }
  for i = 1, select("#", ...) do
    for k, v in pairs(select(i, ...) or {}) do e[k] = v end
  end
  return e
end

-- A finished run {code, stdout, stderr} with its log decoded: r.lines, r.by (event -> lines),
-- r.outcomes (resource lines by id, each id once), r.summary (the last sweep or cancel line).
function M.decode_run(r)
  local ok, lines, by = pcall(M.parse_log, r.stdout)
  if not ok then error(("resclean wrote a line that is not JSON (exit %s): %s\nstderr: %s")
    :format(tostring(r.code), tostring(lines), r.stderr), 2) end
  r.lines, r.by = lines, by
  r.outcomes = M.outcomes(by)
  r.summary = by.sweep and by.sweep[#by.sweep] or by.cancel and by.cancel[#by.cancel]
  return r
end

-- Run a script to completion, argv after "run" (e.g. {"scripts/sweep.lua", "--once"}), and
-- decode its log (decode_run).
function M.run_script(argv, env)
  return M.decode_run(M.run({ "run", table.unpack(argv) }, env))
end

-- Start the binary in the background: {pid, stdout(), stderr(), alive(),
-- kill(sig), wait(timeout) -> exit code}. A subshell records the real pid
-- and, when it ends, its exit status.
function M.spawn(argv, env)
  local dir = M.tmpdir()
  local cmd = { M.q(M.bin()) }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = M.q(a) end
  local line = ("( %s%s </dev/null >%s 2>%s & echo $! >%s; wait $!; echo $? >%s.tmp; mv %s.tmp %s ) >/dev/null 2>&1 &")
    :format(envprefix(env), table.concat(cmd, " "), M.q(dir .. "/out"), M.q(dir .. "/err"),
      M.q(dir .. "/pid"), M.q(dir .. "/rc"), M.q(dir .. "/rc"), M.q(dir .. "/rc"))
  -- The files exist before the child runs, so reading them early never fails.
  M.write(dir .. "/out", "")
  M.write(dir .. "/err", "")
  assert(os.execute(line))
  local proc = { dir = dir }
  local function exists(f)
    local h = io.open(dir .. "/" .. f, "rb")
    if h then h:close() end
    return h ~= nil
  end
  proc.pid = tonumber(M.wait_for(function()
    return exists("pid") and readall(dir .. "/pid"):match("%d+")
  end, 10, "the spawned process's pid"))
  function proc.stdout() return readall(dir .. "/out") end
  function proc.stderr() return readall(dir .. "/err") end
  function proc.alive() return not exists("rc") end
  function proc.kill(sig) os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", proc.pid)) end
  function proc.wait(timeout)
    M.wait_for(function() return exists("rc") end, timeout or 30, "process " .. proc.pid .. " to exit")
    return tonumber(readall(dir .. "/rc"):match("%d+"))
  end
  return proc
end

-- Poll fn() until it returns a truthy value or the deadline passes.
function M.wait_for(fn, timeout, what)
  local deadline = sys.monotime() + (timeout or 10)
  repeat
    local v = fn()
    if v then return v end
    sys.sleep(0.02)
  until sys.monotime() > deadline
  error(("timed out after %ss waiting for %s"):format(timeout or 10, what or "a condition"), 2)
end

-- The python3 to start helper servers with: not a pyenv shim where /usr/bin/python3 exists
-- (a shim costs most of a second per start).
function M.python()
  local f = io.open("/usr/bin/python3")
  if f then
    f:close()
    return "/usr/bin/python3"
  end
  return "python3"
end

-- Start a helper server in the background: python3 SCRIPT DIR ARGS..., where DIR is a new
-- temporary folder in which the server writes the port it listens on (DIR/port); its output
-- goes to DIR/log. Returns {dir, pid, port}.
function M.start_server(script, args)
  local dir = M.tmpdir()
  local line = script:match("%.py$") and { M.python(), M.q(script), M.q(dir) } or { M.q(script), M.q(dir) }
  for _, a in ipairs(args or {}) do line[#line + 1] = M.q(a) end
  assert(os.execute(("%s >%s 2>&1 & echo $! >%s"):format(table.concat(line, " "), M.q(dir .. "/log"),
    M.q(dir .. "/pid"))))
  local name = script:match("[^/]*$")
  local function number_in(file)
    local f = io.open(dir .. "/" .. file)
    local s = f and f:read("a")
    if f then f:close() end
    return s and tonumber(s:match("%d+"))
  end
  local server = { dir = dir }
  server.pid = M.wait_for(function() return number_in("pid") end, 10, name .. "'s pid")
  server.port = M.wait_for(function() return number_in("port") end, 20, name .. " to listen")
  return server
end

-- The set of a list's values (value -> true).
function M.set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

-- Decode JSON log lines; returns lines, by_event (event -> list).
function M.parse_log(text)
  local cjson = require("cjson")
  local lines, by = {}, {}
  for line in text:gmatch("[^\n]+") do
    local ok, rec = pcall(cjson.decode, line)
    assert(ok, "not a JSON log line: " .. line)
    lines[#lines + 1] = rec
    by[rec.event] = by[rec.event] or {}
    table.insert(by[rec.event], rec)
  end
  return lines, by
end

-- resource lines indexed by resource_id (asserting each id appears once).
function M.outcomes(by)
  local out = {}
  for _, r in ipairs(by.resource or {}) do
    assert(out[r.resource_id] == nil, "resource logged twice: " .. tostring(r.resource_id))
    out[r.resource_id] = r
  end
  return out
end

function M.cleanup()
  if tmp_root then os.execute("rm -rf " .. M.q(tmp_root)) end
end

return M
