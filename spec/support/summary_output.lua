-- busted output handler: the usual terminal report, then one closing line
-- "specs: N passed, N failed" (errors count as failed) that CI reads.
-- It also makes finally() add a cleanup instead of replacing the one before:
-- busted keeps only the last, so a test that stopped a server in one finally
-- and unmounted a folder in another left the server running.

-- Before each test: every finally(fn) of the test runs, the last registered
-- first, each even when one before it failed; the first error is raised.
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
  return nil, true
end

return function(options)
  local busted = require("busted")
  local term = require("term")
  local tty = io.type(io.stdout) == "file" and term.isatty(io.stdout)
  local name = tty and "utfTerminal" or "plainTerminal"
  local handler = require("busted.outputHandlers." .. name)(options)

  busted.subscribe({ "test", "start" }, chain_finally, { priority = 1 })

  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    io.stdout:write(("\nspecs: %d passed, %d failed\n"):format(handler.successesCount, failed))
    io.stdout:flush()
    return nil, true
  end, { priority = -1 })

  return handler
end
