//! The LVM thin backend: volumes as thin LVs of one thin pool `VG/POOL`.
//!
//! | volume | logical volume |
//! |---|---|
//! | image `NAME` | `VG/vmctl-image-NAME`, a thin volume |
//! | root of VM `NAME` | `VG/vmctl-root-NAME`, a thin snapshot of its image |
//! | data volume `VOL` | `VG/vmctl-data-VOL`, a thin volume |
//!
//! A root is a thin snapshot (`lvcreate --snapshot`, O(1) whatever the
//! image's size) made with `--setactivationskip n` and activated with
//! `lvchange --activate y --ignoreactivationskip` (`-K`), so a snapshot
//! made by another tool with the skip flag set activates all the same.
//! Everything LVM says is read from its JSON reports (`--reportformat
//! json --units b --nosuffix`), never by scraping text. Before a volume is
//! made the pool's fullness is checked: thin pools overcommit, and a full
//! pool fails writes inside the guests, so a pool at or above
//! [`FULL_PERCENT`] of its data or metadata refuses new volumes, and an
//! image volume (written in full right after) needs its size free in the
//! pool. A missing volume group is named as such, not as LVM's failure.
//!
//! The commands go through [`Lvm`] so that the argv and the parsing are
//! checked by unit tests here; the same code runs against real LVM in a
//! guest by `vmctld/examples/lvm-thin-check.rs` (the e2e test
//! `tests/tests/storage_lvm.rs`; device-mapper is not available on the
//! development machines). Not wired into [`super::Storage::open`] yet:
//! vmctld's unit has no capabilities and `PrivateDevices=yes`, which LVM
//! cannot work under.

use std::process::Command;

use serde::Deserialize;

use super::{validate_volume_name, PoolStatus, StorageError, Volume};

/// Pool usage (data or metadata, in percent) at which new volumes are
/// refused.
pub const FULL_PERCENT: f64 = 95.0;

/// Runs one LVM command and returns its standard output.
pub trait Lvm {
    /// Runs `argv` (`argv[0]` the LVM tool).
    fn run(&self, argv: &[String]) -> Result<String, StorageError>;
}

/// The LVM tools of this system.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLvm;

impl Lvm for SystemLvm {
    fn run(&self, argv: &[String]) -> Result<String, StorageError> {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "cannot run {} (is lvm2 installed?): {e}",
                    argv[0]
                ))
            })?;
        if !out.status.success() {
            return Err(StorageError::Unavailable(format!(
                "{} failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout)
            .map_err(|e| StorageError::Unavailable(format!("{}: output not UTF-8: {e}", argv[0])))
    }
}

/// One logical volume from `lvs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lv {
    /// Its name.
    pub lv_name: String,
    /// Its volume group.
    pub vg_name: String,
    /// Size in bytes.
    #[serde(deserialize_with = "bytes")]
    pub lv_size: u64,
    /// The thin pool it lives in (empty for the pool itself).
    #[serde(default)]
    pub pool_lv: String,
    /// What it is a snapshot of (empty if none).
    #[serde(default)]
    pub origin: String,
    /// Data usage in percent (thin volumes and pools).
    #[serde(default, deserialize_with = "percent")]
    pub data_percent: Option<f64>,
    /// Metadata usage in percent (pools).
    #[serde(default, deserialize_with = "percent")]
    pub metadata_percent: Option<f64>,
    /// `lv_attr`, e.g. `Vwi-a-tz--` (5th character `a`: active).
    #[serde(default)]
    pub lv_attr: String,
}

impl Lv {
    /// Whether the LV is active (5th `lv_attr` character).
    pub fn active(&self) -> bool {
        self.lv_attr.chars().nth(4) == Some('a')
    }

    /// Whether the LV has the activation skip flag (10th `lv_attr`
    /// character `k`): plain activation leaves it inactive, `-K` does not.
    pub fn activation_skip(&self) -> bool {
        self.lv_attr.chars().nth(9) == Some('k')
    }
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct LvReport {
    lv: Vec<Lv>,
}

/// One volume group from `vgs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Vg {
    /// Its name.
    pub vg_name: String,
    /// Size in bytes.
    #[serde(deserialize_with = "bytes")]
    pub vg_size: u64,
    /// Unallocated bytes.
    #[serde(deserialize_with = "bytes")]
    pub vg_free: u64,
}

#[derive(Deserialize)]
struct VgReport {
    vg: Vec<Vg>,
}

/// LVM reports numbers as strings ("1073741824").
fn bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(serde::de::Error::custom)
}

