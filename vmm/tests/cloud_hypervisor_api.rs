//! The cloud-hypervisor REST client over real HTTP on a Unix socket.
//!
//! `stand_in` below is a small in-test HTTP server standing in for
//! cloud-hypervisor (which is not installable on the CI machines): it records
//! every request and keeps the VM state machine the API documents (status
//! codes and JSON-array error bodies as cloud-hypervisor's `vmm/src/api/http`
//! sends them: 404 before `vm.create`, 500 for other API errors). It can
//! answer with `Transfer-Encoding: chunked` too. The last test drives the real
//! `cloud-hypervisor` binary when it is on PATH.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vmctl_vmm::cloud_hypervisor::api::{ChVmConfig, ChVmState};
use vmctl_vmm::cloud_hypervisor::{ChApi, ChVm};
use vmctl_vmm::{Error, VmConfig, VmState, Vmm};

#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// Stand-in for cloud-hypervisor's API server; `chunked` sends every reply
/// body with `Transfer-Encoding: chunked` instead of `Content-Length`.
fn stand_in(socket: &Path, chunked: bool) -> Log {
    stand_in_version(socket, chunked, "53.0.0")
}

/// [`stand_in`] whose `vmm.ping` reports `version` (and `v<version>` as
/// `build_version`).
fn stand_in_version(socket: &Path, chunked: bool, version: &'static str) -> Log {
    let listener = UnixListener::bind(socket).unwrap();
    let log: Log = Arc::default();
    let state = Arc::new(Mutex::new(None::<&'static str>));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log2.clone();
            let state = state.clone();
            tokio::spawn(async move { serve(stream, log, state, chunked, version).await });
        }
    });
    log
}

async fn serve(
    mut s: UnixStream,
    log: Log,
    state: Arc<Mutex<Option<&'static str>>>,
    chunked: bool,
    version: &'static str,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let method = first.next().unwrap().to_owned();
    let path = first.next().unwrap().to_owned();
    assert_eq!(first.next(), Some("HTTP/1.1"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.unwrap();
        body.extend_from_slice(&chunk[..n]);
    }
    let body_json = (len > 0).then(|| serde_json::from_slice(&body).unwrap());
    log.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        headers,
        body: body_json,
    });

    let (status, reply) = route(&method, &path, &state, version);
    respond(&mut s, status, &reply, chunked).await;
}

