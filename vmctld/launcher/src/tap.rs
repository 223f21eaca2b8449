//! The VM's TAP device: made with the TUN ioctl, attached to the bridge and
//! brought up over rtnetlink.
//!
//! A non-persistent TAP exists exactly as long as some process holds its
//! `/dev/net/tun` descriptor: the launcher and QEMU (which inherits it), so
//! the kernel deletes it after a stop, a crash or `kill -9` alike.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TAP device held open by this process.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    ifindex: u32,
}

impl Tap {
    /// Creates TAP `name` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, as QEMU
    /// wants). `persistent` keeps it after the descriptor closes (for a VMM
    /// that opens it by name); then [`delete_link`] removes it.
    pub fn create(name: &str, persistent: bool) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
        // is (40 bytes, name then flags) and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create TAP {name}: {e}"),
            ));
        }
        // Also when not asked for: TUNSETIFF re-attaches to a persistent TAP
        // of that name left behind, which must then die with us.
        let persist = libc::c_ulong::from(persistent);
        // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETPERSIST, persist) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let ifindex = ifindex(name)?;
        Ok(Tap {
            file,
            name: name.to_owned(),
            ifindex,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Lets user `uid` attach to the TAP by name without `CAP_NET_ADMIN`
    /// (cloud-hypervisor running as the VMM identity opens it itself).
    pub fn set_owner(&self, uid: u32) -> io::Result<()> {
        // SAFETY: TUNSETOWNER takes an integer argument, no memory.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOWNER, libc::c_ulong::from(uid)) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The `/dev/net/tun` descriptor (for the VMM to inherit).
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// The index of interface `name`; `NotFound` when there is none.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface {name}"),
        )),
        i => Ok(i),
    }
}

