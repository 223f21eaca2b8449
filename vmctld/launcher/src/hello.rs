//! Step 5: the guest agent's hellos on host port 1025.
//!
//! Any process in the guest can connect to that port, so each connection
//! is handled by its own task with a deadline ([`DEADLINE`]) and the size
//! cap of [`vmctl_guest::hello::read_hello`]: a connection that stays open
//! without sending delays no other. At most [`MAX_CONNECTIONS`] are read at
//! once; beyond that a new connection is closed at once. Only hellos that
//! pass every field check come out of [`serve`]; the rest are logged as
//! rejected (escaped, rate-limited).

use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use vmctl_guest::hello::{read_hello, CheckedHello};

use crate::guest_port;
use crate::ratelimit::GuestWarnings;

/// How long one connection may take to deliver its hello.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Connections read at the same time.
pub const MAX_CONNECTIONS: usize = 16;

/// Accepts connections on `listener` for as long as the launcher runs;
/// every valid hello comes out of the returned channel.
pub fn serve(listener: UnixListener) -> mpsc::Receiver<CheckedHello> {
    let (tx, rx) = mpsc::channel(4);
    let warnings = GuestWarnings::new();
    let logged = warnings.clone();
    guest_port::serve(
        listener,
        "hello port",
        MAX_CONNECTIONS,
        warnings,
        move |mut stream, slot| {
            let tx = tx.clone();
            let warnings = logged.clone();
            async move {
                let result = read_hello(&mut stream, DEADLINE).await;
                drop(stream);
                drop(slot);
                match result {
                    Ok(hello) => {
                        let _ = tx.send(hello).await;
                    }
                    Err(e) => warnings.warn(|| format!("rejected a hello on the hello port: {e}")),
                }
            }
        },
    );
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use vmctl_guest::protocol::{Control, Frame, Hello};

    fn hello_frame(kernel_release: &str) -> Vec<u8> {
        Frame::Control(Control::Hello(Hello {
            version: "0.1.0".into(),
            kernel_release: kernel_release.into(),
            boot_id: "0b3f2a4e-9c1d-4e5f-8a7b-6c5d4e3f2a1b".into(),
            uptime_secs: 3,
        }))
        .encode()
    }

    fn listen() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        mpsc::Receiver<CheckedHello>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock_1025");
        let rx = serve(UnixListener::bind(&path).unwrap());
        (dir, path, rx)
    }

    /// Well under DEADLINE: the good hello must not wait for the silent
    /// connection's deadline.
    const PROMPTLY: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_silent_connection_does_not_delay_a_good_hello() {
        let (_dir, path, mut hellos) = listen();
        let _holder = UnixStream::connect(&path).await.unwrap();
        let mut agent = UnixStream::connect(&path).await.unwrap();
        agent.write_all(&hello_frame("6.12.1-cloud")).await.unwrap();
        let hello = tokio::time::timeout(PROMPTLY, hellos.recv())
            .await
            .expect("the good hello was held up by the silent connection")
            .unwrap();
        assert_eq!(hello.kernel_release, "6.12.1-cloud");
        assert_eq!(hello.boot_id, "0b3f2a4e9c1d4e5f8a7b6c5d4e3f2a1b");
    }

    #[tokio::test]
    async fn bad_and_oversized_hellos_are_dropped() {
        let (_dir, path, mut hellos) = listen();
        let mut forged = UnixStream::connect(&path).await.unwrap();
        forged
            .write_all(&hello_frame("6.1\nMAINPID=1\nSTATUS=x"))
            .await
            .unwrap();
        // A frame announcing the protocol's 1 MiB maximum: refused on its
        // prefix, the connection closed without reading the rest.
        let mut big = UnixStream::connect(&path).await.unwrap();
        big.write_all(&((1u32 << 20) + 1).to_be_bytes())
            .await
            .unwrap();
        big.write_all(&[1u8; 1024]).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(PROMPTLY, big.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the over-size sender was not cut off: {closed:?}"
        );
        let mut agent = UnixStream::connect(&path).await.unwrap();
        agent.write_all(&hello_frame("6.1")).await.unwrap();
        let hello = tokio::time::timeout(PROMPTLY, hellos.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hello.kernel_release, "6.1", "only the valid hello came out");
        assert!(hellos.try_recv().is_err());
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
        let (_dir, path, mut hellos) = listen();
        let mut holders = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            holders.push(UnixStream::connect(&path).await.unwrap());
        }
        // Give the accept loop time to take all of them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(PROMPTLY, extra.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "connection {} was not closed: {closed:?}",
            MAX_CONNECTIONS + 1
        );
        // Holders that go away free their slots at once.
        holders.clear();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut agent = UnixStream::connect(&path).await.unwrap();
        agent.write_all(&hello_frame("6.1")).await.unwrap();
        let hello = tokio::time::timeout(PROMPTLY, hellos.recv())
            .await
            .expect("a slot came back")
            .unwrap();
        assert_eq!(hello.kernel_release, "6.1");
    }
}
