//! Authorisation: who may do what to which VM.
//!
//! Root (uid 0) is always allowed and never goes to polkit. Everybody else
//! is checked with polkit (`CheckAuthorization` on
//! `org.freedesktop.PolicyKit1` over the system bus) against the actions in
//! `polkit/org.vmctl.policy`; the shipped rule `polkit/50-vmctl.rules`
//! grants create and manage-own to group `vmctl`.
//!
//! The subject polkit is asked about is never a bare pid (CVE-2013-4288: a
//! pid can be reused by a more privileged process between the check and
//! polkit's lookup):
//!
//! - a varlink peer is a `unix-process` with the pidfd from `SO_PEERPIDFD`
//!   and its uid (polkit >= 124 resolves the process from the pidfd), or,
//!   on kernels without `SO_PEERPIDFD`, pid + start time + uid;
//! - a D-Bus sender is a `system-bus-name` with its unique name.
//!
//! `systemctl start vm@NAME` by its owner: systemd asks polkit for
//! `org.freedesktop.systemd1.manage-units`, and the rule in
//! `polkit/50-vmctl.rules` allows start, stop and restart of
//! `vm@NAME.service` when `/run/vmctl/owners/NAME` names the caller. vmctld
//! keeps that directory ([`Manager::publish_owner`] at create,
//! [`Manager::withdraw_owner`] at rm, [`Manager::publish_owners`] at start).
//! tmpfiles.d makes it `root:polkitd 2750`, so its records (mode 0640)
//! belong to group polkitd without vmctld needing CAP_CHOWN, and other
//! users cannot read who owns which VM.
//!
//! Visibility: a VM the caller neither owns nor may manage through
//! manage-any answers exactly like a VM that does not exist (`NoSuchVM`
//! with the same parameters). manage-any for a named VM is asked without
//! user interaction: a password prompt would tell the caller that the VM
//! exists.

use std::{
    collections::HashMap,
    fs, io,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::PathBuf,
};

use vmctl_api::{spec::VmSpec, validate_vm_name};
use zbus::{
    zvariant::{Fd, Value},
    Connection,
};

use crate::{
    caller::{ProcessSubject, Subject},
    Caller, Manager, ManagerError,
};

/// A polkit action of vmctl (declared in `polkit/org.vmctl.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `org.vmctl.vm.create`: create VMs (owned by the caller); list images.
    Create,
    /// `org.vmctl.vm.manage-own`: start, stop, restart, exec, shell, cp,
    /// console, rm, rebuild, resize, publish of one's own VMs.
    ManageOwn,
    /// `org.vmctl.vm.manage-any`: all of that for any user's VMs, and
    /// seeing them (`vmctl list --all`).
    ManageAny,
    /// `org.vmctl.image.manage`: image build, import and rm.
    ImageManage,
    /// `org.vmctl.admin`: quotas, `doctor --repair`.
    Admin,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 5] = [
        Action::Create,
        Action::ManageOwn,
        Action::ManageAny,
        Action::ImageManage,
        Action::Admin,
    ];

    /// The polkit action ID.
    pub fn id(self) -> &'static str {
        match self {
            Self::Create => "org.vmctl.vm.create",
            Self::ManageOwn => "org.vmctl.vm.manage-own",
            Self::ManageAny => "org.vmctl.vm.manage-any",
            Self::ImageManage => "org.vmctl.image.manage",
            Self::Admin => "org.vmctl.admin",
        }
    }
}

const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";
const POLKIT_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
const POLKIT_INTERFACE: &str = "org.freedesktop.PolicyKit1.Authority";
/// `CheckAuthorizationFlags.AllowUserInteraction`.
const ALLOW_USER_INTERACTION: u32 = 1;

/// Who decides for callers other than root.
#[derive(Debug)]
pub struct Authority {
    kind: AuthorityKind,
}

#[derive(Debug)]
enum AuthorityKind {
    /// polkitd on the system bus (`None`) or the bus at this address,
    /// connected at the first check, and again after the connection broke.
    Lazy {
        address: Option<String>,
        conn: std::sync::Mutex<Option<Connection>>,
    },
    /// polkitd (or a stand-in) on this connection.
    Bus(Connection),
    /// A fixed table of (uid, action) grants.
    Fixed(Vec<(u32, Action)>),
}

impl Default for Authority {
    fn default() -> Self {
        Self::system_bus()
    }
}

impl Authority {
    /// polkitd on the system bus (what vmctld uses).
    pub fn system_bus() -> Self {
        Self {
            kind: AuthorityKind::Lazy {
                address: None,
                conn: std::sync::Mutex::new(None),
            },
        }
    }

