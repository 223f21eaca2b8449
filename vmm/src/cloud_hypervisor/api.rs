//! cloud-hypervisor REST API: request bodies and a minimal HTTP/1.1 client.
//!
//! Field names follow cloud-hypervisor's OpenAPI document
//! `vmm/src/api/openapi/cloud-hypervisor.yaml` (API `info.version: 0.3.0`,
//! as shipped by the cloud-hypervisor v4x-v5x releases). Only the fields vmctl
//! sets are modelled; everything else keeps cloud-hypervisor's defaults.
//!
//! HTTP: one connection per request, `Connection: close`, body length from
//! `Content-Length` (cloud-hypervisor's server never uses chunked encoding).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::config::VmConfig;
use crate::error::{Error, Result};

/// `VmConfig` schema: body of `PUT /vm.create`.
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
    /// `ConsoleConfig` for the legacy serial port (ttyS0).
    pub serial: ConsoleConfig,
    /// `ConsoleConfig` for virtio-console (hvc0).
    pub console: ConsoleConfig,
    /// `VsockConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// `PlatformConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformConfig>,
}

/// `CpusConfig` (`boot_vcpus` and `max_vcpus` are required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// Maximum vCPUs (no hotplug: equal to `boot_vcpus`).
    pub max_vcpus: u32,
}

/// `MemoryConfig` (`size` is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    /// Shared mapping; required for vhost-user devices (virtiofs) and set with vsock.
    #[serde(default)]
    pub shared: bool,
}

/// `PayloadConfig`.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Image path.
    pub path: PathBuf,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
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

/// `ConsoleConfig` (`mode` is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Output mode.
    pub mode: ConsoleMode,
    /// Unix socket path, with `mode: Socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `ConsoleConfig.mode` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device.
    Off,
    /// Discard output.
    Null,
    /// Unix socket server.
    Socket,
    /// Pseudo terminal.
    Pty,
    /// The VMM's terminal.
    Tty,
}

/// `VsockConfig` (`cid` and `socket` are required).
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

/// `VmInfo`: reply of `GET /vm.info` (only what vmctl reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmInfo {
    /// `Created`, `Running`, `Shutdown`, `Paused`, `BreakPoint`.
    pub state: String,
    /// Current guest memory, bytes.
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
}

/// `VmmPingResponse`: reply of `GET /vmm.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmmPing {
    /// cloud-hypervisor version.
    pub version: String,
    /// Build version.
    #[serde(default)]
    pub build_version: Option<String>,
    /// VMM process id.
    #[serde(default)]
    pub pid: Option<i64>,
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
                Some(path) => ConsoleConfig {
                    mode: ConsoleMode::Socket,
                    socket: Some(path.clone()),
                },
                None => ConsoleConfig {
                    mode: ConsoleMode::Null,
                    socket: None,
                },
            },
            console: ConsoleConfig {
                mode: ConsoleMode::Off,
                socket: None,
            },
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

    /// `PUT /api/v1/vm.create`.
    pub async fn create(&self, config: &ChVmConfig) -> Result<()> {
        let body = serde_json::to_string(config).map_err(|e| Error::HttpProtocol {
            socket: self.socket.clone(),
            message: format!("cannot encode vm.create body: {e}"),
        })?;
        self.call("PUT", "vm.create", Some(&body)).await.map(drop)
    }

    /// `GET /api/v1/vm.info`.
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
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| proto(format!("cannot connect: {e}")))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
        );
        if let Some(body) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            req.push_str(body);
        } else if method == "PUT" {
            req.push_str("Content-Length: 0\r\n\r\n");
        } else {
            req.push_str("\r\n");
        }
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| proto(format!("write failed: {e}")))?;
        let resp = read_response(&mut stream).await.map_err(proto)?;
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(Error::Http {
                socket: self.socket.clone(),
                method: method.into(),
                path,
                status: resp.status,
                body: resp.body,
            })
        }
    }
}

/// Read one HTTP/1.1 response: status line, headers, `Content-Length` body
/// (or up to EOF when there is no length and the status allows a body).
async fn read_response(stream: &mut UnixStream) -> std::result::Result<Response, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("connection closed before a complete response header".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {v:?}"))?,
                );
            } else if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("unsupported Transfer-Encoding {:?}", v.trim()));
            }
        }
    }
    let mut body = buf[header_end + 4..].to_vec();
    match content_length {
        Some(len) => {
            while body.len() < len {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read failed: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "connection closed after {} of {len} body bytes",
                        body.len()
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None if status == 204 || status == 304 || (100..200).contains(&status) => body.clear(),
        None => {
            stream
                .read_to_end(&mut body)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
        }
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;
    use serde_json::json;

    /// Checked field by field against `components.schemas` of
    /// cloud-hypervisor.yaml (API 0.3.0): VmConfig.cpus (CpusConfig:
    /// boot_vcpus, max_vcpus), memory (MemoryConfig: size, shared), payload
    /// (PayloadConfig: kernel, initramfs, cmdline), disks[] (DiskConfig: path,
    /// readonly), net[] (NetConfig: tap, mac), rng (RngConfig: src), serial and
    /// console (ConsoleConfig: mode, socket), vsock (VsockConfig: cid, socket),
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
                {"path": "/var/lib/vmctl/volumes/blog.raw", "readonly": false},
                {"path": "/var/lib/vmctl/seed,1.raw", "readonly": true},
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
    fn vm_info_parses_documented_reply() {
        let info: VmInfo = serde_json::from_str(
            r#"{"config": {"cpus": {"boot_vcpus": 1, "max_vcpus": 1}}, "state": "Running", "memory_actual_size": 536870912}"#,
        )
        .unwrap();
        assert_eq!(info.state, "Running");
        assert_eq!(info.memory_actual_size, Some(536870912));
    }
}
