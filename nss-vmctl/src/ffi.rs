//! The exported glibc NSS entry points (`_nss_vmctl_*`).
//!
//! Signatures follow glibc's `<nss.h>` and `resolv/nss_dns/dns-host.c`, as
//! also implemented by systemd's nss-mymachines. Every export validates its
//! pointers, runs its body under [`std::panic::catch_unwind`] (a panic becomes
//! `NSS_STATUS_UNAVAIL`), and always reads [`crate::HOSTS_DIR`]; the
//! `*_at` variants taking a path exist for tests only.
//!
//! Status conventions:
//! - not a `.vm` name, no such VM, no hosts directory, damaged record: `NSS_STATUS_NOTFOUND`,
//!   `errno = ENOENT`, `h_errno = HOST_NOT_FOUND`;
//! - the VM exists but has no address of the requested family (e.g. an
//!   `AF_INET6` query for an IPv4-only VM): `NSS_STATUS_NOTFOUND`,
//!   `errno = ENOENT`, `h_errno = NO_DATA`;
//! - buffer too small: `NSS_STATUS_TRYAGAIN`, `errno = ERANGE`,
//!   `h_errno = NETDB_INTERNAL` (glibc retries with a bigger buffer);
//! - bad arguments, unreadable record, panic: `NSS_STATUS_UNAVAIL` with
//!   an errno and `h_errno = NO_RECOVERY`.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::ptr;

use libc::{hostent, socklen_t, AF_INET, AF_INET6, AF_UNSPEC};

use crate::lookup::{self, Host, Outcome};
use crate::pack::{self, GaihAddrtuple};
use crate::HOSTS_DIR;

/// glibc's `enum nss_status`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NssStatus {
    /// Temporary failure; with `ERANGE`, the buffer was too small.
    TryAgain = -2,
    /// The service cannot answer.
    Unavail = -1,
    /// No such entry.
    NotFound = 0,
    /// The result has been filled in.
    Success = 1,
    /// Stop the lookup chain (unused here).
    Return = 2,
}

/// `h_errno`: internal error, see `errno`.
pub const NETDB_INTERNAL: c_int = -1;
/// `h_errno`: no such host.
pub const HOST_NOT_FOUND: c_int = 1;
/// `h_errno`: temporary failure.
pub const TRY_AGAIN: c_int = 2;
/// `h_errno`: unrecoverable failure.
pub const NO_RECOVERY: c_int = 3;
/// `h_errno`: the name exists but has no address of the requested type.
pub const NO_DATA: c_int = 4;

/// A non-success answer: status plus the `errno` and `h_errno` to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    status: NssStatus,
    errno: c_int,
    h_errno: c_int,
}

impl Failure {
    const NOT_FOUND: Failure = Failure {
        status: NssStatus::NotFound,
        errno: libc::ENOENT,
        h_errno: HOST_NOT_FOUND,
    };
    const NO_DATA: Failure = Failure {
        status: NssStatus::NotFound,
        errno: libc::ENOENT,
        h_errno: NO_DATA,
    };
    const BUFFER_TOO_SMALL: Failure = Failure {
        status: NssStatus::TryAgain,
        errno: libc::ERANGE,
        h_errno: NETDB_INTERNAL,
    };

    fn unavailable(errno: c_int) -> Failure {
        Failure {
            status: NssStatus::Unavail,
            errno,
            h_errno: NO_RECOVERY,
        }
    }
}

fn found(outcome: Outcome) -> Result<Host, Failure> {
    match outcome {
        Outcome::Found(host) => Ok(host),
        Outcome::NotFound => Err(Failure::NOT_FOUND),
        Outcome::Unavailable(errno) => Err(Failure::unavailable(errno)),
    }
}

/// The address family and addresses a `gethostbyname3_r`-style query for
/// `af` returns. `AF_UNSPEC` means IPv4, as in other NSS modules.
fn addrs_for_family(host: &Host, af: c_int) -> Result<(c_int, Vec<IpAddr>), Failure> {
    match af {
        AF_INET | AF_UNSPEC => Ok((AF_INET, vec![host.ipv4.into()])),
        AF_INET6 => host
            .ipv6
            .map(|v6| (AF_INET6, vec![v6.into()]))
            .ok_or(Failure::NO_DATA),
        _ => Err(Failure::unavailable(libc::EAFNOSUPPORT)),
    }
}

