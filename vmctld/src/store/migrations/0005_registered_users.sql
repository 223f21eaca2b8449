-- Local accounts made by registration through the SSH gateway (`ssh -p
-- 2222 HOST register NAME`, only when [SSHGateway] Register=yes): which
-- accounts came from the network, when, and with which key, so that an
-- administrator can audit them and RegisterMax= can be counted. The key
-- itself is in ssh_keys like any other user's.
CREATE TABLE registered_users (
    uid INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    created INTEGER NOT NULL
) STRICT;
