//! `cargo xtask soak`: runs every cargo-fuzz target in `guest/fuzz/` (what
//! the guest agent and the host decode from untrusted peers) and
//! `nss-vmctl/fuzz/` (the NSS module's name matching and record parsing) and
//! `vmctld/fuzz/` (varlink requests from local users, VM name and size
//! validators) for a bounded time each, and fails on the first crash,
//! naming the input libFuzzer saved.
//!
//! cargo-fuzz is installed with `cargo install` and cached like the other
//! tools ([`crate::tools`]). It needs a nightly compiler for its sanitizer
//! flags: a rustup `nightly` toolchain when one is installed, else the
//! stable one with `RUSTC_BOOTSTRAP=1`, which unlocks the same flags.
//! Inputs found interesting are kept in `target/fuzz/corpus/<target>/` for
//! the next run, crashing inputs in `<fuzz dir>/artifacts/<target>/`;
//! `<fuzz dir>/seeds/<target>/` holds hand-made starting points.

use crate::cmd;
use crate::paths::{target_dir, workspace_root};
use crate::tools;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// The cargo-fuzz release used.
pub const CARGO_FUZZ: (&str, &str) = ("cargo-fuzz", "0.13.2");

/// The fuzz targets: (cargo-fuzz directory in the workspace, target name).
pub const TARGETS: &[(&str, &str)] = &[
    ("guest/fuzz", "frame_decoder"),
    ("guest/fuzz", "control"),
    ("guest/fuzz", "hello"),
    ("nss-vmctl/fuzz", "nss_name"),
    ("nss-vmctl/fuzz", "nss_records"),
    ("vmctld/fuzz", "varlink_request"),
    ("vmctld/fuzz", "validators"),
];

/// Seconds each target runs by default.
pub const DEFAULT_SECONDS: u64 = 60;

/// Which compiler builds the fuzz targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's `nightly` toolchain.
    Nightly,
    /// The default toolchain with `RUSTC_BOOTSTRAP=1`.
    Bootstrapped,
}

/// Nightly when rustup lists a toolchain named `nightly-…`, else stable
/// with `RUSTC_BOOTSTRAP=1`.
pub fn detect_toolchain() -> Toolchain {
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if listed.lines().any(|l| l.starts_with("nightly-")) {
        Toolchain::Nightly
    } else {
        Toolchain::Bootstrapped
    }
}

/// Runs `targets` (every target when empty) for `seconds` each, with the
/// nightly toolchain if there is one and `stable` is false, else with
/// stable and `RUSTC_BOOTSTRAP=1`.
pub fn run(targets: &[String], seconds: u64, stable: bool) -> Result<()> {
    let targets: Vec<(&str, &str)> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut chosen = Vec::new();
        for t in targets {
            let Some(found) = TARGETS.iter().find(|(_, name)| name == t) else {
                let names: Vec<&str> = TARGETS.iter().map(|(_, name)| *name).collect();
                bail!("unknown fuzz target {t:?}; the targets are {names:?}");
            };
            chosen.push(*found);
        }
        chosen
    };
    let cargo_fuzz = tools::ensure(CARGO_FUZZ)?;
    let toolchain = if stable {
        Toolchain::Bootstrapped
    } else {
        detect_toolchain()
    };
    eprintln!(
        "xtask: fuzzing with {}",
        match toolchain {
            Toolchain::Nightly => "the nightly toolchain",
            Toolchain::Bootstrapped => "the default toolchain and RUSTC_BOOTSTRAP=1",
        }
    );
    let root = workspace_root();
    let out = target_dir().join("fuzz");
    for (dir, target) in targets {
        let fuzz_dir = root.join(dir);
        let corpus = out.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut run = Command::new(&cargo_fuzz);
        run.current_dir(&root)
            .args(["fuzz", "run", target, "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(out.join("build"))
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            run.arg(seeds);
        }
        run.arg("--").arg(format!("-max_total_time={seconds}"));
        // cargo-fuzz runs `cargo` from PATH: pick its toolchain explicitly,
        // whatever the outer cargo (this xtask's) was.
        run.env_remove("RUSTC").env_remove("RUSTDOC");
        match toolchain {
            Toolchain::Nightly => run.env("RUSTUP_TOOLCHAIN", "nightly"),
            Toolchain::Bootstrapped => run.env("RUSTC_BOOTSTRAP", "1"),
        };
        eprintln!("xtask: == fuzz target {target}, {seconds} s ==");
        cmd::run(&mut run).with_context(|| {
            format!(
                "fuzz target {target} failed; the input that broke it is in {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}

/// Rounds of the store's fault-injection test in a soak (CI runs 10).
pub const STORE_FAULT_ROUNDS: u32 = 100;

/// Brings up the development host and runs the store's fault-injection
/// e2e test (`tests/tests/store.rs`: vmctld killed with SIGKILL at random
/// points of create and rm, then checked for leaks) for `rounds` rounds.
pub fn store_faults(rounds: u32) -> Result<()> {
    crate::deps::ensure_build_machine()?;
    crate::host::up(crate::host::UpOptions::default())?;
    eprintln!("xtask: == store fault injection, {rounds} rounds ==");
    let result = cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "test",
                "-p",
                "vmctl-e2e",
                "--test",
                "store",
                "--",
                "--ignored",
                "--exact",
                "sigkill_during_create_and_rm_leaks_nothing",
            ])
            .env("VMCTL_STORE_FAULT_ROUNDS", rounds.to_string()),
    );
    crate::host::down()?;
    result
}
