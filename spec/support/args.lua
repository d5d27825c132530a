-- A small flag parser for the bench and soak scripts (spec/bench/), which
-- take flags of their own; the operator scripts use lib/resclean/cli.lua.
local M = {}

-- Parse flags: spec maps "--name" to "flag" (boolean) or "value" (takes
-- the next argument). Returns opts, positional or nil, usage message.
function M.parse(argv, spec)
  local opts, rest = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    name = name or a:match("^%-%-([%w%-]+)$")
    if a == "--" then
      table.move(argv, i + 1, #argv, #rest + 1, rest)
      break
    elseif name then
      local kind = spec[name]
      if not kind then return nil, ("unknown option --%s"):format(name) end
      if kind == "flag" then
        if inline then return nil, ("option --%s takes no value"):format(name) end
        opts[name] = true
      else
        local v = inline
        if not v then
          i = i + 1
          v = argv[i]
        end
        if not v then return nil, ("option --%s needs a value"):format(name) end
        opts[name] = v
      end
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  return opts, rest
end

return M
