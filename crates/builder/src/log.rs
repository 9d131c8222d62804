//! A build's log: entries kept in memory for the status endpoint (`logsOffset` pages through
//! them), bounded in count and line length so a chatty build cannot exhaust the daemon.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Most entries kept; later ones replace the oldest and a marker says how many were dropped.
pub const MAX_ENTRIES: usize = 20_000;
/// Longest message kept, in bytes (longer lines are cut).
pub const MAX_LINE: usize = 4096;

/// Severity, as E2B names it.
pub use ember_api::LogLevel as Level;

/// One log entry, as E2B's status endpoint gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// RFC 3339.
    pub timestamp: String,
    pub level: Level,
    pub message: String,
    /// The step: `base`, `finalize` or its 1-based number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// The entries of one build. Entry numbers never change, even once old entries are dropped.
#[derive(Debug, Default)]
pub struct BuildLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: std::collections::VecDeque<Entry>,
    /// Entries dropped from the front.
    dropped: usize,
}

impl BuildLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry (cut to [`MAX_LINE`] bytes).
    pub fn push(&self, level: Level, step: Option<&str>, message: &str) {
        let mut message = message.trim_end_matches(['\n', '\r']).to_string();
        if message.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" [cut]");
        }
        let entry = Entry {
            timestamp: ember_envd_proto::time::rfc3339(SystemTime::now()),
            level,
            message,
            step: step.map(str::to_string),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.pop_front();
            inner.dropped += 1;
        }
        inner.entries.push_back(entry);
    }

    pub fn info(&self, step: Option<&str>, message: &str) {
        self.push(Level::Info, step, message);
    }

    pub fn error(&self, step: Option<&str>, message: &str) {
        self.push(Level::Error, step, message);
    }

    /// At most `limit` entries from number `offset` on (numbers count dropped entries too).
    pub fn since(&self, offset: usize, limit: usize) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let skip = offset.saturating_sub(inner.dropped);
        inner.entries.iter().skip(skip).take(limit).cloned().collect()
    }

    /// The last `n` entries.
    pub fn tail(&self, n: usize) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.iter().skip(inner.entries.len().saturating_sub(n)).cloned().collect()
    }

    /// Entries added so far (dropped ones included).
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.dropped + inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits process output into log lines, keeping a partial last line for the next chunk.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// The complete lines in `partial + chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        // A line with no end in sight is logged in pieces.
        if self.partial.len() > MAX_LINE {
            lines.push(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned());
        }
        lines
    }

    /// What is left at the end of the output.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_page_through_entries_and_survive_drops() {
        let log = BuildLog::new();
        for i in 0..MAX_ENTRIES + 5 {
            log.info(Some("1"), &format!("line {i}"));
        }
        assert_eq!(log.len(), MAX_ENTRIES + 5);
        let page = log.since(MAX_ENTRIES, 100);
        assert_eq!(page.len(), 5);
        assert_eq!(page[0].message, format!("line {MAX_ENTRIES}"));
        assert_eq!(log.since(0, 1)[0].message, "line 5", "the first five were dropped");
        assert!(log.since(MAX_ENTRIES + 5, 100).is_empty());
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let log = BuildLog::new();
        log.info(None, &"é".repeat(MAX_LINE));
        let m = &log.tail(1)[0].message;
        assert!(m.len() <= MAX_LINE + 6 && m.ends_with(" [cut]"));
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut lines = Lines::default();
        assert_eq!(lines.feed(b"a\nb"), vec!["a\n"]);
        assert_eq!(lines.feed(b"c\nd"), vec!["bc\n"]);
        assert_eq!(lines.finish().as_deref(), Some("d"));
        assert_eq!(lines.finish(), None);
    }
}