/// "12.50", or "" where it does not apply.
fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(serde::de::Error::custom)
}

fn bad_report(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("cannot read the JSON report of {what}: {e}"))
}

/// Parses `lvs --reportformat json` output.
pub fn parse_lvs(json: &str) -> Result<Vec<Lv>, StorageError> {
    let r: Report<LvReport> = serde_json::from_str(json).map_err(|e| bad_report("lvs", e))?;
    Ok(r.report.into_iter().flat_map(|r| r.lv).collect())
}

/// Parses `vgs --reportformat json` output.
pub fn parse_vgs(json: &str) -> Result<Vec<Vg>, StorageError> {
    let r: Report<VgReport> = serde_json::from_str(json).map_err(|e| bad_report("vgs", e))?;
    Ok(r.report.into_iter().flat_map(|r| r.vg).collect())
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The JSON report options every `lvs`/`vgs` call uses.
const REPORT: [&str; 4] = ["--reportformat", "json", "--units", "b"];

/// A thin pool `vg/pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinPool {
    /// The volume group.
    pub vg: String,
    /// The thin pool LV.
    pub pool: String,
}

impl ThinPool {
    /// The pool from `VG/POOL` (checked by [`super::config`]).
    pub fn parse(spec: &str) -> Result<Self, StorageError> {
        let (vg, pool) = spec.split_once('/').ok_or_else(|| {
            StorageError::Unavailable(format!("Pool={spec}: expected VG/THINPOOL"))
        })?;
        Ok(Self {
            vg: vg.into(),
            pool: pool.into(),
        })
    }

    /// The LV name of `volume`.
    pub fn lv_name(volume: &Volume) -> String {
        match volume {
            Volume::Root(vm) => format!("vmctl-root-{vm}"),
            Volume::Data(name) => format!("vmctl-data-{name}"),
        }
    }

    /// The LV name of image `image`.
    pub fn image_lv_name(image: &str) -> String {
        format!("vmctl-image-{image}")
    }

    fn full(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    /// Where the VMM opens the LV (once active).
    pub fn device(&self, lv: &str) -> String {
        format!("/dev/{}/{lv}", self.vg)
    }

    /// `lvcreate` of the thin pool itself, `size` bytes (set-up and tests).
    pub fn create_pool_argv(&self, size: u64) -> Vec<String> {
        argv(&[
            "lvcreate",
            "--yes",
            "--type",
            "thin-pool",
            "--size",
            &format!("{size}b"),
            "--name",
            &self.pool,
            &self.vg,
        ])
    }

    /// `lvcreate` of thin volume `lv` of `size` bytes in the pool.
    pub fn create_thin_argv(&self, lv: &str, size: u64) -> Vec<String> {
        argv(&[
            "lvcreate",
            "--yes",
            "--type",
            "thin",
            "--thinpool",
            &self.pool,
            "--virtualsize",
            &format!("{size}b"),
            "--name",
            lv,
            &self.vg,
        ])
    }

    /// `lvcreate` of thin snapshot `lv` of `origin`, activated like any LV
    /// (`--setactivationskip n`).
    pub fn snapshot_argv(&self, origin: &str, lv: &str) -> Vec<String> {
        argv(&[
            "lvcreate",
            "--yes",
            "--snapshot",
            "--setactivationskip",
            "n",
            "--name",
            lv,
            &self.full(origin),
        ])
    }

    /// `lvchange` activating `lv` even if it has the activation skip flag.
    pub fn activate_argv(&self, lv: &str) -> Vec<String> {
        argv(&[
            "lvchange",
            "--activate",
            "y",
            "--ignoreactivationskip",
            &self.full(lv),
        ])
    }

    /// `lvchange` deactivating `lv`.
    pub fn deactivate_argv(&self, lv: &str) -> Vec<String> {
        argv(&["lvchange", "--activate", "n", &self.full(lv)])
    }

    /// `lvextend` of `lv` to `size` bytes.
    pub fn extend_argv(&self, lv: &str, size: u64) -> Vec<String> {
        argv(&["lvextend", "--size", &format!("{size}b"), &self.full(lv)])
    }

    /// `lvremove` of `lv`.
    pub fn remove_argv(&self, lv: &str) -> Vec<String> {
        argv(&["lvremove", "--yes", &self.full(lv)])
    }

    /// `lvs` of every LV of the volume group.
    pub fn lvs_argv(&self) -> Vec<String> {
        let mut a = argv(&["lvs"]);
        a.extend(argv(&REPORT));
        a.extend(argv(&[
            "--nosuffix",
            "--options",
            "lv_name,vg_name,lv_size,pool_lv,origin,data_percent,metadata_percent,lv_attr",
            &self.vg,
        ]));
        a
    }

    /// `vgs` of every volume group (naming a missing one would fail the
    /// whole report).
    pub fn vgs_argv(&self) -> Vec<String> {
        let mut a = argv(&["vgs"]);
        a.extend(argv(&REPORT));
        a.extend(argv(&[
            "--nosuffix",
            "--options",
            "vg_name,vg_size,vg_free",
        ]));
        a
    }
}

/// The thin pool with the commands that run against it.
pub struct LvmThinPool<L: Lvm> {
    /// Which pool.
    pub pool: ThinPool,
    lvm: L,
}

impl<L: Lvm> LvmThinPool<L> {
    /// The pool `pool`, its commands run by `lvm`.
    pub fn new(pool: ThinPool, lvm: L) -> Self {
        Self { pool, lvm }
    }

