-- Cancel requests: how an application asks the long-running sweeper to remove pending uploads
-- now, and the grant that decides who may ask (resclean(1), CANCEL).
--
-- PostgreSQL has no privilege on NOTIFY: any role that can connect may send one. So a NOTIFY is
-- only a wake-up, never the authority. The authority is a row in this table, and writing one is
-- a grant the operator gives to the application's role and nobody else:
--   * the application role may INSERT the ids, a reason and its own request id, nothing more
--     (no SELECT, no UPDATE, no DELETE, and not the columns saying who asked and when);
--   * a BEFORE INSERT trigger sets requested_by to current_user and requested_at to now(),
--     so the role written in the sweeper's log is the role that wrote the row;
--   * an AFTER INSERT statement trigger sends an empty NOTIFY on the channel the sweepers
--     LISTEN on (policy cancel_channel): a wake-up only, its payload carries nothing;
--   * the sweeper role reads and deletes requests (policy cancel_requests_table), in the
--     transaction that cancels their ids, so a crash leaves them for the next turn.
-- Requests written while no sweeper listens are kept: every sweep takes the pending ones at
-- the start of each cycle.
--
-- Run it as the owner of the application's tables (it drops and recreates the table: pending
-- requests are lost), naming the two roles:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v app_role=cipherswarm -v sweeper_role=resclean \
--        -f examples/cancel-requests.sql
-- Optional: -v channel=NAME when the policy's cancel_channel is not resclean_cancel.
-- A table of another name: change it here and set cancel_requests_table in the policy.
-- resource_ids is uuid[] because the upstream ids are uuid: use the type of the policy's
-- id_column.

\if :{?channel}
\else
\set channel resclean_cancel
\endif

SET client_min_messages = warning;

BEGIN;

DROP TABLE IF EXISTS resclean_cancel_requests;

CREATE TABLE resclean_cancel_requests (
    id           bigserial   PRIMARY KEY,
    -- 1 to 1000 ids; a request names each resource the application wants cancelled.
    resource_ids uuid[]      NOT NULL
        CHECK (cardinality(resource_ids) BETWEEN 1 AND 1000 AND array_position(resource_ids, NULL) IS NULL),
    requested_by name        NOT NULL,  -- set by the trigger: current_user of the INSERT
    requested_at timestamptz NOT NULL,  -- set by the trigger: now()
    reason       text        CHECK (length(reason) <= 200),      -- given by the application
    request_id   text        CHECK (length(request_id) <= 100)   -- given by the application
);

COMMENT ON TABLE resclean_cancel_requests IS
  'resclean: uploads the application asked to cancel (examples/cancel-requests.sql, resclean(1) CANCEL)';

-- Who asked cannot be forged: whatever the INSERT gives, the row says current_user and now().
-- Not SECURITY DEFINER: current_user here is the role running the INSERT.
CREATE OR REPLACE FUNCTION resclean_cancel_request_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.requested_by := current_user;
    NEW.requested_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER resclean_cancel_request_stamp
    BEFORE INSERT ON resclean_cancel_requests
    FOR EACH ROW EXECUTE FUNCTION resclean_cancel_request_stamp();

-- The wake-up: one empty NOTIFY per INSERT statement, delivered when the transaction commits
-- (a rolled-back request wakes nobody, and there is nothing to take).
CREATE OR REPLACE FUNCTION resclean_cancel_request_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

CREATE TRIGGER resclean_cancel_request_wakeup
    AFTER INSERT ON resclean_cancel_requests
    FOR EACH STATEMENT EXECUTE FUNCTION resclean_cancel_request_wakeup(:'channel');

-- Nobody but the grants below.
REVOKE ALL ON TABLE resclean_cancel_requests FROM PUBLIC;
REVOKE ALL ON SEQUENCE resclean_cancel_requests_id_seq FROM PUBLIC;

-- The application: write requests, nothing else.
GRANT INSERT (resource_ids, reason, request_id) ON resclean_cancel_requests TO :"app_role";
GRANT USAGE ON SEQUENCE resclean_cancel_requests_id_seq TO :"app_role";

-- The sweeper: take requests (DELETE ... RETURNING reads them).
GRANT SELECT, DELETE ON resclean_cancel_requests TO :"sweeper_role";

COMMIT;
