//! cloud-hypervisor driver: REST API over a Unix socket.
//!
//! Create/boot sequence:
//! 1. Start `cloud-hypervisor --api-socket path=RUNTIME/ch-api.sock` (no VM yet).
//! 2. `GET /api/v1/vmm.ping` until it answers 200 (API server is up); a
//!    version older than [`api::MIN_VERSION`] (v51) is refused
//!    ([`crate::Error::UnsupportedVersion`]) and the VMM is killed.
//! 3. `PUT /api/v1/vm.create` with the whole VM config as JSON -> 204
//!    (before it, `vm.info` and the `vm.*` actions answer 404). Every disk
//!    is `image_type: Raw` with `backing_files: false`: the format is never
//!    guessed from content the guest wrote.
//! 4. [`crate::Vmm::boot`]: `PUT /api/v1/vm.boot` -> 204; `GET vm.info` then says `Running`.
//! 5. Later: `vm.pause`/`vm.resume`, `vm.power-button` (ACPI), and for a hard
//!    stop `vm.shutdown` followed by `vmm.shutdown` (the process exits).

pub mod api;
mod driver;

pub use api::ChApi;
pub use driver::ChVm;

/// Program name looked up on `PATH`.
pub const BINARY: &str = "cloud-hypervisor";
