-- One sweep cycle over the real database with a recording in-memory store, for the clock
-- spec: run under faketime, it shows which rows the sweep picks when the host clock is
-- wrong (S3 itself refuses requests signed with a skewed clock, so a real store cannot
-- take part). Prints the log lines, then {"event":"clock_probe", host_time, keys}.
local cjson = require("cjson")
local pg = require("resclean.pg")
local policy = require("resclean.policy")
local sweep = require("resclean.sweep")

local p = assert(policy.build({}, "(clock probe)"))
local keys = {}
local store = {
  check = function() return true end,
  head_many = function(_, ks)
    local out = {}
    for i = 1, #ks do out[i] = false end
    return out
  end,
  delete_many = function(_, ks)
    local out = {}
    for i, k in ipairs(ks) do
      keys[#keys + 1] = k
      out[i] = true
    end
    return out
  end,
  close = function() end,
}
local code = sweep.cycle({ pg = pg, store = store, policy = p, conninfo = os.getenv("DATABASE_URL") })
io.stdout:write(cjson.encode({ event = "clock_probe", host_time = os.time(), keys = keys, code = code }), "\n")
return code
