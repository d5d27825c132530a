-- Loads the AWS Signature V4 known-answer suites in ../shared/testdata/sigv4 (or
-- $RESCLEAN_SIGV4_TESTDATA): a small HTTP request parser for the suites' request files,
-- directory listing and JSON decoding.
local cjson = require("cjson")
local lfs = require("lfs")

local M = {}

-- $RESCLEAN_SIGV4_TESTDATA, else repo_root/../shared/testdata/sigv4 (found from this
-- file's own location), else the workplace's /work/shared (a checkout elsewhere, as CI's).
function M.root()
  local env = os.getenv("RESCLEAN_SIGV4_TESTDATA")
  if env and env ~= "" then
    return env
  end
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  for _, cand in ipairs({ dir .. "/../../../shared/testdata/sigv4", "/work/shared/testdata/sigv4" }) do
    if lfs.attributes(cand, "mode") == "directory" then return cand end
  end
  return dir .. "/../../../shared/testdata/sigv4"
end

function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local s = f:read("a")
  f:close()
  return s
end

function M.must_read(path)
  return assert(M.read(path))
end

function M.exists(path)
  return lfs.attributes(path, "mode") ~= nil
end

function M.json(path)
  return cjson.decode(M.must_read(path))
end

-- Sorted names of the sub-folders of dir.
function M.subdirs(dir)
  local out = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." and lfs.attributes(dir .. "/" .. name, "mode") == "directory" then
      out[#out + 1] = name
    end
  end
  table.sort(out)
  return out
end

-- Every folder under dir (recursively) holding <folder>/<folder>.req, as
-- {name = folder name, base = dir/.../name/name}, sorted by path.
function M.botocore_cases(dir)
  local out = {}
  local function walk(d, rel)
    for _, name in ipairs(M.subdirs(d)) do
      local sub = d .. "/" .. name
      if M.exists(sub .. "/" .. name .. ".req") then
        out[#out + 1] = { name = name, rel = rel .. name, base = sub .. "/" .. name }
      end
      walk(sub, rel .. name .. "/")
    end
  end
  walk(dir, "")
  table.sort(out, function(a, b) return a.rel < b.rel end)
  return out
end

function M.percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "a=1&b&c=" -> {{"a", "1"}, {"b", ""}, {"c", ""}}, percent-decoded ('+' is not a space in SigV4).
function M.parse_query(qs)
  local out = {}
  if qs == nil or qs == "" then
    return out
  end
  for part in (qs .. "&"):gmatch("([^&]*)&") do
    if part ~= "" then
      local k, v = part:match("^([^=]*)=(.*)$")
      if not k then
        k, v = part, ""
      end
      out[#out + 1] = { M.percent_decode(k), M.percent_decode(v) }
    end
  end
  return out
end

-- Parses an HTTP/1.1 request as the suites write it:
--   METHOD SP target SP HTTP/1.1 LF (Name ":" value LF | SP continuation LF)* [LF body]
-- The target may hold spaces (the suites' "/example space/"), so the version is the last word.
-- Continuation lines are folded into the previous value with one space (RFC 7230 obs-fold).
-- Returns {method, target, path, rawquery, query = {{k, v}...} decoded, headers = {{name, value}...}
-- with values exactly as written, body}.
function M.parse_request(text)
  text = text:gsub("\r\n", "\n")
  local head, body = text:match("^(.-)\n\n(.*)$")
  if not head then
    head, body = text:gsub("\n$", ""), ""
  end
  local lines = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line
  end
  local method, target, version = lines[1]:match("^(%S+) (.-) (HTTP/%d%.%d)$")
  assert(method, "bad request line: " .. lines[1])
  assert(version)
  local path, rawquery = target:match("^([^?]*)%?(.*)$")
  if not path then
    path, rawquery = target, nil
  end
  local headers = {}
  for i = 2, #lines do
    local line = lines[i]
    if line:match("^[ \t]") then
      local prev = assert(headers[#headers], "continuation line without a header")
      prev[2] = prev[2] .. " " .. line:match("^[ \t]*(.-)[ \t]*$")
    elseif line ~= "" then
      local name, value = line:match("^([^:]+):(.*)$")
      assert(name, "bad header line: " .. line)
      headers[#headers + 1] = { name, value }
    end
  end
  return {
    method = method,
    target = target,
    path = path,
    rawquery = rawquery,
    query = M.parse_query(rawquery),
    headers = headers,
    body = body,
  }
end

-- The value of the first header called name (any case), or nil.
function M.header(req, name)
  for _, h in ipairs(req.headers) do
    if h[1]:lower() == name:lower() then
      return h[2]
    end
  end
  return nil
end

-- Headers as a sorted list of "lower-name:value" (a multiset to compare regardless of order).
function M.header_set(headers)
  local out = {}
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1]:lower() .. ":" .. h[2]
  end
  table.sort(out)
  return out
end

-- Query pairs as a sorted list of decoded "k=v".
function M.query_set(pairs_)
  local out = {}
  for _, kv in ipairs(pairs_) do
    out[#out + 1] = kv[1] .. "=" .. kv[2]
  end
  table.sort(out)
  return out
end

return M
