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
//! 3. Real `getent` through `nsswitch.conf` and `/run/vmctl/hosts/`, both
//!    replaced inside a private mount namespace (`unshare --mount`, needs
//!    root; skipped with a notice otherwise). The host's files are never
//!    touched. The end-to-end suite repeats this in the systemd dev host.
//!
//! Tests 1 and 2 read the real `/run/vmctl/hosts/` (if any) but only ask for
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
/// tmpfs holding the hosts directory `vmctl/hosts/` (good records, damaged
/// ones and a FIFO) and `/etc/nsswitch.conf` says `hosts: files vmctl`.
/// `getent` runs under `timeout 120`, so a hang fails the test instead of
/// stalling it. `None` when the namespace cannot be set up.
fn getent_in_private_ns(lib_dir: &Path, args: &[&str]) -> Option<(i32, String)> {
    const SCRIPT: &str = r#"
set -e
mount -t tmpfs tmpfs /run
h=/run/vmctl/hosts
mkdir -p $h/name $h/addr
printf '10.0.0.2\n' > $h/name/blog
printf 'blog\n' > $h/addr/10.0.0.2
printf '10.0.0.3 fd00::3\n' > $h/name/web
printf 'web\n' > $h/addr/10.0.0.3
printf 'web\n' > $h/addr/fd00::3
printf '10.0.0' > $h/name/trunc
head -c 100 /dev/urandom > $h/name/garbage
printf 'garbage\n' > $h/addr/10.0.0.9
printf 'we' > $h/addr/10.0.0.8
mkfifo $h/name/fifo
printf 'hosts: files vmctl\n' > /run/nsswitch.conf
mount --bind /run/nsswitch.conf /etc/nsswitch.conf
echo SETUP-OK
set +e
exec timeout 120 getent "$@"
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

/// A directory holding `libnss_vmctl.so.2`, removed on drop.
struct LibDir(PathBuf);

impl LibDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nss-vmctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(cdylib_path(), dir.join("libnss_vmctl.so.2")).unwrap();
        LibDir(dir)
    }
}

impl Drop for LibDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn getent_through_nsswitch_in_private_mount_namespace() {
    let dir = LibDir::new("getent");
    let words = |args: &[&str]| {
        getent_in_private_ns(&dir.0, args).map(|(rc, out)| {
            let words: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
            (rc, words)
        })
    };
    let Some(first) = words(&["hosts", "blog.vm"]) else {
        eprintln!("SKIPPED: cannot create a private mount namespace (needs root and unshare)");
        return;
    };
    assert_eq!(
        first,
        (0, vec!["10.0.0.2".to_owned(), "blog.vm".to_owned()])
    );
    let cases: &[(&[&str], i32, &[&str])] = &[
        // Forward, case-insensitive, with a trailing dot.
        (&["hosts", "BLOG.VM."], 0, &["10.0.0.2", "blog.vm"]),
        // `getent hosts` asks for AAAA first.
        (&["hosts", "web.vm"], 0, &["fd00::3", "web.vm"]),
        (
            &["ahostsv4", "web.vm"],
            0,
            &["10.0.0.3", "STREAM", "web.vm"],
        ),
        (&["ahostsv6", "Web.Vm"], 0, &["fd00::3", "STREAM", "web.vm"]),
        // Reverse.
        (&["hosts", "10.0.0.3"], 0, &["10.0.0.3", "web.vm"]),
        (&["hosts", "fd00::3"], 0, &["fd00::3", "web.vm"]),
        (&["hosts", "10.0.0.2"], 0, &["10.0.0.2", "blog.vm"]),
        // Unknown and not VM names.
        (&["hosts", "nope.vm"], 2, &[]),
        (&["hosts", "a.b.vm"], 2, &[]),
        (&["hosts", "10.0.0.7"], 2, &[]),
        // Damaged records and a FIFO: NOTFOUND/UNAVAIL, no hang.
        (&["hosts", "trunc.vm"], 2, &[]),
        (&["hosts", "garbage.vm"], 2, &[]),
        (&["hosts", "fifo.vm"], 2, &[]),
        (&["ahosts", "fifo.vm"], 2, &[]),
        (&["hosts", "10.0.0.9"], 2, &[]),
        (&["hosts", "10.0.0.8"], 2, &[]),
    ];
    for (args, rc, expected) in cases {
        let (got_rc, got_words) = words(args).expect("namespace setup worked once");
        assert_eq!(got_rc, *rc, "getent {args:?}: {got_words:?}");
        assert!(
            got_words.starts_with(&expected.iter().map(|w| w.to_string()).collect::<Vec<_>>()),
            "getent {args:?}: {got_words:?}"
        );
    }
    let (rc, both) = words(&["ahosts", "web.vm"]).unwrap();
    assert_eq!(rc, 0);
    assert!(both.contains(&"10.0.0.3".to_owned()) && both.contains(&"fd00::3".to_owned()));
    // nss-files still answers localhost in front of the module.
    let (rc, local) = words(&["ahosts", "localhost"]).unwrap();
    assert_eq!(rc, 0, "{local:?}");
    assert!(local.contains(&"localhost".to_owned()), "{local:?}");
}