/// The hardware (MAC) address of interface `name`, as `aa:bb:cc:dd:ee:ff`.
pub fn hardware_address(name: &str) -> io::Result<String> {
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    #[repr(C)]
    struct IfReqHw {
        name: [libc::c_char; libc::IFNAMSIZ],
        family: libc::c_ushort,
        data: [u8; 14],
        _pad: [u8; 8],
    }
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut req = IfReqHw {
        name: [0; libc::IFNAMSIZ],
        family: 0,
        data: [0; 14],
        _pad: [0; 8],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads the name and writes a sockaddr into one
    // `struct ifreq` (40 bytes), which `req` is and outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mac: Vec<String> = req.data[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(mac.join(":"))
}

const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const IFLA_MASTER: u16 = 10;
const IFLA_GROUP: u16 = 27;

/// Attaches interface `ifindex` to bridge `master`, puts it in device group
/// `group` and sets it up, in one rtnetlink request.
pub fn attach(ifindex: u32, master: u32, group: u32) -> io::Result<()> {
    let mut msg = link_message(RTM_SETLINK, ifindex, libc::IFF_UP as u32);
    push_attr(&mut msg, IFLA_MASTER, &master.to_ne_bytes());
    push_attr(&mut msg, IFLA_GROUP, &group.to_ne_bytes());
    request(msg)
}

/// Deletes interface `ifindex` (a persistent TAP left by cloud-hypervisor).
pub fn delete_link(ifindex: u32) -> io::Result<()> {
    request(link_message(RTM_DELLINK, ifindex, 0))
}

/// `nlmsghdr` + `ifinfomsg` for `kind` on `ifindex`, changing `IFF_UP` to `flags`.
fn link_message(kind: u16, ifindex: u32, flags: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `request`
    m.extend_from_slice(&kind.to_ne_bytes());
    let nl_flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    m.extend_from_slice(&nl_flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it
    m.push(libc::AF_UNSPEC as u8);
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes()); // device type
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    let change = if kind == RTM_SETLINK {
        libc::IFF_UP as u32
    } else {
        0
    };
    m.extend_from_slice(&change.to_ne_bytes());
    m
}

fn push_attr(m: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    m.extend_from_slice(&(len as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize(m.len().next_multiple_of(4), 0);
}

/// Sends `msg` to the kernel's rtnetlink and returns its acknowledgement.
fn request(mut msg: Vec<u8>) -> io::Result<()> {
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `msg` is valid for `msg.len()` bytes; an unbound netlink
    // socket sends to the kernel.
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &buf[..n as usize];
    // nlmsghdr (16 bytes) of type NLMSG_ERROR, then the errno (0 = ack).
    if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other("unexpected rtnetlink answer"));
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `ip -d -j link show dev NAME` in this thread's network namespace.
    fn show(name: &str) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["-d", "-j", "link", "show", "dev", name])
            .output()
            .expect("ip (iproute2) runs");
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone())
    }

    /// Runs `f` on a thread in a new network namespace of its own; skips
    /// (loudly) where that is not allowed.
    fn in_private_netns(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's
            // network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "SKIPPED: cannot make a network namespace ({}); run as root",
                    io::Error::last_os_error()
                );
                return;
            }
            if !std::path::Path::new("/dev/net/tun").exists() {
                eprintln!("SKIPPED: no /dev/net/tun");
                return;
            }
            f();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn tap_lives_with_its_descriptor_attached_up_and_grouped() {
        in_private_netns(|| {
            let ok = Command::new("ip")
                .args(["link", "add", "vmbr0", "type", "bridge"])
                .status()
                .unwrap();
            assert!(ok.success());
            let bridge = ifindex("vmbr0").unwrap();
            let tap = Tap::create("vmt-3", false).unwrap();
            assert_eq!(tap.name(), "vmt-3");
            assert_eq!(tap.ifindex(), ifindex("vmt-3").unwrap());
            let link = show("vmt-3").unwrap();
            assert_eq!(link["address"], hardware_address("vmt-3").unwrap());
            attach(tap.ifindex(), bridge, 1001).unwrap();
            let link = show("vmt-3").expect("TAP exists while held");
            assert_eq!(link["master"], "vmbr0", "{link}");
            assert_eq!(link["group"], "1001", "{link}");
            assert!(
                link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
                "{link}"
            );
            let info = &link["linkinfo"]["info_data"];
            assert_eq!(info["type"], "tap", "{link}");
            assert_eq!(info["pi"], false, "{link}");
            assert_eq!(info["vnet_hdr"], true, "{link}");
            assert_eq!(info["persist"], false, "{link}");
            // The same name twice: the second holder is refused.
            assert!(Tap::create("vmt-3", false).is_err());
            drop(tap);
            assert!(show("vmt-3").is_none(), "TAP left after its fd closed");
            // A missing bridge is an error, not a silent no-op.
            let tap = Tap::create("vmt-4", false).unwrap();
            assert!(attach(tap.ifindex(), 999_999, 1).is_err());
        });
    }

    #[test]
    fn persistent_tap_stays_until_deleted() {
        in_private_netns(|| {
            let tap = Tap::create("vmt-5", true).unwrap();
            let index = tap.ifindex();
            drop(tap);
            let link = show("vmt-5").expect("persistent TAP stays");
            assert_eq!(link["linkinfo"]["info_data"]["persist"], true, "{link}");
            // Taken over by a non-persistent holder, it dies with it.
            let again = Tap::create("vmt-5", false).unwrap();
            assert_eq!(again.ifindex(), index, "the same device");
            let link = show("vmt-5").unwrap();
            assert_eq!(link["linkinfo"]["info_data"]["persist"], false, "{link}");
            drop(again);
            assert!(show("vmt-5").is_none());
            let tap = Tap::create("vmt-5", true).unwrap();
            let index = tap.ifindex();
            drop(tap);
            delete_link(index).unwrap();
            assert!(show("vmt-5").is_none());
            assert!(ifindex("vmt-5").is_err());
        });
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "sixteen-chars-xx", "a/b"] {
            assert_eq!(
                Tap::create(name, false).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{name:?}"
            );
        }
    }
}