    /// Every LV of the volume group; a missing volume group is an error
    /// naming it (see [`Self::vg`]).
    pub fn lvs(&self) -> Result<Vec<Lv>, StorageError> {
        match self.lvm.run(&self.pool.lvs_argv()) {
            Ok(json) => parse_lvs(&json),
            // lvs fails for a missing VG with text only: ask vgs which.
            Err(e) => Err(self.vg().err().unwrap_or(e)),
        }
    }

    /// Makes the thin pool itself, `size` bytes, in the volume group (the
    /// administrator's set-up; tests).
    pub fn create_pool(&self, size: u64) -> Result<(), StorageError> {
        self.vg()?;
        self.lvm.run(&self.pool.create_pool_argv(size))?;
        Ok(())
    }

    fn lv(&self, name: &str) -> Result<Option<Lv>, StorageError> {
        Ok(self.lvs()?.into_iter().find(|lv| lv.lv_name == name))
    }

    /// The pool LV; a missing VG or pool is an error naming it.
    pub fn pool_lv(&self) -> Result<Lv, StorageError> {
        self.lv(&self.pool.pool)?.ok_or_else(|| {
            StorageError::Unavailable(format!(
                "the thin pool {}/{} does not exist (create it: lvcreate --type thin-pool \
                 -L SIZE -n {} {})",
                self.pool.vg, self.pool.pool, self.pool.pool, self.pool.vg
            ))
        })
    }

    /// Refuses new volumes when the pool's data or metadata is at least
    /// [`FULL_PERCENT`] used, or when less than `needed` bytes of data are
    /// free (0 for volumes that allocate only as the guest writes).
    pub fn check_room(&self, needed: u64) -> Result<(), StorageError> {
        let pool = self.pool_lv()?;
        for (what, used) in [
            ("data", pool.data_percent),
            ("metadata", pool.metadata_percent),
        ] {
            if let Some(used) = used.filter(|u| *u >= FULL_PERCENT) {
                return Err(StorageError::Unavailable(format!(
                    "the thin pool {}/{} is full ({what} {used:.1}% used, new volumes are \
                     refused from {FULL_PERCENT}%): extend it (lvextend) or remove volumes",
                    self.pool.vg, self.pool.pool
                )));
            }
        }
        let free = free_bytes(&pool);
        if needed > free {
            return Err(StorageError::Unavailable(format!(
                "the thin pool {}/{} has {free} bytes free, {needed} are needed: extend it \
                 (lvextend) or remove volumes",
                self.pool.vg, self.pool.pool
            )));
        }
        Ok(())
    }

