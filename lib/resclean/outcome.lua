-- What happened to a resource: the outcomes and kept reasons every module
-- names (defined here only), and the outcome of a resource whose row the
-- batch deleted (uncommitted), decided from what storage answered: pure
-- functions, no I/O, so the table of cases is a unit spec.
local errors = require("resclean.errors")

local M = {}

-- Every outcome a resource line can carry (resclean(1), LOGS): the run's
-- counts, its summary and resclean_resources_total list them in this order.
M.OUTCOMES = { "object_deleted", "record_only", "deleted", "failed", "skipped", "not_found", "refused", "in_doubt" }

-- Why a resource is kept on purpose (outcome skipped, its reason): each is
-- written to resclean_sweep_kept every cycle, 0 included.
M.KEPT_REASONS = { "referenced", "locked", "bad_key", "row_vanished" }

-- The same names by name, for the code that gives them: KEPT.locked is
-- "locked"; a name not in KEPT_REASONS raises, so a misspelt reason fails
-- where it is written instead of reaching the log and the metrics.
M.KEPT = {}
for _, r in ipairs(M.KEPT_REASONS) do M.KEPT[r] = r end
setmetatable(M.KEPT, { __index = function(_, k) error(("unknown kept reason %q"):format(tostring(k)), 2) end })

-- exists: the object's HEAD result (true, false; nil when not checked, an
-- error table when the HEAD failed; "unlisted" when a listing of the
-- bucket taken before the delete did not hold it). deleted: its delete
-- result (true, or an error). Returns outcome, reason:
--   object_deleted  the object was there and is deleted
--   record_only     there was no object (a HEAD said so; the row alone is
--                   deleted)
--   deleted         the object is deleted, whether it was there unknown;
--                   reason not_listed: not in the listing, which cannot tell
--                   of an object that landed after it (and a delete reply
--                   says Deleted for a key that was never there);
--                   reason head_refused: its HEAD was refused for
--                   permission (403: no s3:GetObject), so unverified
--   failed          the delete failed: row and object stay for the next
--                   run; reason is the error's code (else its kind)
function M.decide(exists, deleted)
  if deleted ~= true then
    return "failed", type(deleted) == "table" and (deleted.code or deleted.kind) or tostring(deleted)
  end
  if exists == "unlisted" then return "deleted", "not_listed" end
  if type(exists) == "table" then return "deleted", M.refused(exists) and "head_refused" or nil end
  if exists == nil then return "deleted" end
  return exists and "object_deleted" or "record_only"
end

-- Was a HEAD refused for permission (403 Forbidden, AccessDenied)?
function M.refused(err)
  return type(err) == "table" and (err.status == 403 or err.code == "AccessDenied" or err.code == "Forbidden")
end

-- The error that ends the cycle after a batch of decided items (outcome,
-- and err for the failed ones): when every item failed for one reason that
-- is not the item's own (storage unreachable, credentials refused), the
-- first such error; else nil. Stops looking at the first item that did not
-- fail, so a good batch costs one look.
function M.batch_stop(items)
  local n = #items
  if n == 0 then return nil end
  local by_class = { config = 0, transient = 0 }
  local first
  for _, it in ipairs(items) do
    if it.outcome ~= "failed" then return nil end
    local class = errors.classify(it.err)
    if by_class[class] then
      by_class[class] = by_class[class] + 1
      first = first or it.err
    end
  end
  if by_class.config == n or by_class.transient == n then return first end
  return nil
end

return M
