//! The rule for VM names.
//!
//! A VM name is used as a hostname label (`NAME.vm`), as the instance of
//! `vm@NAME.service`, in file names under the state directory and in TAP
//! device names, so it is deliberately narrow: ASCII letters, digits and
//! `-`, starting with a letter, not ending with `-`, at most
//! [`VM_NAME_MAX_LEN`] bytes.

use std::fmt;

/// The longest allowed VM name, in bytes (the limit of a DNS label).
pub const VM_NAME_MAX_LEN: usize = 63;

/// The rule, in words, as shown in error messages.
pub const VM_NAME_RULE: &str = "a VM name must be 1 to 63 ASCII letters, digits or '-', \
     starting with a letter and not ending with '-'";

/// Why a string is not a valid VM name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidVmName {
    /// The rejected name, as given.
    pub name: String,
    /// What is wrong with it, in words (without the name).
    pub reason: String,
}

impl fmt::Display for InvalidVmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid VM name {:?}: {} ({VM_NAME_RULE})",
            self.name, self.reason
        )
    }
}

impl std::error::Error for InvalidVmName {}

/// Checks that `name` can be used as a VM name (see the module docs).
pub fn validate_vm_name(name: &str) -> Result<(), InvalidVmName> {
    let reject = |reason: String| {
        Err(InvalidVmName {
            name: name.to_string(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return reject("it is empty".to_string());
    };
    if name.len() > VM_NAME_MAX_LEN {
        return reject(format!(
            "it is {} bytes long, the maximum is {VM_NAME_MAX_LEN}",
            name.len()
        ));
    }
    if !first.is_ascii_alphabetic() {
        return reject(format!("it starts with {first:?}, not a letter"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return reject(format!("it contains {bad:?}"));
    }
    if name.ends_with('-') {
        return reject("it ends with '-'".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> String {
        validate_vm_name(name).unwrap_err().reason
    }

    #[test]
    fn accepts_good_names() {
        for name in ["blog", "a", "web-1", "A9", &"x".repeat(63)] {
            assert_eq!(validate_vm_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_path_traversal() {
        assert_eq!(reason("../x"), "it starts with '.', not a letter");
        assert_eq!(reason("a/../x"), "it contains '/'");
    }

    #[test]
    fn rejects_space() {
        assert_eq!(reason("a b"), "it contains ' '");
    }

    #[test]
    fn rejects_too_long() {
        assert_eq!(
            reason(&"a".repeat(300)),
            "it is 300 bytes long, the maximum is 63"
        );
        assert!(validate_vm_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn rejects_unicode() {
        assert_eq!(reason("café"), "it contains 'é'");
        assert_eq!(reason("ünï"), "it starts with 'ü', not a letter");
    }

    #[test]
    fn rejects_option_like() {
        assert_eq!(reason("-rf"), "it starts with '-', not a letter");
    }

    #[test]
    fn rejects_empty_and_trailing_dash() {
        assert_eq!(reason(""), "it is empty");
        assert_eq!(reason("a-"), "it ends with '-'");
    }

    #[test]
    fn message_names_value_and_rule() {
        let msg = validate_vm_name("a b").unwrap_err().to_string();
        assert!(msg.starts_with("invalid VM name \"a b\": it contains ' '"));
        assert!(msg.contains(VM_NAME_RULE));
    }
}
