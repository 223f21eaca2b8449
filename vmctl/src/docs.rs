//! `vmctl generate-docs`: man pages and shell completions from the clap
//! definitions, written for the installer.

use std::{fs, path::Path};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `out/man/vmctl.1`, `out/man/vmctl-<subcommand>.1` for every
/// visible subcommand, and `out/completions/{vmctl.bash,_vmctl,vmctl.fish}`.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    for dir in [&man_dir, &completion_dir] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let mut cmd = Cli::command();
    cmd.build();
    write_man(&man_dir.join("vmctl.1"), cmd.clone())?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("vmctl-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(name.replace("-", " "));
        write_man(&man_dir.join(format!("{name}.1")), page)?;
    }

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "vmctl", &completion_dir)
            .with_context(|| format!("cannot write {shell} completions"))?;
    }
    Ok(())
}

fn write_man(path: &Path, cmd: clap::Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))
}
