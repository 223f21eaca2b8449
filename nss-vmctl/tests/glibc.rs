//! Loads the built `libnss_vmctl.so` the way glibc does and calls its
//! exports through C symbols, checking the exported names and ABI.
//!
//! 1. `dlopen` + `dlsym` of every `_nss_vmctl_*` symbol, called with a name
//!    that is not `.vm` and one that is.
//! 2. glibc itself loading the module by its soname: a child process (this
//!    test binary again) gets `LD_LIBRARY_PATH` pointing at a directory with
//!    `libnss_vmctl.so.2`, switches the `hosts` database to `vmctl` with
//!    `__nss_configure_lookup`, resolves a name and checks glibc loaded the
//!    module.
//! 3. Real `getent` through `nsswitch.conf` and `/run/vmctl/hosts`, both
//!    replaced inside a private mount namespace (`unshare --mount`, needs
//!    root; skipped with a notice otherwise). The host's files are never
//!    touched. The end-to-end suite repeats this in the systemd dev host.
//!
//! Tests 1 and 2 read the real `/run/vmctl/hosts` (if any) but only ask for
//! `.vm` names that do not exist.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

const HOST_NOT_FOUND: c_int = 1;
const NSS_STATUS_NOTFOUND: c_int = 0;
const CHILD_ENV: &str = "NSS_VMCTL_TEST_CHILD";

type ByName2 = unsafe extern "C" fn(
    *const c_char,
    c_int,
    *mut libc::hostent,
    *mut c_char,
    usize,
    *mut c_int,
    *mut c_int,
) -> c_int;

type ByName4 = unsafe extern "C" fn(
    *const c_char,
    *mut *mut c_void,
    *mut c_char,
    usize,
    *mut c_int,
    *mut c_int,
    *mut i32,
) -> c_int;

extern "C" {
    /// glibc: replace the service list of an NSS database in this process.
    fn __nss_configure_lookup(db: *const c_char, service_line: *const c_char) -> c_int;
}

/// The cdylib built alongside this test: `NSS_VMCTL_SO` if set, else next to
/// the test binary (`target/<profile>/deps/`) or one level up.
fn cdylib_path() -> PathBuf {
    if let Some(path) = std::env::var_os("NSS_VMCTL_SO") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary directory");
    let candidates = [
        deps.join("libnss_vmctl.so"),
        deps.parent()
            .map(|d| d.join("libnss_vmctl.so"))
            .unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("libnss_vmctl.so not found in {candidates:?}; set NSS_VMCTL_SO"))
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by libdl.
    let err = unsafe { libc::dlerror() };
    if err.is_null() {
        String::new()
    } else {
        // SAFETY: non-null string from dlerror.
        unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned()
    }
}

