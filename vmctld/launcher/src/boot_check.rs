//! Console lines that mean the guest will never say hello, so the launch
//! fails at once with the reason instead of waiting for `--boot-timeout`.
//!
//! Only the kernel's last words count, and only until the agent's hello:
//! a guest that prints one itself before then only fails its own start,
//! and after the hello the console is not judged any more.

use tokio::sync::watch;

/// What a console line says about a boot that cannot succeed, if anything.
pub fn diagnose(line: &str) -> Option<String> {
    if line.contains("VFS: Unable to mount root fs") {
        return Some(
            "the guest kernel cannot mount the root disk /dev/vda: it has no virtio-blk \
             driver built in, and the image has no initrd.img to load it (an image \
             without an initrd needs a kernel with virtio-pci, virtio-blk, ext4 and \
             vsock built in, like vmctl's)"
                .into(),
        );
    }
    if let Some((_, detail)) = line.split_once(NO_VSOCK) {
        let detail: String = detail
            .trim_start_matches(':')
            .trim()
            .chars()
            .take(80)
            .collect();
        return Some(format!(
            "the guest has no vsock to reach the host ({detail:?}), so its agent can never \
             say hello: the guest kernel needs virtio-vsock (CONFIG_VSOCKETS and \
             CONFIG_VIRTIO_VSOCKETS, built in like vmctl's, or modules the image loads)"
        ));
    }
    let (_, reason) = line.split_once("Kernel panic - not syncing:")?;
    Some(format!(
        "the guest kernel panicked before the guest agent started: {}",
        reason.trim()
    ))
}

/// What the guest agent logs to the kernel log when the guest has no vsock
/// (`vmctl-guest-agent`'s `NO_VSOCK`).
const NO_VSOCK: &str = "vmctl-guest-agent: no vsock to the host";

/// The first diagnosis of a boot; see [`diagnose`].
pub type Failure = watch::Receiver<Option<String>>;

/// Waits until `failure` holds a diagnosis (forever if it never does).
pub async fn failed(failure: &mut Failure) -> String {
    match failure.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmountable_root_names_the_missing_driver() {
        let d =
            diagnose("console: [    1.234567] VFS: Unable to mount root fs on unknown-block(0,0)")
                .unwrap();
        assert!(d.contains("virtio-blk") && d.contains("initrd.img"), "{d}");
    }

    #[test]
    fn other_panics_are_quoted() {
        let d = diagnose("console: [    0.9] Kernel panic - not syncing: No working init found.")
            .unwrap();
        assert!(d.ends_with("No working init found."), "{d}");
    }

    #[test]
    fn missing_vsock_is_named() {
        let d = diagnose(
            "console: [    3.1] vmctl-guest-agent: no vsock to the host: \
             Address family not supported by protocol (os error 97)",
        )
        .unwrap();
        assert!(
            d.contains("CONFIG_VIRTIO_VSOCKETS") && d.contains("Address family not supported"),
            "{d}"
        );
    }

    #[test]
    fn ordinary_lines_are_not_failures() {
        assert_eq!(
            diagnose("console: [  OK  ] Reached target basic.target"),
            None
        );
        assert_eq!(diagnose("console: panic=-1 quiet"), None);
    }

    #[tokio::test]
    async fn failed_returns_the_first_diagnosis() {
        let (tx, mut rx) = watch::channel(None);
        tx.send(Some("why".to_owned())).unwrap();
        assert_eq!(failed(&mut rx).await, "why");
    }
}
