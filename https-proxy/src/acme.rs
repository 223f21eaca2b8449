//! Certificates from an ACME server (RFC 8555) with the HTTP-01
//! challenge, which the proxy answers itself on port 80. A VM's
//! certificate is ordered on the first TLS connection to its name (only
//! for a name vmctld knows, so strangers cannot make the proxy order
//! certificates for arbitrary names), stored under the state directory
//! (`certs/NAME.DOMAIN.crt` and `.key`, 0600), and renewed in the
//! background before it expires; a renewed certificate is served from the
//! next handshake on, without a restart.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::OnceCell;

use crate::tls::{Cert, CertStore};

/// Pending HTTP-01 challenges: token → key authorization, served at
/// `http://NAME.DOMAIN/.well-known/acme-challenge/TOKEN`.
#[derive(Debug, Default)]
pub struct Challenges(Mutex<HashMap<String, String>>);

impl Challenges {
    /// The key authorization for `token`, while its order is pending.
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.lock().unwrap().get(token).cloned()
    }

    fn insert(&self, token: &str, key_authorization: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(token.to_string(), key_authorization.to_string());
    }

    fn remove(&self, token: &str) {
        self.0.lock().unwrap().remove(token);
    }
}

/// The ACME settings.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The directory URL.
    pub directory: String,
    /// Contact URIs.
    pub contact: Vec<String>,
    /// A CA for the ACME server's own HTTPS (tests: Pebble's).
    pub root_ca: Option<PathBuf>,
    /// Renew this long before expiry (default: in the last third of the
    /// lifetime).
    pub renew_before: Option<Duration>,
}

/// Orders, stores and renews certificates.
pub struct Issuer {
    settings: AcmeSettings,
    dir: PathBuf,
    account_file: PathBuf,
    account: OnceCell<Account>,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// One order at a time per name.
    orders: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Issuer {
    /// An issuer keeping its account and certificates under `state_dir`,
    /// serving certificates through `store`. Certificates stored by an
    /// earlier run are loaded now.
    pub fn new(
        settings: AcmeSettings,
        state_dir: &Path,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
    ) -> anyhow::Result<Self> {
        let dir = state_dir.join("certs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let issuer = Self {
            settings,
            account_file: state_dir.join("acme-account.json"),
            dir,
            account: OnceCell::new(),
            store,
            challenges,
            orders: Mutex::default(),
        };
        issuer.load_stored();
        Ok(issuer)
    }

    fn load_stored(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("crt") {
                continue;
            }
            let Some(host) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match Cert::from_files(&path, &path.with_extension("key")) {
                Ok(cert) => self.store.insert(host, cert),
                Err(e) => tracing::warn!("ignoring stored certificate: {e:#}"),
            }
        }
    }

    async fn account(&self) -> anyhow::Result<&Account> {
        self.account
            .get_or_try_init(|| async {
                let builder = match &self.settings.root_ca {
                    Some(ca) => Account::builder_with_root(ca)
                        .with_context(|| format!("AcmeRootCA={}", ca.display()))?,
                    None => Account::builder()?,
                };
                if let Ok(text) = fs::read_to_string(&self.account_file) {
                    let creds: AccountCredentials =
                        serde_json::from_str(&text).with_context(|| {
                            format!("{} does not parse", self.account_file.display())
                        })?;
                    return Ok(builder.from_credentials(creds).await?);
                }
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let (account, creds) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| format!("cannot register with {}", self.settings.directory))?;
                write_private(
                    &self.account_file,
                    serde_json::to_string(&creds)?.as_bytes(),
                )?;
                Ok(account)
            })
            .await
    }

    /// Makes sure `host` has a certificate that is not due for renewal,
    /// ordering one if needed.
    pub async fn ensure(&self, host: &str) -> anyhow::Result<()> {
        let fresh = |store: &CertStore| {
            store
                .get(host)
                .is_some_and(|c| !c.due(SystemTime::now(), self.settings.renew_before))
        };
        if fresh(&self.store) {
            return Ok(());
        }
        let lock = self
            .orders
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if fresh(&self.store) {
            return Ok(());
        }
        let cert = self
            .order(host)
            .await
            .with_context(|| format!("ACME order for {host}"))?;
        self.store.insert(host, cert);
        tracing::info!("certificate for {host} issued");
        Ok(())
    }

    async fn order(&self, host: &str) -> anyhow::Result<Cert> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut tokens = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => bail!("authorization is {other:?}"),
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .context("the ACME server offers no http-01 challenge")?;
                let key_authorization = challenge.key_authorization();
                self.challenges
                    .insert(&challenge.token, key_authorization.as_str());
                tokens.push(challenge.token.clone());
                challenge.set_ready().await?;
            }
            let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
            let status = order.poll_ready(&retry).await?;
            if status != OrderStatus::Ready {
                bail!("order is {status:?}, not ready (was the challenge reachable on port 80?)");
            }
            let key = order.finalize().await?;
            let chain = order.poll_certificate(&retry).await?;
            Ok((chain, key))
        }
        .await;
        for token in &tokens {
            self.challenges.remove(token);
        }
        let (chain, key) = result?;
        let cert = Cert::from_pem(chain.as_bytes(), key.as_bytes())?;
        write_private(&self.dir.join(format!("{host}.key")), key.as_bytes())?;
        write_private(&self.dir.join(format!("{host}.crt")), chain.as_bytes())?;
        Ok(cert)
    }

    /// Renews every stored certificate that is due, every `interval`.
    pub async fn renew_loop(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            for host in self.store.names() {
                if let Err(e) = self.ensure(&host).await {
                    tracing::warn!("renewal of {host} failed (will retry): {e:#}");
                }
            }
        }
    }
}

/// Writes `data` to `path` (0600) through a temporary file and a rename,
/// so a reader never sees half a key.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
