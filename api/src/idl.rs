//! The varlink interface description of `io.vmctl.Manager`.
//!
//! The text is the file `api/io.vmctl.Manager.varlink`, embedded at build
//! time, so what vmctld serves, what is installed and what the tests check is
//! the same bytes.

/// The interface description, exactly as in `io.vmctl.Manager.varlink`.
pub const INTERFACE_DESCRIPTION: &str = include_str!("../io.vmctl.Manager.varlink");

/// The gateway-only interface `io.vmctl.Gateway`, exactly as in
/// `io.vmctl.Gateway.varlink` (served on the same socket).
pub const GATEWAY_INTERFACE_DESCRIPTION: &str = include_str!("../io.vmctl.Gateway.varlink");

/// The version of the interface that this crate describes. Bumped when the
/// wire format changes incompatibly; reported by `GetVersion`.
pub const INTERFACE_VERSION: i64 = 1;

/// The names of the errors declared in [`INTERFACE_DESCRIPTION`], without
/// the interface prefix (e.g. `NoSuchVM`), in declaration order.
pub fn declared_errors() -> Vec<&'static str> {
    INTERFACE_DESCRIPTION
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("error "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|name| name.trim_end_matches('('))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_interface() {
        assert!(INTERFACE_DESCRIPTION
            .lines()
            .any(|l| l == format!("interface {}", crate::names::VARLINK_INTERFACE)));
    }

    #[test]
    fn declares_the_gateway_interface() {
        assert!(GATEWAY_INTERFACE_DESCRIPTION
            .lines()
            .any(|l| l == format!("interface {}", crate::names::GATEWAY_INTERFACE)));
    }

    #[test]
    fn lists_errors() {
        assert_eq!(
            declared_errors(),
            [
                "NoSuchVM",
                "InvalidName",
                "VMExists",
                "NoSuchImage",
                "InvalidSize",
                "UnitFailed",
                "PermissionDenied",
                "QuotaExceeded",
                "InvalidArgument",
                "NoFreeAddress",
                "VMNotRunning",
                "InternalError"
            ]
        );
    }
}