/// Writes `errno`/`h_errno` (when the pointers are not null) and returns the
/// status.
///
/// # Safety
/// `errnop` and `h_errnop` are each null or valid for writing a `c_int`.
unsafe fn report(errnop: *mut c_int, h_errnop: *mut c_int, failure: Failure) -> NssStatus {
    if !errnop.is_null() {
        // SAFETY: non-null and valid for writes per this function's contract.
        unsafe { errnop.write(failure.errno) };
    }
    if !h_errnop.is_null() {
        // SAFETY: non-null and valid for writes per this function's contract.
        unsafe { h_errnop.write(failure.h_errno) };
    }
    failure.status
}

/// Runs an export's body, turning a panic into `NSS_STATUS_UNAVAIL` so it
/// never unwinds into C.
///
/// # Safety
/// `errnop` and `h_errnop` are each null or valid for writing a `c_int`.
unsafe fn guard(
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    body: impl FnOnce() -> Result<NssStatus, Failure>,
) -> NssStatus {
    let failure = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(failure)) => failure,
        Err(_) => Failure::unavailable(libc::EINVAL),
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { report(errnop, h_errnop, failure) }
}

/// Reads the query name; `None` (NOTFOUND) when it is not UTF-8.
///
/// # Safety
/// `name` is non-null and points to a NUL-terminated string.
unsafe fn query_name<'a>(name: *const c_char) -> Option<&'a str> {
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(name) }.to_str().ok()
}

/// Zeroes the first `len` bytes of the caller's buffer and views them as a
/// byte slice for the safe packing code.
///
/// # Safety
/// `buffer` is valid for writes of `len` bytes and nothing else accesses
/// them while the returned slice lives.
unsafe fn buffer_slice<'a>(buffer: *mut c_char, len: usize) -> &'a mut [u8] {
    let bytes = buffer.cast::<u8>();
    // SAFETY: valid for `len` writes per this function's contract; zeroing
    // initialises the memory so a `&mut [u8]` may refer to it.
    unsafe {
        ptr::write_bytes(bytes, 0, len);
        std::slice::from_raw_parts_mut(bytes, len)
    }
}

/// Packs a `hostent` for `name`/`addrs` into the caller's buffer and fills
/// `*host`; returns `h_name`.
///
/// # Safety
/// `host` is valid for writing a `hostent`; `buffer` is valid for writes of
/// `buflen` bytes.
unsafe fn fill_hostent(
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    name: &str,
    family: c_int,
    addrs: &[IpAddr],
) -> Result<*mut c_char, Failure> {
    let addr_len = if family == AF_INET6 { 16 } else { 4 };
    let layout = pack::hostent_layout(
        buffer.expose_provenance(),
        name.len(),
        addr_len,
        addrs.len(),
    );
    if layout.size > buflen {
        return Err(Failure::BUFFER_TOO_SMALL);
    }
    // SAFETY: layout.size <= buflen bytes of the caller's buffer, which is
    // ours for the duration of the call.
    let buf = unsafe { buffer_slice(buffer, layout.size) };
    pack::write_hostent(buf, &layout, name, addrs)
        .map_err(|_| Failure::unavailable(libc::EINVAL))?;
    let h_name = buffer.wrapping_add(layout.name);
    let entry = hostent {
        h_name,
        h_aliases: buffer.wrapping_add(layout.aliases).cast(),
        h_addrtype: family,
        h_length: addr_len as c_int,
        h_addr_list: buffer.wrapping_add(layout.addr_list).cast(),
    };
    // SAFETY: `host` is valid for writes per this function's contract.
    unsafe { host.write(entry) };
    Ok(h_name)
}

/// Writes a zero TTL and the canonical name pointer when asked for.
///
/// # Safety
/// `ttlp` is null or valid for writing an `i32`; `canonp` is null or valid
/// for writing a pointer.
unsafe fn fill_ttl_canon(ttlp: *mut i32, canonp: *mut *mut c_char, canon: *mut c_char) {
    if !ttlp.is_null() {
        // SAFETY: non-null and writable per this function's contract.
        unsafe { ttlp.write(0) };
    }
    if !canonp.is_null() {
        // SAFETY: non-null and writable per this function's contract.
        unsafe { canonp.write(canon) };
    }
}

