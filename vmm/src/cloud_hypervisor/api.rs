//! cloud-hypervisor REST API: request/response bodies and an HTTP/1.1 client.
//!
//! The bodies are our own serde structs, checked field by field against
//! cloud-hypervisor's OpenAPI document `vmm/src/api/openapi/cloud-hypervisor.yaml`
//! at commit `00f68228812d8dfeb50369c597b18e06cea42b10` of
//! cloud-hypervisor/cloud-hypervisor (`info.version: 0.3.0`, server
//! `http://localhost/api/v1`). Only the fields vmctl sets or reads are
//! modelled; everything else keeps cloud-hypervisor's defaults, and unknown
//! reply fields are ignored.
//!
//! The same schemas are unchanged at the tag v53.0 (9ed824d6), except that
//! its `VmState` enum does not list `BreakPoint` yet; the driver was also run
//! against a real cloud-hypervisor v53.0 built from that tag (the `real_*`
//! tests in `vmm/tests/cloud_hypervisor_api.rs`).
//!
//! Error replies: the server (`vmm/src/api/http/mod.rs`) answers a failed
//! request with a JSON array of error messages, outermost first; a VM that is
//! not created yet gives 404, other API errors 500. Successful actions answer
//! 204, except v53.0's `vmm.shutdown`, which answers 200 with an empty body:
//! any 2xx counts as success here.
//!
//! HTTP: hyper's HTTP/1.1 client over one Unix-socket connection per request
//! (`Connection: close`), so `Content-Length`, chunked and close-delimited
//! replies are all handled.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::config::VmConfig;
use crate::error::{Error, Result};

/// `VmConfig` schema: body of `PUT /vm.create` (only `payload` is required).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChVmConfig {
    /// `CpusConfig`.
    pub cpus: CpusConfig,
    /// `MemoryConfig`.
    pub memory: MemoryConfig,
    /// `PayloadConfig`.
    pub payload: PayloadConfig,
    /// `DiskConfig` list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// `NetConfig` list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// `RngConfig`.
    pub rng: RngConfig,
    /// `SerialConfig`: the legacy serial port (ttyS0).
    pub serial: SerialConfig,
    /// `ConsoleConfig`: virtio-console (hvc0).
    pub console: ConsoleConfig,
    /// `VsockConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// `PlatformConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformConfig>,
}

/// `CpusConfig` (`boot_vcpus` and `max_vcpus` are required, both >= 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// Maximum vCPUs (no hotplug: equal to `boot_vcpus`).
    pub max_vcpus: u32,
}

/// `MemoryConfig` (`size` is required; int64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    /// Shared mapping (spec default `false`); vhost-user devices need it.
    #[serde(default)]
    pub shared: bool,
}

/// `PayloadConfig` (no required fields; vmctl always boots a kernel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// Kernel image path.
    pub kernel: PathBuf,
    /// Initramfs path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// `DiskConfig`.
///
/// vmctl's disks are raw images whose content the guest controls: a guest
/// can write a QCOW2 header (with a backing file naming any host path) into
/// its own disk. So every disk says `image_type: Raw`, and `backing_files`
/// is sent as `false` rather than left to the default: cloud-hypervisor
/// never probes the format nor opens a file the guest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Image path.
    pub path: PathBuf,
    /// Read-only (spec default `false`).
    #[serde(default)]
    pub readonly: bool,
    /// `ImageType`: how the image is read (no autodetection when given).
    pub image_type: ImageType,
    /// Whether QCOW2 backing files may be opened (spec default `false`).
    #[serde(default)]
    pub backing_files: bool,
}

/// `ImageType`: the whole enum of the spec (`Unknown` is only valid for
/// vhost-user disks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// Flat VMDK.
    FlatVmdk,
    /// Fixed VHD.
    FixedVhd,
    /// QCOW2.
    Qcow2,
    /// Raw: the bytes are the disk.
    Raw,
    /// VHDX.
    Vhdx,
    /// Unknown (vhost-user disks only).
    Unknown,
}

/// The oldest cloud-hypervisor the driver runs: v51.0 added `image_type`
/// and `backing_files` (GHSA-jmr4-g2hv-mjj6); older releases ignore both
/// and guess the format from the image's first bytes, which the guest
/// writes.
pub const MIN_VERSION: u32 = 51;

