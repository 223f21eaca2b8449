//! Guest serial console output as journal lines.
//!
//! The console is guest text: each line is logged as `console: <text>` with
//! terminal colour sequences removed and every other control character or
//! non-ASCII byte shown as `\xNN` ([`vmctl_vmm::escape_log_text`]), so a
//! guest line can never start a journal line of its own (and look like a
//! host message). A line keeps at most [`LINE_MAX`] bytes, the rest is
//! dropped and marked `…[truncated]`; the buffer for the line being read
//! never grows past that. Lines pass a token bucket ([`BURST`] lines, then
//! [`PER_SEC`] a second); what it turns away is counted and reported as
//! `console: [N lines suppressed by the rate limit]`.

use std::time::Instant;

use vmctl_vmm::escape_log_text;

use crate::ratelimit::{Admit, LogLimiter};

/// Longest console line logged, in bytes of escaped text.
pub const LINE_MAX: usize = 512;

/// Marks a line cut at [`LINE_MAX`].
pub const TRUNCATED: &str = "…[truncated]";

/// Lines logged at once before the rate applies (a whole boot fits).
pub const BURST: u32 = 1000;

/// Lines logged per second once the burst is spent.
pub const PER_SEC: u32 = 10;

/// Raw bytes kept of one line: colour sequences are removed before the
/// cut, and escaping only makes text longer, so this keeps enough.
const RAW_MAX: usize = 4 * LINE_MAX;

/// Turns the console byte stream into journal lines.
#[derive(Debug)]
pub struct ConsoleLog {
    line: Vec<u8>,
    cut: bool,
    limiter: LogLimiter,
}

impl ConsoleLog {
    /// A console log with the default rate limit.
    pub fn new(now: Instant) -> Self {
        Self::with_limit(BURST, PER_SEC, now)
    }

    /// A console log admitting `burst` lines, then `per_sec` a second.
    pub fn with_limit(burst: u32, per_sec: u32, now: Instant) -> Self {
        ConsoleLog {
            line: Vec::new(),
            cut: false,
            limiter: LogLimiter::new(burst, per_sec, now),
        }
    }

    /// Takes guest bytes; pushes the journal lines they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<String>) {
        for &b in bytes {
            match b {
                b'\n' => self.end_line(now, out),
                b'\r' => {}
                _ if self.line.len() < RAW_MAX => self.line.push(b),
                _ => self.cut = true,
            }
        }
    }

    /// Ends the stream: logs an unfinished last line and any suppressed count.
    pub fn finish(&mut self, now: Instant, out: &mut Vec<String>) {
        if !self.line.is_empty() {
            self.end_line(now, out);
        }
        self.tick(now, out);
    }

    /// Reports lines suppressed earlier once the rate allows (call it now
    /// and then: the guest may stay silent after a flood).
    pub fn tick(&mut self, now: Instant, out: &mut Vec<String>) {
        if let Some(n) = self.limiter.flush(now) {
            out.push(suppressed(n));
        }
    }

    fn end_line(&mut self, now: Instant, out: &mut Vec<String>) {
        let cut = std::mem::take(&mut self.cut);
        let rendered = render(&self.line, cut);
        self.line.clear();
        let Some(text) = rendered else { return };
        match self.limiter.admit(now) {
            Admit::Log { suppressed_before } => {
                if suppressed_before > 0 {
                    out.push(suppressed(suppressed_before));
                }
                out.push(format!("console: {text}"));
            }
            Admit::Drop => {}
        }
    }
}

fn suppressed(n: u64) -> String {
    format!("console: [{n} lines suppressed by the rate limit]")
}

