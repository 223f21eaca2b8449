//! `vmctl publish` and `vmctl login`: a VM's site on the HTTPS proxy
//! (`vmctl-https`), `https://NAME.<domain>/`.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};
use vmctl_api::names::VARLINK_INTERFACE;

use crate::client;

/// The proxy's configuration file, whose `Domain=` names the sites.
const HTTPS_CONF: &str = "/etc/vmctl/https.conf";

#[derive(Debug, Deserialize)]
struct Publication {
    port: u16,
    public: bool,
}

/// `vmctl publish NAME [--port P] [--public|--private]`.
pub async fn publish(
    address: &Path,
    name: &str,
    port: Option<u16>,
    public: Option<bool>,
) -> anyhow::Result<()> {
    let mut client = client::connect(address).await?;
    let mut params = json!({ "name": name });
    if let Some(port) = port {
        params["port"] = json!(port);
    }
    if let Some(public) = public {
        params["public"] = json!(public);
    }
    let p: Publication = client
        .call(&format!("{VARLINK_INTERFACE}.Publish"), Some(params))
        .await?;
    let who = if p.public {
        "anyone"
    } else {
        "its owner (after `vmctl login`)"
    };
    match domain(Path::new(HTTPS_CONF)) {
        Ok(domain) => println!(
            "https://{name}.{domain}/ -> port {} of {name}, open to {who}",
            p.port
        ),
        Err(_) => println!("{name}: port {}, open to {who}", p.port),
    }
    Ok(())
}

/// `vmctl share NAME USER` (`share`) and `vmctl unshare NAME USER`.
pub async fn share(address: &Path, name: &str, user: &str, share: bool) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Shares {
        shared_with: Vec<String>,
    }
    let method = if share { "Share" } else { "Unshare" };
    let mut client = client::connect(address).await?;
    let reply: Shares = client
        .call(
            &format!("{VARLINK_INTERFACE}.{method}"),
            Some(json!({ "name": name, "user": user })),
        )
        .await?;
    if reply.shared_with.is_empty() {
        println!("{name}: shared with nobody");
    } else {
        println!("{name}: shared with {}", reply.shared_with.join(", "));
    }
    Ok(())
}

/// `vmctl login NAME`: prints a one-time login link.
pub async fn login(address: &Path, name: &str) -> anyhow::Result<()> {
    let domain = domain(Path::new(HTTPS_CONF))?;
    let mut client = client::connect(address).await?;
    let reply: Value = client
        .call(
            &format!("{VARLINK_INTERFACE}.IssueLoginToken"),
            Some(json!({ "name": name })),
        )
        .await?;
    let token = reply["token"].as_str().context("vmctld sent no token")?;
    println!("https://{name}.{domain}/.vmctl/login?token={token}");
    if let Some(secs) = reply["expires_in_sec"].as_u64() {
        eprintln!(
            "(open it and confirm; it works once, within {} minutes)",
            secs.div_ceil(60)
        );
    }
    Ok(())
}

/// `Domain=` of the proxy's configuration.
fn domain(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}: is the HTTPS proxy (vmctl-https) configured?",
            path.display()
        )
    })?;
    parse_domain(&text).with_context(|| format!("{} has no Domain= in [HTTPS]", path.display()))
}

fn parse_domain(text: &str) -> Option<String> {
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[HTTPS]";
        } else if let Some((k, v)) = line.split_once('=') {
            if in_section && k.trim() == "Domain" {
                let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
                return (!d.is_empty()).then_some(d);
            }
        }
    }
    None
}

/// `--public` / `--private` as one optional flag.
pub fn visibility(public: bool, private: bool) -> anyhow::Result<Option<bool>> {
    match (public, private) {
        (true, true) => bail!("--public and --private contradict each other"),
        (true, false) => Ok(Some(true)),
        (false, true) => Ok(Some(false)),
        (false, false) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_from_the_https_section() {
        assert_eq!(
            parse_domain("# c\n[HTTPS]\nAcmeDirectory=x\nDomain = VM.Example.org.\n").as_deref(),
            Some("vm.example.org")
        );
        assert_eq!(parse_domain("[Other]\nDomain=a.b\n"), None);
        assert_eq!(parse_domain("[HTTPS]\nDomain=\n"), None);
    }
}
