-- The Kubernetes alert rules (examples/resclean-alerts-kubernetes.yml, on kube-state-metrics'
-- series): promtool checks them and runs their unit tests.
local h = require("support.helpers")

local RULES = "examples/resclean-alerts-kubernetes.yml"
local TESTS = "spec/alerts/resclean-alerts-kubernetes.test.yml"

describe("the Kubernetes alert rules", function()
  local function need_promtool()
    if not h.have("promtool") then
      pending("promtool is not installed (Debian package prometheus, in the Makefile's DEB_TEST)")
    end
  end

  it("pass promtool check rules", function()
    need_promtool()
    local out, code = h.sh("promtool check rules " .. h.q(RULES))
    assert(code == 0, out)
  end)

  it("fire on the newest failed Job of the CronJob, a CronJob without success, a Deployment without a ready pod, "
    .. "and stay quiet otherwise (promtool test rules)", function()
    need_promtool()
    local out, code = h.sh("promtool test rules " .. h.q(TESTS))
    assert(code == 0, out)
    assert.matches("SUCCESS", out)
  end)
end)
