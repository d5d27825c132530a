-- Test fixture: the upstream (CipherSwarm / Ouroboros) tables resclean sweeps, as the
-- application's SQLAlchemy models create them (model AttackResourceFile; the facts resclean
-- relies on are noted at each table below, the defaults built on them in resclean(1), POLICY).
-- Faithful on purpose: no column defaults, only the primary key and `guid` indexed (so the
-- claim query and the foreign-key checks on delete scan, as in production), and plain
-- ON DELETE NO ACTION foreign keys (deleting a referenced row fails with SQLSTATE 23503).
--
-- Re-runnable: it drops what it creates. Never load it into a real application database.
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f examples/schema.sql

SET client_min_messages = warning;

BEGIN;

DROP TABLE IF EXISTS attacks CASCADE;
DROP TABLE IF EXISTS upload_resource_files CASCADE;
DROP TABLE IF EXISTS attack_resource_files CASCADE;
DROP TYPE IF EXISTS attackresourcetype CASCADE;

-- Only the first four go through the presigned-upload flow; the ephemeral and dynamic ones
-- keep their data in `content` and stay is_uploaded = false forever (never stale).
CREATE TYPE attackresourcetype AS ENUM (
    'MASK_LIST',
    'RULE_LIST',
    'WORD_LIST',
    'CHARSET',
    'DYNAMIC_WORD_LIST',
    'EPHEMERAL_WORD_LIST',
    'EPHEMERAL_MASK_LIST',
    'EPHEMERAL_RULE_LIST'
);

-- Object key in the bucket = id::text (bare lower-case UUID).
CREATE TABLE attack_resource_files (
    id             uuid               NOT NULL,
    project_id     integer,
    file_name      varchar(255)       NOT NULL,
    download_url   varchar(1024)      NOT NULL,
    checksum       varchar(64)        NOT NULL,
    guid           uuid               NOT NULL,
    resource_type  attackresourcetype NOT NULL,
    line_format    varchar(32)        NOT NULL,
    line_encoding  varchar(16)        NOT NULL,
    used_for_modes json               NOT NULL,
    source         varchar(32)        NOT NULL,
    line_count     integer            NOT NULL,
    byte_size      integer            NOT NULL,
    content        json,
    is_uploaded    boolean            NOT NULL,
    file_label     varchar(50),
    tags           json,
    created_at     timestamptz        NOT NULL,
    updated_at     timestamptz        NOT NULL,
    CONSTRAINT attack_resource_files_pkey PRIMARY KEY (id),
    CONSTRAINT attack_resource_files_guid_key UNIQUE (guid)
);

-- Only the columns that matter to resclean: the four references into attack_resource_files.
-- The referencing columns are not indexed, as upstream.
CREATE TABLE attacks (
    id           serial       NOT NULL,
    name         varchar(255) NOT NULL,
    word_list_id uuid,
    rule_list_id uuid,
    mask_list_id uuid,
    charset_id   uuid,
    CONSTRAINT attacks_pkey PRIMARY KEY (id),
    CONSTRAINT attacks_word_list_id_fkey FOREIGN KEY (word_list_id)
        REFERENCES attack_resource_files (id) ON DELETE NO ACTION,
    CONSTRAINT attacks_rule_list_id_fkey FOREIGN KEY (rule_list_id)
        REFERENCES attack_resource_files (id) ON DELETE NO ACTION,
    CONSTRAINT attacks_mask_list_id_fkey FOREIGN KEY (mask_list_id)
        REFERENCES attack_resource_files (id) ON DELETE NO ACTION,
    CONSTRAINT attacks_charset_id_fkey FOREIGN KEY (charset_id)
        REFERENCES attack_resource_files (id) ON DELETE NO ACTION
);

-- A second owner of keys in the same bucket (same key scheme: id::text). Anything that
-- reasons about "objects with no row" has to look here too.
CREATE TABLE upload_resource_files (
    id          uuid         NOT NULL,
    file_name   varchar(255) NOT NULL,
    is_uploaded boolean      NOT NULL,
    created_at  timestamptz  NOT NULL,
    CONSTRAINT upload_resource_files_pkey PRIMARY KEY (id)
);

COMMIT;
