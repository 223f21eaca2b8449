//! From a request's host name to a VM: `NAME.DOMAIN` names VM `NAME`, and
//! vmctld says where it listens (`io.vmctl.Gateway.ResolveRoute`). Answers
//! are cached for a few seconds so a busy site costs vmctld one call per
//! name now and then, not one per request.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{gateway::GatewayError, proxy::Vmctld};

/// How long a resolved route (or "no such VM") is reused.
const CACHE_TTL: Duration = Duration::from_secs(3);

/// Names cached at most; beyond that the cache is emptied (unknown names
/// sent by clients must not grow it without bound).
const CACHE_MAX: usize = 4096;

/// The VM name in `host` (a Host header or SNI, maybe with `:port`), if
/// `host` is exactly `NAME.DOMAIN` with one label NAME.
pub fn vm_name(host: &str, domain: &str) -> Option<String> {
    let host = strip_port(host).trim_end_matches('.');
    if host.len() <= domain.len() + 1 {
        return None;
    }
    let (name, rest) = host.split_at(host.len() - domain.len() - 1);
    if !rest[1..].eq_ignore_ascii_case(domain) || !rest.starts_with('.') {
        return None;
    }
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then(|| name.to_ascii_lowercase())
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Where a VM is and who may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The VM's name.
    pub name: String,
    /// Its IPv4 address on the host bridge (none: made without network).
    pub ipv4: Option<Ipv4Addr>,
    /// The published port (80 unless `vmctl publish --port`).
    pub port: u16,
    /// The owner's uid.
    pub owner_uid: u32,
    /// The users it is shared with (`vmctl share`).
    pub shared_uids: Vec<u32>,
    /// Open to anyone (`vmctl publish --public`), else only to the owner
    /// and the users it is shared with.
    pub public: bool,
    /// `running`, `stopped`, ... (see `io.vmctl.Manager` VM.state).
    pub state: String,
}

impl Route {
    /// Whether a private VM lets `uid` in: its owner or a user it is
    /// shared with.
    pub fn admits(&self, uid: u32) -> bool {
        uid == self.owner_uid || self.shared_uids.contains(&uid)
    }
}

/// Resolves VM names through vmctld, with a short cache.
pub struct Resolver {
    vmctld: Arc<dyn Vmctld>,
    cache: Mutex<HashMap<String, (Instant, Option<Route>)>>,
}

impl Resolver {
    /// A resolver asking `vmctld`.
    pub fn new(vmctld: Arc<dyn Vmctld>) -> Self {
        Self {
            vmctld,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The route of VM `name`; `None` when there is no such VM.
    pub async fn resolve(&self, name: &str) -> Result<Option<Route>, GatewayError> {
        if let Some((at, route)) = self.cache.lock().unwrap().get(name) {
            if at.elapsed() < CACHE_TTL {
                return Ok(route.clone());
            }
        }
        let route = self.vmctld.resolve_route(name).await?;
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(name.to_string(), (Instant::now(), route.clone()));
        Ok(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_the_domain() {
        let d = "vm.example.org";
        assert_eq!(vm_name("blog.vm.example.org", d).as_deref(), Some("blog"));
        assert_eq!(
            vm_name("Blog.VM.example.org:443", d).as_deref(),
            Some("blog")
        );
        assert_eq!(vm_name("blog.vm.example.org.", d).as_deref(), Some("blog"));
        assert_eq!(vm_name("vm.example.org", d), None);
        assert_eq!(vm_name(".vm.example.org", d), None);
        assert_eq!(vm_name("a.b.vm.example.org", d), None);
        assert_eq!(vm_name("blogxvm.example.org", d), None);
        assert_eq!(vm_name("blog.other.org", d), None);
        assert_eq!(vm_name("bl_og.vm.example.org", d), None);
        assert_eq!(vm_name("", d), None);
    }
}
