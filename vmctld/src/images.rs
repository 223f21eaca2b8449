//! Images: list them (size, use, age) and remove unused ones.
//!
//! An image is a directory `/var/lib/vmctl/images/NAME/` holding
//! `root.raw` and `vmlinuz` (and optionally `initrd.img`); its name follows
//! the VM name rules. Import and build are not implemented yet.

use std::{fs, io, os::unix::fs::MetadataExt, time::UNIX_EPOCH};

use vmctl_api::validate_vm_name;

use crate::{authz::Action, lifecycle::IMAGE_FILES, Caller, Manager, ManagerError};

/// One image as `vmctl image list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's name.
    pub name: String,
    /// Size of its root disk in bytes.
    pub size_bytes: u64,
    /// Bytes its files occupy.
    pub allocated_bytes: u64,
    /// When its root disk was written, in seconds since the epoch.
    pub created: Option<u64>,
    /// The VMs made from it (by name, sorted).
    pub vms: Vec<String>,
}

impl Manager {
    /// Every complete image, sorted by name, with the VMs using each.
    /// Needs the create action (what one needs to use an image).
    pub async fn list_images(&self, caller: &Caller) -> Result<Vec<ImageInfo>, ManagerError> {
        self.authorize(caller, Action::Create).await?;
        let specs = self.registry().list()?;
        let dir = self.layout().state_dir.join("images");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ManagerError::internal(format!(
                    "cannot read {}: {e}",
                    dir.display()
                )))
            }
        };
        let mut images = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_vm_name(&name).is_err() {
                continue;
            }
            let path = entry.path();
            if !IMAGE_FILES.iter().all(|f| path.join(f).is_file()) {
                continue;
            }
            let root = match fs::metadata(path.join("root.raw")) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let allocated_bytes = fs::read_dir(&path)
                .map(|files| {
                    files
                        .flatten()
                        .filter_map(|f| f.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.blocks() * 512)
                        .sum()
                })
                .unwrap_or(0);
            let mut vms: Vec<String> = specs
                .iter()
                .filter(|s| s.image == name)
                .map(|s| s.name.clone())
                .collect();
            vms.sort();
            images.push(ImageInfo {
                size_bytes: root.len(),
                allocated_bytes,
                created: root
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                vms,
                name,
            });
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Removes image `name` (needs org.vmctl.image.manage); refused while a
    /// VM uses it, naming the VMs, since `vmctl rebuild` and the launcher
    /// (its kernel) still need it.
    pub async fn remove_image(&self, caller: &Caller, name: &str) -> Result<(), ManagerError> {
        self.authorize(caller, Action::ImageManage).await?;
        let no_such = || ManagerError::NoSuchImage {
            image: name.to_string(),
        };
        validate_vm_name(name).map_err(|_| no_such())?;
        let dir = self.layout().image_dir(name);
        if !dir.is_dir() {
            return Err(no_such());
        }
        let users: Vec<String> = self
            .registry()
            .list()?
            .into_iter()
            .filter(|s| s.image == name)
            .map(|s| s.name)
            .collect();
        if !users.is_empty() {
            return Err(ManagerError::InvalidArgument {
                what: "image".into(),
                reason: format!(
                    "image {name:?} is used by VM{} {}; remove {} first",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" }
                ),
            });
        }
        fs::remove_dir_all(&dir)
            .map_err(|e| ManagerError::internal(format!("cannot remove {}: {e}", dir.display())))?;
        tracing::info!("removed image {name}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use vmctl_api::{sizes::MIB, CreateParams};

    fn image(m: &Manager, name: &str, size: u64) {
        let dir = m.layout().image_dir(name);
        fs::create_dir_all(&dir).unwrap();
        fs::File::create(dir.join("root.raw"))
            .unwrap()
            .set_len(size)
            .unwrap();
        fs::write(dir.join("vmlinuz"), b"k").unwrap();
    }

    #[tokio::test]
    async fn images_are_listed_with_their_vms_and_removed_only_unused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manager::new(Registry::new(dir.path()))
            .with_runtime_dir(dir.path().join("run"))
            .with_config(dir.path().join("vmctl.conf"));
        image(&m, "default", 64 * MIB);
        image(&m, "small", 32 * MIB);
        // Not images: incomplete, or a bad name.
        fs::create_dir_all(m.layout().image_dir("partial")).unwrap();
        fs::create_dir_all(dir.path().join("images/.hidden")).unwrap();
        m.create(
            &Caller::ROOT,
            CreateParams {
                name: "a".into(),
                memory_bytes: Some(256 * MIB),
                ..Default::default()
            },
        )
        .await
        .unwrap();

        let list = m.list_images(&Caller::ROOT).await.unwrap();
        let summary: Vec<_> = list
            .iter()
            .map(|i| (i.name.as_str(), i.size_bytes, i.vms.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("default", 64 * MIB, vec!["a".to_string()]),
                ("small", 32 * MIB, vec![])
            ]
        );
        assert!(list[0].created.is_some());

        let e = m.remove_image(&Caller::ROOT, "default").await.unwrap_err();
        assert_eq!(e.short_name(), "InvalidArgument");
        assert!(e.to_string().contains("used by VM a"), "{e}");
        assert!(m.layout().image_dir("default").join("root.raw").exists());
        for bad in ["nope", "../default", "partial/.."] {
            let e = m.remove_image(&Caller::ROOT, bad).await.unwrap_err();
            assert_eq!(e.short_name(), "NoSuchImage", "{bad}: {e}");
        }
        assert!(m.layout().image_dir("default").exists());
        m.remove_image(&Caller::ROOT, "small").await.unwrap();
        assert!(!m.layout().image_dir("small").exists());
        let names: Vec<_> = m
            .list_images(&Caller::ROOT)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["default"]);
    }
}
