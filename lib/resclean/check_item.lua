-- An item of the preflight (check.lua): {item, status, message[, fix][,
-- details...]}, status one of
--   ok           nothing to do
--   warn         works, but worth a look (exit code unchanged)
--   fail         a setting to fix: fix says which and how
--   unreachable  the database or the storage did not answer
--   skip         not checked (message says why)
-- The database items are check_db.lua's, the storage items
-- check_storage.lua's; both make items of errors here.
local errors = require("resclean.errors")

local M = {}

-- An item from an error of the primitives: unreachable when transient,
-- else fail, with the hint as the fix.
function M.from_error(name, err, prefix, fix)
  local class, hint = errors.classify(err)
  local quiet = err
  if type(err) == "table" then -- the hint goes in fix, not in the message too
    quiet = {}
    for k, v in pairs(err) do quiet[k] = v end
    quiet.no_hint = true
  end
  local msg = (prefix or "") .. errors.message(quiet)
  if class == "transient" then return { item = name, status = "unreachable", message = msg } end
  return { item = name, status = "fail", message = msg, fix = fix or hint or "see the message" }
end

return M