/// `gethostbyname4_r` against the hosts directory `hosts`.
///
/// # Safety
/// As for [`_nss_vmctl_gethostbyname4_r`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gethostbyname4_at(
    hosts: &Path,
    name: *const c_char,
    pat: *mut *mut GaihAddrtuple,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    ttlp: *mut i32,
) -> NssStatus {
    let body = || {
        if name.is_null() || pat.is_null() || buffer.is_null() {
            return Err(Failure::unavailable(libc::EINVAL));
        }
        // SAFETY: checked non-null; glibc passes a NUL-terminated name.
        let query = unsafe { query_name(name) }.ok_or(Failure::NOT_FOUND)?;
        let host = found(lookup::resolve_name(hosts, query))?;
        let mut addrs: Vec<IpAddr> = vec![host.ipv4.into()];
        addrs.extend(host.ipv6.map(IpAddr::from));
        let layout = pack::tuple_layout(
            buffer.expose_provenance(),
            host.canonical.len(),
            addrs.len(),
        );
        if layout.size > buflen {
            return Err(Failure::BUFFER_TOO_SMALL);
        }
        // SAFETY: layout.size <= buflen bytes of the caller's buffer.
        let buf = unsafe { buffer_slice(buffer, layout.size) };
        pack::write_tuples(buf, &layout, &host.canonical, &addrs)
            .map_err(|_| Failure::unavailable(libc::EINVAL))?;
        let first = buffer.wrapping_add(layout.first).cast::<GaihAddrtuple>();
        // SAFETY: `pat` is non-null and writable (glibc contract). If `*pat`
        // is non-null it points to a caller tuple that receives a copy of
        // the first one (older glibc and nscd); `first` is aligned and was
        // fully written by write_tuples.
        unsafe {
            if (*pat).is_null() {
                pat.write(first);
            } else {
                (*pat).write(first.read());
            }
            fill_ttl_canon(ttlp, ptr::null_mut(), ptr::null_mut());
        }
        Ok(NssStatus::Success)
    };
    // SAFETY: errnop/h_errnop are null or writable (glibc contract).
    unsafe { guard(errnop, h_errnop, body) }
}

/// `gethostbyname3_r` against the hosts directory `hosts`.
///
/// # Safety
/// As for [`_nss_vmctl_gethostbyname3_r`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gethostbyname3_at(
    hosts: &Path,
    name: *const c_char,
    af: c_int,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    ttlp: *mut i32,
    canonp: *mut *mut c_char,
) -> NssStatus {
    let body = || {
        if name.is_null() || host.is_null() || buffer.is_null() {
            return Err(Failure::unavailable(libc::EINVAL));
        }
        // SAFETY: checked non-null; glibc passes a NUL-terminated name.
        let query = unsafe { query_name(name) }.ok_or(Failure::NOT_FOUND)?;
        if lookup::vm_label(query).is_none() {
            return Err(Failure::NOT_FOUND);
        }
        if ![AF_INET, AF_INET6, AF_UNSPEC].contains(&af) {
            return Err(Failure::unavailable(libc::EAFNOSUPPORT));
        }
        let vm = found(lookup::resolve_name(hosts, query))?;
        let (family, addrs) = addrs_for_family(&vm, af)?;
        // SAFETY: host and buffer checked non-null; glibc guarantees them
        // writable (buffer for buflen bytes); ttlp/canonp null or writable.
        unsafe {
            let canon = fill_hostent(host, buffer, buflen, &vm.canonical, family, &addrs)?;
            fill_ttl_canon(ttlp, canonp, canon);
        }
        Ok(NssStatus::Success)
    };
    // SAFETY: errnop/h_errnop are null or writable (glibc contract).
    unsafe { guard(errnop, h_errnop, body) }
}

