//! The cursor of a history page.

use chrono::{DateTime, Utc};

use crate::cli::Usage;

/// Where a page starts: after the row (or mail) first attempted at `at`
/// with key `key`. Printed as hex so that scripts treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) at: DateTime<Utc>,
    pub(super) key: String,
}

impl Cursor {
    pub(super) fn encode(&self) -> String {
        let raw = format!("{}|{}", self.at.timestamp_micros(), self.key);
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn decode(text: &str) -> Result<Self, Usage> {
        let malformed = || {
            Usage(format!(
                "--cursor '{text}' is not a cursor; copy the one printed under the previous page"
            ))
        };
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return Err(malformed());
        }
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect();
        let raw = bytes
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(malformed)?;
        let (micros, key) = raw.split_once('|').ok_or_else(malformed)?;
        let at = micros
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(malformed)?;
        Ok(Self {
            at,
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let cursor = Cursor {
            at: "2026-12-03T01:02:03.456789Z".parse().expect("time"),
            key: "acme\u{1f}e-1\u{1f}5-1-2".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        for bad in ["", "zz", "abc", "7c"] {
            let err = Cursor::decode(bad).unwrap_err();
            assert!(err.0.contains("is not a cursor"), "{bad}: {err}");
        }
    }
}
