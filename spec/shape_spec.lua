-- The sizes the code keeps (issue 23): a script is flags and a call into
-- lib/ (<= 120 lines), no Lua module over 500 lines, src/s3.c <= 1,300 lines,
-- and no function, Lua or C, over 100 lines. Pure: reads the tree (run from
-- the repository root, as `make specs` and `make check` do); no stack.
--
-- Lua functions are measured by luac5.4's own listing (`luac5.4 -p -l`
-- prints each function's first and last line), so the parser decides, not a
-- pattern. C functions are the blocks that open on a line at column 0 and
-- close with a "}" alone at column 0 (src/.clang-format keeps that shape):
-- a signature has a "(" before any "="; "};" closes an initializer.

local MAX_SCRIPT, MAX_MODULE, MAX_FUNCTION, MAX_S3C = 120, 500, 100, 1300

local function list(cmd)
  local out = {}
  local p = assert(io.popen(cmd))
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

local function lines_of(path)
  local n = 0
  for _ in io.lines(path) do n = n + 1 end
  return n
end

local function luac()
  local ok = os.execute("command -v luac5.4 >/dev/null 2>&1")
  return ok and "luac5.4" or nil
end

-- { "file:first-last (n lines)" } for every Lua function longer than max.
local function long_lua_functions(files, max)
  local long = {}
  for _, file in ipairs(files) do
    for _, line in ipairs(list(("luac5.4 -p -l %q 2>&1"):format(file))) do
      local first, last = line:match("^function <[^:]+:(%d+),(%d+)>")
      if first then
        local n = tonumber(last) - tonumber(first) + 1
        if n > max then long[#long + 1] = ("%s:%s-%s (%d lines)"):format(file, first, last, n) end
      end
    end
  end
  return long
end

local function long_c_functions(files, max)
  local long = {}
  for _, file in ipairs(files) do
    local start, n = nil, 0
    for line in io.lines(file) do
      n = n + 1
      if line:match("^[%a_][^=]*%(") and not line:match(";%s*$") then
        start = n
      elseif line:match("^};") or line:match("^#") or (line:match(";%s*$") and line:match("^[%a_]")) then
        start = nil
      elseif line:match("^}%s*$") and start then
        if n - start + 1 > max then
          long[#long + 1] = ("%s:%d-%d (%d lines)"):format(file, start, n, n - start + 1)
        end
        start = nil
      end
    end
  end
  return long
end

describe("the shape of the code", function()
  local scripts = list("ls scripts/*.lua")
  local modules = list("find lib -name '*.lua' | sort")
  local csrc = list("ls src/*.c")

  it("has scripts, modules and C units to measure", function()
    assert.is_true(#scripts >= 4, "no scripts found (run from the repository root)")
    assert.is_true(#modules >= 10, "no lib modules found")
    assert.is_true(#csrc >= 5, "no C units found")
  end)

  it("keeps every script to flags and composition: <= " .. MAX_SCRIPT .. " lines", function()
    for _, f in ipairs(scripts) do
      assert.is_true(lines_of(f) <= MAX_SCRIPT, ("%s is %d lines"):format(f, lines_of(f)))
    end
  end)

  it("keeps every Lua module <= " .. MAX_MODULE .. " lines", function()
    for _, f in ipairs(modules) do
      assert.is_true(lines_of(f) <= MAX_MODULE, ("%s is %d lines"):format(f, lines_of(f)))
    end
  end)

  it("keeps src/s3.c <= " .. MAX_S3C .. " lines", function()
    assert.is_true(lines_of("src/s3.c") <= MAX_S3C, ("src/s3.c is %d lines"):format(lines_of("src/s3.c")))
  end)

  it("has no Lua function over " .. MAX_FUNCTION .. " lines", function()
    if not luac() then
      print("shape: luac5.4 not installed (make deps installs lua5.4): Lua function lengths not measured")
      return
    end
    local files = {}
    for _, f in ipairs(scripts) do files[#files + 1] = f end
    for _, f in ipairs(modules) do files[#files + 1] = f end
    local long = long_lua_functions(files, MAX_FUNCTION)
    assert.are.same({}, long)
  end)

  it("has no C function over " .. MAX_FUNCTION .. " lines", function()
    assert.are.same({}, long_c_functions(csrc, MAX_FUNCTION))
  end)

  it("measures what it claims: a long function in a sample is found, in Lua and in C", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute(("mkdir -p %q"):format(dir)))
    local lua_body, c_body = {}, {}
    for i = 1, MAX_FUNCTION do
      lua_body[i] = "  x = x + " .. i
      c_body[i] = "    x += " .. i .. ";"
    end
    local lf = io.open(dir .. "/long.lua", "w")
    lf:write("local x = 0\nlocal function f()\n", table.concat(lua_body, "\n"), "\nend\n",
      "local function g() return 1 end\nreturn f, g\n")
    lf:close()
    local cf = io.open(dir .. "/long.c", "w")
    cf:write("static const int t[] = {\n    1,\n};\n\nstatic int f(void) {\n    int x = 0;\n",
      table.concat(c_body, "\n"), "\n    return x;\n}\n\nint g(void) {\n    return 1;\n}\n")
    cf:close()
    if luac() then
      local long = long_lua_functions({ dir .. "/long.lua" }, MAX_FUNCTION)
      assert.are.equal(1, #long, table.concat(long, "\n"))
      assert.matches("long.lua:2%-", long[1])
    end
    local long = long_c_functions({ dir .. "/long.c" }, MAX_FUNCTION)
    assert.are.equal(1, #long, table.concat(long, "\n"))
    assert.matches("long.c:5%-", long[1])
    os.execute(("rm -rf %q"):format(dir))
  end)
end)
