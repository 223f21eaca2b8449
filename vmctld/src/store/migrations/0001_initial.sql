-- vmctl's durable state. Files that systemd, the launcher or the guest read
-- (specs, drop-ins, disks, keys, NSS records) are written from these rows.

-- One row per VM. `state` is the operation journal of create and remove:
-- a row that is not 'ready' when vmctld starts belongs to an operation that
-- was cut short, which reconciliation undoes ('creating') or finishes
-- ('removing'). The UNIQUE constraints are the last line of defence: two
-- creates can never hold the same CID, address or MAC.
CREATE TABLE vms (
    name TEXT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL,
    owner_uid INTEGER NOT NULL,
    cid INTEGER NOT NULL UNIQUE,
    ipv4 TEXT UNIQUE,
    ipv6 TEXT UNIQUE,
    mac TEXT UNIQUE,
    vcpus INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    image TEXT NOT NULL,
    -- The whole VmSpec as JSON: what the spec file is written from.
    spec TEXT NOT NULL,
    created INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing'))
) STRICT;

CREATE INDEX vms_owner ON vms (owner_uid);

-- Per-user quota overrides (`vmctl quota set`); NULL: the default of
-- [Quota] in vmctl.conf.
CREATE TABLE quotas (
    uid INTEGER PRIMARY KEY NOT NULL,
    max_vms INTEGER,
    max_vcpus INTEGER,
    max_memory INTEGER,
    max_disk INTEGER
) STRICT;

-- Users' SSH public keys (one authorized_keys line each).
CREATE TABLE ssh_keys (
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    added INTEGER NOT NULL,
    PRIMARY KEY (uid, key)
) STRICT;
