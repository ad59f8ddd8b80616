//! A machine id: 20 bytes, written as 40 hexadecimal characters.

use std::fmt;

/// A Defender for Endpoint machine id. Read in any case with surrounding whitespace trimmed; written in
/// lowercase, as the API writes it. Ordered by its bytes, so sorting ids sorts their text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId([u8; 20]);

impl MachineId {
    /// The id in `text`: 40 hexadecimal characters, any case, after trimming whitespace; `None` otherwise.
    pub fn parse(text: &str) -> Option<MachineId> {
        let text = text.trim().as_bytes();
        if text.len() != 40 {
            return None;
        }
        let mut id = [0u8; 20];
        for (byte, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(MachineId(id))
    }

    /// The id of these bytes (any 20 bytes are an id).
    pub fn from_bytes(bytes: [u8; 20]) -> MachineId {
        MachineId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The 40 lowercase hexadecimal characters, without the formatting machinery: a run writes each id
    /// several times (the journal, the call's path, the row).
    pub fn hex(&self) -> [u8; 40] {
        // Each byte's two digits at once.
        const PAIRS: [[u8; 2]; 256] = {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut pairs = [[0u8; 2]; 256];
            let mut byte = 0;
            while byte < 256 {
                pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
                byte += 1;
            }
            pairs
        };
        let mut text = [0u8; 40];
        for (pair, byte) in text.chunks_exact_mut(2).zip(self.0) {
            pair.copy_from_slice(&PAIRS[usize::from(byte)]);
        }
        text
    }

    /// What `to_string` gives, made straight from [`MachineId::hex`].
    pub fn to_hex(&self) -> String {
        String::from_utf8(self.hex().to_vec()).expect("hexadecimal digits are ASCII")
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// 40 lowercase hexadecimal characters.
impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(std::str::from_utf8(&self.hex()).expect("hexadecimal digits are ASCII"))
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({self})")
    }
}

/// An Entra (Azure AD) device id as compared: a GUID (8-4-4-4-12 hexadecimal digits, braces allowed) in
/// lowercase, without braces. `None` if `cell` is not one.
pub fn aad_device_id(cell: &str) -> Option<String> {
    let t = cell.trim();
    let t = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(t);
    let groups: Vec<&str> = t.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    (shape && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    #[test]
    fn ids_parse_in_any_case_and_print_lowercase() {
        let a = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
        let id = MachineId::parse(&a.to_uppercase()).unwrap();
        assert_eq!(id.to_string(), a);
        assert!(MachineId::parse(&a[1..]).is_none());
        assert!(MachineId::parse(&format!("g{}", &a[1..])).is_none());
    }

    #[test]
    fn surrounding_whitespace_is_trimmed_and_nothing_else_is_taken() {
        let id = MachineId::parse(A).unwrap();
        for text in [format!(" {A}\t"), format!("\r\n{A} "), format!("\u{a0}{A}"), A.to_uppercase()] {
            assert_eq!(MachineId::parse(&text), Some(id), "{text:?}");
        }
        let guid = "c6a3f5e2-1b4d-4e8f-9a7b-2d1c0e3f4a5b";
        let inner_space = format!("{} {}", &A[..20], &A[21..]);
        let wide = format!("{}é", &A[..38]);
        for text in ["", guid, &A[..39], &format!("{A}0"), &inner_space, &format!("0x{}", &A[2..]), &wide] {
            assert_eq!(MachineId::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn bytes_round_trip_and_order_as_the_text_does() {
        let low = MachineId::parse(&"0f".repeat(20)).unwrap();
        let high = MachineId::parse(&"f0".repeat(20)).unwrap();
        assert!(low < high && low.to_string() < high.to_string());
        assert_eq!(MachineId::from_bytes(*high.as_bytes()), high);
        assert_eq!(format!("{:>42}", low), format!("  {low}"));
        assert_eq!(format!("{low:?}"), format!("MachineId({})", "0f".repeat(20)));
    }
}