/// `gethostbyaddr2_r` against the hosts directory `hosts`.
///
/// # Safety
/// As for [`_nss_vmctl_gethostbyaddr2_r`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gethostbyaddr2_at(
    hosts: &Path,
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    ttlp: *mut i32,
) -> NssStatus {
    let body = || {
        if addr.is_null() || host.is_null() || buffer.is_null() {
            return Err(Failure::unavailable(libc::EINVAL));
        }
        let want = match af {
            AF_INET => 4,
            AF_INET6 => 16,
            _ => return Err(Failure::unavailable(libc::EAFNOSUPPORT)),
        };
        if len as usize != want {
            return Err(Failure::unavailable(libc::EINVAL));
        }
        // SAFETY: checked non-null; glibc guarantees `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), want) };
        let ip: IpAddr = match <[u8; 16]>::try_from(bytes) {
            Ok(v6) => Ipv6Addr::from(v6).into(),
            Err(_) => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        };
        let vm = found(lookup::resolve_addr(hosts, ip))?;
        // SAFETY: host and buffer checked non-null; glibc guarantees them
        // writable (buffer for buflen bytes); ttlp null or writable.
        unsafe {
            fill_hostent(host, buffer, buflen, &vm.canonical, af, &[ip])?;
            fill_ttl_canon(ttlp, ptr::null_mut(), ptr::null_mut());
        }
        Ok(NssStatus::Success)
    };
    // SAFETY: errnop/h_errnop are null or writable (glibc contract).
    unsafe { guard(errnop, h_errnop, body) }
}

/// Resolves `NAME.vm` to all its addresses as a `gaih_addrtuple` chain
/// packed into `buffer` (used by `getaddrinfo`).
///
/// # Safety
/// glibc's contract: `name` is a NUL-terminated string, `pat` points to a
/// (possibly null) tuple pointer, `buffer` is writable for `buflen` bytes,
/// `errnop`/`h_errnop` are writable, `ttlp` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn _nss_vmctl_gethostbyname4_r(
    name: *const c_char,
    pat: *mut *mut GaihAddrtuple,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    ttlp: *mut i32,
) -> NssStatus {
    // SAFETY: arguments forwarded unchanged under the same contract.
    unsafe {
        gethostbyname4_at(
            Path::new(HOSTS_DIR),
            name,
            pat,
            buffer,
            buflen,
            errnop,
            h_errnop,
            ttlp,
        )
    }
}

/// Resolves `NAME.vm` for one address family into a `hostent`, with TTL and
/// canonical name.
///
/// # Safety
/// glibc's contract: `name` is a NUL-terminated string, `host` is writable,
/// `buffer` is writable for `buflen` bytes, `errnop`/`h_errnop` are
/// writable, `ttlp`/`canonp` are null or writable.
#[no_mangle]
pub unsafe extern "C" fn _nss_vmctl_gethostbyname3_r(
    name: *const c_char,
    af: c_int,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    ttlp: *mut i32,
    canonp: *mut *mut c_char,
) -> NssStatus {
    // SAFETY: arguments forwarded unchanged under the same contract.
    unsafe {
        gethostbyname3_at(
            Path::new(HOSTS_DIR),
            name,
            af,
            host,
            buffer,
            buflen,
            errnop,
            h_errnop,
            ttlp,
            canonp,
        )
    }
}

/// Resolves `NAME.vm` for one address family into a `hostent`.
///
/// # Safety
/// As for [`_nss_vmctl_gethostbyname3_r`].
#[no_mangle]
pub unsafe extern "C" fn _nss_vmctl_gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: arguments forwarded unchanged under the same contract.
    unsafe {
        gethostbyname3_at(
            Path::new(HOSTS_DIR),
            name,
            af,
            host,
            buffer,
            buflen,
            errnop,
            h_errnop,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    }
}

/// Resolves `NAME.vm` to its IPv4 address into a `hostent`.
///
/// # Safety
/// As for [`_nss_vmctl_gethostbyname3_r`].
#[no_mangle]
pub unsafe extern "C" fn _nss_vmctl_gethostbyname_r(
    name: *const c_char,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: arguments forwarded unchanged under the same contract.
    unsafe {
        gethostbyname3_at(
            Path::new(HOSTS_DIR),
            name,
            AF_INET,
            host,
            buffer,
            buflen,
            errnop,
            h_errnop,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    }
}

/// Resolves a VM address (`AF_INET`, 4 bytes, or `AF_INET6`, 16 bytes) back
/// to `NAME.vm`, with TTL.
///
/// # Safety
/// glibc's contract: `addr` is readable for `len` bytes, `host` is
/// writable, `buffer` is writable for `buflen` bytes, `errnop`/`h_errnop`
/// are writable, `ttlp` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn _nss_vmctl_gethostbyaddr2_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
    ttlp: *mut i32,
) -> NssStatus {
    // SAFETY: arguments forwarded unchanged under the same contract.
    unsafe {
        gethostbyaddr2_at(
            Path::new(HOSTS_DIR),
            addr,
            len,
            af,
            host,
            buffer,
            buflen,
            errnop,
            h_errnop,
            ttlp,
        )
    }
}