#[test]
fn exports_resolve_through_dlopen() {
    let path = cdylib_path();
    // SAFETY: loading our own library, whose initialisers are Rust's only.
    let handle = unsafe { libc::dlopen(c_path(&path).as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(
        !handle.is_null(),
        "dlopen {}: {}",
        path.display(),
        dlerror_text()
    );

    let sym = |name: &CStr| {
        // SAFETY: handle is a live dlopen handle; name is a C string.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        assert!(!p.is_null(), "missing symbol {name:?}");
        p
    };
    for name in [
        c"_nss_vmctl_gethostbyname4_r",
        c"_nss_vmctl_gethostbyname3_r",
        c"_nss_vmctl_gethostbyname2_r",
        c"_nss_vmctl_gethostbyname_r",
        c"_nss_vmctl_gethostbyaddr2_r",
        c"_nss_vmctl_gethostbyaddr_r",
    ] {
        sym(name);
    }

    // SAFETY: the symbol has glibc's gethostbyname2_r NSS signature.
    let byname2: ByName2 = unsafe { std::mem::transmute(sym(c"_nss_vmctl_gethostbyname2_r")) };
    // SAFETY: the symbol has glibc's gethostbyname4_r NSS signature.
    let byname4: ByName4 = unsafe { std::mem::transmute(sym(c"_nss_vmctl_gethostbyname4_r")) };

    for name in [
        c"example.com",
        c"nss-vmctl-test-no-such-vm.vm",
        c"NSS-VMCTL-TEST-NO-SUCH-VM.VM.",
    ] {
        // SAFETY: hostent is plain data; all-zero is a valid value.
        let mut host: libc::hostent = unsafe { std::mem::zeroed() };
        let mut buf = [0u8; 1024];
        let (mut errno, mut h_errno) = (0, 0);
        // SAFETY: valid name, hostent, buffer and out-pointers.
        let status = unsafe {
            byname2(
                name.as_ptr(),
                libc::AF_INET,
                &mut host,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut errno,
                &mut h_errno,
            )
        };
        assert_eq!(status, NSS_STATUS_NOTFOUND, "{name:?}");
        assert_eq!((errno, h_errno), (libc::ENOENT, HOST_NOT_FOUND), "{name:?}");

        let mut pat: *mut c_void = ptr::null_mut();
        // SAFETY: valid name, tuple pointer, buffer and out-pointers.
        let status = unsafe {
            byname4(
                name.as_ptr(),
                &mut pat,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut errno,
                &mut h_errno,
                ptr::null_mut(),
            )
        };
        assert_eq!(status, NSS_STATUS_NOTFOUND, "{name:?}");
        assert!(pat.is_null());
    }
    // The library stays loaded: unloading Rust cdylibs is not reliably safe.
}

#[test]
fn glibc_loads_the_module_by_soname() {
    let dir = std::env::temp_dir().join(format!("nss-vmctl-glibc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(cdylib_path(), dir.join("libnss_vmctl.so.2")).unwrap();

    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_resolves_via_glibc",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("LD_LIBRARY_PATH", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("CHILD OK"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs only as the child of `glibc_loads_the_module_by_soname`.
#[test]
fn child_resolves_via_glibc() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // SAFETY: both arguments are C strings; single-threaded child.
    let rc = unsafe { __nss_configure_lookup(c"hosts".as_ptr(), c"vmctl".as_ptr()) };
    assert_eq!(rc, 0, "__nss_configure_lookup");

    for name in [c"example.com", c"nss-vmctl-test-no-such-vm.vm"] {
        let mut res: *mut libc::addrinfo = ptr::null_mut();
        // SAFETY: valid name; null service and hints; res is an out-pointer.
        let rc = unsafe { libc::getaddrinfo(name.as_ptr(), ptr::null(), ptr::null(), &mut res) };
        assert_ne!(rc, 0, "{name:?} must not resolve");
        assert!(res.is_null());
    }

    // SAFETY: RTLD_NOLOAD only looks up an already loaded library.
    let handle = unsafe {
        libc::dlopen(
            c"libnss_vmctl.so.2".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        )
    };
    assert!(!handle.is_null(), "glibc did not load libnss_vmctl.so.2");
    println!("CHILD OK");
}

/// Runs `getent ARGS` in a private mount namespace where `/run` is a fresh
/// tmpfs holding `vmctl/hosts` and `/etc/nsswitch.conf` says
/// `hosts: files vmctl`. `None` when the namespace cannot be set up.
fn getent_in_private_ns(lib_dir: &Path, args: &[&str]) -> Option<(i32, String)> {
    const SCRIPT: &str = r#"
set -e
mount -t tmpfs tmpfs /run
mkdir /run/vmctl
printf '# test\nblog 10.0.0.2\nweb 10.0.0.3 fd00::3\n' > /run/vmctl/hosts
printf 'hosts: files vmctl\n' > /run/nsswitch.conf
mount --bind /run/nsswitch.conf /etc/nsswitch.conf
echo SETUP-OK
set +e
exec getent "$@"
"#;
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .args(args)
        .env("LD_LIBRARY_PATH", lib_dir)
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let rest = stdout.strip_prefix("SETUP-OK\n")?;
    Some((output.status.code().unwrap_or(-1), rest.to_owned()))
}

#[test]
fn getent_through_nsswitch_in_private_mount_namespace() {
    let dir = std::env::temp_dir().join(format!("nss-vmctl-getent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(cdylib_path(), dir.join("libnss_vmctl.so.2")).unwrap();

    let words = |args: &[&str]| {
        getent_in_private_ns(&dir, args).map(|(rc, out)| {
            let words: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
            (rc, words)
        })
    };
    let Some(first) = words(&["hosts", "blog.vm"]) else {
        eprintln!("SKIPPED: cannot create a private mount namespace (needs root and unshare)");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let cases: &[(&[&str], i32, &[&str])] = &[
        (&["hosts", "BLOG.VM."], 0, &["10.0.0.2", "blog.vm"]),
        (&["hosts", "web.vm"], 0, &["fd00::3", "web.vm"]),
        (
            &["ahostsv4", "web.vm"],
            0,
            &["10.0.0.3", "STREAM", "web.vm"],
        ),
        (&["hosts", "10.0.0.3"], 0, &["10.0.0.3", "web.vm"]),
        (&["hosts", "fd00::3"], 0, &["fd00::3", "web.vm"]),
        (&["hosts", "nope.vm"], 2, &[]),
        (&["hosts", "a.b.vm"], 2, &[]),
    ];
    let results: Vec<_> = cases.iter().map(|(args, _, _)| words(args)).collect();
    let ahosts = words(&["ahosts", "web.vm"]);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(
        first,
        (0, vec!["10.0.0.2".to_owned(), "blog.vm".to_owned()])
    );
    for ((args, rc, expected), got) in cases.iter().zip(results) {
        let (got_rc, got_words) = got.expect("namespace setup worked once");
        assert_eq!(got_rc, *rc, "getent {args:?}: {got_words:?}");
        assert!(
            got_words.starts_with(&expected.iter().map(|w| w.to_string()).collect::<Vec<_>>()),
            "getent {args:?}: {got_words:?}"
        );
    }
    let (rc, both) = ahosts.expect("namespace setup worked once");
    assert_eq!(rc, 0);
    assert!(both.contains(&"10.0.0.3".to_owned()) && both.contains(&"fd00::3".to_owned()));
}
