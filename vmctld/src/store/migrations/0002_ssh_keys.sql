-- SSH keys are looked up by their key data (the SSH gateway gets a key a
-- client proved and asks whose it is), so the key data is the primary
-- key: one key opens one user's account, never two. The comment is kept
-- apart; `key` is `TYPE BASE64` only.
CREATE TABLE ssh_keys_v2 (
    key TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    added INTEGER NOT NULL
) STRICT;

-- Old rows were whole lines `TYPE BASE64 [COMMENT]`; the oldest owner of
-- a key keeps it.
INSERT OR IGNORE INTO ssh_keys_v2 (key, uid, comment, added)
SELECT
    substr(key, 1, instr(key, ' ') - 1) || ' ' ||
        CASE WHEN instr(substr(key, instr(key, ' ') + 1), ' ') > 0
             THEN substr(substr(key, instr(key, ' ') + 1), 1,
                         instr(substr(key, instr(key, ' ') + 1), ' ') - 1)
             ELSE substr(key, instr(key, ' ') + 1) END,
    uid,
    CASE WHEN instr(substr(key, instr(key, ' ') + 1), ' ') > 0
         THEN substr(substr(key, instr(key, ' ') + 1),
                     instr(substr(key, instr(key, ' ') + 1), ' ') + 1)
         ELSE '' END,
    added
FROM ssh_keys
WHERE instr(key, ' ') > 0
ORDER BY added, uid;

DROP TABLE ssh_keys;
ALTER TABLE ssh_keys_v2 RENAME TO ssh_keys;
CREATE INDEX ssh_keys_by_uid ON ssh_keys (uid);
