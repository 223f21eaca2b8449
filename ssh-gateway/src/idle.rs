//! The idle timeout: a connection's stream notes when bytes last moved
//! either way, and a watchdog closes the connection with an SSH disconnect
//! naming the limit once none moved for the configured time (russh's own
//! inactivity timeout closes without a word).

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// When a connection last moved a byte.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Time since the last byte moved (or since the start).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Returns once no byte moved for `limit`.
    pub async fn expired(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A stream that records its traffic in an [`Activity`].
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    /// Wraps `inner`, recording into `activity`.
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_restarts_the_idle_clock() {
        let (near, mut far) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut near = Tracked::new(near, activity.clone());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(activity.idle_for() >= Duration::from_secs(5));
        near.write_all(b"x").await.unwrap();
        assert!(activity.idle_for() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        far.write_all(b"y").await.unwrap();
        let mut byte = [0u8; 1];
        near.read_exact(&mut byte).await.unwrap();
        assert!(activity.idle_for() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_the_limit_without_traffic() {
        let activity = Activity::default();
        let waited = tokio::time::Instant::now();
        activity.expired(Duration::from_secs(30)).await;
        assert!(waited.elapsed() >= Duration::from_secs(30));
    }
}