/// The stand-in's answer to one request, and its VM state transition.
/// Replies are shaped like cloud-hypervisor v53.0's (seen with curl): its
/// `vmm.shutdown` answers 200 with an empty body where the spec says 204.
fn route(
    method: &str,
    path: &str,
    state: &Mutex<Option<&'static str>>,
    version: &str,
) -> (u16, String) {
    let mut st = state.lock().unwrap();
    match (method, path) {
        ("GET", "/api/v1/vmm.ping") => (
            200,
            json!({"build_version": format!("v{version}"), "version": version, "pid": 4242, "features": ["io_uring", "kvm"]})
                .to_string(),
        ),
        ("GET", "/api/v1/vm.info") => match *st {
            Some(state) => (200, json!({"config": {}, "state": state}).to_string()),
            None => (
                404,
                r#"["Error from API","The VM info is not available","VM is not created"]"#.into(),
            ),
        },
        ("PUT", "/api/v1/vm.create") => {
            *st = Some("Created");
            (204, String::new())
        }
        ("PUT", "/api/v1/vm.boot") if st.is_none() => (
            404,
            r#"["Error from API","The VM could not boot","VM config is missing"]"#.into(),
        ),
        ("PUT", "/api/v1/vmm.shutdown") => {
            *st = None;
            (200, String::new())
        }
        ("PUT", _) if st.is_none() => (404, r#"["Error from API","VM is not created"]"#.into()),
        ("PUT", action) => {
            let next = match (action, *st) {
                ("/api/v1/vm.boot", Some("Created")) => Some("Running"),
                ("/api/v1/vm.pause", Some("Running")) => Some("Paused"),
                ("/api/v1/vm.resume", Some("Paused")) => Some("Running"),
                ("/api/v1/vm.power-button", Some("Running")) => Some("Running"),
                ("/api/v1/vm.shutdown", Some(_)) => Some("Shutdown"),
                _ => return (500, r#"["Error from API","InvalidStateTransition"]"#.into()),
            };
            *st = next;
            (204, String::new())
        }
        _ => (404, String::new()),
    }
}

async fn respond(s: &mut UnixStream, status: u16, body: &str, chunked: bool) {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let mut resp = format!("HTTP/1.1 {status} {reason}\r\nServer: Cloud Hypervisor API\r\n");
    if status == 204 {
        resp.push_str("\r\n");
    } else if chunked {
        resp.push_str("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Uneven pieces, so that a JSON value straddles chunk boundaries.
        let bytes = body.as_bytes();
        let mut at = 0;
        for size in [1, 7, 3].into_iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let piece = &body[at..(at + size).min(bytes.len())];
            resp.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
            at += size;
        }
        resp.push_str("0\r\n\r\n");
    } else {
        resp.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        resp.push_str(body);
    }
    s.write_all(resp.as_bytes()).await.unwrap();
}

fn config(dir: &Path) -> VmConfig {
    serde_json::from_value(json!({
        "name": "ch-test",
        "vcpus": 2,
        "memory_bytes": 512u64 << 20,
        "kernel": "/boot/vmlinuz-test",
        "initrd": "/boot/initrd-test",
        "cmdline": "console=ttyS0",
        "disks": [{"path": "/var/lib/vmctl/a.raw"}, {"path": "/var/lib/vmctl/b.raw", "read_only": true}],
        "net": [{"tap": "vmt-ch-test", "mac": "52:54:00:00:00:01"}],
        "vsock": {"cid": 5, "socket": dir.join("vsock")},
        "serial_socket": dir.join("serial"),
        "credentials": [{"name": "vmm.notify_socket", "value": "vsock-stream:2:8888"}],
        "runtime_dir": dir,
    }))
    .unwrap()
}

#[tokio::test]
async fn rest_client_against_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ch-api.sock");
    let log = stand_in(&sock, false);
    let api = ChApi::new(&sock);

    let ping = api.ping().await.unwrap();
    assert_eq!(ping.version, "53.0.0");
    assert_eq!(ping.pid, Some(4242));
    assert_eq!(ping.features, ["io_uring", "kvm"]);

    // vm.info before vm.create: the error carries socket, method, path, status and body.
    let err = api.info().await.unwrap_err();
    match &err {
        Error::Http {
            socket,
            method,
            path,
            status,
            body,
        } => {
            assert_eq!(socket, &sock);
            assert_eq!(
                (method.as_str(), path.as_str(), *status),
                ("GET", "/api/v1/vm.info", 404)
            );
            assert!(body.contains("VM is not created"), "{body}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("HTTP 404"), "{err}");

    let cfg = config(dir.path());
    api.create(&ChVmConfig::from_config(&cfg)).await.unwrap();
    assert_eq!(api.info().await.unwrap().state, ChVmState::Created);
    for action in [
        "vm.boot",
        "vm.pause",
        "vm.resume",
        "vm.power-button",
        "vm.shutdown",
        "vmm.shutdown",
    ] {
        api.put(action).await.unwrap();
    }

    let log = log.lock().unwrap().clone();
    let calls: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET", "/api/v1/vmm.ping"),
            ("GET", "/api/v1/vm.info"),
            ("PUT", "/api/v1/vm.create"),
            ("GET", "/api/v1/vm.info"),
            ("PUT", "/api/v1/vm.boot"),
            ("PUT", "/api/v1/vm.pause"),
            ("PUT", "/api/v1/vm.resume"),
            ("PUT", "/api/v1/vm.power-button"),
            ("PUT", "/api/v1/vm.shutdown"),
            ("PUT", "/api/v1/vmm.shutdown"),
        ]
    );
    let create = &log[2];
    assert!(create
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    let vsock: PathBuf = dir.path().join("vsock");
    let serial: PathBuf = dir.path().join("serial");
    assert_eq!(
        create.body.as_ref().unwrap(),
        &json!({
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
            "memory": {"size": 536870912u64, "shared": true},
            "payload": {"kernel": "/boot/vmlinuz-test", "initramfs": "/boot/initrd-test", "cmdline": "console=ttyS0"},
            "disks": [
                {"path": "/var/lib/vmctl/a.raw", "readonly": false, "image_type": "Raw", "backing_files": false},
                {"path": "/var/lib/vmctl/b.raw", "readonly": true, "image_type": "Raw", "backing_files": false},
            ],
            "net": [{"tap": "vmt-ch-test", "mac": "52:54:00:00:00:01"}],
            "rng": {"src": "/dev/urandom"},
            "serial": {"mode": "Socket", "socket": serial},
            "console": {"mode": "Off"},
            "vsock": {"cid": 5, "socket": vsock},
            "platform": {"oem_strings": ["io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888"]},
        })
    );
    // Body-less PUTs say so explicitly; GETs send no body.
    for r in &log[4..] {
        assert_eq!(r.body, None);
        assert!(
            r.headers.contains(&("content-length".into(), "0".into())),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn invalid_transition_reports_status_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ch-api.sock");
    let _log = stand_in(&sock, false);
    let api = ChApi::new(&sock);
    let text = api.put("vm.boot").await.unwrap_err().to_string();
    assert!(
        text.contains("PUT /api/v1/vm.boot returned HTTP 404"),
        "{text}"
    );
    assert!(text.contains("VM config is missing"), "{text}");

    api.create(&ChVmConfig::from_config(&config(dir.path())))
        .await
        .unwrap();
    let text = api.put("vm.resume").await.unwrap_err().to_string();
    assert!(
        text.contains("PUT /api/v1/vm.resume returned HTTP 500"),
        "{text}"
    );
    assert!(text.contains("InvalidStateTransition"), "{text}");
}

/// Chunked replies (which cloud-hypervisor's server does not send today) are
/// decoded, for success and error bodies alike.
#[tokio::test]
async fn chunked_replies_are_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ch-api.sock");
    let _log = stand_in(&sock, true);
    let api = ChApi::new(&sock);

    let ping = api.ping().await.unwrap();
    assert_eq!(ping.version, "53.0.0");
    assert_eq!(ping.build_version.as_deref(), Some("v53.0.0"));
    assert_eq!(ping.pid, Some(4242));

    match api.info().await.unwrap_err() {
        Error::Http { status, body, .. } => {
            assert_eq!(status, 404);
            assert_eq!(
                body,
                r#"["Error from API","The VM info is not available","VM is not created"]"#
            );
        }
        other => panic!("unexpected error {other:?}"),
    }

    api.create(&ChVmConfig::from_config(&config(dir.path())))
        .await
        .unwrap();
    api.put("vm.boot").await.unwrap();
    assert_eq!(api.info().await.unwrap().state, ChVmState::Running);
}

/// A dead socket is a protocol error naming the socket, not an HTTP status.
#[tokio::test]
async fn connect_failure_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-listens.sock");
    match ChApi::new(&sock).ping().await.unwrap_err() {
        Error::HttpProtocol { socket, message } => {
            assert_eq!(socket, sock);
            assert!(message.contains("GET /api/v1/vmm.ping"), "{message}");
            assert!(message.contains("cannot connect"), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

fn cloud_hypervisor_on_path() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("cloud-hypervisor").is_file()));
    if !on_path {
        eprintln!("SKIPPED: cloud-hypervisor is not on PATH (it is in no registry these machines reach); the REST client was tested against the in-test stand-in only");
    }
    on_path
}

/// The whole driver against a real cloud-hypervisor, where installed; the
/// `config` that `vm.info` echoes shows cloud-hypervisor parsed every field
/// of our `vm.create` body as meant.
#[tokio::test]
async fn real_cloud_hypervisor_create_info_shutdown() {
    if !cloud_hypervisor_on_path() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.net.clear(); // no TAP device exists here
    cfg.disks.clear();
    let mut vm = ChVm::spawn(&cfg)
        .await
        .expect("spawn cloud-hypervisor and vm.create");
    assert_eq!(vm.info().await.unwrap(), VmState::Created);

    let raw = vm.api().call("GET", "vm.info", None).await.unwrap();
    let info: Value = serde_json::from_str(&raw.body).unwrap();
    let c = &info["config"];
    assert_eq!(info["state"], "Created");
    assert_eq!(c["cpus"]["boot_vcpus"], 2, "{c}");
    assert_eq!(c["cpus"]["max_vcpus"], 2, "{c}");
    assert_eq!(c["memory"]["size"], 512u64 << 20, "{c}");
    assert_eq!(c["memory"]["shared"], true, "{c}");
    assert_eq!(c["payload"]["kernel"], "/boot/vmlinuz-test", "{c}");
    assert_eq!(c["payload"]["initramfs"], "/boot/initrd-test", "{c}");
    assert_eq!(c["payload"]["cmdline"], "console=ttyS0", "{c}");
    assert_eq!(c["rng"]["src"], "/dev/urandom", "{c}");
    assert_eq!(c["serial"]["mode"], "Socket", "{c}");
    assert_eq!(
        c["serial"]["socket"],
        json!(dir.path().join("serial")),
        "{c}"
    );
    assert_eq!(c["console"]["mode"], "Off", "{c}");
    assert_eq!(c["vsock"]["cid"], 5, "{c}");
    assert_eq!(c["vsock"]["socket"], json!(dir.path().join("vsock")), "{c}");
    assert_eq!(
        c["platform"]["oem_strings"],
        json!(["io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888"]),
        "{c}"
    );

    vm.shutdown().await.unwrap();
    let status = vm.wait().await.unwrap();
    assert!(status.success(), "{status}");
}

/// Boot, pause, resume, power button and shutdown on a real cloud-hypervisor
/// with a real kernel: needs cloud-hypervisor on PATH, /dev/kvm, and
/// `VMCTL_CH_TEST_KERNEL` (optionally `VMCTL_CH_TEST_INITRD`) naming the
/// guest kernel, e.g. the one under `target/images/`.
#[tokio::test]
async fn real_cloud_hypervisor_boot_lifecycle() {
    let Some(kernel) = std::env::var_os("VMCTL_CH_TEST_KERNEL") else {
        eprintln!("SKIPPED: VMCTL_CH_TEST_KERNEL is not set");
        return;
    };
    if !cloud_hypervisor_on_path() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.net.clear();
    cfg.disks.clear();
    cfg.kernel = PathBuf::from(kernel);
    cfg.initrd = std::env::var_os("VMCTL_CH_TEST_INITRD").map(PathBuf::from);
    cfg.cmdline = "console=ttyS0 quiet".into();
    let mut vm = ChVm::spawn(&cfg)
        .await
        .expect("spawn cloud-hypervisor and vm.create");
    vm.boot().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Running);
    vm.pause().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Paused);
    vm.resume().await.unwrap();
    assert_eq!(vm.info().await.unwrap(), VmState::Running);
    vm.power_button().await.unwrap();
    vm.shutdown().await.unwrap();
    let status = vm.wait().await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn cloud_hypervisor_dying_after_creating_its_socket_is_reported_at_once() {
    use std::os::unix::fs::PermissionsExt;
    // A stand-in that creates the API socket path, complains and exits.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let fake = dir.path().join("fake-cloud-hypervisor");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --api-socket ] || exit 9\n: > \"${2#path=}\"\n\
         echo 'Error: boom: cannot bind the API socket' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = std::time::Instant::now();
    let mut attempts = 0;
    let err = loop {
        attempts += 1;
        match ChVm::spawn_with(&cfg, &fake).await {
            // another test's fork may still hold the new script open (ETXTBSY)
            Err(Error::Spawn { source, .. })
                if source.raw_os_error() == Some(26) && attempts < 20 =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => break other.unwrap_err(),
        }
    };
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}: {err}",
        started.elapsed()
    );
    assert!(
        matches!(&err, Error::ExitedEarly { program, status, stderr }
            if program == "cloud-hypervisor" && status.code() == Some(1)
                && stderr == "Error: boom: cannot bind the API socket"),
        "{err:?}"
    );
}

/// A fake `cloud-hypervisor` for [`ChVm::spawn_with`]: it marks that it
/// started (after the driver removed any stale API socket) and sleeps; the
/// test then serves the stand-in API on the socket the driver waits for.
fn fake_vmm_serving(dir: &Path, version: &'static str) -> (PathBuf, tokio::task::JoinHandle<Log>) {
    use std::os::unix::fs::PermissionsExt;
    let fake = dir.join(format!("fake-ch-{version}"));
    let started = dir.join(format!("started-{version}"));
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n[ \"$1\" = --api-socket ] || exit 9\n: > '{}'\nexec sleep 60\n",
            started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("ch-api.sock");
    let serving = tokio::spawn(async move {
        while !started.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stand_in_version(&socket, false, version)
    });
    (fake, serving)
}

/// Spawns the driver with `program`, retrying while another test's fork
/// still holds the freshly written script open (ETXTBSY).
async fn spawn_fake(cfg: &VmConfig, program: &Path) -> vmctl_vmm::Result<ChVm> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match ChVm::spawn_with(cfg, program).await {
            Err(Error::Spawn { source, .. })
                if source.raw_os_error() == Some(26) && attempts < 20 =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

/// The driver (not just the body builder) sends `image_type: "Raw"` and
/// `backing_files: false` for every disk, so cloud-hypervisor never probes
/// a disk whose first bytes the guest wrote (a QCOW2 header naming a host
/// file as its backing file).
#[tokio::test]
async fn driver_declares_every_disk_raw_without_backing_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (fake, serving) = fake_vmm_serving(dir.path(), "53.0.0");
    let mut vm = spawn_fake(&cfg, &fake)
        .await
        .expect("spawn against the stand-in");
    let log = serving.await.unwrap();
    let create = log
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path == "/api/v1/vm.create")
        .cloned()
        .expect("the driver sent vm.create");
    let disks = create.body.as_ref().unwrap()["disks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(disks.len(), 2, "{disks:?}");
    for disk in &disks {
        assert_eq!(disk["image_type"], "Raw", "{disk}");
        assert_eq!(disk["backing_files"], false, "{disk}");
    }
    vm.kill().await.unwrap();
}

/// A cloud-hypervisor older than v51 is refused before any VM is created,
/// with an error naming the version found and the minimum.
#[tokio::test]
async fn driver_refuses_cloud_hypervisor_before_v51() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (fake, serving) = fake_vmm_serving(dir.path(), "50.2.0");
    let err = spawn_fake(&cfg, &fake).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::UnsupportedVersion(_)), "{err:?}");
    assert!(text.contains("v50.2.0"), "{text}");
    assert!(text.contains("v51.0 or newer"), "{text}");
    let log = serving.await.unwrap();
    let calls: Vec<String> = log.lock().unwrap().iter().map(|r| r.path.clone()).collect();
    assert_eq!(calls, ["/api/v1/vmm.ping"], "nothing but the ping was sent");
}
