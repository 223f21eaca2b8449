//! The one error type of the service layer and how it is named on each
//! protocol.

use serde_json::{json, Value};
use vmctl_api::{errors, names::DBUS_ERROR_PREFIX, ErrorReply, InvalidVmName};

/// An error of a service-layer call. Every variant is an error declared in
/// the `io.vmctl.Manager` IDL; the front ends translate it with
/// [`ManagerError::varlink_name`] / [`ManagerError::dbus_name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// No VM of this name exists, or the caller may not see it.
    #[error("no VM named {name:?}")]
    NoSuchVm {
        /// The requested name.
        name: String,
    },
    /// The name cannot be used for a VM.
    #[error("invalid VM name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller may not perform the action (a polkit action ID).
    #[error("permission denied for action {action}")]
    PermissionDenied {
        /// The polkit action that was refused, e.g. `org.vmctl.vm.create`.
        action: String,
    },
    /// The request would exceed the caller's quota.
    #[error("quota exceeded for {resource}: limit {limit}, requested {requested}")]
    QuotaExceeded {
        /// The resource, e.g. `vms`, `memory_bytes`.
        resource: String,
        /// The caller's limit.
        limit: i64,
        /// What the caller would have in total after the request.
        requested: i64,
    },
    /// A VM of this name exists already.
    #[error("a VM named {name:?} exists already")]
    VmExists {
        /// The requested name.
        name: String,
    },
    /// No usable image of this name.
    #[error("no image {image:?} (expected root.raw and vmlinuz in its directory)")]
    NoSuchImage {
        /// The requested image.
        image: String,
    },
    /// A size or count out of range.
    #[error("invalid {what}: {reason}")]
    InvalidSize {
        /// `vcpus`, `memory` or `disk`.
        what: String,
        /// The rejected value, as a person would write it.
        value: String,
        /// What is wrong, naming the value and the limit.
        reason: String,
    },
    /// A systemd job on the VM's unit did not succeed.
    #[error("{unit} failed (result: {result}); see journalctl -u {unit}")]
    UnitFailed {
        /// The unit, `vm@NAME.service`.
        unit: String,
        /// The job result (`failed`, `timeout`, ...).
        result: String,
    },
    /// An argument is malformed (a bad SSH key, an unknown network mode).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument, e.g. `ssh_authorized_keys`.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Every address of a subnet is taken.
    #[error("no free address left in {subnet} (a larger subnet is set with {setting})")]
    NoFreeAddress {
        /// The full subnet, e.g. `10.77.0.0/16`.
        subnet: String,
        /// The setting that chooses it, naming the file.
        setting: String,
    },
    /// The VM is defined but not running, so its guest cannot be reached.
    #[error("VM {name} is not running (state: {state}); start it with: vmctl start {name}")]
    VmNotRunning {
        /// The VM.
        name: String,
        /// Its unit's state.
        state: String,
    },
    /// vmctld failed internally (I/O, corrupt state, ...).
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

impl ManagerError {
    /// The error name without interface prefix, as declared in the IDL.
    pub fn short_name(&self) -> &'static str {
        match self {
            Self::NoSuchVm { .. } => "NoSuchVM",
            Self::InvalidName { .. } => "InvalidName",
            Self::PermissionDenied { .. } => "PermissionDenied",
            Self::QuotaExceeded { .. } => "QuotaExceeded",
            Self::VmExists { .. } => "VMExists",
            Self::NoSuchImage { .. } => "NoSuchImage",
            Self::InvalidSize { .. } => "InvalidSize",
            Self::UnitFailed { .. } => "UnitFailed",
            Self::InvalidArgument { .. } => "InvalidArgument",
            Self::NoFreeAddress { .. } => "NoFreeAddress",
            Self::VmNotRunning { .. } => "VMNotRunning",
            Self::Internal { .. } => "InternalError",
        }
    }

    /// The varlink error name, e.g. `io.vmctl.Manager.NoSuchVM`.
    pub fn varlink_name(&self) -> &'static str {
        match self {
            Self::NoSuchVm { .. } => errors::NO_SUCH_VM,
            Self::InvalidName { .. } => errors::INVALID_NAME,
            Self::PermissionDenied { .. } => errors::PERMISSION_DENIED,
            Self::QuotaExceeded { .. } => errors::QUOTA_EXCEEDED,
            Self::VmExists { .. } => errors::VM_EXISTS,
            Self::NoSuchImage { .. } => errors::NO_SUCH_IMAGE,
            Self::InvalidSize { .. } => errors::INVALID_SIZE,
            Self::UnitFailed { .. } => errors::UNIT_FAILED,
            Self::InvalidArgument { .. } => errors::INVALID_ARGUMENT,
            Self::NoFreeAddress { .. } => errors::NO_FREE_ADDRESS,
            Self::VmNotRunning { .. } => errors::VM_NOT_RUNNING,
            Self::Internal { .. } => errors::INTERNAL_ERROR,
        }
    }

    /// The D-Bus error name, e.g. `org.vmctl.Manager1.Error.NoSuchVM`.
    pub fn dbus_name(&self) -> String {
        format!("{DBUS_ERROR_PREFIX}.{}", self.short_name())
    }

    /// The varlink error parameters, as declared in the IDL.
    pub fn varlink_parameters(&self) -> Value {
        match self {
            Self::NoSuchVm { name } => json!({ "name": name }),
            Self::InvalidName { name, reason } => json!({ "name": name, "reason": reason }),
            Self::PermissionDenied { action } => json!({ "action": action }),
            Self::QuotaExceeded {
                resource,
                limit,
                requested,
            } => json!({ "resource": resource, "limit": limit, "requested": requested }),
            Self::VmExists { name } => json!({ "name": name }),
            Self::NoSuchImage { image } => json!({ "image": image }),
            Self::InvalidSize {
                what,
                value,
                reason,
            } => json!({ "what": what, "value": value, "reason": reason }),
            Self::UnitFailed { unit, result } => json!({ "unit": unit, "result": result }),
            Self::InvalidArgument { what, reason } => json!({ "what": what, "reason": reason }),
            Self::NoFreeAddress { subnet, setting } => {
                json!({ "subnet": subnet, "setting": setting })
            }
            Self::VmNotRunning { name, state } => json!({ "name": name, "state": state }),
            Self::Internal { message } => json!({ "message": message }),
        }
    }

    /// The complete varlink error reply.
    pub fn to_varlink(&self) -> ErrorReply {
        ErrorReply::new(self.varlink_name(), self.varlink_parameters())
    }

    /// An internal error from anything displayable.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal {
            message: message.to_string(),
        }
    }
}

