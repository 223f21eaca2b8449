//! `vmctl volume list`, `vmctl volume rm` and `vmctl image list`: the
//! storage pool's volumes and the images.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};
use vmctl_api::{
    sizes::format_size_short,
    types::{ImageEntry, ImagesReply, PoolStatusReply, VolumeEntry, VolumesReply},
};

use crate::{client, method};

/// `vmctl volume list [--json]`.
pub async fn list(address: &Path, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(address).await?;
    let reply: VolumesReply = client.call(&method("ListVolumes"), None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.volumes)?);
    } else {
        print!("{}", table(&reply.volumes));
    }
    Ok(())
}

/// `vmctl volume rm NAME`: deletes a kept data volume.
pub async fn remove(address: &Path, name: &str) -> anyhow::Result<()> {
    let mut client = client::connect(address).await?;
    let _: Value = client
        .call(&method("RemoveVolume"), Some(json!({ "name": name })))
        .await?;
    Ok(())
}

/// `vmctl image import NAME FILE [--kernel FILE [--initrd FILE]]`: opens
/// the files here (as the user) and sends them to vmctld with the call;
/// without a kernel, FILE is a container tarball or OCI layout directory.
pub async fn import_image(
    address: &Path,
    name: &str,
    file: &Path,
    kernel: Option<&Path>,
    initrd: Option<&Path>,
) -> anyhow::Result<()> {
    let open = |path: &Path| {
        std::fs::File::open(path)
            .map(std::os::fd::OwnedFd::from)
            .with_context(|| format!("cannot open {}", path.display()))
    };
    let mut fds = vec![open(file)?];
    fds.extend(kernel.map(open).transpose()?);
    fds.extend(initrd.map(open).transpose()?);
    let meta = std::fs::metadata(file).ok();
    let what = match (&kernel, &meta) {
        (Some(_), _) => "raw disk",
        (None, Some(m)) if m.is_dir() => "OCI layout",
        (None, _) => "container tarball",
    };
    let size = meta.filter(|m| m.is_file()).map(|m| m.len());
    eprintln!(
        "importing image {name} from {what} {}{}...",
        file.display(),
        size.map(|s| format!(" ({})", format_size_short(s)))
            .unwrap_or_default()
    );
    let mut client = client::connect(address).await?;
    let _: (Value, _) = client
        .call_sending_fds(&method("ImportImage"), Some(json!({ "name": name })), fds)
        .await?;
    eprintln!("imported image {name}");
    Ok(())
}

/// `vmctl pool status [--json]`.
pub async fn pool_status(address: &Path, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(address).await?;
    let reply: PoolStatusReply = client.call(&method("PoolStatus"), None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", pool_text(&reply));
    }
    Ok(())
}

/// The pool as `key: value` lines.
pub fn pool_text(pool: &PoolStatusReply) -> String {
    let used = pool.total_bytes.saturating_sub(pool.free_bytes);
    let percent = (used as f64 / pool.total_bytes.max(1) as f64) * 100.0;
    format!(
        "backend:  {}\nlocation: {}\nsize:     {}\nfree:     {} ({percent:.0}% used)\nclones:   {}\n",
        pool.backend,
        pool.location,
        format_size_short(pool.total_bytes),
        format_size_short(pool.free_bytes),
        if pool.reflink {
            "copy-on-write (reflink)"
        } else {
            "full copies (no reflinks on this file system)"
        }
    )
}

/// `vmctl image list [--json]`.
pub async fn list_images(address: &Path, json: bool) -> anyhow::Result<()> {
    let mut client = client::connect(address).await?;
    let reply: ImagesReply = client.call(&method("ListImages"), None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.images)?);
    } else {
        print!("{}", image_table(&reply.images));
    }
    Ok(())
}

/// The images as a table: NAME SIZE ALLOCATED USED-BY (VM names, `-`).
pub fn image_table(images: &[ImageEntry]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                format_size_short(i.size_bytes),
                format_size_short(i.allocated_bytes),
                if i.vms.is_empty() {
                    "-".into()
                } else {
                    i.vms.join(",")
                },
            ]
        })
        .collect();
    render(&["NAME", "SIZE", "ALLOCATED", "USED-BY"], &rows)
}

fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The volumes as a table: NAME KIND SIZE ALLOCATED VM (`-` for a kept
/// one) OWNER (`-` when the store has no record of it yet).
pub fn table(volumes: &[VolumeEntry]) -> String {
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.kind.clone(),
                format_size_short(v.size_bytes),
                format_size_short(v.allocated_bytes),
                v.vm.clone().unwrap_or_else(|| "-".into()),
                v.owner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    render(&["NAME", "KIND", "SIZE", "ALLOCATED", "VM", "OWNER"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_kept_volumes_without_a_vm() {
        let volumes = vec![
            VolumeEntry {
                name: "blog".into(),
                kind: "root".into(),
                size_bytes: 4 << 30,
                allocated_bytes: 600 << 20,
                vm: Some("blog".into()),
                owner_uid: Some(1000),
                owner: Some("alice".into()),
            },
            VolumeEntry {
                name: "old".into(),
                kind: "data".into(),
                size_bytes: 10 << 30,
                allocated_bytes: 33 << 20,
                vm: None,
                owner_uid: Some(1000),
                owner: Some("alice".into()),
            },
        ];
        assert_eq!(
            table(&volumes),
            "NAME  KIND  SIZE  ALLOCATED  VM    OWNER\n\
             blog  root  4G    600M       blog  alice\n\
             old   data  10G   33M        -     alice\n"
        );
    }

    #[test]
    fn pool_text_says_how_full_and_how_clones_are_made() {
        let pool = PoolStatusReply {
            backend: "directory".into(),
            location: "/var/lib/vmctl".into(),
            total_bytes: 100 << 30,
            free_bytes: 25 << 30,
            reflink: true,
        };
        assert_eq!(
            pool_text(&pool),
            "backend:  directory\nlocation: /var/lib/vmctl\nsize:     100G\n\
             free:     25G (75% used)\nclones:   copy-on-write (reflink)\n"
        );
    }

    #[test]
    fn image_table_names_the_vms() {
        let images = vec![ImageEntry {
            name: "default".into(),
            size_bytes: 2 << 30,
            allocated_bytes: 600 << 20,
            created: Some(1),
            vms: vec!["a".into(), "b".into()],
        }];
        assert_eq!(
            image_table(&images),
            "NAME     SIZE  ALLOCATED  USED-BY\n\
             default  2G    600M       a,b\n"
        );
    }
}
