//! The certificates the proxy serves, chosen by SNI: one given chain and
//! key for every name, or one ACME-issued certificate per VM name (kept in
//! memory here, on disk by [`crate::acme`]).

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use rustls::{
    crypto::ring::sign::any_supported_type,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// A certificate chain with its key and validity.
#[derive(Clone)]
pub struct Cert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Cert {
    /// Parses a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .context("not a PEM certificate chain")?;
        let leaf = chain.first().context("no certificate in the chain")?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| anyhow::anyhow!("the first certificate does not parse: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let not_before = time(x509.validity().not_before);
        let not_after = time(x509.validity().not_after);
        let key = PrivateKeyDer::from_pem_slice(key).context("not a PEM private key")?;
        let signing = any_supported_type(&key).context("unsupported private key type")?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .context("the private key does not belong to the certificate")?;
        Ok(Self {
            key: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    /// Reads a PEM chain file and a PEM key file.
    pub fn from_files(chain: &Path, key: &Path) -> anyhow::Result<Self> {
        let c = std::fs::read(chain).with_context(|| format!("cannot read {}", chain.display()))?;
        let k = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
        Self::from_pem(&c, &k)
            .with_context(|| format!("{} with {}", chain.display(), key.display()))
    }

    /// Whether it is time to replace this certificate at `now`: within
    /// `renew_before` of its end, or, by default, in the last third of its
    /// lifetime.
    pub fn due(&self, now: SystemTime, renew_before: Option<Duration>) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let margin = renew_before.unwrap_or(lifetime / 3);
        match self.not_after.checked_sub(margin) {
            Some(at) => now >= at,
            None => true,
        }
    }
}

/// The certificates by name, shared by the TLS acceptor and the issuer.
#[derive(Debug, Default)]
pub struct CertStore {
    /// Served for every name (user-provided certificate); replaced by a
    /// reload ([`CertStore::replace_fixed`]).
    fixed: RwLock<Option<Cert>>,
    by_name: RwLock<HashMap<String, Cert>>,
}

impl CertStore {
    /// A store that serves `cert` for every name.
    pub fn fixed(cert: Cert) -> Self {
        Self {
            fixed: RwLock::new(Some(cert)),
            by_name: RwLock::default(),
        }
    }

    /// Serves `cert` for every name from the next handshake on (open
    /// connections keep the certificate they were made with).
    pub fn replace_fixed(&self, cert: Cert) {
        *self.fixed.write().unwrap() = Some(cert);
    }

    /// An empty per-name store (ACME).
    pub fn per_name() -> Self {
        Self::default()
    }

    /// The certificate for `name` (the fixed one if any).
    pub fn get(&self, name: &str) -> Option<Cert> {
        let fixed = self.fixed.read().unwrap().clone();
        fixed.or_else(|| self.by_name.read().unwrap().get(name).cloned())
    }

    /// Serves `cert` for `name` from the next handshake on.
    pub fn insert(&self, name: &str, cert: Cert) {
        self.by_name.write().unwrap().insert(name.to_string(), cert);
    }

    /// The names with a per-name certificate.
    pub fn names(&self) -> Vec<String> {
        self.by_name.read().unwrap().keys().cloned().collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(fixed) = &*self.fixed.read().unwrap() {
            return Some(fixed.key.clone());
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        self.by_name
            .read()
            .unwrap()
            .get(&name)
            .map(|c| c.key.clone())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, certificates from `store`.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid from now for `days`.
    pub fn self_signed(names: &[&str], days: u64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = SystemTime::now();
        params.not_before = now.into();
        params.not_after = (now + Duration::from_secs(days * 86400)).into();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_and_knows_when_to_renew() {
        let (chain, key) = self_signed(&["a.vm.test"], 90);
        let cert = Cert::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
        let now = SystemTime::now();
        assert!(!cert.due(now, None));
        assert!(cert.due(now + Duration::from_secs(61 * 86400), None));
        assert!(!cert.due(now + Duration::from_secs(59 * 86400), None));
        assert!(cert.due(now, Some(Duration::from_secs(91 * 86400))));
    }

    #[test]
    fn a_foreign_key_is_refused() {
        let (chain, _) = self_signed(&["a.vm.test"], 1);
        let (_, other_key) = self_signed(&["a.vm.test"], 1);
        let e = Cert::from_pem(chain.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(format!("{e:#}").contains("does not belong"), "{e:#}");
    }
}
