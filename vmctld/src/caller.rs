//! Who is calling: the identity every service-layer call carries.

/// The peer of a call, as established by the transport (varlink:
/// `SO_PEERCRED` of the socket; D-Bus: the credentials of the sender).
///
/// Authorisation (root always, polkit for everybody else) is decided from
/// this in the service layer, never in the front ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Unix user ID of the calling process.
    pub uid: u32,
    /// Process ID of the calling process, when known (0 otherwise).
    pub pid: u32,
}

impl Caller {
    /// The superuser, who may do everything.
    pub const ROOT: Caller = Caller { uid: 0, pid: 0 };

    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}
