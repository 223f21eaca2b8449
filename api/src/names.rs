//! Well-known names and paths: sockets, D-Bus names, installed files.

/// The varlink interface served by vmctld.
pub const VARLINK_INTERFACE: &str = "io.vmctl.Manager";

/// The gateway-only varlink interface, served on the same socket.
pub const GATEWAY_INTERFACE: &str = "io.vmctl.Gateway";

/// The varlink socket of vmctld (`ListenStream=` of `vmctld.socket`).
pub const VARLINK_SOCKET_PATH: &str = "/run/vmctl/io.vmctl.Manager";

/// The environment variable that overrides [`VARLINK_SOCKET_PATH`] for the CLI.
pub const VARLINK_ADDRESS_ENV: &str = "VMCTL_ADDRESS";

/// The well-known D-Bus name owned by vmctld on the system bus.
pub const DBUS_NAME: &str = "org.vmctl.Manager1";

/// The D-Bus object path of the manager object.
pub const DBUS_PATH: &str = "/org/vmctl/Manager1";

/// The D-Bus interface of the manager object.
pub const DBUS_INTERFACE: &str = "org.vmctl.Manager1";

/// The prefix of the D-Bus error names of the manager
/// (`org.vmctl.Manager1.Error.NoSuchVM`, ...).
pub const DBUS_ERROR_PREFIX: &str = "org.vmctl.Manager1.Error";

/// The D-Bus interface of the per-VM objects.
pub const DBUS_VM_INTERFACE: &str = "org.vmctl.VM1";

/// The parent of the per-VM D-Bus object paths (see
/// [`crate::vm_object_path`]).
pub const DBUS_VM_PATH_PREFIX: &str = "/org/vmctl/VM";

/// The default state directory of vmctld when `$STATE_DIRECTORY` is unset.
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/vmctl";

/// Where the daemon binary is installed.
pub const DAEMON_INSTALL_PATH: &str = "/usr/libexec/vmctl/vmctld";

/// Where the CLI binary is installed.
pub const CLI_INSTALL_PATH: &str = "/usr/bin/vmctl";

/// Where the interface description file is installed.
pub const IDL_INSTALL_PATH: &str = "/usr/share/vmctl/varlink/io.vmctl.Manager.varlink";

/// The systemd socket unit that listens on [`VARLINK_SOCKET_PATH`].
pub const SOCKET_UNIT: &str = "vmctld.socket";

/// The systemd service unit of vmctld.
pub const SERVICE_UNIT: &str = "vmctld.service";
