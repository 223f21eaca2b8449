//! The nftables rules that keep VMs of different owners apart on the bridge,
//! and the one set element per running VM they read.
//!
//! On the bridge, a frame from one VM's TAP to another's passes only when
//! the pair `iif . oifgroup` (the input TAP's interface index, the output
//! TAP's device group, which is its owner's) is in the set `port_owner`.
//! Each VM adds exactly one element, `its TAP's index . its owner's
//! group`, when its TAP is made and removes it when the TAP goes: so a
//! frame passes iff the sender's owner is the receiver's. Keying by
//! interface index rather than by name means an element left by a launcher
//! that was killed can never admit a later TAP of the same name (indices
//! are not reused while the host runs); such leftovers are removed by
//! [`prune`], which the unit's `ExecStopPost=` and every start run.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::network::BRIDGE;

/// The rules and this VM's element: `ifindex` is its TAP, `group` its
/// owner's device group, `bridge_mac` the bridge's own MAC.
///
/// Routed hairpin traffic (a VM sending another VM's address to the
/// host's MAC) is dropped in `inet vmctl`: VMs of one owner talk over the
/// bridge. Bridged IP traffic passes that chain too where br_netfilter is
/// active (with `vmbr0` in and out): it is told apart by its destination
/// MAC, which is not the bridge's. Applied as one `nft` transaction, so
/// concurrent launchers never see half a table; repeating it is harmless.
pub fn ruleset(ifindex: u32, group: u32, bridge_mac: &str) -> String {
    format!(
        "add table bridge vmctl\n\
         add set bridge vmctl port_owner {{ typeof meta iif . meta oifgroup; }}\n\
         add chain bridge vmctl forward {{ type filter hook forward priority 0; policy accept; }}\n\
         flush chain bridge vmctl forward\n\
         add rule bridge vmctl forward meta iif . meta oifgroup @port_owner accept\n\
         add rule bridge vmctl forward iifname \"vmt-*\" oifname \"vmt-*\" drop\n\
         add element bridge vmctl port_owner {{ {ifindex} . {group} }}\n\
         add table inet vmctl\n\
         add chain inet vmctl forward {{ type filter hook forward priority 0; policy accept; }}\n\
         flush chain inet vmctl forward\n\
         add rule inet vmctl forward iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" ether daddr != {bridge_mac} accept\n\
         add rule inet vmctl forward iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" drop\n"
    )
}

/// One VM's place in the rules: its element is removed when this is
/// dropped (the VM's TAP goes at the same time).
#[derive(Debug)]
pub struct Admitted {
    ifindex: u32,
    group: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Err(e) = remove(self.ifindex, self.group) {
            tracing::warn!(
                "cannot remove the isolation element {} . {}: {e}",
                self.ifindex,
                self.group
            );
        }
    }
}

/// Installs the rules (again) and admits TAP `ifindex` of the owner with
/// device group `group`. Leftovers of killed launchers are pruned first.
pub fn admit(ifindex: u32, group: u32, bridge_mac: &str) -> io::Result<Admitted> {
    if let Err(e) = prune() {
        tracing::warn!("cannot prune stale isolation elements: {e}");
    }
    nft(&["-f", "-"], Some(&ruleset(ifindex, group, bridge_mac)))?;
    Ok(Admitted { ifindex, group })
}

fn remove(ifindex: u32, group: u32) -> io::Result<()> {
    nft(
        &[
            "delete",
            "element",
            "bridge",
            "vmctl",
            "port_owner",
            &format!("{{ {ifindex} . {group} }}"),
        ],
        None,
    )
    .map(drop)
}

/// Removes every element whose TAP no longer exists (its launcher was
/// killed before it could remove it). Returns how many it removed. No
/// table yet is nothing to do.
pub fn prune() -> io::Result<usize> {
    let mut removed = 0;
    for (ifindex, group) in current()? {
        if !interface_exists(ifindex) {
            // A concurrent prune may have removed it first.
            if remove(ifindex, group).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The elements now in the set, as `(ifindex, group)`; none when no VM
/// has ever started here (no table).
pub fn current() -> io::Result<Vec<(u32, u32)>> {
    match nft(
        &["-j", "list", "set", "bridge", "vmctl", "port_owner"],
        None,
    ) {
        Ok(listing) => elements(&listing),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The `(ifindex, group)` pairs of `nft -j list set` output. nft prints an
/// existing interface by name and a gone one by its index: names are
/// looked up.
fn elements(listing: &str) -> io::Result<Vec<(u32, u32)>> {
    let bad =
        |what: &str| io::Error::other(format!("unexpected nft -j output ({what}): {listing}"));
    let json: serde_json::Value = serde_json::from_str(listing).map_err(|e| bad(&e.to_string()))?;
    let set = json["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|i| i.get("set")))
        .ok_or_else(|| bad("no set"))?;
    let Some(elems) = set.get("elem").and_then(|e| e.as_array()) else {
        return Ok(Vec::new());
    };
    let mut pairs = Vec::new();
    for elem in elems {
        let parts = elem["concat"]
            .as_array()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| bad("an element is not a pair"))?;
        let ifindex = match &parts[0] {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(s) => s.parse().ok().or_else(|| crate::tap::ifindex(s).ok()),
            _ => None,
        };
        let group = parts[1].as_u64().and_then(|n| u32::try_from(n).ok());
        match (ifindex, group) {
            (Some(i), Some(g)) => pairs.push((i, g)),
            // An interface printed by name that vanished since: the next
            // prune sees its index.
            (None, Some(_)) => {}
            _ => return Err(bad("an element is not an interface and a group")),
        }
    }
    Ok(pairs)
}

fn interface_exists(ifindex: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname needs.
    !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null()
}

/// Runs `nft ARGS` (with `stdin` fed in), returning its stdout. A missing
/// table or set is `NotFound`.
fn nft(args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run nft: {e}")))?;
    let written = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => pipe.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child.wait_with_output()?;
    written?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kind = if stderr.contains("No such file or directory") {
        io::ErrorKind::NotFound
    } else {
        io::ErrorKind::Other
    };
    Err(io::Error::new(
        kind,
        format!(
            "nft {} failed ({}): {}",
            args.join(" "),
            out.status,
            stderr.trim()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_of_listings() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "bridge", "name": "port_owner", "table": "vmctl",
            "type": ["iface_index", "devgroup"], "handle": 1,
            "elem": [{"concat": ["3", 1001]}, {"concat": [17, 1]}]}}]}"#;
        assert_eq!(elements(listing).unwrap(), [(3, 1001), (17, 1)]);
        let empty = r#"{"nftables": [{"set": {"name": "port_owner"}}]}"#;
        assert_eq!(elements(empty).unwrap(), []);
        assert!(elements("garbage").is_err());
        assert!(elements(r#"{"nftables": [{"set": {"elem": [{"concat": [1]}]}}]}"#).is_err());
    }
}
