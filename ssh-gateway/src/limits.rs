//! The gateway's limits. Each has a name that appears in the message a
//! client gets when it hits it, so a user can tell which one and an
//! administrator can find the knob (`vmctl-ssh --help`).

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The configured limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time from TCP accept to successful authentication.
    pub auth_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Authenticated connections one user may hold at once.
    pub max_sessions_per_user: usize,
    /// Channels (sessions, forwards) one connection may have open at once.
    pub max_channels_per_connection: usize,
    /// New connections per source address per minute.
    pub connections_per_source_per_minute: u32,
    /// Authentications per key per minute.
    pub connections_per_key_per_minute: u32,
    /// Unauthenticated connections in all (beyond: refused at accept).
    pub max_unauthenticated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_sessions_per_user: 16,
            max_channels_per_connection: 16,
            connections_per_source_per_minute: 60,
            connections_per_key_per_minute: 60,
            max_unauthenticated: 256,
        }
    }
}

/// A limit, as named in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`Limits::auth_timeout`].
    AuthTimeout,
    /// [`Limits::idle_timeout`].
    IdleTimeout,
    /// [`Limits::max_sessions_per_user`].
    SessionsPerUser,
    /// [`Limits::max_channels_per_connection`].
    ChannelsPerConnection,
    /// [`Limits::connections_per_source_per_minute`].
    RatePerSource,
    /// [`Limits::connections_per_key_per_minute`].
    RatePerKey,
    /// [`Limits::max_unauthenticated`].
    Unauthenticated,
}

impl Limits {
    /// The message a client gets for `limit`: its name and value.
    pub fn message(&self, limit: Limit) -> String {
        let text = match limit {
            Limit::AuthTimeout => format!(
                "authentication timeout: not authenticated within {} s",
                self.auth_timeout.as_secs()
            ),
            Limit::IdleTimeout => format!(
                "idle timeout: no traffic for {} s",
                self.idle_timeout.as_secs()
            ),
            Limit::SessionsPerUser => format!(
                "session limit: at most {} connections per user at once; close one and retry",
                self.max_sessions_per_user
            ),
            Limit::ChannelsPerConnection => format!(
                "channel limit: at most {} channels per connection",
                self.max_channels_per_connection
            ),
            Limit::RatePerSource => format!(
                "connection rate limit per source address: at most {} per minute; retry later",
                self.connections_per_source_per_minute
            ),
            Limit::RatePerKey => format!(
                "connection rate limit per key: at most {} per minute; retry later",
                self.connections_per_key_per_minute
            ),
            Limit::Unauthenticated => format!(
                "too many unauthenticated connections (at most {}); retry later",
                self.max_unauthenticated
            ),
        };
        format!("vmctl-ssh: {text}")
    }
}

/// Counts events per key in a sliding one-minute window.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: u32,
    window: Duration,
    seen: Mutex<HashMap<K, Vec<Instant>>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// At most `per_minute` events per key per minute.
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }

    fn with_window(per_minute: u32, window: Duration) -> Self {
        Self {
            per_minute,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event for `key` at `now`; false when it is over the
    /// limit (then it is not counted, so a flood does not extend itself).
    pub fn allow_at(&self, key: &K, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle keys now and then so the map stays small.
        if seen.len() > 4096 {
            let window = self.window;
            seen.retain(|_, times| times.last().is_some_and(|t| now - *t < window));
        }
        let times = seen.entry(key.clone()).or_default();
        times.retain(|t| now.saturating_duration_since(*t) < self.window);
        if times.len() >= self.per_minute as usize {
            return false;
        }
        times.push(now);
        true
    }

    /// [`Self::allow_at`] now.
    pub fn allow(&self, key: &K) -> bool {
        self.allow_at(key, Instant::now())
    }
}

/// Open counts per key (sessions per user), with a guard that gives the
/// slot back when dropped.
#[derive(Debug, Default)]
pub struct Counter<K: Eq + Hash> {
    open: Mutex<HashMap<K, usize>>,
}

/// A slot held in a [`Counter`].
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone> {
    counter: Arc<Counter<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    /// Takes a slot for `key` unless `max` are held.
    pub fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counter: self.clone(),
            key,
        })
    }

    /// Slots held for `key`.
    pub fn held(&self, key: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The shared limit state of one gateway process.
#[derive(Debug)]
pub struct LimitState {
    /// The configuration.
    pub limits: Limits,
    /// Connections per source address.
    pub per_source: RateLimiter<IpAddr>,
    /// Authentications per key (`TYPE BASE64`).
    pub per_key: RateLimiter<String>,
    /// Authenticated connections per uid.
    pub sessions: Arc<Counter<u32>>,
    /// Unauthenticated connections (one key: `()`).
    pub unauthenticated: Arc<Counter<()>>,
}

impl LimitState {
    /// Fresh state for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            per_source: RateLimiter::new(limits.connections_per_source_per_minute),
            per_key: RateLimiter::new(limits.connections_per_key_per_minute),
            sessions: Arc::default(),
            unauthenticated: Arc::default(),
            limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_per_key_within_the_window() {
        let limiter = RateLimiter::with_window(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limiter.allow_at(&"a", t0));
        assert!(limiter.allow_at(&"a", t0));
        assert!(!limiter.allow_at(&"a", t0), "third within a minute");
        assert!(limiter.allow_at(&"b", t0), "another key is separate");
        assert!(limiter.allow_at(&"a", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn slots_are_given_back_on_drop() {
        let counter = Arc::new(Counter::default());
        let a = counter.acquire(1000u32, 2).unwrap();
        let _b = counter.acquire(1000, 2).unwrap();
        assert!(counter.acquire(1000, 2).is_none());
        assert!(counter.acquire(1001, 2).is_some());
        drop(a);
        assert_eq!(counter.held(&1000), 1);
        assert!(counter.acquire(1000, 2).is_some());
    }

    #[test]
    fn messages_name_the_limit_and_its_value() {
        let limits = Limits::default();
        let m = limits.message(Limit::SessionsPerUser);
        assert!(m.contains("session limit") && m.contains("16"), "{m}");
        let m = limits.message(Limit::RatePerSource);
        assert!(m.contains("per source address") && m.contains("60"), "{m}");
    }
}
