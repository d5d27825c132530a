-- The schedule: a cycle at once, then one every interval plus a random
-- jitter, until a stop signal. A signal during a cycle lets the batch in
-- hand finish (the sweep checks between batches); one during the sleep
-- ends the wait at once.
--
-- Exit codes decide what a long-running loop does next:
--   0, 1  a good cycle (it ran to the end): wait the interval
--   2     configuration to fix: before the first good cycle the loop ends
--         with 2 at once (a sweeper that cannot work must not look alive);
--         after one, it is logged and retried every interval (a policy
--         edit or a grant may fix it)
--   3     transient: retried after a backoff that starts short and grows
--         to the interval while the trouble lasts
local sys = require("resclean.sys")

local M = {}

M.BACKOFF_FIRST = 5 -- seconds before the first retry of a transient failure

-- Seconds to wait before the next cycle.
function M.next_delay(interval, jitter, rand)
  rand = rand or math.random
  return interval + (jitter > 0 and rand() * jitter or 0)
end

-- Seconds before retry n (1, 2, ...) of a transient failure: 5, 10, 20 ...
-- never more than the interval, with up to 20 % jitter so that several
-- sweepers do not come back together.
function M.backoff(n, interval, rand)
  rand = rand or math.random
  local d = math.min(M.BACKOFF_FIRST * 2 ^ (math.max(n, 1) - 1), interval)
  return d * (1 + 0.2 * rand())
end

-- opts.cycle() -> exit code[, "stop"], opts.delay() -> seconds,
-- opts.retry_delay(n) -> seconds (optional), opts.once,
-- opts.on_config_error(code) (optional), opts.on_wait(seconds, code)
-- (optional: before each wait, with the last cycle's code). Returns the exit code of the run:
-- the cycle's with once; 2 on a configuration error before the first good
-- cycle, or when a cycle says "stop"; else 0 after a stop signal.
function M.loop(opts)
  local sleep = opts.sleep or sys.sleep
  local stopping = opts.stopping or sys.stopping
  local good, failures = false, 0
  while true do
    local code, stop = opts.cycle()
    if opts.once or stop == "stop" then return code end
    local wait
    if code == 0 or code == 1 then
      good, failures = true, 0
      wait = opts.delay()
    elseif code == 2 and not good then
      if opts.on_config_error then opts.on_config_error(code) end
      return code
    elseif code == 3 and opts.retry_delay then
      failures = failures + 1
      wait = opts.retry_delay(failures)
    else
      wait = opts.delay()
    end
    if stopping() then return 0 end
    if opts.on_wait then opts.on_wait(wait, code) end
    if not sleep(wait) then return 0 end
  end
end

return M
