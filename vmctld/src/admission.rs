//! Who may hold a varlink connection: a cap per uid and a global cap, with
//! a share of the global cap that only root may use.
//!
//! The varlink socket is world-connectable by design (authorisation is per
//! call), so any local user can open connections. Without caps one user
//! could hold every connection (and file descriptor) vmctld can have, and
//! root's calls would go unanswered. Root is exempt from the per-uid cap
//! and may use the reserved share, so root always gets a connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

/// The connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections one non-root uid may hold at once.
    pub per_uid: usize,
    /// Connections vmctld holds at once, from everybody.
    pub total: usize,
    /// How many of `total` only root may use.
    pub root_reserve: usize,
}

impl Caps {
    /// 64 per uid, 512 in all of which 32 are root's alone.
    pub const DEFAULT: Caps = Caps {
        per_uid: 64,
        total: 512,
        root_reserve: 32,
    };
}

impl Default for Caps {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The uid holds `per_uid` connections already.
    PerUid,
    /// vmctld holds as many connections as this caller may use.
    Total,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerUid => "this user's connection limit is reached",
            Self::Total => "vmctld's connection limit is reached",
        })
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// Counts the open connections and admits new ones within [`Caps`].
#[derive(Debug, Clone)]
pub struct Admission {
    caps: Caps,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// Admission under `caps`.
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
        }
    }

    /// Admits a connection from `uid`, or says why not. The connection
    /// counts until the returned [`Permit`] is dropped.
    pub fn admit(&self, uid: u32) -> Result<Permit, Refusal> {
        let mut counts = self.lock();
        let total_cap = if uid == 0 {
            self.caps.total
        } else {
            self.caps.total.saturating_sub(self.caps.root_reserve)
        };
        if counts.total >= total_cap {
            return Err(Refusal::Total);
        }
        if uid != 0 {
            let held = counts.per_uid.entry(uid).or_default();
            if *held >= self.caps.per_uid {
                return Err(Refusal::PerUid);
            }
            *held += 1;
        }
        counts.total += 1;
        Ok(Permit {
            uid,
            counts: self.counts.clone(),
        })
    }

    /// Connections open now (for logs and tests).
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts are plain integers, valid even if a holder panicked.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    uid: u32,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if self.uid != 0 {
            if let Some(held) = counts.per_uid.get_mut(&self.uid) {
                *held -= 1;
                if *held == 0 {
                    counts.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Caps = Caps {
        per_uid: 2,
        total: 5,
        root_reserve: 2,
    };

    #[test]
    fn per_uid_cap_and_release() {
        let a = Admission::new(SMALL);
        let p1 = a.admit(1000).unwrap();
        let _p2 = a.admit(1000).unwrap();
        assert_eq!(a.admit(1000).unwrap_err(), Refusal::PerUid);
        // Another user is not affected.
        let _q = a.admit(1001).unwrap();
        drop(p1);
        let _p3 = a.admit(1000).unwrap();
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn users_cannot_take_roots_reserve() {
        let a = Admission::new(SMALL);
        let _users: Vec<_> = [1, 1, 2].iter().map(|&uid| a.admit(uid).unwrap()).collect();
        // 3 of 5 used: the remaining 2 are root's.
        assert_eq!(a.admit(3).unwrap_err(), Refusal::Total);
        let r1 = a.admit(0).unwrap();
        let _r2 = a.admit(0).unwrap();
        assert_eq!(a.admit(0).unwrap_err(), Refusal::Total);
        drop(r1);
        // Root's freed place is still not for users.
        assert_eq!(a.admit(3).unwrap_err(), Refusal::Total);
        assert!(a.admit(0).is_ok());
    }

    #[test]
    fn root_has_no_per_uid_cap() {
        let a = Admission::new(SMALL);
        let held: Vec<_> = (0..5).map(|_| a.admit(0).unwrap()).collect();
        assert_eq!(held.len(), 5);
        drop(held);
        assert_eq!(a.open(), 0);
    }
}
