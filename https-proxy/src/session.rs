//! Session cookies: after a login the browser holds
//! `vmctl_session=v1.UID.USER.EXPIRY.MAC`, where MAC is an HMAC-SHA256 over
//! the rest under a key only the proxy has (`session.key` in its state
//! directory, 0600, made on first start). The cookie is HttpOnly, Secure,
//! SameSite=Lax and scoped to the domain, so one login covers every VM.

use std::{
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use ring::{hmac, rand::SecureRandom};

/// The cookie's name.
pub const COOKIE: &str = "vmctl_session";

/// The key file under the state directory.
const KEY_FILE: &str = "session.key";

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user's uid.
    pub uid: u32,
    /// The user's name.
    pub user: String,
}

/// Signs and checks session cookies.
pub struct Sessions {
    key: hmac::Key,
    lifetime: Duration,
    domain: String,
}

impl Sessions {
    /// Loads the key from `state_dir` (creating it, 0600, if missing).
    pub fn open(state_dir: &Path, domain: &str, lifetime: Duration) -> anyhow::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        let secret = match fs::read(&path) {
            Ok(secret) if secret.len() == 32 => secret,
            Ok(_) => anyhow::bail!(
                "{} is not a 32-byte key; remove it to make a new one (this logs everyone out)",
                path.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| anyhow::anyhow!("no randomness for the session key"))?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                f.write_all(&secret)?;
                f.sync_all()?;
                secret
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self::with_secret(&secret, domain, lifetime))
    }

    /// Sessions signed with `secret` (tests).
    pub fn with_secret(secret: &[u8], domain: &str, lifetime: Duration) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime,
            domain: domain.to_string(),
        }
    }

    fn payload(uid: u32, user: &str, expiry: u64) -> String {
        format!("v1.{uid}.{}.{expiry}", B64.encode(user))
    }

    /// The `Set-Cookie` value that logs `session` in until the lifetime
    /// ends, counted from `now`.
    pub fn set_cookie(&self, session: &Session, now: SystemTime) -> String {
        let expiry = unix(now) + self.lifetime.as_secs();
        let payload = Self::payload(session.uid, &session.user, expiry);
        let mac = B64.encode(hmac::sign(&self.key, payload.as_bytes()));
        format!(
            "{COOKIE}={payload}.{mac}; Domain={}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
            self.domain,
            self.lifetime.as_secs()
        )
    }

    /// The session in the `Cookie` header values, if one is there, signed
    /// by this key and not expired at `now`.
    pub fn from_cookies<'a>(
        &self,
        headers: impl Iterator<Item = &'a str>,
        now: SystemTime,
    ) -> Option<Session> {
        headers
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .find_map(|v| self.verify(v, now))
    }

    fn verify(&self, value: &str, now: SystemTime) -> Option<Session> {
        let (payload, mac) = value.rsplit_once('.')?;
        let mac = B64.decode(mac).ok()?;
        hmac::verify(&self.key, payload.as_bytes(), &mac).ok()?;
        let mut parts = payload.split('.');
        let (Some("v1"), Some(uid), Some(user), Some(expiry), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if expiry.parse::<u64>().ok()? <= unix(now) {
            return None;
        }
        Some(Session {
            uid: uid.parse().ok()?,
            user: String::from_utf8(B64.decode(user).ok()?).ok()?,
        })
    }
}

/// `Cookie` header values without the session cookie: the VM must never
/// see it (it could replay it to the proxy as the visitor).
pub fn without_session_cookie(value: &str) -> String {
    value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(&format!("{COOKIE}=")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_value(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn round_trip_expiry_and_forgery() {
        let s = Sessions::with_secret(b"k1", "vm.test", Duration::from_secs(60));
        let now = SystemTime::now();
        let alice = Session {
            uid: 1000,
            user: "alice".into(),
        };
        let set = s.set_cookie(&alice, now);
        assert!(
            set.contains("; Domain=vm.test; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax")
        );
        let c = cookie_value(&set);
        let header = format!("a=b; {c}; z=1");
        assert_eq!(
            s.from_cookies([header.as_str()].into_iter(), now),
            Some(alice)
        );
        // Expired.
        let later = now + Duration::from_secs(61);
        assert_eq!(s.from_cookies([c.as_str()].into_iter(), later), None);
        // Another key.
        let other = Sessions::with_secret(b"k2", "vm.test", Duration::from_secs(60));
        assert_eq!(other.from_cookies([c.as_str()].into_iter(), now), None);
        // Changed uid, same MAC.
        let forged = c.replacen("v1.1000.", "v1.0.", 1);
        assert_eq!(s.from_cookies([forged.as_str()].into_iter(), now), None);
        assert_eq!(
            s.from_cookies(["vmctl_session=junk"].into_iter(), now),
            None
        );
    }

    #[test]
    fn key_is_made_once_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Sessions::open(dir.path(), "d", Duration::from_secs(9)).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Sessions::open(dir.path(), "d", Duration::from_secs(9)).unwrap();
        let now = SystemTime::now();
        let c = cookie_value(&a.set_cookie(
            &Session {
                uid: 5,
                user: "u".into(),
            },
            now,
        ));
        assert_eq!(
            b.from_cookies([c.as_str()].into_iter(), now).unwrap().uid,
            5
        );
    }

    #[test]
    fn session_cookie_is_removed() {
        assert_eq!(
            without_session_cookie("a=1; vmctl_session=x.y; b=2"),
            "a=1; b=2"
        );
        assert_eq!(without_session_cookie("vmctl_session=x"), "");
    }
}
