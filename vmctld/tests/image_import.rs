//! `ImportImage` against the real vmctld binary: the image files travel as
//! descriptors with the call (`SCM_RIGHTS`) through vmctld's own varlink
//! server; a real ext4 image made with `mkfs.ext4` is imported whole, a
//! file that is not a file system image is refused with nothing left, and
//! the call without descriptors says what it needs.

mod common;

use std::{fs, os::fd::OwnedFd, path::Path, process::Command};

use common::{is_root, Daemon, Method};
use serde_json::{json, Value};
use vmctl_api::ErrorReply;
use zlink::Call;

async fn import(socket: &Path, name: &str, files: &[&Path]) -> Result<Value, ErrorReply> {
    let fds: Vec<OwnedFd> = files
        .iter()
        .map(|p| OwnedFd::from(fs::File::open(p).unwrap()))
        .collect();
    let mut conn = zlink::tokio::unix::connect(socket).await.unwrap();
    let call = Call::new(Method {
        method: "io.vmctl.Manager.ImportImage",
        parameters: Some(json!({ "name": name })),
    });
    let (reply, _) = conn
        .call_method::<_, Value, ErrorReply>(&call, fds)
        .await
        .unwrap();
    reply.map(|r| r.into_parameters().unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_image_is_imported_from_descriptors_whole_or_not_at_all() {
    if !is_root() {
        eprintln!("skipped: ImportImage needs image.manage: run as root");
        return;
    }
    let daemon = Daemon::start();
    let dir = daemon.dir.path();
    let images = dir.join("state/images");
    let root = dir.join("root.raw");
    fs::File::create(&root).unwrap().set_len(32 << 20).unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "imported"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(mkfs.success());
    let kernel = dir.join("vmlinuz");
    let mut k = vec![0u8; 8192];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    fs::write(&kernel, &k).unwrap();
    let junk = dir.join("junk.img");
    fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();

    let e = import(&daemon.socket, "junk", &[&junk, &kernel])
        .await
        .unwrap_err();
    assert_eq!(e.error, "io.vmctl.Manager.InvalidArgument", "{e}");
    assert!(e.to_string().contains("no ext4, XFS or btrfs"), "{e}");
    assert!(!images.join("junk").exists());
    let e = import(&daemon.socket, "none", &[]).await.unwrap_err();
    assert!(e.to_string().contains("as descriptors"), "{e}");

    import(&daemon.socket, "imported", &[&root, &kernel])
        .await
        .unwrap();
    assert_eq!(
        fs::read(images.join("imported/root.raw")).unwrap(),
        fs::read(&root).unwrap()
    );
    assert_eq!(fs::read(images.join("imported/vmlinuz")).unwrap(), k);
    let leftovers: Vec<_> = fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let list = common::call(&daemon.socket, "io.vmctl.Manager.ListImages", None)
        .await
        .unwrap();
    assert_eq!(list["images"][0]["name"], "imported", "{list}");
    assert_eq!(list["images"][0]["size_bytes"], 32u64 << 20, "{list}");
}
