//! OpenSSH public keys as users send them in `Create`: each one
//! `authorized_keys` line, checked before it is stored or handed to a guest.

/// The most keys one VM takes.
pub const MAX_KEYS: usize = 32;

/// The longest key line accepted (an RSA 16384-bit key is about 2.8 KB).
pub const MAX_KEY_LEN: usize = 8192;

/// Key types OpenSSH writes to `*.pub` files.
pub const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// Checks one public key line: `TYPE BASE64 [COMMENT]` with a known type,
/// base64 key data, no options prefix, no control characters (so no
/// newline can smuggle a second line into `authorized_keys`). Returns the
/// line without surrounding whitespace.
pub fn validate_public_key(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("the key is empty".into());
    }
    if line.len() > MAX_KEY_LEN {
        return Err(format!(
            "the key is {} bytes long, at most {MAX_KEY_LEN} are accepted",
            line.len()
        ));
    }
    if let Some(c) = line.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the key contains the control character {:?} (one line per key)",
            c
        ));
    }
    let mut fields = line.split_ascii_whitespace();
    let kind = fields.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(40).collect();
        return Err(format!(
            "unknown key type {shown:?} (expected one of {}); is this a private key or an options prefix?",
            KEY_TYPES.join(", ")
        ));
    }
    let data = fields.next().unwrap_or_default();
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    if data.len() < 16 || !data.chars().all(base64) {
        return Err(format!("the {kind} key data is not base64"));
    }
    Ok(line.to_string())
}

/// Checks a list of keys as [`validate_public_key`] does, and its length.
/// The error names the key by its position (from 1).
pub fn validate_public_keys(keys: &[String]) -> Result<Vec<String>, String> {
    if keys.len() > MAX_KEYS {
        return Err(format!(
            "{} SSH keys given, at most {MAX_KEYS} are accepted",
            keys.len()
        ));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| validate_public_key(key).map_err(|e| format!("SSH key {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQ1Fo4s6ZcVAqGOD3iKhvVv8Ns3N5XMK0c9uVY2Rl8e me@host";

    #[test]
    fn accepts_real_keys() {
        assert_eq!(validate_public_key(&format!("  {KEY}\n")).unwrap(), KEY);
        let no_comment = KEY.rsplit_once(' ').unwrap().0;
        assert!(validate_public_key(no_comment).is_ok());
    }

    #[test]
    fn refuses_what_is_not_one_public_key() {
        let two_lines = format!("{KEY}\n{KEY}");
        let cases = [
            ("", "empty"),
            (two_lines.as_str(), "control character"),
            ("ssh-ed25519 AAAA\rx", "control character"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "unknown key type"),
            (
                "command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
                "unknown key type",
            ),
            ("ssh-ed25519", "not base64"),
            ("ssh-ed25519 not*base64*at*all*!!", "not base64"),
        ];
        for (line, expected) in cases {
            let e = validate_public_key(line).unwrap_err();
            assert!(e.contains(expected), "{line:?}: {e}");
        }
        let long = format!("ssh-rsa {}", "A".repeat(MAX_KEY_LEN));
        assert!(validate_public_key(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn names_the_bad_key_in_a_list() {
        let keys = vec![KEY.to_string(), "nope".to_string()];
        let e = validate_public_keys(&keys).unwrap_err();
        assert!(e.starts_with("SSH key 2: "), "{e}");
        let many = vec![KEY.to_string(); MAX_KEYS + 1];
        assert!(validate_public_keys(&many).is_err());
    }
}
