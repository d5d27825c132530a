-- busted output handler: the usual terminal report, then one closing line
-- "specs: N passed, N failed" (errors count as failed) that CI reads.
return function(options)
  local busted = require("busted")
  local term = require("term")
  local tty = io.type(io.stdout) == "file" and term.isatty(io.stdout)
  local name = tty and "utfTerminal" or "plainTerminal"
  local handler = require("busted.outputHandlers." .. name)(options)

  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    io.stdout:write(("\nspecs: %d passed, %d failed\n"):format(handler.successesCount, failed))
    io.stdout:flush()
    return nil, true
  end, { priority = -1 })

  return handler
end
