-- `vmctl share NAME USER`: the users besides its owner whom the HTTPS
-- proxy (vmctl-https) lets into a private VM. By uid, so that renaming an
-- account keeps its shares. The rows go with the VM, so a new VM of the
-- same name starts unshared.
CREATE TABLE shares (
    name TEXT NOT NULL REFERENCES vms (name) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    PRIMARY KEY (name, uid)
) STRICT;
