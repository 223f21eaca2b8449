//! varlink `List` with `more`: the current list, then one reply per change
//! of a VM the caller may see, from the [`crate::events`] broadcast.
//!
//! Which changes a watcher gets is decided the way `List` decides:
//! `added` only if `List` (with the same `all`) would now show the VM,
//! `changed` and `removed` only for VMs it was shown. So a user never
//! learns of another user's VM through a watch.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::{stream::BoxStream, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use vmctl_api::{types::ListChange, ErrorReply, ListReply, Vm};

use crate::{
    events::{VmEvent, VmEventKind, EVENT_QUEUE},
    Caller, Manager, ManagerError,
};

/// One reply of the watch: parameters, or the error that ends it.
pub type Item = Result<Value, ErrorReply>;

/// Starts a watch for `caller`: the first item is `List`'s reply, the
/// rest follow the events. A refused `List` (`all` without manage-any) is
/// the only item.
pub async fn watch(manager: Arc<Manager>, caller: Caller, all: bool) -> BoxStream<'static, Item> {
    // Subscribed before listing, so that nothing between the two is lost
    // (a change already in the list is sent again: harmless).
    let rx = manager.events().subscribe();
    let vms = match manager.list_vms(&caller, all).await {
        Ok(vms) => vms,
        Err(e) => return futures_util::stream::once(async move { Err(e.to_varlink()) }).boxed(),
    };
    let first = to_value(&ListReply { vms: vms.clone() });
    let watcher = Watcher {
        manager,
        caller,
        all,
        known: vms.into_iter().map(|vm| (vm.name.clone(), vm)).collect(),
        rx,
        ended: false,
    };
    let rest = futures_util::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    });
    futures_util::stream::once(async move { first })
        .chain(rest)
        .boxed()
}

struct Watcher {
    manager: Arc<Manager>,
    caller: Caller,
    all: bool,
    /// The VMs this watcher has been shown, as it was shown them.
    known: BTreeMap<String, Vm>,
    rx: Receiver<VmEvent>,
    ended: bool,
}

impl Watcher {
    /// The next reply, `None` when the watch is over.
    async fn next(&mut self) -> Option<Item> {
        if self.ended {
            return None;
        }
        loop {
            let event = match self.rx.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(n)) => {
                    self.ended = true;
                    let e = ManagerError::internal(format!(
                        "the watch fell {n} changes behind (more than {EVENT_QUEUE}); call List again"
                    ));
                    return Some(Err(e.to_varlink()));
                }
                Err(RecvError::Closed) => return None,
            };
            if let Some(change) = self.change(event).await {
                return Some(to_value(&change));
            }
        }
    }

    /// What this watcher is told of `event`, if anything.
    async fn change(&mut self, event: VmEvent) -> Option<ListChange> {
        let (kind, vm) = match event.kind {
            VmEventKind::Added => {
                let vm = self.listed(&event.name).await?;
                self.known.insert(vm.name.clone(), vm.clone());
                ("added", vm)
            }
            VmEventKind::Changed { state } => {
                let vm = self.known.get_mut(&event.name)?;
                if vm.state == state {
                    return None;
                }
                vm.state = state;
                ("changed", vm.clone())
            }
            VmEventKind::Removed => ("removed", self.known.remove(&event.name)?),
        };
        Some(ListChange {
            vms: Vec::new(),
            event: kind.to_string(),
            vm,
        })
    }

    /// VM `name` as `List` would show it to this watcher now, if at all.
    async fn listed(&self, name: &str) -> Option<Vm> {
        let vms = self.manager.list_vms(&self.caller, self.all).await.ok()?;
        vms.into_iter().find(|vm| vm.name == name)
    }
}

fn to_value<T: serde::Serialize>(reply: &T) -> Item {
    serde_json::to_value(reply).map_err(|e| ManagerError::internal(e).to_varlink())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{spec, write};
    use crate::Registry;

    fn manager_with(vms: &[(&str, u32)]) -> (tempfile::TempDir, Arc<Manager>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, uid) in vms {
            let json = serde_json::to_string(&spec(name, *uid)).unwrap();
            write(dir.path(), &format!("{name}.json"), &json);
        }
        let m = Arc::new(Manager::new(Registry::new(dir.path())));
        (dir, m)
    }

    fn names(value: &Value) -> Vec<String> {
        value["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn first_the_list_then_only_own_changes() {
        let (dir, m) = manager_with(&[("mine", 1000), ("theirs", 1001)]);
        let user = Caller::without_subject(1000);
        let mut stream = watch(m.clone(), user, false).await;
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(names(&first), ["mine"]);

        // Another user's VM: created, changed, removed: nothing.
        let events = m.events();
        events.added("theirs");
        events.observe("theirs", "running", 1);
        events.removed("theirs");
        // Our own new VM.
        let json = serde_json::to_string(&spec("new", 1000)).unwrap();
        write(dir.path(), "new.json", &json);
        events.added("new");
        events.observe("mine", "running", 2);
        events.removed("mine");

        let mut seen = Vec::new();
        for _ in 0..3 {
            let item = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("a change")
                .unwrap()
                .unwrap();
            let change: ListChange = serde_json::from_value(item).unwrap();
            seen.push((change.event, change.vm.name, change.vm.state));
        }
        assert_eq!(
            seen,
            [
                ("added".into(), "new".into(), "unknown".into()),
                // The watch is not live (no systemd here), so "unknown"
                // before; the event says "running".
                ("changed".into(), "mine".into(), "running".into()),
                ("removed".into(), "mine".into(), "running".into()),
            ]
        );
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await;
        assert!(nothing.is_err(), "an extra reply: {nothing:?}");
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_and_ended() {
        let (_dir, m) = manager_with(&[("a", 0)]);
        let mut stream = watch(m.clone(), Caller::ROOT, false).await;
        stream.next().await.unwrap().unwrap();
        for i in 0..(EVENT_QUEUE as u32 + 10) {
            let state = if i % 2 == 0 { "running" } else { "stopped" };
            m.events().observe("a", state, i + 1);
        }
        let e = stream.next().await.unwrap().unwrap_err();
        assert_eq!(e.error, "io.vmctl.Manager.InternalError", "{e:?}");
        assert!(stream.next().await.is_none());
    }
}
