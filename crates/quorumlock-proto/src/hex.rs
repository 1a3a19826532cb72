//! Hex text of fixed-size secrets and digests, as the CLI prints session
//! secrets and access policies store token digests.

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The `N` bytes written as exactly `2 * N` hex digits (either case), or
/// `None` for any other text.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
        // Only hex digits remain, so each pair is ASCII and parses.
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_anything_but_exact_digits() {
        let bytes = [0x00, 0x9f, 0xff];
        assert_eq!(encode(&bytes), "009fff");
        assert_eq!(decode::<3>("009fff"), Some(bytes));
        assert_eq!(decode::<3>("009FFF"), Some(bytes));
        assert_eq!(decode::<3>("009ff"), None);
        assert_eq!(decode::<3>("009fffa"), None);
        assert_eq!(decode::<3>("+f9fff"), None, "a sign is not a digit");
        assert_eq!(decode::<3>("00 fff"), None);
        assert_eq!(decode::<2>("ééé"), None);
    }
}
