-- Persistent data volumes (issue 12): one row per data volume, with its
-- owner, so a kept volume (its VM removed) still belongs to someone who may
-- attach it again or delete it, and its size counts in the owner's MaxDisk.
--
-- `vm` is the VM it is attached to; deleting that VM's row detaches it
-- (ON DELETE SET NULL): the volume is then "kept". `state` journals the
-- operations on the volume itself: 'creating' (made by a create that has
-- not finished: undone with that create, or by reconciliation after a
-- crash), 'ready', 'deleting' (a delete was asked for: finished by
-- reconciliation if vmctld died first).
CREATE TABLE volumes (
    name TEXT PRIMARY KEY NOT NULL,
    owner_uid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    vm TEXT UNIQUE REFERENCES vms (name) ON DELETE SET NULL,
    created INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting'))
) STRICT;

CREATE INDEX volumes_owner ON volumes (owner_uid);
