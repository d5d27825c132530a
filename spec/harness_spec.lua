-- The spec harness itself (spec/support/summary_output.lua): busted keeps only
-- the last finally() of a test; ours keeps them all, so a test that registers a
-- server's stop and then a folder's unmount leaves neither behind.
describe("the spec harness's finally", function()
  local ran = {}
  it("takes every cleanup a test registers", function()
    finally(function() ran[#ran + 1] = "first" end)
    finally(function() ran[#ran + 1] = "second" end)
  end)
  it("ran them all, the last registered first", function()
    assert.are.same({ "second", "first" }, ran)
  end)
end)