    /// Makes image `image`'s thin volume of `size` bytes (then written in
    /// full by the caller through [`ThinPool::device`], so `size` bytes
    /// must be free in the pool).
    pub fn create_image(&self, image: &str, size: u64) -> Result<String, StorageError> {
        validate_volume_name(image)?;
        let lv = ThinPool::image_lv_name(image);
        if self.lv(&lv)?.is_some() {
            return Err(StorageError::Unavailable(format!(
                "image {image:?} has a thin volume {}/{lv} already",
                self.pool.vg
            )));
        }
        self.check_room(size)?;
        self.lvm.run(&self.pool.create_thin_argv(&lv, size))?;
        Ok(lv)
    }

    /// Makes the root of `root` (a [`Volume::Root`]) as a thin snapshot of
    /// `image`, grown to `size` bytes if that is more, and activates it.
    pub fn clone_image(&self, image: &str, root: &Volume, size: u64) -> Result<(), StorageError> {
        validate_volume_name(root.name())?;
        let origin = ThinPool::image_lv_name(image);
        let lv = ThinPool::lv_name(root);
        if self.lv(&lv)?.is_some() {
            return Err(StorageError::Exists(root.clone()));
        }
        self.check_room(0)?;
        let base = self.lv(&origin)?.ok_or_else(|| {
            StorageError::Unavailable(format!(
                "image {image:?} has no thin volume {}/{origin}",
                self.pool.vg
            ))
        })?;
        self.lvm.run(&self.pool.snapshot_argv(&origin, &lv))?;
        let finish = || -> Result<(), StorageError> {
            if size > base.lv_size {
                self.lvm.run(&self.pool.extend_argv(&lv, size))?;
            }
            self.lvm.run(&self.pool.activate_argv(&lv))?;
            Ok(())
        };
        // No half-made root: a snapshot that could not be grown or
        // activated goes again.
        finish().inspect_err(|_| {
            let _ = self.lvm.run(&self.pool.remove_argv(&lv));
        })
    }

    /// Activates `volume`, also when it has the activation skip flag.
    pub fn activate(&self, volume: &Volume) -> Result<(), StorageError> {
        let lv = ThinPool::lv_name(volume);
        self.lv(&lv)?
            .ok_or_else(|| StorageError::Missing(volume.clone()))?;
        self.lvm.run(&self.pool.activate_argv(&lv))?;
        Ok(())
    }

    /// Deactivates `volume` (its device node goes).
    pub fn deactivate(&self, volume: &Volume) -> Result<(), StorageError> {
        let lv = ThinPool::lv_name(volume);
        self.lv(&lv)?
            .ok_or_else(|| StorageError::Missing(volume.clone()))?;
        self.lvm.run(&self.pool.deactivate_argv(&lv))?;
        Ok(())
    }

    /// Makes an empty thin volume for `volume`.
    pub fn create(&self, volume: &Volume, size: u64) -> Result<(), StorageError> {
        validate_volume_name(volume.name())?;
        let lv = ThinPool::lv_name(volume);
        if self.lv(&lv)?.is_some() {
            return Err(StorageError::Exists(volume.clone()));
        }
        self.check_room(0)?;
        self.lvm.run(&self.pool.create_thin_argv(&lv, size))?;
        Ok(())
    }

    /// Grows `volume` to `size` bytes; refuses to shrink.
    pub fn resize(&self, volume: &Volume, size: u64) -> Result<(), StorageError> {
        let lv = ThinPool::lv_name(volume);
        let current = self
            .lv(&lv)?
            .ok_or_else(|| StorageError::Missing(volume.clone()))?;
        if size < current.lv_size {
            return Err(StorageError::Shrink {
                volume: volume.clone(),
                current: current.lv_size,
                requested: size,
            });
        }
        if size > current.lv_size {
            self.lvm.run(&self.pool.extend_argv(&lv, size))?;
        }
        Ok(())
    }

    /// Removes `volume`; a missing one is not an error.
    pub fn delete(&self, volume: &Volume) -> Result<(), StorageError> {
        let lv = ThinPool::lv_name(volume);
        if self.lv(&lv)?.is_some() {
            self.lvm.run(&self.pool.remove_argv(&lv))?;
        }
        Ok(())
    }