/// The major version in a cloud-hypervisor version string: `vmm.ping`'s
/// `version` (`53.0.0`) or `build_version` (`v53.0.0-12-gabcdef`), or the
/// output of `cloud-hypervisor --version` (`cloud-hypervisor v53.0`,
/// `cloud-hypervisor v50.2-dirty`). `None` when there is no leading number.
pub fn major_version(text: &str) -> Option<u32> {
    let text = text.trim();
    let text = text
        .strip_prefix("cloud-hypervisor")
        .unwrap_or(text)
        .trim_start();
    let text = text
        .strip_prefix('v')
        .or_else(|| text.strip_prefix('V'))
        .unwrap_or(text);
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &text[digits..];
    if digits == 0 || !(rest.is_empty() || rest.starts_with(['.', '-', '+', ' '])) {
        return None;
    }
    text[..digits].parse().ok()
}

/// Checks that the cloud-hypervisor that answered `ping` is at least
/// [`MIN_VERSION`]; the error names the version found and the minimum.
pub fn check_version(ping: &VmmPing) -> std::result::Result<u32, String> {
    let found = major_version(&ping.version)
        .or_else(|| ping.build_version.as_deref().and_then(major_version));
    let shown = ping.build_version.as_deref().unwrap_or(&ping.version);
    match found {
        Some(major) if major >= MIN_VERSION => Ok(major),
        Some(_) => Err(format!(
            "cloud-hypervisor {shown:?} is too old: vmctl needs v{MIN_VERSION}.0 or newer \
             (older releases guess a disk's format from its content, which the guest controls)"
        )),
        None => Err(format!(
            "cannot tell the cloud-hypervisor version from {shown:?}: vmctl needs v{MIN_VERSION}.0 or newer"
        )),
    }
}

/// `NetConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Existing TAP device.
    pub tap: String,
    /// Guest MAC.
    pub mac: String,
}

/// `RngConfig` (`src` is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngConfig {
    /// Entropy source.
    pub src: PathBuf,
}

/// `SerialConfig` (`mode` is required): the `serial` field of `VmConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialConfig {
    /// Output mode.
    pub mode: ConsoleMode,
    /// Output file, with `mode: File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Unix socket path, with `mode: Socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `ConsoleConfig` (`mode` is required): the `console` field of `VmConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Output mode.
    pub mode: ConsoleMode,
    /// Output file, with `mode: File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Unix socket path, with `mode: Socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl SerialConfig {
    /// A config with just `mode`.
    pub fn mode(mode: ConsoleMode) -> Self {
        SerialConfig {
            mode,
            file: None,
            socket: None,
        }
    }
}

impl ConsoleConfig {
    /// A config with just `mode`.
    pub fn mode(mode: ConsoleMode) -> Self {
        ConsoleConfig {
            mode,
            file: None,
            socket: None,
        }
    }
}

/// `ConsoleMode`: the whole enum of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device.
    Off,
    /// Pseudo terminal.
    Pty,
    /// The VMM's terminal.
    Tty,
    /// Write to `file`.
    File,
    /// Unix socket server at `socket`.
    Socket,
    /// Discard output.
    Null,
}

/// `VsockConfig` (`cid` and `socket` are required; `cid` is int64 >= 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Guest CID (>= 3).
    pub cid: u32,
    /// Host hybrid-vsock Unix socket.
    pub socket: PathBuf,
}

/// `PlatformConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformConfig {
    /// SMBIOS type 11 OEM strings.
    pub oem_strings: Vec<String>,
}

/// `VmState`: `Created`, `Running`, `Shutdown`, `Paused`, `BreakPoint`.
///
/// A value the spec does not list (a newer cloud-hypervisor) is kept in
/// [`ChVmState::Other`] rather than failing the whole `vm.info` reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum ChVmState {
    /// Created, not booted.
    Created,
    /// Running.
    Running,
    /// Shut down (the VMM process keeps running).
    Shutdown,
    /// Paused.
    Paused,
    /// Stopped at a debugger breakpoint.
    BreakPoint,
    /// Not in the spec.
    Other(String),
}

impl ChVmState {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            ChVmState::Created => "Created",
            ChVmState::Running => "Running",
            ChVmState::Shutdown => "Shutdown",
            ChVmState::Paused => "Paused",
            ChVmState::BreakPoint => "BreakPoint",
            ChVmState::Other(s) => s,
        }
    }
}

impl From<String> for ChVmState {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Created" => ChVmState::Created,
            "Running" => ChVmState::Running,
            "Shutdown" => ChVmState::Shutdown,
            "Paused" => ChVmState::Paused,
            "BreakPoint" => ChVmState::BreakPoint,
            _ => ChVmState::Other(s),
        }
    }
}

impl std::fmt::Display for ChVmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `VmInfo`: reply of `GET /vm.info` (only what vmctl reads; the required
/// `config` echo and `device_tree` are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmInfo {
    /// `VmState`.
    pub state: ChVmState,
    /// Current guest memory, bytes (int64).
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
}

