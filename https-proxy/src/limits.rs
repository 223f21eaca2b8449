//! Connection caps: at most N open connections per client address and M
//! in all. A connection over a cap is closed at once, before TLS, so one
//! client cannot take the proxy's descriptors or memory from the others.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Counts open connections.
#[derive(Debug)]
pub struct ConnLimiter {
    per_ip: usize,
    total: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// Caps of `per_ip` per address and `total` in all.
    pub fn new(per_ip: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_ip,
            total,
            open: Mutex::default(),
        })
    }

    /// A permit for a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().unwrap();
        let (total, by_ip) = &mut *open;
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip || *total >= self.total {
            if *n == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Permit {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap();
        let (total, by_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_total() {
        let l = ConnLimiter::new(2, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none());
        let _b1 = l.admit(b).unwrap();
        assert!(l.admit(b).is_none(), "total cap");
        drop(a1);
        assert!(l.admit(b).is_some());
    }
}
