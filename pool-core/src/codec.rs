//! MessagePack encoding of task arguments and results, with a fast path for byte buffers.
//!
//! serde sees a `Vec<u8>` as a sequence of numbers, so plain `rmp-serde` writes and reads a
//! 1 MiB buffer one element at a time. When a task's whole argument or result *is* a
//! `Vec<u8>`, this module writes it as MessagePack `bin` instead (still MessagePack, the format's
//! own type for bytes) with one copy, and reads it back the same way. Decoding accepts both
//! forms, so a `Vec<u8>` sent as a sequence (by `apply_named`, say) still decodes. Byte buffers
//! nested inside other types take serde's ordinary path; wrap them in `serde_bytes` to make
//! those fast too.

use std::any::{Any, TypeId};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Appends `value` to `buf` as MessagePack.
pub(crate) fn encode<T: Serialize + 'static>(buf: &mut Vec<u8>, value: &T) -> Result<(), String> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        return write_bin(buf, bytes);
    }
    encode_any(buf, value)
}

/// Appends `value` to `buf` as MessagePack, without the byte-buffer fast path.
pub(crate) fn encode_any<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), String> {
    rmp_serde::encode::write(buf, value).map_err(|e| e.to_string())
}

/// Decodes one MessagePack value.
pub(crate) fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        if let Some(buf) = read_bin(bytes) {
            let boxed: Box<dyn Any> = Box::new(buf.to_vec());
            return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
        }
    }
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

fn write_bin(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len();
    buf.reserve(len + 5);
    if len < 1 << 8 {
        buf.extend_from_slice(&[0xc4, len as u8]);
    } else if len < 1 << 16 {
        buf.push(0xc5);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else if let Ok(len) = u32::try_from(len) {
        buf.push(0xc6);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        return Err("a byte buffer larger than 4 GiB cannot be encoded".to_owned());
    }
    buf.extend_from_slice(bytes);
    Ok(())
}

/// The payload of a MessagePack `bin` value that fills `bytes` exactly.
fn read_bin(bytes: &[u8]) -> Option<&[u8]> {
    let (&marker, rest) = bytes.split_first()?;
    let (len, rest) = match marker {
        0xc4 => (*rest.first()? as usize, rest.get(1..)?),
        0xc5 => (
            u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
            rest.get(2..)?,
        ),
        0xc6 => (
            u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
            rest.get(4..)?,
        ),
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn byte_buffers_travel_as_bin_and_decode_either_way() {
        for len in [0, 1, 255, 256, 65_535, 65_536, 1 << 20] {
            let v: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let mut buf = Vec::new();
            encode(&mut buf, &v).unwrap();
            assert!(buf.len() <= len + 5, "bin is compact");
            assert_eq!(decode::<Vec<u8>>(&buf).unwrap(), v);
            // The serde form (a sequence) decodes too.
            let seq = rmp_serde::to_vec(&v).unwrap();
            assert_eq!(decode::<Vec<u8>>(&seq).unwrap(), v);
        }
        // Other types are untouched.
        let mut buf = Vec::new();
        encode(&mut buf, &(1u8, vec![2u8, 3])).unwrap();
        assert_eq!(decode::<(u8, Vec<u8>)>(&buf).unwrap(), (1, vec![2, 3]));
        // Truncated bin is an error, not a panic.
        let mut buf = Vec::new();
        encode(&mut buf, &vec![7u8; 300]).unwrap();
        assert!(decode::<Vec<u8>>(&buf[..100]).is_err());
    }
}
