//! `vmctl list --watch`: varlink `List` with `more`. The first reply is the
//! list, then vmctld sends one reply per change until we leave.

use std::{io::Write, path::Path};

use serde::Serialize;
use serde_json::{json, Value};
use vmctl_api::{names::VARLINK_INTERFACE, types::ListChange, ErrorReply, ListReply, Vm};
use zlink::{tokio::unix, Call, Connection};

use crate::{client::ClientError, output};

/// A method call on the wire.
#[derive(Debug, Serialize)]
struct Method {
    method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

/// Prints the VMs, then each change as it comes: a table and one line per
/// change (`EVENT NAME STATE`), or with `json` one JSON object per line.
/// Returns only on an error (vmctld went away, or the watch fell behind).
pub async fn run(address: &Path, all: bool, json: bool) -> Result<(), ClientError> {
    let protocol = |message: String| ClientError::Protocol {
        path: address.to_path_buf(),
        message,
    };
    let stream = tokio::net::UnixStream::connect(address)
        .await
        .map_err(|source| ClientError::Connect {
            path: address.to_path_buf(),
            source,
        })?;
    let stream = unix::Stream::try_from(stream).map_err(|e| protocol(e.to_string()))?;
    let mut conn = Connection::new(stream);
    let call = Call::new(Method {
        method: format!("{VARLINK_INTERFACE}.List"),
        parameters: all.then(|| json!({ "all": true })),
    })
    .set_more(true);
    conn.send_call(&call, Vec::new())
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let mut first = true;
    loop {
        let (reply, _fds) = conn
            .receive_reply::<Value, ErrorReply>()
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let params = reply
            .map_err(ClientError::Daemon)?
            .into_parameters()
            .unwrap_or(Value::Null);
        let line = if first {
            let list: ListReply = serde_json::from_value(params)
                .map_err(|e| protocol(format!("unexpected reply to List: {e}")))?;
            first = false;
            render_list(&list.vms, json)
        } else {
            let change: ListChange = serde_json::from_value(params)
                .map_err(|e| protocol(format!("unexpected change from List: {e}")))?;
            render_change(&change, json)
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) ends the watch quietly.
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
}

/// The first reply: the table, or one line `{"vms": [...]}`.
fn render_list(vms: &[Vm], json: bool) -> String {
    if json {
        format!("{}\n", json!({ "vms": vms }))
    } else {
        output::vm_table(vms)
    }
}

/// One change: `EVENT NAME STATE`, or one line
/// `{"event": ..., "vm": {...}}`.
fn render_change(change: &ListChange, json: bool) -> String {
    if json {
        format!("{}\n", json!({ "event": change.event, "vm": change.vm }))
    } else {
        format!("{} {} {}\n", change.event, change.vm.name, change.vm.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Vm {
        serde_json::from_value(json!({
            "name": "blog", "state": "running", "owner_uid": 1000, "owner": "alice",
            "vcpus": 1, "memory_bytes": 1073741824
        }))
        .unwrap()
    }

    #[test]
    fn one_line_per_change() {
        let change = ListChange {
            vms: Vec::new(),
            event: "changed".into(),
            vm: vm(),
        };
        assert_eq!(render_change(&change, false), "changed blog running\n");
        let line = render_change(&change, true);
        assert_eq!(line.lines().count(), 1);
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["event"], "changed");
        assert_eq!(back["vm"]["name"], "blog");
        let list = render_list(&[vm()], true);
        assert_eq!(list.lines().count(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(&list).unwrap()["vms"][0]["name"],
            "blog"
        );
    }
}
