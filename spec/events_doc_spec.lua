-- Every log event the code emits is listed in resclean(1)'s LOGS section and
-- in the event catalogue (lib/resclean/events.lua), at the levels the code
-- gives it; the catalogue and resclean(1) list the same events, in the same
-- order, and every catalogued event is emitted somewhere.
-- Pure: reads lib/, scripts/ and src/resclean.1 (run from the repository
-- root, as `make specs` and `make check` do); no stack.
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

local LEVEL = { debug = true, info = true, warn = true, error = true }

-- The levels a level expression names: "warn", or cond and "warn" or "info".
local function levels_in(expr)
  local out = {}
  for l in expr:gmatch('"(%a+)"') do
    if LEVEL[l] then out[#out + 1] = l end
  end
  return out
end

-- Returns { event = { "file:line", ... } }, { "file:line: text" } (calls
-- whose event could not be read), { event = { level = "file:line" } } (the
-- levels the code names for it).
local function emitted(files)
  local events, unread, levels = {}, {}, {}
  local function add(name, file, src, pos, at_levels)
    local at = file .. ":" .. line_of(src, pos)
    events[name] = events[name] or {}
    table.insert(events[name], at)
    levels[name] = levels[name] or {}
    for _, l in ipairs(at_levels) do levels[name][l] = levels[name][l] or at end
  end
  for _, file in ipairs(files) do
    local src = strip_comments(read(file))
    -- log.<level>( first argument
    for pos, level, rest in src:gmatch("()%f[%w_]log%.(%a+)%(%s*([^\n]*)") do
      if LEVEL[level] then
        local name = rest:match('^"([%w_]+)"')
        if name then add(name, file, src, pos, { level })
        else unread[#unread + 1] = ("%s:%d: log.%s(%s"):format(file, line_of(src, pos), level, rest) end
      end
    end
    -- emit(<level expression>, second argument: not a definition (function M.emit(level, event, ...))
    for pos, before, args in src:gmatch("()([^\n]-)emit%((.-)%)") do
      if not before:match("function%s+[%w_.:]*$") and not before:match("function%s*$") then
        local first, second = args:match("^([^,]*),%s*(.*)$")
        if second then
          local name = second:match('^"([%w_]+)"')
          if name then add(name, file, src, pos, levels_in(first))
          elseif not second:match("^event%f[^%w_]") then
            unread[#unread + 1] = ("%s:%d: emit(%s)"):format(file, line_of(src, pos), args)
          end
        end
      end
    end
    -- A summary line is an error when the run ended on one (run.lua's Run:summary).
    for pos, name in src:gmatch('()session%.with%([^,()]*,%s*"([%w_]+)"') do
      add(name, file, src, pos, { "info", "error" })
    end
    for pos, name in src:gmatch('():summary%(%s*"([%w_]+)"') do add(name, file, src, pos, { "info", "error" }) end
  end
  return events, unread, levels
end

-- The events resclean(1) documents: the tags (.TP) of the LOGS section
-- before its outcome list (the first .PP). Returns a set, and the names in
-- the page's order.
local function documented(page)
  local section = assert(page:match("\n%.SH LOGS\n(.-)\n%.SH "), "src/resclean.1 has no LOGS section")
  section = section:match("^(.-)\n%.PP\n") or section
  local names, order = {}, {}
  for tag in section:gmatch("\n%.TP\n([^\n]*)") do
    tag = tag:gsub("^%.[BIR]+%s*", ""):gsub('"[^"]*"', " ")
    for word in tag:gmatch("[%w_]+") do
      names[word] = true
      order[#order + 1] = word
    end
  end
  return names, order
end

describe("log events", function()
  local files = lua_files()
  local events, unread, levels = emitted(files)
  local docs, doc_order = documented(read("src/resclean.1"))
  local catalogue = require("resclean.events")

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

  it("are each in the event catalogue, at every level the code gives them", function()
    local missing = {}
    for name, at in pairs(levels) do
      local entry = catalogue.EVENTS[name]
      if not entry then
        missing[#missing + 1] = name .. " (" .. table.concat(events[name], ", ") .. ")"
      else
        for level, where in pairs(at) do
          if not entry.levels[level] then missing[#missing + 1] = ("%s at %s (%s)"):format(name, level, where) end
        end
      end
    end
    table.sort(missing)
    assert(#missing == 0, "log events not in lib/resclean/events.lua, or not at that level: "
      .. table.concat(missing, "; "))
  end)

  it("in the catalogue are each emitted by the code", function()
    local dead = {}
    for _, e in ipairs(catalogue.LIST) do
      if not events[e[1]] then dead[#dead + 1] = e[1] end
    end
    assert(#dead == 0, "events in lib/resclean/events.lua that nothing in lib/ or scripts/ emits: "
      .. table.concat(dead, ", "))
  end)

  it("in the catalogue are those resclean(1) lists, in its order", function()
    local names = {}
    for i, e in ipairs(catalogue.LIST) do
      names[i] = e[1]
      assert(docs[e[1]], e[1] .. " is in lib/resclean/events.lua but not in src/resclean(1)'s LOGS section")
    end
    assert.are.same(doc_order, names)
  end)

  it("in the catalogue each have levels and fields, and a field is named once", function()
    for _, e in ipairs(catalogue.LIST) do
      assert(#e[2] > 0, e[1] .. " has no level")
      for _, l in ipairs(e[2]) do assert(LEVEL[l], e[1] .. ": unknown level " .. tostring(l)) end
      local seen = {}
      for _, f in ipairs(e[3]) do
        assert(not seen[f], e[1] .. ": field " .. f .. " twice")
        seen[f] = true
      end
    end
  end)
end)
