//! `/etc/vmctl/https.conf`: the proxy's settings, in the same INI-like
//! format as `/etc/vmctl/vmctl.conf` (`[Section]` headers, `Key=Value`
//! lines, `#` and `;` comments). Everything lives in `[HTTPS]`; an unknown
//! key is an error naming the line, so a typo is never silently ignored.
//!
//! ```ini
//! [HTTPS]
//! Domain=example.org
//! # Either a certificate and key (for *.example.org) ...
//! CertificateFile=/etc/vmctl/https/fullchain.pem
//! KeyFile=/etc/vmctl/https/key.pem
//! # ... or an ACME directory (certificates per name, issued on first use).
//! AcmeDirectory=https://acme-v02.api.letsencrypt.org/directory
//! AcmeContact=mailto:admin@example.org
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

/// Where the file is installed.
pub const DEFAULT_PATH: &str = "/etc/vmctl/https.conf";

/// vmctld's varlink socket.
pub const DEFAULT_VARLINK_SOCKET: &str = "/run/vmctl/io.vmctl.Manager";

/// A configuration that cannot be used; the message names the file, the
/// line and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// The line (from 1; 0 for the file as a whole).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn at(path: &Path, line: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            line,
            message: message.into(),
        }
    }
}

/// Where certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// One certificate chain and key for every name (e.g. `*.DOMAIN`).
    Files {
        /// PEM certificate chain.
        certificate: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
    /// An ACME server: one certificate per name, issued on first use.
    Acme {
        /// The directory URL.
        directory: String,
        /// Contact URIs (`mailto:...`), possibly none.
        contact: Vec<String>,
        /// A PEM file with the CA that signs the ACME server's own HTTPS
        /// certificate, when that is not a public one (Pebble in tests).
        root_ca: Option<PathBuf>,
    },
}

/// The proxy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The domain: VM `NAME` is served as `NAME.DOMAIN` (lower case, no
    /// trailing dot).
    pub domain: String,
    /// Certificates.
    pub tls: TlsSource,
    /// vmctld's varlink socket.
    pub varlink_socket: PathBuf,
    /// Open connections one client address may hold.
    pub max_connections_per_ip: usize,
    /// Open connections in all.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head (and the TLS
    /// handshake).
    pub header_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// How long a session cookie is valid.
    pub session_lifetime: Duration,
    /// Renew an ACME certificate this long before it expires (default: in
    /// the last third of its lifetime).
    pub acme_renew_before: Option<Duration>,
    /// How often certificates are checked for renewal.
    pub acme_renew_check: Duration,
}