/// `VmmPingResponse`: reply of `GET /vmm.ping` (`version` is required).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmmPing {
    /// cloud-hypervisor version.
    pub version: String,
    /// Build version.
    #[serde(default)]
    pub build_version: Option<String>,
    /// VMM process id (int64).
    #[serde(default)]
    pub pid: Option<i64>,
    /// Compiled-in features.
    #[serde(default)]
    pub features: Vec<String>,
}

impl ChVmConfig {
    /// Translate vmctl's config into cloud-hypervisor's.
    pub fn from_config(cfg: &VmConfig) -> ChVmConfig {
        ChVmConfig {
            cpus: CpusConfig {
                boot_vcpus: cfg.vcpus,
                max_vcpus: cfg.vcpus,
            },
            memory: MemoryConfig {
                size: cfg.memory_bytes,
                shared: cfg.vsock.is_some(),
            },
            payload: PayloadConfig {
                kernel: cfg.kernel.clone(),
                initramfs: cfg.initrd.clone(),
                cmdline: (!cfg.cmdline.is_empty()).then(|| cfg.cmdline.clone()),
            },
            disks: cfg
                .disks
                .iter()
                .map(|d| DiskConfig {
                    path: d.path.clone(),
                    readonly: d.read_only,
                    image_type: ImageType::Raw,
                    backing_files: false,
                })
                .collect(),
            net: cfg
                .net
                .iter()
                .map(|n| NetConfig {
                    tap: n.tap.clone(),
                    mac: n.mac.clone(),
                })
                .collect(),
            rng: RngConfig {
                src: "/dev/urandom".into(),
            },
            serial: match &cfg.serial_socket {
                Some(path) => SerialConfig {
                    socket: Some(path.clone()),
                    ..SerialConfig::mode(ConsoleMode::Socket)
                },
                None => SerialConfig::mode(ConsoleMode::Null),
            },
            console: ConsoleConfig::mode(ConsoleMode::Off),
            vsock: cfg.vsock.as_ref().map(|v| VsockConfig {
                cid: v.cid,
                socket: v.socket.clone(),
            }),
            platform: (!cfg.credentials.is_empty()).then(|| PlatformConfig {
                oem_strings: cfg.oem_strings(),
            }),
        }
    }
}

/// Client for one cloud-hypervisor API socket.
#[derive(Debug, Clone)]
pub struct ChApi {
    socket: PathBuf,
}

/// A raw HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes as text.
    pub body: String,
}

