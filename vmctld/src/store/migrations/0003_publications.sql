-- The HTTPS proxy (vmctl-https): how each VM is published and the
-- one-time login links that open private ones.

-- `vmctl publish NAME [--port P] [--public|--private]`. A VM without a row
-- is published privately on port 80. The row goes with the VM, so a new VM
-- of the same name never inherits an old one's publicity.
CREATE TABLE publications (
    name TEXT PRIMARY KEY NOT NULL REFERENCES vms (name) ON DELETE CASCADE,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    public INTEGER NOT NULL CHECK (public IN (0, 1))
) STRICT;

-- `vmctl login NAME`: the SHA-256 (hex) of each unredeemed token, never
-- the token itself; a row is deleted when redeemed and ignored once expired.
CREATE TABLE login_tokens (
    hash TEXT PRIMARY KEY NOT NULL,
    uid INTEGER NOT NULL,
    expires INTEGER NOT NULL
) STRICT;
