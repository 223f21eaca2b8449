//! Laying out glibc result structures inside a caller-supplied buffer.
//!
//! glibc's reentrant NSS calls hand the module a `char *buffer` of `buflen`
//! bytes with no particular alignment; every string, array and tuple the
//! result points to must live inside it. This module computes the layout for
//! a given buffer address (so alignment is right for that address) and writes
//! the bytes, including pointer values, with safe code. [`crate::ffi`] only
//! checks the size, hands over the buffer as a slice and fills the caller's
//! `struct hostent` or `gaih_addrtuple **`.

#![forbid(unsafe_code)]

use std::mem::{align_of, offset_of, size_of};
use std::net::IpAddr;
use std::os::raw::{c_char, c_int};

const PTR_SIZE: usize = size_of::<*mut c_char>();
const PTR_ALIGN: usize = align_of::<*mut c_char>();

/// glibc's `struct gaih_addrtuple` (`<nss.h>`), used by `gethostbyname4_r`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GaihAddrtuple {
    /// Next tuple of the chain, or null.
    pub next: *mut GaihAddrtuple,
    /// Canonical name (may be null on all but the first tuple).
    pub name: *mut c_char,
    /// `AF_INET` or `AF_INET6`.
    pub family: c_int,
    /// The address in network byte order (IPv4 uses the first 4 bytes).
    pub addr: [u32; 4],
    /// IPv6 scope id, 0 here.
    pub scopeid: u32,
}

/// The buffer did not match the layout it was computed for (wrong address
/// or too short), or an address did not match the layout's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutMismatch;

/// Offset from `off` to the next offset whose absolute address is aligned.
fn align_up(base: usize, off: usize, align: usize) -> usize {
    let addr = base.wrapping_add(off);
    off + (align - addr % align) % align
}

fn write_ptr(buf: &mut [u8], at: usize, value: usize) {
    buf[at..at + PTR_SIZE].copy_from_slice(&value.to_ne_bytes());
}

fn write_name(buf: &mut [u8], name: &str) {
    buf[..name.len()].copy_from_slice(name.as_bytes());
    buf[name.len()] = 0;
}

fn octets(addr: &IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// Where each part of a packed `struct hostent` lives, as byte offsets from
/// the start of the buffer at address `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostentLayout {
    /// Buffer address the layout was computed for.
    pub base: usize,
    /// `h_name`: the NUL-terminated canonical name.
    pub name: usize,
    /// `h_aliases`: a pointer array holding only the terminating null.
    pub aliases: usize,
    /// `h_addr_list`: `naddrs` pointers plus a terminating null.
    pub addr_list: usize,
    /// The addresses themselves, `addr_len` bytes each.
    pub addrs: usize,
    /// Bytes per address (`h_length`): 4 or 16.
    pub addr_len: usize,
    /// Number of addresses.
    pub naddrs: usize,
    /// Total bytes needed from the start of the buffer.
    pub size: usize,
}

/// Computes the layout of a `hostent` result for a buffer at address `base`.
pub fn hostent_layout(
    base: usize,
    name_len: usize,
    addr_len: usize,
    naddrs: usize,
) -> HostentLayout {
    let name = 0;
    let aliases = align_up(base, name_len + 1, PTR_ALIGN);
    let addr_list = aliases + PTR_SIZE;
    let addrs = addr_list + (naddrs + 1) * PTR_SIZE;
    HostentLayout {
        base,
        name,
        aliases,
        addr_list,
        addrs,
        addr_len,
        naddrs,
        size: addrs + naddrs * addr_len,
    }
}