/// One console line as log text: colour sequences removed, escaped,
/// trailing blanks trimmed, cut at [`LINE_MAX`]. `None` for a blank line.
pub fn render(line: &[u8], cut: bool) -> Option<String> {
    // Tabs only lay text out: a space keeps it readable.
    let mut plain = strip_csi(line);
    for b in plain.iter_mut().filter(|b| **b == b'\t') {
        *b = b' ';
    }
    let mut text = escape_log_text(&plain);
    let trimmed = text.trim_end().len();
    text.truncate(trimmed);
    let mut cut = cut;
    if text.len() > LINE_MAX {
        // Escaped text is ASCII: any index is a character boundary.
        text.truncate(LINE_MAX);
        cut = true;
    }
    if cut {
        text.push_str(TRUNCATED);
    }
    (!text.is_empty()).then_some(text)
}

/// `line` without terminal control sequences: CSI (`ESC [` parameters,
/// final byte) entirely, other escapes (`ESC` + one byte) likewise.
fn strip_csi(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut bytes = line.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b != 0x1b {
            out.push(b);
            continue;
        }
        if bytes.next_if_eq(&b'[').is_some() {
            for c in bytes.by_ref() {
                if (0x40..=0x7e).contains(&c) {
                    break;
                }
            }
        } else {
            bytes.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines(log: &mut ConsoleLog, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        log.feed(bytes, now, &mut out);
        out
    }

    #[test]
    fn colours_go_and_control_characters_are_escaped() {
        assert_eq!(
            render(
                b"[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mfoo\x1b[0m.",
                false
            )
            .unwrap(),
            "[  OK  ] Started foo."
        );
        assert_eq!(render(b"\x1b7plain\x07", false).unwrap(), "plain\\x07");
        assert_eq!(render(b"   \t ", false), None);
        assert_eq!(render("naïve".as_bytes(), false).unwrap(), "na\\xc3\\xafve");
    }

    /// A guest line that tries to look like a host line after a line break
    /// stays inside its own `console:` line.
    #[test]
    fn a_guest_cannot_start_a_journal_line() {
        let t = Instant::now();
        let mut log = ConsoleLog::new(t);
        let out = lines(
            &mut log,
            b"login: \rvmctl-launch[1]: forged\x0bMAINPID=1\x0c\x1b]0;title\x07x\r\n",
            t,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("console: login: vmctl-launch[1]: forged\\x0bMAINPID=1\\x0c"),
            "{out:?}"
        );
        for line in &out {
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }

    #[test]
    fn long_lines_are_cut_and_the_buffer_stays_small() {
        let t = Instant::now();
        let mut log = ConsoleLog::new(t);
        let mut out = Vec::new();
        // 10 MiB without a newline: the buffer keeps RAW_MAX bytes at most.
        for _ in 0..10 * 1024 {
            log.feed(&[b'a'; 1024], t, &mut out);
            assert!(log.line.len() <= RAW_MAX);
        }
        assert!(out.is_empty());
        log.feed(b"\nnext\n", t, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[0],
            format!("console: {}{TRUNCATED}", "a".repeat(LINE_MAX))
        );
        assert_eq!(out[1], "console: next");
        // Escaping can lengthen a line past the limit too.
        let mut out = Vec::new();
        log.feed(&[0x01; 300], t, &mut out);
        log.feed(b"\n", t, &mut out);
        assert_eq!(out[0].len(), "console: ".len() + LINE_MAX + TRUNCATED.len());
    }

    #[test]
    fn a_flood_is_rate_limited_and_summarised() {
        let t = Instant::now();
        let mut log = ConsoleLog::with_limit(5, 1, t);
        let mut out = Vec::new();
        for i in 0..100 {
            log.feed(format!("line {i}\n").as_bytes(), t, &mut out);
        }
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(out[4], "console: line 4");
        // The guest goes quiet: the summary comes with the next tick.
        let mut out = Vec::new();
        log.tick(t + Duration::from_secs(1), &mut out);
        assert_eq!(out, ["console: [95 lines suppressed by the rate limit]"]);
        // Then lines flow again at the rate.
        let mut out = Vec::new();
        log.feed(b"after\n", t + Duration::from_secs(2), &mut out);
        assert_eq!(out, ["console: after"]);
    }
}