    /// polkit on the bus at `address`, connected like the system bus in
    /// [`Authority::system_bus`] (tests: a private bus that goes away).
    pub fn at_address(address: &str) -> Self {
        Self {
            kind: AuthorityKind::Lazy {
                address: Some(address.to_string()),
                conn: std::sync::Mutex::new(None),
            },
        }
    }

    /// The polkit authority reached over `conn` (tests: a private bus).
    pub fn on_connection(conn: Connection) -> Self {
        Self {
            kind: AuthorityKind::Bus(conn),
        }
    }

    /// A fixed table, for tests of code that calls [`Manager::authorize`]:
    /// `uid` may perform `action` exactly when `(uid, action)` is listed.
    pub fn fixed(grants: impl IntoIterator<Item = (u32, Action)>) -> Self {
        Self {
            kind: AuthorityKind::Fixed(grants.into_iter().collect()),
        }
    }

    /// Whether `caller` (not root) may perform `action`, asking polkit.
    /// `Err` only when the question could not be answered.
    async fn check(
        &self,
        caller: &Caller,
        action: Action,
        interactive: bool,
    ) -> Result<bool, ManagerError> {
        if caller.gateway().is_some() {
            // What a user may do through a gateway: see crate::gateway.
            return Ok(matches!(action, Action::Create | Action::ManageOwn));
        }
        let (conn, subject) = match (&self.kind, subject(caller)) {
            (AuthorityKind::Fixed(grants), _) => return Ok(grants.contains(&(caller.uid, action))),
            // Nothing polkit could identify: refuse rather than guess.
            (_, None) => return Ok(false),
            (AuthorityKind::Bus(conn), Some(subject)) => (conn.clone(), subject),
            (AuthorityKind::Lazy { address, conn }, Some(subject)) => {
                (lazy_connection(address.as_deref(), conn).await?, subject)
            }
        };
        let flags = if interactive && caller.allow_interaction {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        match check_authorization(&conn, subject, action, flags).await {
            Ok(authorized) => Ok(authorized),
            Err(CallError::Answered(e)) => Err(e),
            Err(CallError::Broken(e)) => {
                if let AuthorityKind::Lazy { conn: cached, .. } = &self.kind {
                    // The bus went away (restarted): connect anew next time.
                    cached.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                Err(e)
            }
        }
    }
}

/// How a `CheckAuthorization` call failed.
enum CallError {
    /// With an error reply (from polkit or the bus): the connection works.
    Answered(ManagerError),
    /// Without one: the connection may be broken.
    Broken(ManagerError),
}

/// The cached connection, or a new one to `address` (`None`: the system
/// bus).
async fn lazy_connection(
    address: Option<&str>,
    cached: &std::sync::Mutex<Option<Connection>>,
) -> Result<Connection, ManagerError> {
    if let Some(conn) = cached.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Ok(conn);
    }
    let connected = match address {
        None => Connection::system().await,
        Some(address) => match zbus::connection::Builder::address(address) {
            Ok(builder) => builder.build().await,
            Err(e) => Err(e),
        },
    };
    let conn = connected.map_err(|e| {
        ManagerError::internal(format!("cannot ask polkit: no connection to the bus: {e}"))
    })?;
    *cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
    Ok(conn)
}

/// The `(sa{sv})` polkit subject of `caller`; `None` when it has none.
fn subject(caller: &Caller) -> Option<(&'static str, HashMap<&'static str, Value<'_>>)> {
    let mut details = HashMap::new();
    let kind = match &caller.subject {
        Subject::None | Subject::Gateway { .. } => return None,
        Subject::BusName(name) => {
            details.insert("name", Value::from(name.as_str()));
            "system-bus-name"
        }
        Subject::Process(process) => {
            match process.as_ref() {
                ProcessSubject::Pidfd { pidfd, uid } => {
                    details.insert("pidfd", Value::Fd(Fd::from(pidfd)));
                    details.insert("uid", Value::I32(uid_i32(*uid)));
                }
                ProcessSubject::PidStartTime {
                    pid,
                    start_time,
                    uid,
                } => {
                    details.insert("pid", Value::U32(*pid));
                    details.insert("start-time", Value::U64(*start_time));
                    details.insert("uid", Value::I32(uid_i32(*uid)));
                }
            }
            "unix-process"
        }
    };
    Some((kind, details))
}

/// polkit takes the uid as `i`; uids above `i32::MAX` do not occur on
/// Linux (the kernel's invalid uid is `u32::MAX`, which becomes -1: no
/// user).
fn uid_i32(uid: u32) -> i32 {
    i32::try_from(uid).unwrap_or(-1)
}

/// One `CheckAuthorization` call.
async fn check_authorization(
    conn: &Connection,
    subject: (&str, HashMap<&str, Value<'_>>),
    action: Action,
    flags: u32,
) -> Result<bool, CallError> {
    let details: HashMap<&str, &str> = HashMap::new();
    let reply = conn
        .call_method(
            Some(POLKIT_NAME),
            POLKIT_PATH,
            Some(POLKIT_INTERFACE),
            "CheckAuthorization",
            &(subject, action.id(), details, flags, ""),
        )
        .await
        .map_err(|e| {
            let error =
                ManagerError::internal(format!("cannot ask polkit about {}: {e}", action.id()));
            match e {
                zbus::Error::MethodError(..) | zbus::Error::FDO(_) => CallError::Answered(error),
                _ => CallError::Broken(error),
            }
        })?;
    let (authorized, _challenge, _details): (bool, bool, HashMap<String, String>) =
        reply.body().deserialize().map_err(|e| {
            CallError::Answered(ManagerError::internal(format!(
                "polkit's answer about {}: {e}",
                action.id()
            )))
        })?;
    Ok(authorized)
}

impl Manager {
    /// Decides whether `caller` may perform `action`: root always may;
    /// everybody else as polkit says (with a password prompt on the
    /// caller's agent when the caller allowed interaction). A refusal is
    /// `PermissionDenied` naming the action; polkit unreachable is an
    /// internal error naming polkit, never a permission.
    pub async fn authorize(&self, caller: &Caller, action: Action) -> Result<(), ManagerError> {
        if caller.is_root() || self.authority().check(caller, action, true).await? {
            Ok(())
        } else {
            Err(ManagerError::PermissionDenied {
                action: action.id().to_string(),
            })
        }
    }

    /// Whether `caller` holds manage-any, asked without interaction (see
    /// the module docs): for listing and visibility.
    pub async fn may_manage_any(&self, caller: &Caller) -> Result<bool, ManagerError> {
        Ok(caller.is_root()
            || self
                .authority()
                .check(caller, Action::ManageAny, false)
                .await?)
    }

    /// The spec of VM `name` as `caller` may see it: the caller's own VM,
    /// or any VM with manage-any. A VM that does not exist and one the
    /// caller may not see are both `NoSuchVM { name }`.
    pub async fn visible_spec(&self, caller: &Caller, name: &str) -> Result<VmSpec, ManagerError> {
        let missing = || ManagerError::NoSuchVm { name: name.into() };
        validate_vm_name(name).map_err(|_| missing())?;
        match self.registry().get(name)? {
            Some(spec) if spec.owner_uid == caller.uid || caller.is_root() => Ok(spec),
            // Asked for missing VMs too, so both answer alike.
            found => match self.may_manage_any(caller).await? {
                true => found.ok_or_else(missing),
                false => Err(missing()),
            },
        }
    }

    /// The unit of VM `name` if `caller` may manage it: manage-own for its
    /// owner, manage-any for everybody else (who cannot see it otherwise).
    pub async fn manageable_unit(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<String, ManagerError> {
        let spec = self.visible_spec(caller, name).await?;
        let action = if spec.owner_uid == caller.uid {
            Action::ManageOwn
        } else {
            Action::ManageAny
        };
        self.authorize(caller, action).await?;
        Ok(spec.unit())
    }
}

/// The directory of ownership records under the runtime directory.
pub const OWNERS_DIR: &str = "owners";

impl Manager {
    /// `/run/vmctl/owners`.
    fn owners_dir(&self) -> PathBuf {
        self.layout().runtime_dir.join(OWNERS_DIR)
    }

    /// Writes the ownership record of `spec` (its owner's user name) that
    /// the systemd rule reads. A uid without a user name gets no record:
    /// polkit knows subjects by name, so nobody could match it.
    pub fn publish_owner(&self, spec: &VmSpec) -> io::Result<()> {
        let dir = self.owners_dir();
        let path = dir.join(&spec.name);
        // NSS only: a registered (store-only) account has no local user
        // whom polkit should let start the VM.
        let Some(user) = crate::accounts::local_user_name(spec.owner_uid) else {
            return remove_if_exists(&path);
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", spec.name));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        // The mode past vmctld's UMask=0077: group polkitd reads it.
        file.set_permissions(fs::Permissions::from_mode(0o640))?;
        file.write_all(format!("{user}\n").as_bytes())?;
        drop(file);
        fs::rename(&tmp, &path)
    }

    /// Removes the ownership record of VM `name` (none is fine).
    pub fn withdraw_owner(&self, name: &str) -> io::Result<()> {
        remove_if_exists(&self.owners_dir().join(name))
    }

    /// Makes the ownership records exactly those of `specs` (at start:
    /// whatever happened while vmctld was down).
    pub fn publish_owners(&self, specs: &[VmSpec]) -> io::Result<()> {
        for spec in specs {
            self.publish_owner(spec)?;
        }
        let entries = match fs::read_dir(self.owners_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !specs.iter().any(|s| name.to_str() == Some(s.name.as_str())) {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn remove_if_exists(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{registry::testing, Registry};

    fn manager(grants: Vec<(u32, Action)>) -> (tempfile::TempDir, Manager) {
        let dir = tempfile::tempdir().unwrap();
        for (name, uid) in [("a", 1000), ("b", 1001)] {
            let json = serde_json::to_string(&testing::spec(name, uid)).unwrap();
            testing::write(dir.path(), &format!("{name}.json"), &json);
        }
        let m = Manager::new(Registry::new(dir.path())).with_authority(Authority::fixed(grants));
        (dir, m)
    }

    #[test]
    fn ownership_records_follow_the_vms() {
        let (dir, m) = manager(vec![]);
        let m = m.with_runtime_dir(dir.path().join("run"));
        let owners = dir.path().join("run/owners");
        let root_vm = testing::spec("r", 0);
        let nameless = testing::spec("n", 4_000_000);
        m.publish_owner(&root_vm).unwrap();
        assert_eq!(fs::read_to_string(owners.join("r")).unwrap(), "root\n");
        let mode = fs::metadata(owners.join("r")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        m.publish_owner(&nameless).unwrap();
        assert!(!owners.join("n").exists(), "a uid without a name");
        fs::write(owners.join("gone"), "alice\n").unwrap();
        m.publish_owners(&[testing::spec("x", 0)]).unwrap();
        let mut names: Vec<_> = fs::read_dir(&owners)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["x"]);
        m.withdraw_owner("x").unwrap();
        m.withdraw_owner("x").unwrap();
        assert!(!owners.join("x").exists());
    }

    #[test]
    fn action_ids_are_declared_in_the_policy() {
        let policy = include_str!("../../polkit/org.vmctl.policy");
        for action in Action::ALL {
            assert!(
                policy.contains(&format!("<action id=\"{}\">", action.id())),
                "{} not in org.vmctl.policy",
                action.id()
            );
        }
    }

    #[tokio::test]
    async fn root_always_others_as_the_authority_says() {
        let (_dir, m) = manager(vec![(1000, Action::Create)]);
        m.authorize(&Caller::ROOT, Action::Admin).await.unwrap();
        let alice = Caller::without_subject(1000);
        m.authorize(&alice, Action::Create).await.unwrap();
        let e = m.authorize(&alice, Action::Admin).await.unwrap_err();
        assert_eq!(
            e,
            ManagerError::PermissionDenied {
                action: "org.vmctl.admin".into()
            }
        );
    }

    #[tokio::test]
    async fn another_users_vm_answers_like_a_missing_one() {
        let (_dir, m) = manager(vec![(1000, Action::ManageOwn)]);
        let alice = Caller::without_subject(1000);
        assert_eq!(m.visible_spec(&alice, "a").await.unwrap().name, "a");
        assert_eq!(
            m.manageable_unit(&alice, "a").await.unwrap(),
            "vm@a.service"
        );
        let hidden = m.visible_spec(&alice, "b").await.unwrap_err();
        let missing = m.visible_spec(&alice, "zz").await.unwrap_err();
        assert_eq!(hidden, ManagerError::NoSuchVm { name: "b".into() });
        assert_eq!(missing, ManagerError::NoSuchVm { name: "zz".into() });
        assert_eq!(
            m.manageable_unit(&alice, "b").await.unwrap_err(),
            ManagerError::NoSuchVm { name: "b".into() }
        );
        // The owner without manage-own sees the VM but may not manage it.
        let bob = Caller::without_subject(1001);
        assert_eq!(m.visible_spec(&bob, "b").await.unwrap().name, "b");
        assert_eq!(
            m.manageable_unit(&bob, "b").await.unwrap_err(),
            ManagerError::PermissionDenied {
                action: "org.vmctl.vm.manage-own".into()
            }
        );
    }

    #[tokio::test]
    async fn manage_any_sees_and_manages_every_vm() {
        let (_dir, m) = manager(vec![(1002, Action::ManageAny)]);
        let carol = Caller::without_subject(1002);
        assert_eq!(
            m.manageable_unit(&carol, "a").await.unwrap(),
            "vm@a.service"
        );
        assert_eq!(
            m.visible_spec(&carol, "zz").await.unwrap_err(),
            ManagerError::NoSuchVm { name: "zz".into() }
        );
    }

    #[tokio::test]
    async fn no_subject_is_refused_by_polkit_without_asking() {
        // The system-bus authority: a caller without a subject must not
        // reach the bus (there is none in unit tests) and is refused.
        let dir = tempfile::tempdir().unwrap();
        let m = Manager::new(Registry::new(dir.path()));
        let e = m
            .authorize(&Caller::without_subject(1000), Action::Create)
            .await
            .unwrap_err();
        assert_eq!(e.short_name(), "PermissionDenied");
    }
}
