-- Every log event the code emits is listed in resclean(1)'s LOGS section.
-- Pure: reads lib/, scripts/ and src/resclean.1 (run from the repository
-- root, as `make specs` and `make unit` do); no stack.
--
-- An event is a string literal in one of the forms the code emits with:
--   log.info("x", ...)   log.warn / log.error / log.debug the same
--   emit(<level>, "x", ...)  log.emit, run.emit, self.emit, a forwarder
--   session.with(opts, "x", ...)  and  run:summary("x", ...)  (the summary line)
-- A call in any of those forms whose event is not a literal fails the spec too
-- (unless it only forwards a variable named `event`), so an emission the
-- patterns cannot read is not silently left out.

local function read(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("a")
  f:close()
  return s
end

local function lua_files()
  local files = {}
  local p = assert(io.popen("find lib scripts -name '*.lua' | sort"))
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  return files
end

-- Drops comments so examples in them are not read as emissions; keeps line
-- numbers (a comment becomes an empty one).
local function strip_comments(src)
  src = src:gsub("%-%-%[(=*)%[.-%]%1%]", function(c) return (c:gsub("[^\n]", "")) end)
  return (src:gsub("%-%-[^\n]*", ""))
end

local function line_of(src, pos)
  local _, n = src:sub(1, pos):gsub("\n", "")
  return n + 1
end

-- Returns { event = { "file:line", ... } }, { "file:line: text" } (calls
-- whose event could not be read).
local function emitted(files)
  local events, unread = {}, {}
  local function add(name, file, src, pos)
    events[name] = events[name] or {}
    table.insert(events[name], file .. ":" .. line_of(src, pos))
  end
  for _, file in ipairs(files) do
    local src = strip_comments(read(file))
    -- log.<level>( first argument
    for pos, level, rest in src:gmatch("()%f[%w_]log%.(%a+)%(%s*([^\n]*)") do
      if level == "debug" or level == "info" or level == "warn" or level == "error" then
        local name = rest:match('^"([%w_]+)"')
        if name then add(name, file, src, pos)
        else unread[#unread + 1] = ("%s:%d: log.%s(%s"):format(file, line_of(src, pos), level, rest) end
      end
    end
    -- emit(<level expression>, second argument: not a definition (function M.emit(level, event, ...))
    for pos, before, args in src:gmatch("()([^\n]-)emit%((.-)%)") do
      if not before:match("function%s+[%w_.:]*$") and not before:match("function%s*$") then
        local second = args:match("^[^,]*,%s*(.*)$")
        if second then
          local name = second:match('^"([%w_]+)"')
          if name then add(name, file, src, pos)
          elseif not second:match("^event%f[^%w_]") then
            unread[#unread + 1] = ("%s:%d: emit(%s)"):format(file, line_of(src, pos), args)
          end
        end
      end
    end
    for pos, name in src:gmatch('()session%.with%([^,()]*,%s*"([%w_]+)"') do add(name, file, src, pos) end
    for pos, name in src:gmatch('():summary%(%s*"([%w_]+)"') do add(name, file, src, pos) end
  end
  return events, unread
end

-- The events resclean(1) documents: the tags (.TP) of the LOGS section
-- before its outcome list (the first .PP).
local function documented(page)
  local section = assert(page:match("\n%.SH LOGS\n(.-)\n%.SH "), "src/resclean.1 has no LOGS section")
  section = section:match("^(.-)\n%.PP\n") or section
  local names = {}
  for tag in section:gmatch("\n%.TP\n([^\n]*)") do
    tag = tag:gsub("^%.[BIR]+%s*", ""):gsub('"[^"]*"', " ")
    for word in tag:gmatch("[%w_]+") do names[word] = true end
  end
  return names
end

describe("log events", function()
  local files = lua_files()
  local events, unread = emitted(files)
  local docs = documented(read("src/resclean.1"))

  it("are read from lib/ and scripts/ (the patterns find the known forms)", function()
    assert.is_true(#files > 10)
    -- one of each form: log.<level>, emit(level, ...), session.with, run:summary
    for _, name in ipairs({ "claim_seq_scan", "start", "resource", "commit_lost", "listening", "sweep", "cancel" }) do
      assert.is_truthy(events[name], name .. " not found: the emission patterns no longer match the code")
    end
  end)

  it("are all literal, where the spec can read them", function()
    assert.are.same({}, unread)
  end)

  it("are each listed in resclean(1)'s LOGS section", function()
    local missing = {}
    for name, at in pairs(events) do
      if not docs[name] then missing[#missing + 1] = name .. " (" .. table.concat(at, ", ") .. ")" end
    end
    table.sort(missing)
    assert(#missing == 0, "log events not in src/resclean.1 LOGS (add a .TP entry saying what each means): "
      .. table.concat(missing, "; "))
  end)
end)