/// Resolves a VM address back to `NAME.vm`.
///
/// # Safety
/// As for [`_nss_vmctl_gethostbyaddr2_r`].
#[no_mangle]
pub unsafe extern "C" fn _nss_vmctl_gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    af: c_int,
    host: *mut hostent,
    buffer: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> NssStatus {
    // SAFETY: arguments forwarded unchanged under the same contract.
    unsafe {
        gethostbyaddr2_at(
            Path::new(HOSTS_DIR),
            addr,
            len,
            af,
            host,
            buffer,
            buflen,
            errnop,
            h_errnop,
            ptr::null_mut(),
        )
    }
}

#[cfg(test)]
mod tests {
    //! These tests call the `*_at` variants (same code as the exports, with a
    //! test hosts directory) and the exports themselves, exactly as glibc would.

    use super::*;
    use crate::test_util::TempDir;
    use std::path::PathBuf;

    const SENTINEL: u8 = 0xa5;

    fn hosts_file(tag: &str) -> (TempDir, PathBuf) {
        let dir = TempDir::new(tag);
        let path = dir.0.join("hosts");
        crate::hostdb::publish(&path, "blog", Ipv4Addr::new(10, 0, 0, 2), None).unwrap();
        let v6 = "fd00::3".parse().ok();
        crate::hostdb::publish(&path, "web", Ipv4Addr::new(10, 0, 0, 3), v6).unwrap();
        (dir, path)
    }

    fn zeroed_hostent() -> hostent {
        hostent {
            h_name: ptr::null_mut(),
            h_aliases: ptr::null_mut(),
            h_addrtype: 0,
            h_length: 0,
            h_addr_list: ptr::null_mut(),
        }
    }

    /// A decoded `hostent`.
    #[derive(Debug, PartialEq, Eq)]
    struct Decoded {
        name: String,
        aliases: usize,
        family: c_int,
        len: c_int,
        addrs: Vec<Vec<u8>>,
    }

    /// Reads a `hostent` filled by the module, checking every pointer lies
    /// inside `buf`.
    fn decode(host: &hostent, buf: &[u8]) -> Decoded {
        let range = buf.as_ptr_range();
        let inside = |p: *const u8| range.contains(&p);
        assert!(inside(host.h_name.cast()));
        assert!(inside(host.h_aliases.cast()));
        assert!(inside(host.h_addr_list.cast()));
        assert_eq!(host.h_aliases as usize % align_of::<*mut c_char>(), 0);
        assert_eq!(host.h_addr_list as usize % align_of::<*mut c_char>(), 0);
        // SAFETY: all pointers were checked to lie in `buf`, which the module
        // filled with a NUL-terminated name and null-terminated arrays.
        unsafe {
            let name = CStr::from_ptr(host.h_name).to_str().unwrap().to_owned();
            let mut aliases = 0;
            while !(*host.h_aliases.add(aliases)).is_null() {
                aliases += 1;
            }
            let mut addrs = Vec::new();
            let mut i = 0;
            loop {
                let p = *host.h_addr_list.add(i);
                if p.is_null() {
                    break;
                }
                assert!(inside(p.cast()));
                let len = host.h_length as usize;
                addrs.push(std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec());
                i += 1;
            }
            Decoded {
                name,
                aliases,
                family: host.h_addrtype,
                len: host.h_length,
                addrs,
            }
        }
    }

    struct Result3 {
        status: NssStatus,
        errno: c_int,
        h_errno: c_int,
        decoded: Option<Decoded>,
        canon_is_name: bool,
    }

