-- busted output handler: the usual terminal report, then one closing line
-- "specs: N passed, N failed" (errors count as failed) that CI reads.
-- It also makes finally() add a cleanup instead of replacing the one before:
-- busted keeps only the last, so a test that stopped a server in one finally
-- and unmounted a folder in another left the server running.

-- The event catalogue check (lib/resclean/log.lua): with RESCLEAN_EVENT_CHECK
-- set (the Makefile sets it), every process of the run notes there a log
-- event that lib/resclean/events.lua does not list (or not at that level).
-- The file is emptied at the start; what a test added fails that test, and
-- what came between tests fails the run at its end.
local check_path = os.getenv("RESCLEAN_EVENT_CHECK")
if check_path == "" then check_path = nil end
local check_seen = 0 -- bytes of the file already reported

local function new_notes()
  local f = check_path and io.open(check_path, "rb")
  if not f then return nil end
  f:seek("set", check_seen)
  local text = f:read("a")
  f:close()
  check_seen = check_seen + #text
  if text == "" then return nil end
  return "log events not in the event catalogue, at a level it does not give them, or with fields it does not "
    .. "list: add each to lib/resclean/events.lua and resclean(1)'s LOGS section (or log it at a listed "
    .. "level):\n" .. text
end

local function check_events()
  local notes = new_notes()
  if notes then error(notes, 0) end
end

-- Before each test: every finally(fn) of the test runs, the last registered
-- first, each even when one before it failed; the first error is raised.
-- The catalogue check is the first registered: it runs last.
local function chain_finally(element)
  local env = element.env
  local set = env and env.finally
  if not set then return nil, true end
  local list = {}
  env.finally = function(fn)
    list[#list + 1] = fn
    if #list > 1 then return end
    set(function()
      local first
      for i = #list, 1, -1 do
        local ok, err = pcall(list[i])
        if not ok and first == nil then first = err end
      end
      if first ~= nil then error(first, 0) end
    end)
  end
  if check_path then env.finally(check_events) end
  return nil, true
end

return function(options)
  local busted = require("busted")
  local term = require("term")
  local tty = io.type(io.stdout) == "file" and term.isatty(io.stdout)
  local name = tty and "utfTerminal" or "plainTerminal"
  local handler = require("busted.outputHandlers." .. name)(options)

  busted.subscribe({ "test", "start" }, chain_finally, { priority = 1 })

  if check_path then
    local f = io.open(check_path, "w")
    if f then f:close() end
  end

  busted.subscribe({ "suite", "end" }, function()
    local notes = new_notes()
    if notes then
      io.stdout:write("\n", notes)
      busted.publish({ "error" }, { descriptor = "suite", name = "the event catalogue check" }, nil, notes, {})
    end
    local failed = handler.failuresCount + handler.errorsCount
    io.stdout:write(("\nspecs: %d passed, %d failed\n"):format(handler.successesCount, failed))
    io.stdout:flush()
    return nil, true
  end, { priority = -1 })

  return handler
end
