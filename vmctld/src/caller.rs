//! Who is calling: the identity every service-layer call carries.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::Arc,
};

/// The peer of a call, as established by the transport (varlink:
/// `SO_PEERCRED` and `SO_PEERPIDFD` of the socket; D-Bus: the credentials
/// and the unique name of the sender).
///
/// Authorisation (root always, polkit for everybody else) is decided from
/// this in the service layer ([`crate::authz`]), never in the front ends.
/// Code outside `authz` uses only [`Caller::uid`] and [`Caller::is_root`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// Unix user ID of the calling process.
    pub uid: u32,
    /// Process ID of the calling process, when known (0 otherwise). For
    /// logs only: polkit is never asked about a bare pid.
    pub pid: u32,
    /// What polkit is asked about.
    pub subject: Subject,
    /// Whether the client asked for interactive authentication (a polkit
    /// agent on its terminal or desktop may prompt).
    pub allow_interaction: bool,
}

/// The polkit subject of a caller.
#[derive(Debug, Clone)]
pub enum Subject {
    /// None: vmctld itself and unit tests. polkit cannot be asked about
    /// it, so only root passes.
    None,
    /// A varlink peer: a `unix-process` subject.
    Process(Arc<ProcessSubject>),
    /// A D-Bus sender: a `system-bus-name` subject with its unique name
    /// (polkit asks the bus for its credentials itself).
    BusName(String),
    /// A gateway (the SSH gateway, the HTTPS proxy) acting for the user
    /// [`Caller::uid`] (see [`crate::gateway`]). polkit is not asked: such
    /// a caller holds create and manage-own, nothing else.
    Gateway {
        /// The gateway's user name (`vmctl-ssh`, `vmctl-https`).
        gateway: String,
        /// The gateway's own uid, from `SO_PEERCRED`.
        gateway_uid: u32,
    },
}

/// A process as polkit identifies it.
#[derive(Debug)]
pub enum ProcessSubject {
    /// A pidfd (`SO_PEERPIDFD`, Linux >= 6.5): names exactly the process
    /// that connected, even after it exits and its pid is reused.
    Pidfd {
        /// The descriptor, sent to polkit with each check.
        pidfd: OwnedFd,
        /// The peer's uid from `SO_PEERCRED`.
        uid: u32,
    },
    /// Kernels without `SO_PEERPIDFD`: pid plus the process start time,
    /// which polkit compares against `/proc/PID/stat`, so a pid reused by
    /// another process does not match.
    PidStartTime {
        /// The peer's pid from `SO_PEERCRED`.
        pid: u32,
        /// Its start time in clock ticks since boot (field 22 of
        /// `/proc/PID/stat`), read when the connection was accepted.
        start_time: u64,
        /// The peer's uid from `SO_PEERCRED`.
        uid: u32,
    },
}

impl Caller {
    /// The superuser, who may do everything.
    pub const ROOT: Caller = Caller {
        uid: 0,
        pid: 0,
        subject: Subject::None,
        allow_interaction: false,
    };

    /// A caller with user ID `uid` and no polkit subject (tests): refused
    /// everything that needs polkit unless `uid` is 0.
    pub fn without_subject(uid: u32) -> Self {
        Self { uid, ..Self::ROOT }
    }

    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The gateway acting for this caller, if any.
    pub fn gateway(&self) -> Option<&str> {
        match &self.subject {
            Subject::Gateway { gateway, .. } => Some(gateway),
            _ => None,
        }
    }
}

impl Caller {
    /// The caller on the other end of the connected Unix socket `socket`,
    /// whose `SO_PEERCRED` gave `uid` and `pid`: with a pidfd subject
    /// where the kernel has `SO_PEERPIDFD`.
    pub fn unix_peer(socket: BorrowedFd<'_>, uid: u32, pid: u32) -> Self {
        let subject = match peer_pidfd(socket) {
            Ok(pidfd) => Subject::Process(Arc::new(ProcessSubject::Pidfd { pidfd, uid })),
            // Linux < 6.5 has no SO_PEERPIDFD: pid + start time is the best
            // polkit takes there. The start time is read now, after the
            // connect, so a peer that exited and whose pid was reused in
            // between is mistaken for the new process; the pidfd above has
            // no such window.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => match start_time(pid) {
                Ok(start_time) => Subject::Process(Arc::new(ProcessSubject::PidStartTime {
                    pid,
                    start_time,
                    uid,
                })),
                Err(e) => {
                    tracing::debug!("no start time of peer pid {pid}: {e}");
                    Subject::None
                }
            },
            Err(e) => {
                tracing::debug!("no pidfd of peer pid {pid}: {e}");
                Subject::None
            }
        };
        Self {
            uid,
            pid,
            subject,
            allow_interaction: false,
        }
    }
}

/// `SO_PEERPIDFD` of a connected Unix socket.
fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writes and `len` is the size of
    // `fd`, as SO_PEERPIDFD expects (an int).
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: the kernel just gave us this new descriptor; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The start time of process `pid` in clock ticks since boot, as polkit
/// reads it: field 22 of `/proc/PID/stat`.
fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::other(format!("malformed /proc/{pid}/stat")))
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields
/// are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After ")" come field 3 (state) onwards: field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::{
        fd::AsFd,
        unix::{fs::MetadataExt, net::UnixStream},
    };

    #[test]
    fn start_time_is_field_22_even_with_a_tricky_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        let own = start_time(std::process::id()).unwrap();
        assert!(own > 0);
    }

    #[test]
    fn a_unix_peer_is_identified_by_a_pidfd_of_that_process() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let caller = Caller::unix_peer(ours.as_fd(), uid, std::process::id());
        let Subject::Process(process) = &caller.subject else {
            panic!("no process subject: {caller:?}");
        };
        // This kernel (>= 6.5) has SO_PEERPIDFD; the pidfd names this
        // process (the peer of a socketpair is ourselves).
        let ProcessSubject::Pidfd { pidfd, uid: got } = process.as_ref() else {
            panic!("no pidfd: {process:?}");
        };
        assert_eq!(*got, uid);
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
        assert!(
            fdinfo.contains(&format!("\nPid:\t{}\n", std::process::id())),
            "{fdinfo}"
        );
    }
}