/// Writes name, empty alias list, address list and addresses into `buf`,
/// which must start at `layout.base`, be at least `layout.size` bytes long
/// and be zeroed. All addresses must have `layout.addr_len` bytes.
pub fn write_hostent(
    buf: &mut [u8],
    layout: &HostentLayout,
    name: &str,
    addrs: &[IpAddr],
) -> Result<(), LayoutMismatch> {
    let base = buf.as_mut_ptr().expose_provenance();
    if base != layout.base
        || buf.len() < layout.size
        || addrs.len() != layout.naddrs
        || layout.aliases < name.len() + 1
    {
        return Err(LayoutMismatch);
    }
    write_name(buf, name);
    write_ptr(buf, layout.aliases, 0);
    for (i, addr) in addrs.iter().enumerate() {
        let (bytes, len) = octets(addr);
        if len != layout.addr_len {
            return Err(LayoutMismatch);
        }
        let at = layout.addrs + i * len;
        buf[at..at + len].copy_from_slice(&bytes[..len]);
        write_ptr(buf, layout.addr_list + i * PTR_SIZE, base + at);
    }
    write_ptr(buf, layout.addr_list + addrs.len() * PTR_SIZE, 0);
    Ok(())
}

/// Where each part of a packed `gaih_addrtuple` chain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TupleLayout {
    /// Buffer address the layout was computed for.
    pub base: usize,
    /// The NUL-terminated canonical name.
    pub name: usize,
    /// The first tuple; the others follow contiguously.
    pub first: usize,
    /// Number of tuples.
    pub count: usize,
    /// Total bytes needed from the start of the buffer.
    pub size: usize,
}

/// Computes the layout of a `gaih_addrtuple` chain for a buffer at `base`.
pub fn tuple_layout(base: usize, name_len: usize, count: usize) -> TupleLayout {
    let first = align_up(base, name_len + 1, align_of::<GaihAddrtuple>());
    TupleLayout {
        base,
        name: 0,
        first,
        count,
        size: first + count * size_of::<GaihAddrtuple>(),
    }
}

