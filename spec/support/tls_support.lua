-- For the TLS specs: a throwaway CA and server certificates (openssl), and tls_proxy.py
-- serving HTTPS in front of the harness's RGW.
local h = require("support.helpers")

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/support"

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok, "failed: " .. cmd)
end

-- A CA, and a server certificate it signed for each of names (a subjectAltName list such as
-- "IP:127.0.0.1,DNS:localhost"). Returns {dir, ca = path, certs = {[names] = {cert, key}}}.
function M.pki(name_lists)
  local dir = h.tmpdir()
  local q = function(f) return h.q(dir .. "/" .. f) end
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  sh(("openssl req -x509 %s -keyout %s -out %s -days 2 -subj /CN=resclean-test-ca"
    .. " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"):format(ec, q("ca.key"),
    q("ca.pem")))
  local out = { dir = dir, ca = dir .. "/ca.pem", certs = {} }
  for i, names in ipairs(name_lists) do
    local base = "server" .. i
    h.write(dir .. "/" .. base .. ".ext", "subjectAltName=" .. names .. "\n")
    sh(("openssl req %s -keyout %s -out %s -subj /CN=resclean-test-server"):format(ec, q(base .. ".key"),
      q(base .. ".csr")))
    sh(("openssl x509 -req -in %s -CA %s -CAkey %s -CAcreateserial -out %s -days 2 -extfile %s"):format(
      q(base .. ".csr"), q("ca.pem"), q("ca.key"), q(base .. ".pem"), q(base .. ".ext")))
    out.certs[names] = { cert = dir .. "/" .. base .. ".pem", key = dir .. "/" .. base .. ".key" }
  end
  return out
end

-- HTTPS on loopback in front of upstream (http://host:port). Returns {endpoint, port,
-- connections(), stop()}.
function M.proxy(cert, upstream)
  local host, port = upstream:match("^https?://([^:/]+):(%d+)")
  assert(host, "upstream must be http://host:port, got " .. tostring(upstream))
  local server = h.start_server(here .. "/tls_proxy.py", { cert.cert, cert.key, host, port })
  local dir = server.dir
  local p = { pid = server.pid, port = server.port }
  p.endpoint = ("https://127.0.0.1:%d"):format(p.port)
  function p.connections()
    local f = io.open(dir .. "/connections")
    if not f then return 0 end
    local n = select(2, f:read("a"):gsub("\n", ""))
    f:close()
    return n
  end
  function p.stop() os.execute(("kill %d 2>/dev/null"):format(p.pid)) end
  return p
end

return M