    /// Calls `gethostbyname3_at` with a buffer of `buflen` bytes starting one
    /// byte past an aligned address, and checks nothing past it is written.
    fn byname3(path: &Path, name: &str, af: c_int, buflen: usize) -> Result3 {
        let name = std::ffi::CString::new(name).unwrap();
        let mut storage = vec![SENTINEL; buflen + 64];
        let mut host = zeroed_hostent();
        let (mut errno, mut h_errno, mut ttl) = (0, 0, -1);
        let mut canon: *mut c_char = ptr::null_mut();
        let buffer = storage[1..].as_mut_ptr().cast::<c_char>();
        // SAFETY: every pointer refers to a live local of the right type;
        // the buffer has buflen + 63 bytes available after `buffer`.
        let status = unsafe {
            gethostbyname3_at(
                path,
                name.as_ptr(),
                af,
                &mut host,
                buffer,
                buflen,
                &mut errno,
                &mut h_errno,
                &mut ttl,
                &mut canon,
            )
        };
        assert!(storage[1 + buflen..].iter().all(|&b| b == SENTINEL));
        let decoded = (status == NssStatus::Success).then(|| {
            assert_eq!(ttl, 0);
            decode(&host, &storage[1..1 + buflen])
        });
        Result3 {
            status,
            errno,
            h_errno,
            decoded,
            canon_is_name: !canon.is_null() && canon == host.h_name,
        }
    }

    #[test]
    fn non_vm_names_through_the_exports() {
        for name in [c"example.com", c"blog.vmx", c"vm", c".vm", c"a.b.vm"] {
            let mut host = zeroed_hostent();
            let mut buf = [0u8; 256];
            let (mut errno, mut h_errno) = (0, 0);
            // SAFETY: valid name, hostent, buffer and out-pointers.
            let status = unsafe {
                _nss_vmctl_gethostbyname2_r(
                    name.as_ptr(),
                    AF_INET,
                    &mut host,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut errno,
                    &mut h_errno,
                )
            };
            assert_eq!(status, NssStatus::NotFound, "{name:?}");
            assert_eq!((errno, h_errno), (libc::ENOENT, HOST_NOT_FOUND));
            let mut pat: *mut GaihAddrtuple = ptr::null_mut();
            // SAFETY: valid name, tuple pointer, buffer and out-pointers.
            let status = unsafe {
                _nss_vmctl_gethostbyname4_r(
                    name.as_ptr(),
                    &mut pat,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut errno,
                    &mut h_errno,
                    ptr::null_mut(),
                )
            };
            assert_eq!(status, NssStatus::NotFound);
            assert!(pat.is_null());
        }
    }

    #[test]
    fn missing_hosts_directory_is_not_found() {
        let dir = TempDir::new("ffi-missing");
        let r = byname3(&dir.0.join("hosts"), "blog.vm", AF_INET, 256);
        assert_eq!(r.status, NssStatus::NotFound);
        assert_eq!((r.errno, r.h_errno), (libc::ENOENT, HOST_NOT_FOUND));
    }

    #[test]
    fn small_buffer_asks_for_retry_then_big_buffer_succeeds() {
        let (_dir, path) = hosts_file("ffi-erange");
        let mut sizes = 0..256;
        let needed = sizes
            .find(|&len| byname3(&path, "BLOG.VM.", AF_INET, len).status == NssStatus::Success)
            .unwrap();
        assert!(needed > "blog.vm".len());
        for len in [0, 1, 8, needed - 1] {
            let r = byname3(&path, "BLOG.VM.", AF_INET, len);
            assert_eq!(r.status, NssStatus::TryAgain, "{len}");
            assert_eq!((r.errno, r.h_errno), (libc::ERANGE, NETDB_INTERNAL));
        }
        let r = byname3(&path, "BLOG.VM.", AF_INET, needed);
        assert!(r.canon_is_name);
        assert_eq!(
            r.decoded.unwrap(),
            Decoded {
                name: "blog.vm".into(),
                aliases: 0,
                family: AF_INET,
                len: 4,
                addrs: vec![vec![10, 0, 0, 2]],
            }
        );
    }

    #[test]
    fn ipv6_queries() {
        let (_dir, path) = hosts_file("ffi-v6");
        let r = byname3(&path, "blog.vm", AF_INET6, 1024);
        assert_eq!(r.status, NssStatus::NotFound);
        assert_eq!((r.errno, r.h_errno), (libc::ENOENT, NO_DATA));
        let r = byname3(&path, "web.vm", AF_INET6, 1024);
        assert_eq!(r.status, NssStatus::Success);
        let decoded = r.decoded.unwrap();
        assert_eq!((decoded.family, decoded.len), (AF_INET6, 16));
        let v6: Ipv6Addr = "fd00::3".parse().unwrap();
        assert_eq!(decoded.addrs, vec![v6.octets().to_vec()]);
        let r = byname3(&path, "web.vm", AF_UNSPEC, 1024);
        assert_eq!(r.decoded.unwrap().addrs, vec![vec![10, 0, 0, 3]]);
    }