    /// Removes image `image`'s thin volume; a missing one is not an error.
    pub fn delete_image(&self, image: &str) -> Result<(), StorageError> {
        let lv = ThinPool::image_lv_name(image);
        if self.lv(&lv)?.is_some() {
            self.lvm.run(&self.pool.remove_argv(&lv))?;
        }
        Ok(())
    }

    /// The volumes of vmctl in the pool (`vmctl-root-*`, `vmctl-data-*`).
    pub fn volumes(&self) -> Result<Vec<(Volume, Lv)>, StorageError> {
        let mut out: Vec<_> = self
            .lvs()?
            .into_iter()
            .filter(|lv| lv.pool_lv == self.pool.pool)
            .filter_map(|lv| {
                let volume = if let Some(vm) = lv.lv_name.strip_prefix("vmctl-root-") {
                    Volume::Root(vm.to_string())
                } else {
                    Volume::Data(lv.lv_name.strip_prefix("vmctl-data-")?.to_string())
                };
                Some((volume, lv))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The pool's size and what is free in it (thin pools: the pool LV's
    /// size less its data usage).
    pub fn status(&self) -> Result<PoolStatus, StorageError> {
        let pool = self.pool_lv()?;
        Ok(PoolStatus {
            backend: "lvm-thin",
            location: format!("{}/{}", self.pool.vg, self.pool.pool),
            total_bytes: pool.lv_size,
            free_bytes: free_bytes(&pool),
            reflink: true,
        })
    }

    /// The volume group; a missing one is an error naming it and the fix.
    pub fn vg(&self) -> Result<Vg, StorageError> {
        parse_vgs(&self.lvm.run(&self.pool.vgs_argv())?)?
            .into_iter()
            .find(|vg| vg.vg_name == self.pool.vg)
            .ok_or_else(|| {
                StorageError::Unavailable(format!(
                    "the volume group {:?} of Pool={}/{} does not exist: create it \
                     (vgcreate {} DEVICE) or name an existing one (vgs lists them)",
                    self.pool.vg, self.pool.vg, self.pool.pool, self.pool.vg
                ))
            })
    }
}

/// A thin pool LV's unused data bytes (its size less its data usage).
fn free_bytes(pool: &Lv) -> u64 {
    let used = pool.data_percent.unwrap_or(0.0);
    (pool.lv_size as f64 * (100.0 - used) / 100.0).max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{cell::RefCell, collections::VecDeque};

    /// Records the commands and answers `lvs`/`vgs` from a queue of
    /// reports (LVM's own output shape, copied from lvm2 2.03).
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        reports: RefCell<VecDeque<String>>,
    }

    impl Lvm for &Recorder {
        fn run(&self, argv: &[String]) -> Result<String, StorageError> {
            self.calls.borrow_mut().push(argv.join(" "));
            if matches!(argv[0].as_str(), "lvs" | "vgs") {
                let report = self.reports.borrow_mut().pop_front().expect("a report");
                match report.strip_prefix("FAIL ") {
                    Some(error) => Err(StorageError::Unavailable(error.into())),
                    None => Ok(report),
                }
            } else {
                Ok(String::new())
            }
        }
    }

    fn lvs_json(lvs: &[(&str, u64, &str, &str, &str)]) -> String {
        let lv: Vec<_> = lvs
            .iter()
            .map(|(name, size, pool, data, attr)| {
                serde_json::json!({
                    "lv_name": name, "vg_name": "vg0", "lv_size": size.to_string(),
                    "pool_lv": pool, "origin": "", "data_percent": data,
                    "metadata_percent": if pool.is_empty() { "10.00" } else { "" },
                    "lv_attr": attr
                })
            })
            .collect();
        serde_json::json!({"report": [{"lv": lv}]}).to_string()
    }

    const G: u64 = 1 << 30;

    fn pool_with(data: &str, extra: &[(&str, u64, &str, &str, &str)]) -> String {
        let mut all = vec![("thin", 10 * G, "", data, "twi-aotz--")];
        all.extend_from_slice(extra);
        lvs_json(&all)
    }

    #[test]
    fn reports_are_parsed_from_lvm_json() {
        // As lvm2 prints it: numbers as strings, empty where not applicable.
        let text = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"thin", "vg_name":"vg0", "lv_size":"1073741824", "pool_lv":"", "origin":"", "data_percent":"12.50", "metadata_percent":"10.48", "lv_attr":"twi-aotz--"},
                  {"lv_name":"vmctl-root-a", "vg_name":"vg0", "lv_size":"536870912", "pool_lv":"thin", "origin":"vmctl-image-default", "data_percent":"0.00", "metadata_percent":"", "lv_attr":"Vwi---tz-k"}
              ]
          }
      ]
  }"#;
        let lvs = parse_lvs(text).unwrap();
        assert_eq!(lvs.len(), 2);
        assert_eq!(lvs[0].lv_size, G);
        assert_eq!(lvs[0].data_percent, Some(12.5));
        assert!(lvs[0].active());
        assert_eq!(lvs[1].origin, "vmctl-image-default");
        assert_eq!(lvs[1].metadata_percent, None);
        assert!(!lvs[1].active());
        let vgs = parse_vgs(
            r#"{"report":[{"vg":[{"vg_name":"vg0","vg_size":"4290772992","vg_free":"3217031168"}]}]}"#,
        )
        .unwrap();
        assert_eq!(vgs[0].vg_free, 3217031168);
        let e = parse_lvs("Volume group \"vg9\" not found").unwrap_err();
        assert!(e.to_string().contains("JSON report of lvs"), "{e}");
    }

    #[test]
    fn a_root_is_an_activated_thin_snapshot_of_its_image() {
        let rec = Recorder::default();
        for _ in 0..3 {
            rec.reports.borrow_mut().push_back(pool_with(
                "20.00",
                &[("vmctl-image-default", 2 * G, "thin", "50.00", "Vwi-a-tz--")],
            ));
        }
        let pool = LvmThinPool::new(ThinPool::parse("vg0/thin").unwrap(), &rec);
        pool.clone_image("default", &Volume::Root("web".into()), 4 * G)
            .unwrap();
        let calls = rec.calls.borrow();
        let lvs = "lvs --reportformat json --units b --nosuffix --options \
                   lv_name,vg_name,lv_size,pool_lv,origin,data_percent,metadata_percent,lv_attr vg0";
        assert_eq!(
            *calls,
            [
                lvs,
                lvs,
                lvs,
                "lvcreate --yes --snapshot --setactivationskip n --name vmctl-root-web vg0/vmctl-image-default",
                "lvextend --size 4294967296b vg0/vmctl-root-web",
                "lvchange --activate y --ignoreactivationskip vg0/vmctl-root-web",
            ]
        );
        assert_eq!(
            pool.pool.device("vmctl-root-web"),
            "/dev/vg0/vmctl-root-web"
        );
    }

    #[test]
    fn a_full_pool_or_a_missing_one_refuses_new_volumes_naming_it() {
        let rec = Recorder::default();
        rec.reports.borrow_mut().push_back(pool_with("10.00", &[]));
        rec.reports.borrow_mut().push_back(pool_with("96.20", &[]));
        let pool = LvmThinPool::new(ThinPool::parse("vg0/thin").unwrap(), &rec);
        let e = pool.create(&Volume::Data("db".into()), G).unwrap_err();
        assert!(
            e.to_string()
                .contains("the thin pool vg0/thin is full (data 96.2% used"),
            "{e}"
        );
        rec.reports.borrow_mut().push_back(lvs_json(&[]));
        rec.reports.borrow_mut().push_back(lvs_json(&[]));
        let e = pool.create(&Volume::Data("db".into()), G).unwrap_err();
        assert!(
            e.to_string()
                .contains("the thin pool vg0/thin does not exist"),
            "{e}"
        );
        // Nothing was created.
        assert!(!rec.calls.borrow().iter().any(|c| c.starts_with("lvcreate")));
    }

    #[test]
    fn a_missing_volume_group_is_named_and_an_image_needs_its_size_free() {
        let rec = Recorder::default();
        rec.reports.borrow_mut().extend([
            "FAIL lvs failed (exit status: 5): Volume group \"vg0\" not found".to_string(),
            r#"{"report":[{"vg":[{"vg_name":"other","vg_size":"4096","vg_free":"0"}]}]}"#
                .to_string(),
        ]);
        let pool = LvmThinPool::new(ThinPool::parse("vg0/thin").unwrap(), &rec);
        let e = pool.create(&Volume::Data("db".into()), G).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the volume group \"vg0\" of Pool=vg0/thin does not exist: create it \
             (vgcreate vg0 DEVICE) or name an existing one (vgs lists them)"
        );
        assert_eq!(
            rec.calls.borrow().last().unwrap(),
            "vgs --reportformat json --units b --nosuffix --options vg_name,vg_size,vg_free"
        );
        // 10 GiB pool, 80% used: 2 GiB free, a 3 GiB image does not fit.
        rec.reports
            .borrow_mut()
            .extend([pool_with("80.00", &[]), pool_with("80.00", &[])]);
        let e = pool.create_image("big", 3 * G).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the thin pool vg0/thin has 2147483648 bytes free, 3221225472 are needed: \
             extend it (lvextend) or remove volumes"
        );
        assert!(!rec.calls.borrow().iter().any(|c| c.starts_with("lvcreate")));
    }

    #[test]
    fn a_root_that_cannot_be_activated_is_removed_again() {
        struct FailActivate<'a>(&'a Recorder);
        impl Lvm for FailActivate<'_> {
            fn run(&self, argv: &[String]) -> Result<String, StorageError> {
                let out = (&self.0).run(argv)?;
                if argv[0] == "lvchange" {
                    return Err(StorageError::Unavailable("activation failed".into()));
                }
                Ok(out)
            }
        }
        let rec = Recorder::default();
        for _ in 0..3 {
            rec.reports.borrow_mut().push_back(pool_with(
                "20.00",
                &[("vmctl-image-default", 2 * G, "thin", "50.00", "Vwi-a-tz--")],
            ));
        }
        let pool = LvmThinPool::new(ThinPool::parse("vg0/thin").unwrap(), FailActivate(&rec));
        let e = pool
            .clone_image("default", &Volume::Root("web".into()), 2 * G)
            .unwrap_err();
        assert_eq!(e.to_string(), "activation failed");
        assert_eq!(
            rec.calls.borrow()[3..],
            [
                "lvcreate --yes --snapshot --setactivationskip n --name vmctl-root-web vg0/vmctl-image-default",
                "lvchange --activate y --ignoreactivationskip vg0/vmctl-root-web",
                "lvremove --yes vg0/vmctl-root-web",
            ]
        );
    }

    #[test]
    fn data_volumes_grow_never_shrink_and_go() {
        let rec = Recorder::default();
        let data = ("vmctl-data-db", 2 * G, "thin", "1.00", "Vwi-a-tz--");
        let root = ("vmctl-root-web", 4 * G, "thin", "1.00", "Vwi-a-tz--");
        let image = ("vmctl-image-default", 2 * G, "thin", "1.00", "Vwi-a-tz--");
        for _ in 0..5 {
            rec.reports
                .borrow_mut()
                .push_back(pool_with("10.00", &[data, root, image]));
        }
        let pool = LvmThinPool::new(ThinPool::parse("vg0/thin").unwrap(), &rec);
        let db = Volume::Data("db".into());
        let e = pool.resize(&db, G).unwrap_err();
        assert!(matches!(e, StorageError::Shrink { .. }), "{e}");
        pool.resize(&db, 3 * G).unwrap();
        pool.delete(&db).unwrap();
        let volumes: Vec<_> = pool
            .volumes()
            .unwrap()
            .into_iter()
            .map(|(v, lv)| (v, lv.lv_size))
            .collect();
        assert_eq!(
            volumes,
            [
                (Volume::Root("web".into()), 4 * G),
                (Volume::Data("db".into()), 2 * G)
            ]
        );
        let status = pool.status().unwrap();
        assert_eq!((status.total_bytes, status.free_bytes), (10 * G, 9 * G));
        let calls = rec.calls.borrow();
        let changes: Vec<_> = calls.iter().filter(|c| !c.starts_with("lvs")).collect();
        assert_eq!(
            changes,
            [
                "lvextend --size 3221225472b vg0/vmctl-data-db",
                "lvremove --yes vg0/vmctl-data-db"
            ]
        );
        assert_eq!(
            ThinPool::parse("vg0/thin")
                .unwrap()
                .create_thin_argv("x", G)
                .join(" "),
            "lvcreate --yes --type thin --thinpool thin --virtualsize 1073741824b --name x vg0"
        );
    }
}
