//! QMP events are bounded: a QEMU (driven by its guest) emitting events
//! faster than anyone reads them costs a fixed amount of memory, and
//! command replies still get through.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use vmctl_vmm::qemu::qmp::EVENT_QUEUE;
use vmctl_vmm::qemu::Qmp;

const FLOOD: usize = 10_000;

/// A QMP peer that greets, accepts `qmp_capabilities`, sends [`FLOOD`]
/// events, then answers every further command with `{"return": {}}`.
async fn flooding_qemu(listener: UnixListener) {
    let (stream, _) = listener.accept().await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
        .await
        .unwrap();
    let caps = lines.next_line().await.unwrap().unwrap();
    assert!(caps.contains("qmp_capabilities"), "{caps}");
    write
        .write_all(b"{\"return\": {}, \"id\": 0}\n")
        .await
        .unwrap();
    let mut burst = String::new();
    for i in 0..FLOOD {
        burst.push_str(&format!(
            "{{\"event\": \"RTC_CHANGE\", \"data\": {{\"offset\": {i}}}, \"timestamp\": {{\"seconds\": 1, \"microseconds\": 0}}}}\n"
        ));
    }
    write.write_all(burst.as_bytes()).await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        let request: serde_json::Value = serde_json::from_str(&line).unwrap();
        let reply = format!("{{\"return\": {{}}, \"id\": {}}}\n", request["id"]);
        write.write_all(reply.as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn an_event_flood_nobody_reads_is_dropped_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(flooding_qemu(listener));
    let (qmp, mut events) = Qmp::connect(&socket).await.unwrap();

    // A command sent after the flood is answered: the reader task is never
    // blocked by the full event queue.
    tokio::time::timeout(Duration::from_secs(10), qmp.execute("query-status", None))
        .await
        .expect("the reply got through the event flood")
        .unwrap();

    let mut queued = 0;
    while events.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, EVENT_QUEUE, "the queue holds exactly its bound");
    assert_eq!(qmp.dropped_events(), (FLOOD - EVENT_QUEUE) as u64);
}
