//! What the SSH user name means. The rule, in order:
//!
//! 1. `NAME.vm` is always the VM `NAME` (proxy mode), like `ssh NAME.vm`
//!    on the host itself.
//! 2. `vmctl`, or the user name of the key's owner, is command mode.
//! 3. Any other name is a VM if the key's owner has one of that name
//!    (asked through `Describe` on the owner's behalf, so somebody else's
//!    VM is exactly "no such VM"); otherwise command mode, so that
//!    `ssh -p 2222 HOST ls` works whatever the local user name is.
//!
//! Collisions: a VM named like its owner's user name, or `vmctl`, is
//! reached as `NAME.vm@HOST` (rule 2 wins over rule 3).

/// The name that always means command mode.
pub const COMMAND_USER: &str = "vmctl";

/// Where a connection goes, before asking vmctld.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Command mode.
    Command,
    /// A VM, named explicitly (`NAME.vm`): no such VM is an error.
    Vm(String),
    /// A VM if the owner has one of this name, else command mode.
    VmOrCommand(String),
}

/// Routes `ssh_user` for the key owner named `owner`.
pub fn route(ssh_user: &str, owner: &str) -> Route {
    if let Some(name) = ssh_user.strip_suffix(".vm") {
        return Route::Vm(name.to_string());
    }
    if ssh_user == COMMAND_USER || ssh_user == owner || ssh_user.is_empty() {
        return Route::Command;
    }
    Route::VmOrCommand(ssh_user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert_eq!(route("t1.vm", "alice"), Route::Vm("t1".into()));
        assert_eq!(route("alice.vm", "alice"), Route::Vm("alice".into()));
        assert_eq!(route("alice", "alice"), Route::Command);
        assert_eq!(route("vmctl", "alice"), Route::Command);
        assert_eq!(route("t1", "alice"), Route::VmOrCommand("t1".into()));
        assert_eq!(route("root", "alice"), Route::VmOrCommand("root".into()));
    }
}
