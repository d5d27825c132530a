-- The preflight's storage items (check.lua): bucket, head, delete; each an
-- item (check_item.lua). Nothing is deleted: the only write is a
-- DeleteObjects of a random key that a HEAD just found missing (harmless:
-- S3 answers it "deleted" either way).
local errors = require("resclean.errors")
local from_error = require("resclean.check_item").from_error
local sys = require("resclean.sys")

local M = {}

local function probe_key()
  local hex = {}
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(16) or ""
  if f then f:close() end
  for i = 1, 16 do
    local b = bytes:byte(i) or math.random(0, 255)
    hex[i] = ("%02x"):format(b)
  end
  return "resclean-check-" .. table.concat(hex)
end

local S3_FIX = {
  head = "allow s3:GetObject on arn:aws:s3:::%s/* (or set verify = false in the policy: outcomes are then "
    .. "reported unverified)",
  delete = "allow s3:DeleteObject on arn:aws:s3:::%s and arn:aws:s3:::%s/* (RGW checks DeleteObjects against "
    .. "the bucket ARN)",
}

local function s3_item(name, err, p)
  local item = from_error(name, err, ("%s: "):format(name == "head" and "HEAD" or "DeleteObjects"))
  if item.status == "fail" and (err.code == "AccessDenied" or err.code == "Forbidden" or err.status == 403) then
    item.message = ("%s refused: %s"):format(name == "head" and "HEAD" or "DeleteObjects",
      err.code == "Forbidden" and "403 Forbidden" or tostring(err.code))
    item.fix = S3_FIX[name]:format(p.bucket, p.bucket)
  end
  return item
end

-- HEAD of the probe key (and S3's clock from its reply), then of keys of pending rows:
-- read-only, and the only way to meet a refused GetObject. Returns the head item's
-- parts: head result or nil, err, whether the probe key exists, objects found, server
-- time and when it was read.
local function head_probe(store, key, sample_keys)
  local t0 = sys.time()
  local head, herr = store:head(key)
  local server_time = (head or herr or {}).server_time
  local at = (t0 + sys.time()) / 2
  local probe_exists = head ~= nil and head.exists
  local found = 0
  if head and sample_keys and #sample_keys > 0 then
    -- A few keys (check_db.HEAD_SAMPLE), one HEAD at a time through the
    -- store: Store:head_many would adapt its concurrency and log it.
    for _, k in ipairs(sample_keys) do
      local r, e = store:head(k)
      if not r then
        head, herr = nil, e
        break
      end
      if r.exists then found = found + 1 end
    end
  end
  return head, herr, probe_exists, found, server_time, at
end

local function head_item(p, key, head, herr, found, nsample)
  if head then
    local it = { item = "head", status = "ok", probe_key = key, message = ("HEAD permitted (probe key %s: %s; "
      .. "%d keys of pending rows: %d found)%s"):format(key, head.exists and "found" or "not found", nsample, found,
      found == 0 and "; no existing object was tried: a missing key answers 404 even without s3:GetObject" or "") }
    if not p.verify then it.message = it.message .. "; unused: the policy sets verify = false" end
    return it
  end
  if not p.verify then
    return { item = "head", status = "warn", probe_key = key,
             message = "HEAD refused (" .. errors.message(herr) .. "); the policy sets verify = false, so the "
               .. "sweep sends none and reports outcomes unverified (deleted)" }
  end
  local it = s3_item("head", herr, p)
  it.probe_key = key
  if herr.key and herr.key ~= key then it.message = ("%s (key %s)"):format(it.message, herr.key) end
  return it
end

-- The storage items, through add. Returns S3's clock offset (host minus S3, seconds) or
-- nil, and whether S3 refused a request as skewed.
function M.check_storage(p, opts, add, sample_keys)
  local store, code, msg = opts.open_store(p)
  if not store then
    add({ item = "bucket", status = code == errors.EXIT.unreachable and "unreachable" or "fail", message = msg,
          fix = code ~= errors.EXIT.unreachable and "see the message" or nil })
    add({ item = "head", status = "skip", message = "not checked: no storage client" })
    add({ item = "delete", status = "skip", message = "not checked: no storage client" })
    return nil, false
  end
  local refused = false
  local ok, err = store:check()
  if ok then
    add({ item = "bucket", status = "ok", message = ("bucket %s listed"):format(p.bucket) })
  else
    local bcode, bmsg, fix = require("resclean.app").store_check_failure(store.opts.endpoint, p, err)
    if fix and bmsg:sub(-#fix - 3) == " (" .. fix .. ")" then bmsg = bmsg:sub(1, -#fix - 4) end
    add({ item = "bucket", status = bcode == errors.EXIT.unreachable and "unreachable" or "fail", message = bmsg,
          fix = fix })
    refused = err.code == "RequestTimeTooSkewed"
  end
  local key = probe_key()
  local head, herr, probe_exists, found, server_time, at = head_probe(store, key, ok and sample_keys or nil)
  if herr and herr.code == "RequestTimeTooSkewed" then refused = true end
  if not ok then
    add({ item = "head", status = "skip", message = "not checked: the bucket check failed" })
    add({ item = "delete", status = "skip", message = "not checked: the bucket check failed" })
  else
    local hi = add(head_item(p, key, head, herr, found, sample_keys and #sample_keys or 0))
    if probe_exists then
      add({ item = "delete", status = "skip", message = ("the probe key %s exists: not sent"):format(key) })
    elseif hi.status == "unreachable" then
      add({ item = "delete", status = "skip", message = "not checked: the storage did not answer" })
    else
      -- Only a key a HEAD found missing, or could not look at (refused): a random 128-bit
      -- name no upload has. S3 answers a missing key "deleted".
      local res = store:delete_many({ key }, 1, { quiet = false })
      if res[1] == true then
        add({ item = "delete", status = "ok", probe_key = key,
              message = ("DeleteObjects permitted (probe key %s: nothing to delete)"):format(key) })
      else
        local it = s3_item("delete", res[1], p)
        it.probe_key = key
        add(it)
      end
    end
  end
  store:close()
  -- Date has whole seconds: the server's time is, on average, half a second past it.
  return server_time and math.floor(at - (server_time + 0.5) + 0.5) or nil, refused
end

return M
