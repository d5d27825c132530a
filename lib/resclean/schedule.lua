-- The schedule: a cycle at once, then one every interval plus a random
-- jitter, until a stop signal. A signal during a cycle lets the batch in
-- hand finish (the sweep checks between batches); one during the sleep
-- ends the wait at once.
local sys = require("resclean.sys")

local M = {}

-- Seconds to wait before the next cycle.
function M.next_delay(interval, jitter, rand)
  rand = rand or math.random
  return interval + (jitter > 0 and rand() * jitter or 0)
end

-- opts.cycle() -> exit code, opts.delay() -> seconds, opts.once.
-- Returns the exit code of the run: the cycle's with once, else 0 after a
-- stop signal.
function M.loop(opts)
  local sleep = opts.sleep or sys.sleep
  local stopping = opts.stopping or sys.stopping
  while true do
    local code = opts.cycle()
    if opts.once then return code end
    if stopping() then return 0 end
    if not sleep(opts.delay()) then return 0 end
  end
end

return M