impl Config {
    /// Reads `path`. A missing file is an error: without a domain there is
    /// nothing to serve.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::at(
                    path,
                    0,
                    "missing; write [HTTPS] Domain= and either CertificateFile=/KeyFile= or AcmeDirectory= there",
                ))
            }
            Err(e) => return Err(ConfigError::at(path, 0, format!("cannot read: {e}"))),
        };
        Self::parse(&text, path)
    }

    /// Parses the text of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut domain = None;
        let mut certificate = None;
        let mut key = None;
        let mut directory = None;
        let mut contact = Vec::new();
        let mut root_ca = None;
        let mut config = Config {
            domain: String::new(),
            tls: TlsSource::Acme {
                directory: String::new(),
                contact: Vec::new(),
                root_ca: None,
            },
            varlink_socket: PathBuf::from(DEFAULT_VARLINK_SOCKET),
            max_connections_per_ip: 64,
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            session_lifetime: Duration::from_secs(7 * 24 * 3600),
            acme_renew_before: None,
            acme_renew_check: crate::DEFAULT_RENEW_CHECK,
        };
        let mut section = "";
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                section = name.strip_suffix(']').ok_or_else(|| {
                    ConfigError::at(path, n, format!("{line:?} is not a [Section] header"))
                })?;
                if section != "HTTPS" {
                    return Err(ConfigError::at(
                        path,
                        n,
                        format!("unknown section [{section}]; the only one is [HTTPS]"),
                    ));
                }
                continue;
            }
            if section.is_empty() {
                return Err(ConfigError::at(path, n, "a key before [HTTPS]"));
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| ConfigError::at(path, n, format!("{line:?} is not Key=Value")))?;
            let (k, v) = (k.trim(), v.trim());
            let bad = |what: &str| ConfigError::at(path, n, format!("{k}={v}: {what}"));
            let number = |max: u64| -> Result<u64, ConfigError> {
                v.parse::<u64>()
                    .ok()
                    .filter(|x| (1..=max).contains(x))
                    .ok_or_else(|| bad(&format!("expected a number from 1 to {max}")))
            };
            match k {
                "Domain" => domain = Some(parse_domain(v).map_err(|e| bad(&e))?),
                "CertificateFile" => certificate = Some(absolute(v).map_err(|e| bad(&e))?),
                "KeyFile" => key = Some(absolute(v).map_err(|e| bad(&e))?),
                "AcmeDirectory" => {
                    if !v.starts_with("https://") {
                        return Err(bad("the ACME directory must be an https:// URL"));
                    }
                    directory = Some(v.to_string());
                }
                "AcmeContact" => contact.extend(v.split_whitespace().map(str::to_string)),
                "AcmeRootCA" => root_ca = Some(absolute(v).map_err(|e| bad(&e))?),
                "VarlinkSocket" => config.varlink_socket = absolute(v).map_err(|e| bad(&e))?,
                "MaxConnectionsPerIP" => config.max_connections_per_ip = number(65536)? as usize,
                "MaxConnections" => config.max_connections = number(1 << 20)? as usize,
                "MaxHeaderBytes" => config.max_header_bytes = number(1 << 20)? as usize,
                "HeaderTimeoutSec" => config.header_timeout = Duration::from_secs(number(3600)?),
                "MaxConcurrentStreams" => config.max_concurrent_streams = number(10_000)? as u32,
                "AcmeRenewBeforeSec" => {
                    config.acme_renew_before = Some(Duration::from_secs(number(u32::MAX as u64)?))
                }
                "AcmeRenewCheckSec" => {
                    config.acme_renew_check = Duration::from_secs(number(86400)?)
                }
                "SessionLifetimeSec" => {
                    config.session_lifetime = Duration::from_secs(number(366 * 24 * 3600)?)
                }
                _ => return Err(ConfigError::at(path, n, format!("unknown key {k}="))),
            }
        }
        config.domain =
            domain.ok_or_else(|| ConfigError::at(path, 0, "[HTTPS] Domain= is required"))?;
        config.tls =
            match (certificate, key, directory) {
                (Some(certificate), Some(key), None) => TlsSource::Files { certificate, key },
                (None, None, Some(directory)) => TlsSource::Acme {
                    directory,
                    contact,
                    root_ca,
                },
                _ => return Err(ConfigError::at(
                    path,
                    0,
                    "set either both CertificateFile= and KeyFile=, or AcmeDirectory= (not both)",
                )),
            };
        Ok(config)
    }
}

fn absolute(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err("expected an absolute path".into())
    }
}

/// A DNS domain: dot-separated labels of letters, digits and hyphens.
fn parse_domain(v: &str) -> Result<String, String> {
    let d = v.trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 200
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(d)
    } else {
        Err("not a DNS domain (labels of letters, digits and '-')".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/vmctl/https.conf"))
    }

    #[test]
    fn files_and_acme() {
        let c = parse("[HTTPS]\nDomain=Example.ORG.\nCertificateFile=/c.pem\nKeyFile=/k.pem\n")
            .unwrap();
        assert_eq!(c.domain, "example.org");
        assert_eq!(
            c.tls,
            TlsSource::Files {
                certificate: "/c.pem".into(),
                key: "/k.pem".into()
            }
        );
        let c = parse(
            "# x\n[HTTPS]\nDomain=vm.test\nAcmeDirectory=https://127.0.0.1:14000/dir\n\
             AcmeContact=mailto:a@b mailto:c@d\nAcmeRootCA=/p.pem\nMaxConnectionsPerIP=3\n",
        )
        .unwrap();
        assert_eq!(
            c.tls,
            TlsSource::Acme {
                directory: "https://127.0.0.1:14000/dir".into(),
                contact: vec!["mailto:a@b".into(), "mailto:c@d".into()],
                root_ca: Some("/p.pem".into())
            }
        );
        assert_eq!(c.max_connections_per_ip, 3);
    }

    #[test]
    fn errors_name_line_and_fix() {
        let e = parse("[HTTPS]\nDomain=a.b\nCertFile=/x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/vmctl/https.conf:3: unknown key CertFile="
        );
        let e = parse("[HTTPS]\nDomain=a_b\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("not a DNS domain"), "{e}");
        let e = parse("[HTTPS]\nDomain=a.b\n").unwrap_err();
        assert!(e.message.contains("either both CertificateFile="), "{e}");
        let e = parse("[HTTPS]\nAcmeDirectory=https://x/\n").unwrap_err();
        assert!(e.message.contains("Domain= is required"), "{e}");
        let e = parse("[HTTPS]\nDomain=a.b\nAcmeDirectory=http://x/\n").unwrap_err();
        assert!(e.message.contains("https://"), "{e}");
        let e = parse("[HTTPS]\nDomain=a.b\nKeyFile=k.pem\n").unwrap_err();
        assert!(e.message.contains("absolute"), "{e}");
        let e = parse("[Network]\n").unwrap_err();
        assert!(e.message.contains("unknown section"), "{e}");
    }
}
