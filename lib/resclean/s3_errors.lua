-- The classification of the S3 store's errors (resclean.storage, over resclean.s3): the
-- owner of kind "s3" for resclean.errors, which dispatches to classify(err) here. The
-- binding reports facts (code: S3's error code or the transport's failure, status: the
-- HTTP status of the reply, none when there was no answer); this decides what they mean:
--   config     the operator must fix it (credentials, permissions, bucket, region, TLS)
--   transient  the storage could not be reached, timed out, was throttled or answered 5xx
--   item       one key failed (an oversized or malformed reply, a key missing from a
--              reply, a per-key <Error> in a DeleteObjects reply that succeeded)
local M = {}

M.CONFIG = {
  InvalidAccessKeyId = "check AWS_ACCESS_KEY_ID",
  SignatureDoesNotMatch = "check AWS_SECRET_ACCESS_KEY (and AWS_REGION)",
  AccessDenied = "the credentials lack a permission on the bucket: see the README's bucket policy",
  AllAccessDisabled = "the bucket has all access disabled",
  NoSuchBucket = "check RESCLEAN_BUCKET or the policy's bucket",
  InvalidBucketName = "check RESCLEAN_BUCKET or the policy's bucket",
  AuthorizationHeaderMalformed = "check AWS_REGION",
  PermanentRedirect = "check AWS_REGION and AWS_ENDPOINT_URL_S3",
  InvalidToken = "check AWS_SESSION_TOKEN",
  ExpiredToken = "renew AWS_SESSION_TOKEN",
  InvalidAccessKey = "check AWS_ACCESS_KEY_ID",
  RequestTimeTooSkewed = "the host clock is off: fix its time (NTP)",
  tls = "check AWS_CA_BUNDLE and the endpoint's certificate",
  curl = "check AWS_ENDPOINT_URL_S3",
}
M.ITEM = { ReplyTooLarge = true, MalformedReply = true, NotInReply = true, no_result = true,
           OutOfMemory = true, EmptyKey = true, NoSuchKey = true }
-- Codes S3 documents as worth retrying (a fault, overload, throttling, a
-- request the server gave up on), whatever the status that carried them;
-- with the transport's own: no answer at all.
M.TRANSIENT = { InternalError = true, ServiceUnavailable = true, SlowDown = true, RequestTimeout = true,
                OperationAborted = true, Throttling = true, ThrottlingException = true,
                RequestLimitExceeded = true, TooManyRequests = true, connection = true, timeout = true,
                dns = true }
M.TRANSIENT_HINT = "is the S3 endpoint up and reachable? check AWS_ENDPOINT_URL_S3"

-- "config", "transient" or "item", and a hint (or nil).
function M.classify(err)
  local code = tostring(err.code or "")
  -- A per-key error inside a reply that succeeded (DeleteObjects' <Error>
  -- for one key) concerns that key, not the credentials or the bucket.
  local st = tonumber(err.status)
  if st and st >= 200 and st < 300 then return "item" end
  if M.CONFIG[code] then return "config", M.CONFIG[code] end
  if M.ITEM[code] then return "item" end
  if M.TRANSIENT[code] then return "transient", M.TRANSIENT_HINT end
  -- A code we do not know: by the status that carried it, when there was
  -- one; a missing status alone does not make an error transient.
  if st and st > 0 then
    if st >= 500 or st == 429 then return "transient", M.TRANSIENT_HINT end
    if st == 401 or st == 403 then return "config", M.CONFIG.AccessDenied end
    return "item"
  end
  -- An error made in Lua (a fake store, a script) may say it is worth retrying; the
  -- binding never does (it reports facts).
  if err.retryable then return "transient", M.TRANSIENT_HINT end
  return "item"
end

return M
