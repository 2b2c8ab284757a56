//! Percent-decoding (`%2F` -> `/`), the one decoder for URL parts (`settings`) and mongodump
//! file names (`extract::mongodump`).
//!
//! Total on any input: a `%` not followed by two hex digits stays as it is, decoding works on
//! bytes (never slices a `str` inside a character), and the caller decides what decoded bytes
//! that are not UTF-8 mean (an error for a password, the undecoded name for a file).

/// `text` with every `%XX` (two hex digits, either case) replaced by its byte; anything else,
/// including a lone or truncated `%`, is kept as it is.
pub(crate) fn decode_bytes(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&first, tail)) = rest.split_first() {
        match (first, escaped_byte(tail)) {
            (b'%', Some(byte)) => {
                out.push(byte);
                rest = tail.get(2..).unwrap_or_default();
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    out
}

/// `text` decoded as [`decode_bytes`] does; `None` when the result is not UTF-8 (`%ff`).
pub(crate) fn decode_utf8(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_string());
    }
    String::from_utf8(decode_bytes(text)).ok()
}

/// The byte two hex digits at the start of `tail` stand for.
fn escaped_byte(tail: &[u8]) -> Option<u8> {
    match tail {
        [high, low, ..] => Some((hex_value(*high)? << 4) | hex_value(*low)?),
        _ => None,
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_to_their_bytes() {
        assert_eq!(decode_utf8("s%40cret%2Fx%3a"), Some("s@cret/x:".into()));
        assert_eq!(decode_utf8("%e2%82%AC"), Some("€".into()));
        assert_eq!(decode_utf8("plain"), Some("plain".into()));
        assert_eq!(decode_utf8(""), Some(String::new()));
    }

    /// `%a` followed by a multibyte character panicked in the old `settings.rs` decoder (it
    /// sliced the `str` inside `é`); a lone or truncated `%` is kept as it is.
    #[test]
    fn hostile_escapes_never_panic_and_are_kept() {
        for (input, expected) in [
            ("%", "%"),
            ("%a", "%a"),
            ("a%", "a%"),
            ("%aé", "%aé"),
            ("%é", "%é"),
            ("%éa", "%éa"),
            ("%zz", "%zz"),
            ("%%41", "%A"),
            ("%4", "%4"),
            ("%+f", "%+f"),
            ("%-1", "%-1"),
            ("%ḁb", "%ḁb"),
            ("中%文%", "中%文%"),
            ("🎉%41🎉", "🎉A🎉"),
        ] {
            assert_eq!(decode_utf8(input).as_deref(), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn escapes_that_are_not_utf8_are_bytes_not_lossy_text() {
        assert_eq!(decode_bytes("%ff%FEa"), vec![0xff, 0xfe, b'a']);
        assert_eq!(decode_utf8("%ff"), None);
        // Half a multibyte character.
        assert_eq!(decode_utf8("%e2%82"), None);
    }

    #[test]
    fn every_byte_round_trips_through_its_escape() {
        for byte in 0..=u8::MAX {
            for escape in [format!("%{byte:02x}"), format!("%{byte:02X}")] {
                assert_eq!(decode_bytes(&escape), vec![byte], "{escape}");
            }
        }
    }

    /// Every short string over an alphabet of `%`, hex digits, non-hex letters and multibyte
    /// characters decodes without panicking, and decoding only ever shortens the input.
    #[test]
    fn any_mix_of_percent_and_multibyte_is_total() {
        let alphabet = ["%", "a", "F", "0", "z", "é", "中", "🎉", "+"];
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            inputs = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            for input in &inputs {
                assert!(decode_bytes(input).len() <= input.len(), "{input:?}");
            }
        }
    }
}