impl ChApi {
    /// Client for `socket` (nothing is connected until a request).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ChApi {
            socket: socket.into(),
        }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /api/v1/vmm.ping`.
    pub async fn ping(&self) -> Result<VmmPing> {
        let r = self.call("GET", "vmm.ping", None).await?;
        self.parse("vmm.ping", &r.body)
    }

    /// `PUT /api/v1/vm.create` (204 on success).
    pub async fn create(&self, config: &ChVmConfig) -> Result<()> {
        let body = serde_json::to_string(config).map_err(|e| Error::HttpProtocol {
            socket: self.socket.clone(),
            message: format!("cannot encode vm.create body: {e}"),
        })?;
        self.call("PUT", "vm.create", Some(&body)).await.map(drop)
    }

    /// `GET /api/v1/vm.info` (404 before `vm.create`).
    pub async fn info(&self) -> Result<VmInfo> {
        let r = self.call("GET", "vm.info", None).await?;
        self.parse("vm.info", &r.body)
    }

    /// `PUT /api/v1/<action>` without a body: `vm.boot`, `vm.pause`,
    /// `vm.resume`, `vm.power-button`, `vm.shutdown`, `vmm.shutdown`, ...
    pub async fn put(&self, action: &str) -> Result<()> {
        self.call("PUT", action, None).await.map(drop)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str, body: &str) -> Result<T> {
        serde_json::from_str(body).map_err(|e| Error::HttpProtocol {
            socket: self.socket.clone(),
            message: format!("bad {what} reply {body:?}: {e}"),
        })
    }

    /// Send one request to `/api/v1/<endpoint>`; non-2xx becomes [`Error::Http`].
    pub async fn call(&self, method: &str, endpoint: &str, body: Option<&str>) -> Result<Response> {
        let path = format!("/api/v1/{endpoint}");
        let proto = |message: String| Error::HttpProtocol {
            socket: self.socket.clone(),
            message: format!("{method} {path}: {message}"),
        };
        let http_method =
            Method::from_bytes(method.as_bytes()).map_err(|e| proto(format!("bad method: {e}")))?;
        let mut req = Request::builder()
            .method(http_method)
            .uri(&path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json")
            .header(CONNECTION, "close");
        let payload = match body {
            Some(body) => {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .header(CONTENT_LENGTH, body.len());
                Bytes::copy_from_slice(body.as_bytes())
            }
            None => {
                if method == "PUT" {
                    // PUT defines a body: say explicitly that there is none.
                    req = req.header(CONTENT_LENGTH, 0);
                }
                Bytes::new()
            }
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| proto(format!("cannot build request: {e}")))?;

        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| proto(format!("cannot connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(format!("handshake failed: {e}")))?;
        // The connection task ends with the exchange (`Connection: close`);
        // its errors also surface through `send_request` or the body below.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(format!("reading the reply body failed: {e}")))?
            .to_bytes();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if (200..300).contains(&status) {
            Ok(Response { status, body })
        } else {
            Err(Error::Http {
                socket: self.socket.clone(),
                method: method.into(),
                path,
                status,
                body,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;
    use serde_json::json;

    /// Checked field by field against `components.schemas` of
    /// cloud-hypervisor.yaml at commit 00f68228 (API 0.3.0): VmConfig.cpus
    /// (CpusConfig: boot_vcpus, max_vcpus), memory (MemoryConfig: size,
    /// shared), payload (PayloadConfig: kernel, initramfs, cmdline), disks[]
    /// (DiskConfig: path, readonly), net[] (NetConfig: tap, mac), rng
    /// (RngConfig: src), serial (SerialConfig: mode, file, socket), console
    /// (ConsoleConfig: mode, file, socket), vsock (VsockConfig: cid, socket),
    /// platform (PlatformConfig: oem_strings).
    #[test]
    fn create_body_matches_schema() {
        let body = serde_json::to_value(ChVmConfig::from_config(&sample())).unwrap();
        assert_eq!(body["cpus"], json!({"boot_vcpus": 2, "max_vcpus": 2}));
        assert_eq!(
            body["memory"],
            json!({"size": 1073741824u64, "shared": true})
        );
        assert_eq!(
            body["payload"],
            json!({
                "kernel": "/var/lib/vmctl/kernel/vmlinuz",
                "initramfs": "/var/lib/vmctl/kernel/initrd.img",
                "cmdline": "console=ttyS0 root=/dev/vda rw",
            })
        );
        assert_eq!(
            body["disks"],
            json!([
                {"path": "/var/lib/vmctl/volumes/blog.raw", "readonly": false, "image_type": "Raw", "backing_files": false},
                {"path": "/var/lib/vmctl/seed,1.raw", "readonly": true, "image_type": "Raw", "backing_files": false},
            ])
        );
        assert_eq!(
            body["net"],
            json!([{"tap": "vmt-blog", "mac": "52:54:00:12:34:56"}])
        );
        assert_eq!(body["rng"], json!({"src": "/dev/urandom"}));
        assert_eq!(
            body["serial"],
            json!({"mode": "Socket", "socket": "/run/vmctl/vm/blog/serial"})
        );
        assert_eq!(body["console"], json!({"mode": "Off"}));
        assert_eq!(
            body["vsock"],
            json!({"cid": 7, "socket": "/run/vmctl/vm/blog/vsock"})
        );
        assert_eq!(
            body["platform"],
            json!({"oem_strings": ["io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA x@y"]})
        );
        assert_eq!(
            body.as_object().unwrap().len(),
            10,
            "unexpected top-level keys: {body}"
        );
    }

    #[test]
    fn create_body_minimal() {
        let mut cfg = sample();
        cfg.initrd = None;
        cfg.cmdline.clear();
        cfg.disks.clear();
        cfg.net.clear();
        cfg.vsock = None;
        cfg.serial_socket = None;
        cfg.credentials.clear();
        let body = serde_json::to_value(ChVmConfig::from_config(&cfg)).unwrap();
        assert_eq!(
            body,
            json!({
                "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
                "memory": {"size": 1073741824u64, "shared": false},
                "payload": {"kernel": "/var/lib/vmctl/kernel/vmlinuz"},
                "rng": {"src": "/dev/urandom"},
                "serial": {"mode": "Null"},
                "console": {"mode": "Off"},
            })
        );
    }

    #[test]
    fn console_modes_are_the_spec_enum() {
        let all = [
            ConsoleMode::Off,
            ConsoleMode::Pty,
            ConsoleMode::Tty,
            ConsoleMode::File,
            ConsoleMode::Socket,
            ConsoleMode::Null,
        ];
        assert_eq!(
            serde_json::to_value(all).unwrap(),
            json!(["Off", "Pty", "Tty", "File", "Socket", "Null"])
        );
        let file = SerialConfig {
            file: Some("/var/log/vmctl/blog.serial".into()),
            ..SerialConfig::mode(ConsoleMode::File)
        };
        assert_eq!(
            serde_json::to_value(&file).unwrap(),
            json!({"mode": "File", "file": "/var/log/vmctl/blog.serial"})
        );
        assert_eq!(
            serde_json::to_value(ConsoleConfig::mode(ConsoleMode::Pty)).unwrap(),
            json!({"mode": "Pty"})
        );
    }

    #[test]
    fn vm_info_parses_documented_reply() {
        let info: VmInfo = serde_json::from_str(
            r#"{"config": {"cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "payload": {}}, "state": "Running", "memory_actual_size": 536870912, "device_tree": {}}"#,
        )
        .unwrap();
        assert_eq!(info.state, ChVmState::Running);
        assert_eq!(info.memory_actual_size, Some(536870912));
        for (wire, state) in [
            ("Created", ChVmState::Created),
            ("Running", ChVmState::Running),
            ("Shutdown", ChVmState::Shutdown),
            ("Paused", ChVmState::Paused),
            ("BreakPoint", ChVmState::BreakPoint),
            ("Hibernating", ChVmState::Other("Hibernating".into())),
        ] {
            let info: VmInfo =
                serde_json::from_value(json!({"config": {}, "state": wire})).unwrap();
            assert_eq!(info.state, state);
            assert_eq!(info.state.as_str(), wire);
        }
    }

    #[test]
    fn image_types_are_the_spec_enum() {
        let all = [
            ImageType::FlatVmdk,
            ImageType::FixedVhd,
            ImageType::Qcow2,
            ImageType::Raw,
            ImageType::Vhdx,
            ImageType::Unknown,
        ];
        assert_eq!(
            serde_json::to_value(all).unwrap(),
            json!(["FlatVmdk", "FixedVhd", "Qcow2", "Raw", "Vhdx", "Unknown"])
        );
    }

    #[test]
    fn version_strings_parse_to_their_major() {
        for (text, major) in [
            ("53.0.0", Some(53)),
            ("v53.0.0-12-gabcdef", Some(53)),
            ("cloud-hypervisor v53.0", Some(53)),
            ("cloud-hypervisor v50.2-dirty\n", Some(50)),
            ("v51", Some(51)),
            ("  51.1  ", Some(51)),
            ("", None),
            ("v", None),
            ("dirty", None),
            ("5x.0", None),
            ("cloud-hypervisor", None),
            ("99999999999999999999.0", None),
        ] {
            assert_eq!(major_version(text), major, "{text:?}");
        }
    }

    #[test]
    fn versions_before_51_are_refused_naming_the_minimum() {
        let ping = |version: &str, build: Option<&str>| VmmPing {
            version: version.into(),
            build_version: build.map(Into::into),
            pid: None,
            features: Vec::new(),
        };
        assert_eq!(check_version(&ping("51.0.0", None)), Ok(51));
        assert_eq!(check_version(&ping("53.0.0", Some("v53.0.0"))), Ok(53));
        // A version field without a number falls back to build_version.
        assert_eq!(check_version(&ping("", Some("v52.1-dirty"))), Ok(52));
        for (version, build) in [("50.2.0", Some("v50.2-dirty")), ("48.0", None)] {
            let err = check_version(&ping(version, build)).unwrap_err();
            assert!(err.contains("too old"), "{err}");
            assert!(err.contains("v51.0 or newer"), "{err}");
        }
        let err = check_version(&ping("unknown", None)).unwrap_err();
        assert!(err.contains("cannot tell"), "{err}");
        assert!(err.contains("v51.0 or newer"), "{err}");
    }

    #[test]
    fn vmm_ping_parses_documented_reply() {
        let ping: VmmPing = serde_json::from_value(json!({
            "build_version": "v48.0-12-gabcdef",
            "version": "48.0",
            "pid": 1234,
            "features": ["kvm", "io_uring"],
        }))
        .unwrap();
        assert_eq!(ping.version, "48.0");
        assert_eq!(ping.build_version.as_deref(), Some("v48.0-12-gabcdef"));
        assert_eq!(ping.pid, Some(1234));
        assert_eq!(ping.features, ["kvm", "io_uring"]);
        // Only `version` is required.
        let bare: VmmPing = serde_json::from_value(json!({"version": "48.0"})).unwrap();
        assert_eq!(bare.features, Vec::<String>::new());
    }
}