impl From<InvalidVmName> for ManagerError {
    fn from(e: InvalidVmName) -> Self {
        Self::InvalidName {
            name: e.name,
            reason: e.reason,
        }
    }
}

/// One error of every kind, for tests of the front ends' mappings.
#[cfg(test)]
pub(crate) fn one_of_each() -> Vec<ManagerError> {
    vec![
        ManagerError::NoSuchVm { name: "a".into() },
        ManagerError::InvalidName {
            name: "a b".into(),
            reason: "r".into(),
        },
        ManagerError::PermissionDenied {
            action: "org.vmctl.vm.create".into(),
        },
        ManagerError::QuotaExceeded {
            resource: "vms".into(),
            limit: 1,
            requested: 2,
        },
        ManagerError::VmExists { name: "a".into() },
        ManagerError::NoSuchImage { image: "x".into() },
        ManagerError::InvalidSize {
            what: "memory".into(),
            value: "1 B".into(),
            reason: "r".into(),
        },
        ManagerError::UnitFailed {
            unit: "vm@a.service".into(),
            result: "failed".into(),
        },
        ManagerError::InvalidArgument {
            what: "network".into(),
            reason: "r".into(),
        },
        ManagerError::NoFreeAddress {
            subnet: "10.77.0.0/16".into(),
            setting: "IPv4Subnet=".into(),
        },
        ManagerError::VmNotRunning {
            name: "a".into(),
            state: "inactive".into(),
        },
        ManagerError::internal("boom"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlink_names() {
        let names: Vec<_> = one_of_each().iter().map(|e| e.varlink_name()).collect();
        assert_eq!(
            names,
            [
                "io.vmctl.Manager.NoSuchVM",
                "io.vmctl.Manager.InvalidName",
                "io.vmctl.Manager.PermissionDenied",
                "io.vmctl.Manager.QuotaExceeded",
                "io.vmctl.Manager.VMExists",
                "io.vmctl.Manager.NoSuchImage",
                "io.vmctl.Manager.InvalidSize",
                "io.vmctl.Manager.UnitFailed",
                "io.vmctl.Manager.InvalidArgument",
                "io.vmctl.Manager.NoFreeAddress",
                "io.vmctl.Manager.VMNotRunning",
                "io.vmctl.Manager.InternalError",
            ]
        );
    }

    #[test]
    fn dbus_names() {
        let names: Vec<_> = one_of_each().iter().map(|e| e.dbus_name()).collect();
        assert_eq!(
            names,
            [
                "org.vmctl.Manager1.Error.NoSuchVM",
                "org.vmctl.Manager1.Error.InvalidName",
                "org.vmctl.Manager1.Error.PermissionDenied",
                "org.vmctl.Manager1.Error.QuotaExceeded",
                "org.vmctl.Manager1.Error.VMExists",
                "org.vmctl.Manager1.Error.NoSuchImage",
                "org.vmctl.Manager1.Error.InvalidSize",
                "org.vmctl.Manager1.Error.UnitFailed",
                "org.vmctl.Manager1.Error.InvalidArgument",
                "org.vmctl.Manager1.Error.NoFreeAddress",
                "org.vmctl.Manager1.Error.VMNotRunning",
                "org.vmctl.Manager1.Error.InternalError",
            ]
        );
    }

    #[test]
    fn every_error_is_declared_in_idl_with_its_parameters() {
        let idl = vmctl_api::idl::INTERFACE_DESCRIPTION;
        for e in one_of_each() {
            let line = idl
                .lines()
                .find(|l| l.starts_with(&format!("error {} (", e.short_name())))
                .unwrap_or_else(|| panic!("{} not declared", e.short_name()));
            for key in e.varlink_parameters().as_object().unwrap().keys() {
                assert!(line.contains(&format!("{key}:")), "{line} lacks {key}");
            }
        }
    }

    #[test]
    fn invalid_name_converts() {
        let e: ManagerError = vmctl_api::validate_vm_name("-rf").unwrap_err().into();
        assert_eq!(e.varlink_name(), "io.vmctl.Manager.InvalidName");
        assert_eq!(e.varlink_parameters()["name"], "-rf");
    }
}