/// A small deterministic generator (xorshift64*), enough to make varied
/// names without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// 10,000 random query names, most ending in `.vm` in some case: a third
/// made of label characters only (some longer than a label may be), the
/// rest of label characters, dots, slashes, spaces, control and non-ASCII
/// characters, up to 300 bytes long.
fn random_names(seed: u64) -> Vec<String> {
    const CHARS: &[u8] = b"abcxyzBLOGWEB0189-._/%*\\ \t\x7f\x01";
    const LABEL: &[u8] = b"abcxyzBLOGWEB0189-";
    let mut rng = Rng(seed);
    (0..10_000)
        .map(|_| {
            let mut name: String = if rng.below(3) == 0 {
                // Label characters only, sometimes longer than a label.
                let len = 1 + rng.below(70);
                (0..len)
                    .map(|_| LABEL[rng.below(LABEL.len() as u64)] as char)
                    .collect()
            } else {
                let len = match rng.below(3) {
                    0 => rng.below(4),
                    1 => rng.below(64),
                    _ => rng.below(300),
                };
                (0..len)
                    .map(|_| match rng.below(10) {
                        0 => char::from_u32(1 + rng.below(0x2ff) as u32).unwrap_or('?'),
                        _ => CHARS[rng.below(CHARS.len() as u64)] as char,
                    })
                    .collect()
            };
            match rng.below(5) {
                0 => {}
                1 => name.push_str(".VM."),
                2 => name.push_str(".Vm"),
                _ => name.push_str(".vm"),
            }
            if name.is_empty() {
                name.push('x');
            }
            name
        })
        .collect()
}

#[test]
fn ten_thousand_random_names_through_getent() {
    let dir = LibDir::new("getent-random");
    // `--`: some names start with `-`.
    let mut args = vec!["--".to_owned(), "ahosts".to_owned()];
    let names = random_names(0x9e37_79b9_7f4a_7c15);
    // Enough of them are well-formed `LABEL.vm` names to reach the disk.
    let reaching = names
        .iter()
        .filter(|n| nss_vmctl::lookup::vm_label(n).is_some())
        .count();
    eprintln!(
        "{reaching} of {} random names are LABEL.vm names",
        names.len()
    );
    assert!(reaching >= 1500, "only {reaching} names reach the records");
    args.extend(names);
    // A real VM last: the module must still answer after all of them.
    args.push("web.vm".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some((rc, out)) = getent_in_private_ns(&dir.0, &args) else {
        eprintln!("SKIPPED: cannot create a private mount namespace (needs root and unshare)");
        return;
    };
    // 2: some keys were not found; a crash would be a signal (-1 or 128+n)
    // and a hang `timeout`'s 124.
    assert_eq!(rc, 2, "getent exit status; output:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("fd00::3 ") && l.ends_with("web.vm")),
        "web.vm not resolved after the random names:\n{out}"
    );
}
