-- Cancel on notification: the pure parts (payloads, the bounded queue).
local notify = require("resclean.notify")

local A = "0b3f8a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
local B = "1b3f8a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b"

describe("a cancel notification's payload", function()
  it("holds one id or several separated by commas or whitespace, each taken once, in lower case", function()
    assert.are.same({ A }, (notify.parse_payload(A)))
    assert.are.same({ A, B }, (notify.parse_payload(A .. "," .. B)))
    assert.are.same({ A, B }, (notify.parse_payload(" " .. A:upper() .. " ,\n\t" .. B .. " " .. A .. " ")))
  end)

  it("names what is not an id, shortened, and keeps the ids beside it", function()
    local ids, bad = notify.parse_payload("drop table; " .. A .. " " .. ("x"):rep(200))
    assert.are.same({ A }, ids)
    assert.are.equal("drop", bad[1])
    assert.are.equal("table;", bad[2])
    assert.are.equal(64, #bad[3])
    local none, junk = notify.parse_payload("")
    assert.are.same({}, none)
    assert.are.same({}, junk)
  end)

  it("is split into as few payloads as fit PostgreSQL's limit", function()
    local ids = {}
    for i = 1, 500 do ids[i] = ("%08x-0000-4000-8000-%012x"):format(i, i) end
    local p = notify.payloads(ids)
    assert.are.equal(3, #p) -- 500 x 37 bytes in payloads of at most 7999
    local back = {}
    for _, s in ipairs(p) do
      assert.is_true(#s <= notify.MAX_PAYLOAD)
      for _, id in ipairs((notify.parse_payload(s))) do back[#back + 1] = id end
    end
    assert.are.same(ids, back)
  end)
end)

describe("the queue of ids to cancel", function()
  it("hands ids out in arrival order, each once while queued, n at a time", function()
    local q = notify.queue(10)
    q:push(A); q:push(B); q:push(A)
    assert.are.equal(2, q:size())
    assert.are.same({ A }, q:take(1))
    assert.are.same({ B }, q:take(5))
    assert.are.same({}, q:take(5))
    q:push(A)
    assert.are.equal(1, q:size())
  end)

  it("is bounded: a flood beyond its limit is counted and dropped, never grown without end", function()
    local q = notify.queue(100)
    for i = 1, 10000 do q:push(("%08x-0000-4000-8000-000000000000"):format(i)) end
    assert.are.equal(100, q:size())
    assert.are.equal(9900, q.dropped)
    local n = 0
    while q:size() > 0 do n = n + #q:take(30) end
    assert.are.equal(100, n)
  end)
end)
