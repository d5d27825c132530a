-- The policy: defaults, loading a file, validation with clear errors, keys.
local policy = require("resclean.policy")
local h = require("support.helpers")

local function load_text(text)
  return policy.load(h.tmpfile(text, "policy.lua"))
end

describe("the policy", function()
  it("defaults to the upstream schema", function()
    local p = assert(policy.load(nil))
    assert.are.equal("attack_resource_files", p.table)
    assert.are.equal("is_uploaded", p.uploaded_column)
    assert.are.same({ "WORD_LIST", "RULE_LIST", "MASK_LIST", "CHARSET" }, p.upload_types)
    assert.are.equal(86400, p.max_age)
    assert.are.equal(3600, p.interval)
    assert.is_true(p.verify and p.verify_list)
    assert.is_false(p.quiet_deletes) -- verbose: a key counts as deleted only when the reply says so
    assert.are.equal("11111111-2222-3333-4444-555555555555", p.key({ id = "11111111-2222-3333-4444-555555555555" }))
  end)

  it("takes the bucket from RESCLEAN_BUCKET, else cipherswarm-resources", function()
    local r = h.run({ "run", h.tmpfile('io.write(require("resclean.policy").defaults().bucket)') },
      { RESCLEAN_BUCKET = "my-bucket" })
    assert.are.equal("my-bucket", r.stdout)
    r = h.run({ "run", h.tmpfile('io.write(require("resclean.policy").defaults().bucket)') },
      { RESCLEAN_BUCKET = false })
    assert.are.equal("cipherswarm-resources", r.stdout)
  end)

  it("overrides defaults from a file and accepts durations as strings", function()
    local p = assert(load_text('return { max_age = "2h", interval = "90s", batch_size = 50, verify = false }'))
    assert.are.equal(7200, p.max_age)
    assert.are.equal(90, p.interval)
    assert.are.equal(50, p.batch_size)
    assert.is_false(p.verify)
    assert.are.equal("attack_resource_files", p.table)
  end)

  local bad = {
    { "syntax error", "return {", nil, "syntax error" },
    { "not a table", "return 42", nil, "expected the file to return a table" },
    { "raising file", 'error("nope")', nil, "raised an error" },
    { "unknown field", "return { max_agee = 10 }", "max_agee", "unknown field" },
    { "wrong type", 'return { batch_size = "lots" }', "batch_size", "expected an integer from 1 to 10000" },
    { "zero age", "return { max_age = 0 }", "max_age", "expected a duration of at least 60 s" },
    { "negative age", "return { max_age = -5 }", "max_age", "got -5" },
    { "absurd batch", "return { batch_size = 10000000 }", "batch_size", "1 to 10000" },
    { "float batch", "return { batch_size = 1.5 }", "batch_size", "integer" },
    { "bad table name", 'return { table = "x; DROP TABLE y" }', "table", "a table name" },
    { "bad bucket", 'return { bucket = "A" }', "bucket", "bucket name" },
    { "bad pattern", 'return { key_pattern = "[" }', "key_pattern", "valid Lua pattern" },
    { "key not a function", 'return { key = "id" }', "key", "function" },
    { "empty types", "return { upload_types = {} }", "upload_types", "non-empty list" },
    { "quiet_deletes not a boolean", 'return { quiet_deletes = "no" }', "quiet_deletes", "true or false" },
  }
  for _, case in ipairs(bad) do
    it("rejects a policy file with a " .. case[1] .. ", naming the file and the field", function()
      local path = h.tmpfile(case[2], "policy.lua")
      local p, err = policy.load(path)
      assert.is_nil(p)
      assert.are.equal("policy", err.kind)
      assert.are.equal(case[3], err.field)
      assert.matches(path, err.message, 1, true)
      assert.matches(case[4], err.message, 1, true)
      if case[3] then assert.matches("field '" .. case[3] .. "'", err.message, 1, true) end
    end)
  end

  it("names a missing file", function()
    local p, err = policy.load("/nonexistent/policy.lua")
    assert.is_nil(p)
    assert.matches("/nonexistent/policy.lua", err.message, 1, true)
  end)

  describe("keys", function()
    local p = assert(policy.load(nil))
    local good = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"

    it("accepts a lower-case UUID", function()
      assert.are.equal(good, (policy.row_key(p, { id = good })))
    end)

    local cases = {
      { "empty", "" }, { "not matching the pattern", "hello" }, { "upper-case", good:upper() },
      { "with ..", "../" .. good }, { "with a NUL", good .. "\0" }, { "with a newline", good .. "\n" },
      { "too long", good .. ("a"):rep(1100) },
    }
    for _, c in ipairs(cases) do
      it("refuses a key that is " .. c[1], function()
        local key, why = policy.row_key(p, { id = c[2] })
        assert.is_nil(key)
        assert.is_string(why)
      end)
    end

    it("refuses keys with .. or control characters even when the pattern allows them", function()
      local loose = assert(policy.build({ key_pattern = "." }))
      assert.is_nil((policy.check_key(loose, "a/../b")))
      assert.is_nil((policy.check_key(loose, "a\tb")))
      assert.are.equal("a/b c", policy.check_key(loose, "a/b c"))
    end)

    it("treats a key() that raises or returns a non-string as a bad key", function()
      local p2 = assert(policy.build({ key = function() error("boom") end }))
      assert.is_nil((policy.row_key(p2, { id = good })))
      local p3 = assert(policy.build({ key = function() return 42 end }))
      assert.is_nil((policy.row_key(p3, { id = good })))
    end)
  end)

  it("knows which types go through the upload flow", function()
    local p = assert(policy.load(nil))
    assert.is_true(policy.is_upload_type(p, "WORD_LIST"))
    assert.is_false(policy.is_upload_type(p, "EPHEMERAL_WORD_LIST"))
    assert.is_false(policy.is_upload_type(p, "DYNAMIC_WORD_LIST"))
  end)

  it("loads the shipped example policies", function()
    for _, f in ipairs({ "examples/policy.lua", "examples/ouroboros.lua" }) do
      local p, err = policy.load(f)
      assert.is_truthy(p, err and err.message)
    end
    assert.are.equal("ouroboros-resources", policy.load("examples/ouroboros.lua").bucket)
  end)

  describe("guards against foot-guns", function()
    it("refuses max_age below url_lifetime (minutes meant as seconds), naming both", function()
      local path = h.tmpfile("return { max_age = 1440 }", "policy.lua")
      local p, err = policy.load(path)
      assert.is_nil(p)
      assert.are.equal("policy", err.kind)
      assert.are.equal("max_age", err.field)
      assert.matches(path, err.message, 1, true)
      assert.matches("max_age", err.message, 1, true)
      assert.matches("url_lifetime", err.message, 1, true)
      assert.matches("1440", err.message, 1, true)
      assert.matches("3600", err.message, 1, true)
      local r = h.run({ "run", "scripts/sweep.lua", "--once", "--policy", path }, { RESCLEAN_LOG_LEVEL = false })
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("url_lifetime", r.stderr, 1, true)
    end)

    it("accepts max_age equal to url_lifetime, and a short url_lifetime with a short max_age", function()
      assert.is_truthy(policy.build({ max_age = "1h" }))
      assert.is_truthy(policy.build({ max_age = 60, url_lifetime = 60 }))
      assert.is_nil(policy.build({ max_age = 60, url_lifetime = 61 }))
    end)

    local forbidden = {
      { "os.exit", "os.exit(0) return {}" },
      { "os.execute", 'os.execute("true") return {}' },
      { "os.remove", 'os.remove("/tmp/x") return {}' },
      { "io.open", 'io.open("/etc/passwd") return {}' },
      { "io.write", 'io.write("x") return {}' },
      { "debug.sethook", "debug.sethook() return {}" },
      { "print", 'print("x") return {}' },
      { "load", 'load("return 1")() return {}' },
      { "dofile", 'dofile("/dev/null") return {}' },
      { 'require("os")', 'require("os") return {}' },
    }
    for _, c in ipairs(forbidden) do
      it("makes a policy file that calls " .. c[1] .. " a policy error naming the file", function()
        local path = h.tmpfile(c[2], "policy.lua")
        local p, err = policy.load(path)
        assert.is_nil(p)
        assert.are.equal("policy", err.kind)
        assert.matches(path, err.message, 1, true)
        assert.matches(c[1] .. " is not available in a policy file", err.message, 1, true)
      end)
    end

    it("stops no sweep: a policy that calls os.exit(0) exits 2 with the reason, not 0 in silence", function()
      local path = h.tmpfile("os.exit(0) return {}", "policy.lua")
      local r = h.run({ "run", "scripts/sweep.lua", "--once", "--policy", path }, { RESCLEAN_LOG_LEVEL = false })
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("os.exit is not available", r.stderr, 1, true)
    end)

    it("keeps what policies use: os.getenv, os.time, string, table, math, require(\"resclean.policy\")", function()
      local p, err = policy.load(h.tmpfile([[
        local P = require("resclean.policy")
        assert(os.time() > 0 and os.clock() >= 0 and os.date("!%Y") ~= nil)
        local prefix = (os.getenv("RESCLEAN_NO_SUCH_VARIABLE") or "up"):upper()
        return { key_pattern = P.UUID_PATTERN, max_age = math.max(2 * 3600, 60),
                 upload_types = { table.concat({ "WORD", "LIST" }, "_"), string.format("%s", "CHARSET") },
                 key = function(row) return prefix:lower() .. "/" .. row.id end }]], "policy.lua"))
      assert.is_truthy(p, err and err.message)
      assert.are.equal(7200, p.max_age)
      assert.are.equal("up/x", p.key({ id = "x" }))
    end)

    it("makes a key() that calls os.exit a bad key, not the end of the process", function()
      local p = assert(policy.load(h.tmpfile("return { key = function(row) os.exit(0) return row.id end }",
        "policy.lua")))
      local key, why = policy.row_key(p, { id = "0a1b2c3d-4e5f-6789-abcd-ef0123456789" })
      assert.is_nil(key)
      assert.matches("os.exit is not available", why, 1, true)
    end)

    it("keeps a policy's changes to string away from the rest of the process", function()
      local before = string.format
      assert.is_truthy(policy.load(h.tmpfile("string.format = nil return {}", "policy.lua")))
      assert.are.equal(before, string.format)
    end)
  end)
end)
