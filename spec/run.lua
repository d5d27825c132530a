-- The spec runner: busted inside the resclean host, so specs exercise the
-- real C primitives. `resclean run spec/run.lua [busted options] [files]`.
-- Ends with "specs: N passed, N failed".
local here = arg[0]:match("^(.*)/[^/]*$") or "."
require("busted.runner")({
  standalone = false,
  output = here .. "/support/summary_output.lua",
})