    #[test]
    fn bad_family_and_null_pointers_are_unavailable() {
        let (_dir, path) = hosts_file("ffi-bad");
        let r = byname3(&path, "blog.vm", libc::AF_UNIX, 1024);
        assert_eq!(r.status, NssStatus::Unavail);
        assert_eq!((r.errno, r.h_errno), (libc::EAFNOSUPPORT, NO_RECOVERY));

        let (mut errno, mut h_errno) = (0, 0);
        let mut buf = [0u8; 64];
        // SAFETY: null name is the point of the test; the rest are valid.
        let status = unsafe {
            gethostbyname3_at(
                &path,
                ptr::null(),
                AF_INET,
                &mut zeroed_hostent(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut errno,
                &mut h_errno,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        assert_eq!(status, NssStatus::Unavail);
        assert_eq!((errno, h_errno), (libc::EINVAL, NO_RECOVERY));
        // SAFETY: null hostent and null errno pointers must be tolerated.
        let status = unsafe {
            gethostbyname3_at(
                &path,
                c"blog.vm".as_ptr(),
                AF_INET,
                ptr::null_mut(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        assert_eq!(status, NssStatus::Unavail);
    }

    /// One decoded `gaih_addrtuple`: name, family, address bytes.
    type Tuple = (String, c_int, Vec<u8>);

    /// Calls `gethostbyname4_at`; returns status, errno, h_errno and the
    /// chain as (name, family, address bytes).
    fn byname4(
        path: &Path,
        name: &CStr,
        buflen: usize,
        caller_tuple: bool,
    ) -> (NssStatus, c_int, c_int, Vec<Tuple>) {
        let mut storage = vec![SENTINEL; buflen + 64];
        let buffer = storage[3..].as_mut_ptr().cast::<c_char>();
        let mut own = GaihAddrtuple {
            next: ptr::null_mut(),
            name: ptr::null_mut(),
            family: 0,
            addr: [0; 4],
            scopeid: 0,
        };
        let mut pat: *mut GaihAddrtuple = if caller_tuple {
            &mut own
        } else {
            ptr::null_mut()
        };
        let (mut errno, mut h_errno, mut ttl) = (0, 0, -1);
        // SAFETY: valid locals; the buffer has buflen + 61 bytes after it.
        let status = unsafe {
            gethostbyname4_at(
                path,
                name.as_ptr(),
                &mut pat,
                buffer,
                buflen,
                &mut errno,
                &mut h_errno,
                &mut ttl,
            )
        };
        assert!(storage[3 + buflen..].iter().all(|&b| b == SENTINEL));
        let mut chain = Vec::new();
        if status == NssStatus::Success {
            assert_eq!(ttl, 0);
            if caller_tuple {
                assert_eq!(pat, &mut own as *mut GaihAddrtuple);
            }
            let mut at = pat;
            while !at.is_null() {
                assert_eq!(at as usize % align_of::<GaihAddrtuple>(), 0);
                // SAFETY: `at` is the caller tuple or lies in the buffer the
                // module filled; names are NUL-terminated in the buffer.
                unsafe {
                    let tuple = at.read();
                    let len = if tuple.family == AF_INET { 4 } else { 16 };
                    let bytes = std::slice::from_raw_parts(tuple.addr.as_ptr().cast::<u8>(), len);
                    let name = CStr::from_ptr(tuple.name).to_str().unwrap().to_owned();
                    chain.push((name, tuple.family, bytes.to_vec()));
                    at = tuple.next;
                }
            }
        }
        (status, errno, h_errno, chain)
    }

    #[test]
    fn gethostbyname4_chain() {
        let (_dir, path) = hosts_file("ffi-4");
        let (status, errno, h_errno, _) = byname4(&path, c"web.vm", 16, false);
        assert_eq!(status, NssStatus::TryAgain);
        assert_eq!((errno, h_errno), (libc::ERANGE, NETDB_INTERNAL));
        let v6: Ipv6Addr = "fd00::3".parse().unwrap();
        let expected = vec![
            ("web.vm".to_owned(), AF_INET, vec![10, 0, 0, 3]),
            ("web.vm".to_owned(), AF_INET6, v6.octets().to_vec()),
        ];
        for caller_tuple in [false, true] {
            let (status, _, _, chain) = byname4(&path, c"Web.vm.", 1024, caller_tuple);
            assert_eq!(status, NssStatus::Success);
            assert_eq!(chain, expected);
        }
        let (status, _, _, chain) = byname4(&path, c"blog.vm", 1024, false);
        assert_eq!(status, NssStatus::Success);
        assert_eq!(
            chain,
            vec![("blog.vm".to_owned(), AF_INET, vec![10, 0, 0, 2])]
        );
        let (status, errno, h_errno, _) = byname4(&path, c"nope.vm", 1024, false);
        assert_eq!(status, NssStatus::NotFound);
        assert_eq!((errno, h_errno), (libc::ENOENT, HOST_NOT_FOUND));
    }

    fn byaddr(
        path: &Path,
        addr: &[u8],
        af: c_int,
        buflen: usize,
    ) -> (NssStatus, c_int, Option<Decoded>) {
        let mut storage = vec![SENTINEL; buflen + 64];
        let mut host = zeroed_hostent();
        let (mut errno, mut h_errno) = (0, 0);
        // SAFETY: valid locals; `addr` is readable for its length.
        let status = unsafe {
            gethostbyaddr2_at(
                path,
                addr.as_ptr().cast(),
                addr.len() as socklen_t,
                af,
                &mut host,
                storage.as_mut_ptr().cast(),
                buflen,
                &mut errno,
                &mut h_errno,
                ptr::null_mut(),
            )
        };
        assert!(storage[buflen..].iter().all(|&b| b == SENTINEL));
        let decoded = (status == NssStatus::Success).then(|| decode(&host, &storage[..buflen]));
        (status, errno, decoded)
    }

    #[test]
    fn reverse_lookups() {
        let (_dir, path) = hosts_file("ffi-addr");
        let (status, _, decoded) = byaddr(&path, &[10, 0, 0, 3], AF_INET, 1024);
        assert_eq!(status, NssStatus::Success);
        let decoded = decoded.unwrap();
        assert_eq!(decoded.name, "web.vm");
        assert_eq!(decoded.addrs, vec![vec![10, 0, 0, 3]]);

        let v6 = "fd00::3".parse::<Ipv6Addr>().unwrap().octets();
        let (status, _, decoded) = byaddr(&path, &v6, AF_INET6, 1024);
        assert_eq!(status, NssStatus::Success);
        assert_eq!(decoded.unwrap().family, AF_INET6);

        let (status, errno, _) = byaddr(&path, &[10, 0, 0, 3], AF_INET, 10);
        assert_eq!((status, errno), (NssStatus::TryAgain, libc::ERANGE));
        let (status, errno, _) = byaddr(&path, &[10, 0, 0, 9], AF_INET, 1024);
        assert_eq!((status, errno), (NssStatus::NotFound, libc::ENOENT));
        let (status, errno, _) = byaddr(&path, &[10, 0, 0], AF_INET, 1024);
        assert_eq!((status, errno), (NssStatus::Unavail, libc::EINVAL));
        let (status, errno, _) = byaddr(&path, &[10, 0, 0, 3], libc::AF_UNIX, 1024);
        assert_eq!((status, errno), (NssStatus::Unavail, libc::EAFNOSUPPORT));
    }

    #[test]
    fn exported_reverse_lookup_of_a_non_vm_address() {
        let mut host = zeroed_hostent();
        let mut buf = [0u8; 256];
        let (mut errno, mut h_errno) = (0, 0);
        let addr = [192u8, 0, 2, 1]; // TEST-NET-1, never a VM
                                     // SAFETY: valid address bytes, hostent, buffer and out-pointers.
        let status = unsafe {
            _nss_vmctl_gethostbyaddr_r(
                addr.as_ptr().cast(),
                4,
                AF_INET,
                &mut host,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut errno,
                &mut h_errno,
            )
        };
        assert_eq!(status, NssStatus::NotFound);
    }

    #[test]
    fn panics_become_unavailable() {
        let (mut errno, mut h_errno) = (0, 0);
        // SAFETY: errno pointers are valid locals.
        let status = unsafe { guard(&mut errno, &mut h_errno, || panic!("boom")) };
        assert_eq!(status, NssStatus::Unavail);
        assert_eq!((errno, h_errno), (libc::EINVAL, NO_RECOVERY));
    }
}