/// Writes the name and a chain of one tuple per address into `buf`, which
/// must start at `layout.base`, be at least `layout.size` bytes long and be
/// zeroed. Every tuple carries the canonical name.
pub fn write_tuples(
    buf: &mut [u8],
    layout: &TupleLayout,
    name: &str,
    addrs: &[IpAddr],
) -> Result<(), LayoutMismatch> {
    let base = buf.as_mut_ptr().expose_provenance();
    if base != layout.base
        || buf.len() < layout.size
        || addrs.len() != layout.count
        || layout.first < name.len() + 1
    {
        return Err(LayoutMismatch);
    }
    write_name(buf, name);
    let size = size_of::<GaihAddrtuple>();
    for (i, addr) in addrs.iter().enumerate() {
        let at = layout.first + i * size;
        let next = if i + 1 < addrs.len() {
            base + at + size
        } else {
            0
        };
        let family = match addr {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        };
        let (bytes, _) = octets(addr);
        write_ptr(buf, at + offset_of!(GaihAddrtuple, next), next);
        write_ptr(
            buf,
            at + offset_of!(GaihAddrtuple, name),
            base + layout.name,
        );
        let family_at = at + offset_of!(GaihAddrtuple, family);
        buf[family_at..family_at + size_of::<c_int>()].copy_from_slice(&family.to_ne_bytes());
        let addr_at = at + offset_of!(GaihAddrtuple, addr);
        buf[addr_at..addr_at + 16].copy_from_slice(&bytes);
        let scope_at = at + offset_of!(GaihAddrtuple, scopeid);
        buf[scope_at..scope_at + 4].copy_from_slice(&0u32.to_ne_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn read_ptr(buf: &[u8], at: usize) -> usize {
        usize::from_ne_bytes(buf[at..at + PTR_SIZE].try_into().unwrap())
    }

    #[test]
    fn hostent_layout_is_aligned_for_every_base() {
        for base in 0x1000..0x1010usize {
            let layout = hostent_layout(base, "blog.vm".len(), 4, 1);
            assert_eq!((base + layout.aliases) % PTR_ALIGN, 0);
            assert_eq!((base + layout.addr_list) % PTR_ALIGN, 0);
            assert_eq!((base + layout.addrs) % 4, 0);
            assert!(layout.aliases > "blog.vm".len());
            assert_eq!(layout.size, layout.addrs + 4);
        }
    }

    #[test]
    fn tuple_layout_is_aligned_for_every_base() {
        for base in 0x1000..0x1010usize {
            let layout = tuple_layout(base, 7, 2);
            assert_eq!((base + layout.first) % align_of::<GaihAddrtuple>(), 0);
            assert_eq!(layout.size, layout.first + 2 * size_of::<GaihAddrtuple>());
        }
    }

    #[test]
    fn writes_hostent() {
        for misalign in 0..8 {
            let mut storage = vec![0u8; 256];
            let buf = &mut storage[misalign..];
            let base = buf.as_ptr() as usize;
            let addr: IpAddr = Ipv4Addr::new(10, 0, 0, 2).into();
            let layout = hostent_layout(base, 7, 4, 1);
            write_hostent(buf, &layout, "blog.vm", &[addr]).unwrap();
            assert_eq!(&buf[..8], b"blog.vm\0");
            assert_eq!(read_ptr(buf, layout.aliases), 0);
            assert_eq!(read_ptr(buf, layout.addr_list), base + layout.addrs);
            assert_eq!(read_ptr(buf, layout.addr_list + PTR_SIZE), 0);
            assert_eq!(&buf[layout.addrs..layout.addrs + 4], &[10, 0, 0, 2]);
        }
    }

    #[test]
    fn write_rejects_mismatch() {
        let mut storage = vec![0u8; 256];
        let base = storage.as_ptr() as usize;
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        let layout = hostent_layout(base, 7, 4, 1);
        assert_eq!(
            write_hostent(&mut storage, &layout, "blog.vm", &[v6]),
            Err(LayoutMismatch)
        );
        let other = hostent_layout(base + 1, 7, 4, 1);
        assert_eq!(
            write_hostent(&mut storage, &other, "blog.vm", &[v6]),
            Err(LayoutMismatch)
        );
        let short = &mut storage[..layout.size - 1];
        assert_eq!(
            write_hostent(short, &layout, "blog.vm", &[Ipv4Addr::LOCALHOST.into()]),
            Err(LayoutMismatch)
        );
    }

    #[test]
    fn writes_tuple_chain() {
        for misalign in 0..8 {
            let mut storage = vec![0u8; 256];
            let buf = &mut storage[misalign..];
            let base = buf.as_ptr() as usize;
            let v4: IpAddr = Ipv4Addr::new(10, 0, 0, 3).into();
            let v6: IpAddr = "fd00::3".parse::<Ipv6Addr>().unwrap().into();
            let layout = tuple_layout(base, 6, 2);
            write_tuples(buf, &layout, "web.vm", &[v4, v6]).unwrap();
            assert_eq!(&buf[..7], b"web.vm\0");
            let size = size_of::<GaihAddrtuple>();
            let first = layout.first;
            let second = first + size;
            assert_eq!(read_ptr(buf, first), base + second);
            assert_eq!(read_ptr(buf, second), 0);
            for (at, family, octets) in [
                (first, libc::AF_INET, &[10u8, 0, 0, 3][..]),
                (
                    second,
                    libc::AF_INET6,
                    &"fd00::3".parse::<Ipv6Addr>().unwrap().octets()[..],
                ),
            ] {
                assert_eq!(read_ptr(buf, at + offset_of!(GaihAddrtuple, name)), base);
                let f = at + offset_of!(GaihAddrtuple, family);
                assert_eq!(
                    c_int::from_ne_bytes(buf[f..f + 4].try_into().unwrap()),
                    family
                );
                let a = at + offset_of!(GaihAddrtuple, addr);
                assert_eq!(&buf[a..a + octets.len()], octets);
            }
        }
    }
}
