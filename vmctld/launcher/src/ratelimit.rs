//! A token bucket for log lines a guest can cause, so that a guest cannot
//! flood the host's journal (and rotate older host logs away).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::warn;

/// Admits up to `burst` lines at once and `per_sec` lines per second after
/// that; counts what it turns away so the count can be logged once.
#[derive(Debug)]
pub struct LogLimiter {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it; first report this many lines suppressed before it (if > 0).
    Log {
        /// Lines dropped since the last one logged.
        suppressed_before: u64,
    },
    /// Drop it (it is counted).
    Drop,
}

impl LogLimiter {
    /// A full bucket of `burst` lines refilled at `per_sec` lines a second.
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        LogLimiter {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            last: now,
            suppressed: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last = now;
    }

    /// Decides about one more line at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Log {
                suppressed_before: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::Drop
        }
    }

    /// When lines were dropped and the bucket has room again: the count, to
    /// be logged now (it uses one token). Lets a summary appear even when
    /// no further line comes.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            None
        }
    }
}

/// Warnings a guest can cause: a burst, then one a second.
const WARN_BURST: u32 = 20;
const WARN_PER_SEC: u32 = 1;

/// Rate-limited warnings about what guests send.
#[derive(Clone)]
pub struct GuestWarnings(Arc<Mutex<LogLimiter>>);

impl Default for GuestWarnings {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestWarnings {
    /// A fresh limiter.
    pub fn new() -> Self {
        GuestWarnings(Arc::new(Mutex::new(LogLimiter::new(
            WARN_BURST,
            WARN_PER_SEC,
            Instant::now(),
        ))))
    }

    /// Logs `message` (which must already be safe: escaped) unless guests
    /// caused too many warnings lately.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        let admit = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        if let Admit::Log { suppressed_before } = admit {
            if suppressed_before > 0 {
                warn!("{suppressed_before} warnings about guest connections suppressed");
            }
            warn!("{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_then_summary() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, 2, t0);
        for _ in 0..3 {
            assert_eq!(
                l.admit(t0),
                Admit::Log {
                    suppressed_before: 0
                }
            );
        }
        assert_eq!(l.admit(t0), Admit::Drop);
        assert_eq!(l.admit(t0), Admit::Drop);
        assert_eq!(l.flush(t0), None, "no room yet");
        // Half a second refills one line at 2 lines/s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            l.admit(t1),
            Admit::Log {
                suppressed_before: 2
            }
        );
        assert_eq!(l.admit(t1), Admit::Drop);
        assert_eq!(l.flush(t1 + Duration::from_secs(1)), Some(1));
        assert_eq!(l.flush(t1 + Duration::from_secs(2)), None);
        // The bucket never holds more than its burst.
        let later = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(matches!(l.admit(later), Admit::Log { .. }));
        }
        assert_eq!(l.admit(later), Admit::Drop);
    }
}
