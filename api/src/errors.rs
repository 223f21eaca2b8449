//! Varlink error names of `io.vmctl.Manager` and the error reply as it
//! travels on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `io.vmctl.Manager.NoSuchVM (name)`.
pub const NO_SUCH_VM: &str = "io.vmctl.Manager.NoSuchVM";
/// `io.vmctl.Manager.InvalidName (name, reason)`.
pub const INVALID_NAME: &str = "io.vmctl.Manager.InvalidName";
/// `io.vmctl.Manager.PermissionDenied (action)`.
pub const PERMISSION_DENIED: &str = "io.vmctl.Manager.PermissionDenied";
/// `io.vmctl.Manager.QuotaExceeded (resource, limit, requested)`.
pub const QUOTA_EXCEEDED: &str = "io.vmctl.Manager.QuotaExceeded";
/// `io.vmctl.Manager.VMExists (name)`.
pub const VM_EXISTS: &str = "io.vmctl.Manager.VMExists";
/// `io.vmctl.Manager.NoSuchImage (image)`.
pub const NO_SUCH_IMAGE: &str = "io.vmctl.Manager.NoSuchImage";
/// `io.vmctl.Manager.InvalidSize (what, value, reason)`.
pub const INVALID_SIZE: &str = "io.vmctl.Manager.InvalidSize";
/// `io.vmctl.Manager.UnitFailed (unit, result)`.
pub const UNIT_FAILED: &str = "io.vmctl.Manager.UnitFailed";
/// `io.vmctl.Manager.InvalidArgument (what, reason)`.
pub const INVALID_ARGUMENT: &str = "io.vmctl.Manager.InvalidArgument";
/// `io.vmctl.Manager.NoFreeAddress (subnet, setting)`.
pub const NO_FREE_ADDRESS: &str = "io.vmctl.Manager.NoFreeAddress";
/// `io.vmctl.Manager.VMNotRunning (name, state)`.
pub const VM_NOT_RUNNING: &str = "io.vmctl.Manager.VMNotRunning";
/// `io.vmctl.Manager.InternalError (message)`.
pub const INTERNAL_ERROR: &str = "io.vmctl.Manager.InternalError";

/// `org.varlink.service.InterfaceNotFound (interface)`.
pub const INTERFACE_NOT_FOUND: &str = "org.varlink.service.InterfaceNotFound";
/// `org.varlink.service.MethodNotFound (method)`.
pub const METHOD_NOT_FOUND: &str = "org.varlink.service.MethodNotFound";
/// `org.varlink.service.InvalidParameter (parameter)`.
pub const INVALID_PARAMETER: &str = "org.varlink.service.InvalidParameter";

/// A varlink error reply: `{"error": "NAME", "parameters": {...}}`.
///
/// Used by the daemon to send errors and by clients to receive any error,
/// including ones newer than the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The fully qualified error name, e.g. [`NO_SUCH_VM`].
    pub error: String,
    /// The error parameters (an object), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

impl ErrorReply {
    /// An error reply with a name and parameters.
    pub fn new(error: impl Into<String>, parameters: Value) -> Self {
        Self {
            error: error.into(),
            parameters: Some(parameters),
        }
    }

    /// The string parameter `key`, or `"?"` when absent.
    fn str_param(&self, key: &str) -> String {
        match self.parameters.as_ref().and_then(|p| p.get(key)) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "?".to_string(),
        }
    }
}

/// Human words for the error, naming the error and its parameters, e.g.
/// `no VM named "blog" (io.vmctl.Manager.NoSuchVM)`.
impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |k: &str| self.str_param(k);
        match self.error.as_str() {
            NO_SUCH_VM => write!(f, "no VM named {:?}", p("name"))?,
            INVALID_NAME => write!(f, "invalid VM name {:?}: {}", p("name"), p("reason"))?,
            PERMISSION_DENIED => write!(f, "permission denied for action {}", p("action"))?,
            VM_EXISTS => write!(f, "a VM named {:?} exists already", p("name"))?,
            NO_SUCH_IMAGE => write!(
                f,
                "no image {:?} (expected root.raw and vmlinuz in /var/lib/vmctl/images/{})",
                p("image"),
                p("image")
            )?,
            INVALID_SIZE => write!(f, "invalid {}: {}", p("what"), p("reason"))?,
            UNIT_FAILED => write!(
                f,
                "{} failed (result: {}); see journalctl -u {}",
                p("unit"),
                p("result"),
                p("unit")
            )?,
            QUOTA_EXCEEDED => write!(
                f,
                "quota exceeded for {}: limit {}, requested {}",
                p("resource"),
                p("limit"),
                p("requested")
            )?,
            INVALID_ARGUMENT => write!(f, "invalid {}: {}", p("what"), p("reason"))?,
            NO_FREE_ADDRESS => write!(
                f,
                "no free address left in {} (a larger subnet is set with {})",
                p("subnet"),
                p("setting")
            )?,
            VM_NOT_RUNNING => write!(
                f,
                "VM {} is not running (state: {}); start it with: vmctl start {}",
                p("name"),
                p("state"),
                p("name")
            )?,
            INTERNAL_ERROR => write!(f, "internal error in vmctld: {}", p("message"))?,
            INTERFACE_NOT_FOUND => write!(f, "the daemon has no interface {}", p("interface"))?,
            METHOD_NOT_FOUND => write!(f, "the daemon has no method {}", p("method"))?,
            INVALID_PARAMETER => write!(f, "invalid parameter {:?}", p("parameter"))?,
            _ => {
                write!(f, "the daemon replied with an error")?;
                if let Some(params) = self.parameters.as_ref().filter(|p| !is_empty(p)) {
                    write!(f, " {params}")?;
                }
            }
        }
        write!(f, " ({})", self.error)
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

impl std::error::Error for ErrorReply {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_match_idl() {
        for name in [
            NO_SUCH_VM,
            INVALID_NAME,
            PERMISSION_DENIED,
            QUOTA_EXCEEDED,
            VM_EXISTS,
            NO_SUCH_IMAGE,
            INVALID_SIZE,
            UNIT_FAILED,
            INVALID_ARGUMENT,
            NO_FREE_ADDRESS,
            VM_NOT_RUNNING,
            INTERNAL_ERROR,
        ] {
            let short = name.strip_prefix("io.vmctl.Manager.").unwrap();
            assert!(crate::idl::declared_errors().contains(&short), "{name}");
        }
    }

    #[test]
    fn displays_known_error_in_words() {
        let e = ErrorReply::new(NO_SUCH_VM, json!({"name": "blog"}));
        assert_eq!(
            e.to_string(),
            "no VM named \"blog\" (io.vmctl.Manager.NoSuchVM)"
        );
    }

    #[test]
    fn displays_unknown_error_with_parameters() {
        let e = ErrorReply::new("io.example.Odd", json!({"x": 1}));
        assert_eq!(
            e.to_string(),
            "the daemon replied with an error {\"x\":1} (io.example.Odd)"
        );
    }

    #[test]
    fn wire_format() {
        let e: ErrorReply = serde_json::from_str(
            r#"{"error":"io.vmctl.Manager.InvalidName","parameters":{"name":"a b","reason":"r"}}"#,
        )
        .unwrap();
        assert_eq!(e.error, INVALID_NAME);
        let e: ErrorReply = serde_json::from_str(r#"{"error":"x.Y"}"#).unwrap();
        assert_eq!(e.parameters, None);
    }
}
