//! MessagePack encoding of task arguments and results, with fast paths for scalars and byte
//! buffers.
//!
//! serde sees a `Vec<u8>` as a sequence of numbers, so plain `rmp-serde` writes and reads a
//! 1 MiB buffer one element at a time. When a task's whole argument or result *is* a
//! `Vec<u8>`, this module writes it as MessagePack `bin` instead (still MessagePack, the format's
//! own type for bytes) with one copy, and reads it back the same way. Decoding accepts both
//! forms, so a `Vec<u8>` sent as a sequence (by `apply_named`, say) still decodes. Byte buffers
//! nested inside other types take serde's ordinary path; wrap them in `serde_bytes` to make
//! those fast too.
//!
//! When a whole argument or result is a scalar (an integer, a float or a `bool`), this module
//! writes the very bytes rmp-serde would, without going through serde's machinery, and reads
//! the common forms back directly (a `map` of `u64` spends most of its time here). Anything the
//! fast reader does not recognise goes to rmp-serde, so the answer — value or error — is always
//! rmp-serde's. Which path a type takes is decided by its `TypeId`, which the compiler folds
//! away: the other types pay nothing.

use std::any::{Any, TypeId};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Appends `value` to `buf` as MessagePack.
pub(crate) fn encode<T: Serialize + 'static>(buf: &mut Vec<u8>, value: &T) -> Result<(), String> {
    if let Some(small) = Small::of(value) {
        small.append_to(buf);
        return Ok(());
    }
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
#[inline]
pub(crate) fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    if let Some(value) = decode_scalar::<T>(bytes) {
        return Ok(value);
    }
    decode_slow(bytes)
}

/// [`decode`] for everything but the scalar fast path.
#[inline(never)]
fn decode_slow<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        if let Some(buf) = read_bin(bytes) {
            let boxed: Box<dyn Any> = Box::new(buf.to_vec());
            return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
        }
    }
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

/// Whether `T` takes the scalar fast path: [`Small::of`] encodes every `T`, and [`decode`]
/// reads its usual forms directly. Folds to a constant.
#[inline(always)]
pub(crate) fn is_scalar<T: 'static>() -> bool {
    fixed_width::<T>().is_some()
}

/// `value` as a `T`, when `T` is the very type `S` (`None` otherwise): how code generic over
/// `T` returns a value it made as a concrete scalar type. The check folds away.
#[inline(always)]
fn same<S: 'static, T: 'static>(value: S) -> Option<T> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
}

/// Reads a value that [`Small::fixed`] wrote for a `T` (`bytes` is exactly
/// [`fixed_width`]`::<T>()` long); `None` for anything else, which [`decode`] then reads.
#[inline(always)]
pub(crate) fn decode_fixed<T: 'static>(bytes: &[u8]) -> Option<T> {
    let t = TypeId::of::<T>();
    macro_rules! forms {
        ($($t:ty => $marker:expr, $n:expr, $from:expr);* $(;)?) => {$(
            if t == TypeId::of::<$t>() {
                let (&marker, rest) = bytes.split_first()?;
                let payload: [u8; $n] = rest.try_into().ok()?;
                if marker != $marker {
                    return None;
                }
                #[allow(clippy::redundant_closure_call)]
                return same::<$t, T>(($from)(payload));
            }
        )*};
    }
    forms! {
        u64 => 0xcf, 8, u64::from_be_bytes;
        i64 => 0xd3, 8, i64::from_be_bytes;
        f64 => 0xcb, 8, f64::from_be_bytes;
        u32 => 0xce, 4, u32::from_be_bytes;
        i32 => 0xd2, 4, i32::from_be_bytes;
        f32 => 0xca, 4, f32::from_be_bytes;
        u16 => 0xcd, 2, u16::from_be_bytes;
        i16 => 0xd1, 2, i16::from_be_bytes;
        u8 => 0xcc, 1, u8::from_be_bytes;
        i8 => 0xd0, 1, i8::from_be_bytes;
    }
    if t == TypeId::of::<usize>() {
        let v = decode_fixed::<u64>(bytes)?;
        return usize::try_from(v).ok().and_then(same::<usize, T>);
    }
    if t == TypeId::of::<isize>() {
        let v = decode_fixed::<i64>(bytes)?;
        return isize::try_from(v).ok().and_then(same::<isize, T>);
    }
    if t == TypeId::of::<bool>() {
        return read_bool(bytes).and_then(same::<bool, T>);
    }
    None
}

/// How many bytes [`Small::fixed`] writes for every `T`; `None` when `T` is not a scalar.
#[inline(always)]
pub(crate) fn fixed_width<T: 'static>() -> Option<u8> {
    let t = TypeId::of::<T>();
    let is = |others: &[TypeId]| others.contains(&t);
    if is(&[
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
        TypeId::of::<f64>(),
    ]) {
        Some(9)
    } else if is(&[
        TypeId::of::<u32>(),
        TypeId::of::<i32>(),
        TypeId::of::<f32>(),
    ]) {
        Some(5)
    } else if is(&[TypeId::of::<u16>(), TypeId::of::<i16>()]) {
        Some(3)
    } else if is(&[TypeId::of::<u8>(), TypeId::of::<i8>()]) {
        Some(2)
    } else if is(&[TypeId::of::<bool>()]) {
        Some(1)
    } else {
        None
    }
}

/// A scalar's MessagePack encoding, exactly as rmp-serde writes it: at most 9 bytes, kept as
/// the low bytes of a little-endian `u128` so that it is built and stored as whole words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Small {
    bits: u128,
    len: u8,
}

impl Small {
    /// The encoding of `value` if it is a scalar: an integer up to 64 bits, a float or a bool.
    #[inline(always)]
    pub(crate) fn of<T: 'static>(value: &T) -> Option<Small> {
        let any = value as &dyn Any;
        macro_rules! as_u64 {
            ($($t:ty),*) => {$(
                if let Some(&v) = any.downcast_ref::<$t>() {
                    return Some(Small::uint(v as u64));
                }
            )*};
        }
        macro_rules! as_i64 {
            ($($t:ty),*) => {$(
                if let Some(&v) = any.downcast_ref::<$t>() {
                    return Some(Small::sint(v as i64));
                }
            )*};
        }
        as_u64!(u64, u32, u16, u8, usize);
        as_i64!(i64, i32, i16, i8, isize);
        if let Some(&v) = any.downcast_ref::<f64>() {
            return Some(Small::tagged(0xcb, v.to_bits(), 8));
        }
        if let Some(&v) = any.downcast_ref::<f32>() {
            return Some(Small::tagged(0xca, v.to_bits().into(), 4));
        }
        if let Some(&v) = any.downcast_ref::<bool>() {
            return Some(Small::tagged(if v { 0xc3 } else { 0xc2 }, 0, 0));
        }
        None
    }

    /// The encoding of `value` in its type's widest MessagePack form (`u64` always as `0xcf`
    /// and 8 bytes, say): still MessagePack that any reader takes, and of one length for every
    /// value of the type, [`fixed_width`] bytes. `None` when `T` is not a scalar.
    #[inline(always)]
    pub(crate) fn fixed<T: 'static>(value: &T) -> Option<Small> {
        let any = value as &dyn Any;
        macro_rules! forms {
            ($($t:ty => $marker:expr, $n:expr, $bits:expr);* $(;)?) => {$(
                if let Some(&v) = any.downcast_ref::<$t>() {
                    #[allow(clippy::redundant_closure_call)]
                    return Some(Small::tagged($marker, ($bits)(v), $n));
                }
            )*};
        }
        forms! {
            u64 => 0xcf, 8, |v: u64| v;
            usize => 0xcf, 8, |v: usize| v as u64;
            u32 => 0xce, 4, |v: u32| u64::from(v);
            u16 => 0xcd, 2, |v: u16| u64::from(v);
            u8 => 0xcc, 1, |v: u8| u64::from(v);
            i64 => 0xd3, 8, |v: i64| v as u64;
            isize => 0xd3, 8, |v: isize| v as u64;
            i32 => 0xd2, 4, |v: i32| v as u64;
            i16 => 0xd1, 2, |v: i16| v as u64;
            i8 => 0xd0, 1, |v: i8| v as u64;
            f64 => 0xcb, 8, |v: f64| v.to_bits();
            f32 => 0xca, 4, |v: f32| u64::from(v.to_bits());
        }
        if let Some(&v) = any.downcast_ref::<bool>() {
            return Some(Small::tagged(if v { 0xc3 } else { 0xc2 }, 0, 0));
        }
        None
    }

    /// The encoding as the low `len()` bytes of a little-endian `u128` (the rest are zero).
    #[inline(always)]
    pub(crate) fn bits(&self) -> u128 {
        self.bits
    }

    /// How many bytes the encoding has.
    #[inline(always)]
    pub(crate) fn len(&self) -> u8 {
        self.len
    }

    /// Appends the bytes to `buf`.
    #[inline(always)]
    fn append_to(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.bits.to_le_bytes()[..self.len as usize]);
    }

    /// `marker` followed by the low `n` bytes of `payload` in big-endian order.
    #[inline(always)]
    fn tagged(marker: u8, payload: u64, n: u8) -> Small {
        let be = if n == 0 {
            0
        } else {
            // The low `n` bytes, most significant first, as the next `n` bytes in memory.
            (payload << (64 - 8 * u32::from(n))).swap_bytes()
        };
        Small {
            bits: u128::from(marker) | (u128::from(be) << 8),
            len: 1 + n,
        }
    }

    /// rmp's `write_uint`: the shortest form.
    #[inline(always)]
    fn uint(v: u64) -> Small {
        if v < 0x80 {
            Small::tagged(v as u8, 0, 0)
        } else if v <= u8::MAX as u64 {
            Small::tagged(0xcc, v, 1)
        } else if v <= u16::MAX as u64 {
            Small::tagged(0xcd, v, 2)
        } else if v <= u32::MAX as u64 {
            Small::tagged(0xce, v, 4)
        } else {
            Small::tagged(0xcf, v, 8)
        }
    }

    /// rmp's `write_sint`: negative values in the shortest signed form, the others as `uint`.
    #[inline(always)]
    fn sint(v: i64) -> Small {
        let bits = v as u64;
        if v >= 0 {
            Small::uint(bits)
        } else if v >= -32 {
            Small::tagged(v as u8, 0, 0)
        } else if v >= i8::MIN as i64 {
            Small::tagged(0xd0, bits, 1)
        } else if v >= i16::MIN as i64 {
            Small::tagged(0xd1, bits, 2)
        } else if v >= i32::MIN as i64 {
            Small::tagged(0xd2, bits, 4)
        } else {
            Small::tagged(0xd3, bits, 8)
        }
    }
}

/// An integer that fills `bytes` exactly, in any of MessagePack's integer forms.
#[inline(always)]
fn read_int(bytes: &[u8]) -> Option<i128> {
    Some(match *bytes {
        [m] if m < 0x80 => m as i128,
        [m] if m >= 0xe0 => m as i8 as i128,
        [0xcc, b] => b as i128,
        [0xcd, a, b] => u16::from_be_bytes([a, b]) as i128,
        [0xce, a, b, c, d] => u32::from_be_bytes([a, b, c, d]) as i128,
        [0xcf, a, b, c, d, e, f, g, h] => u64::from_be_bytes([a, b, c, d, e, f, g, h]) as i128,
        [0xd0, b] => b as i8 as i128,
        [0xd1, a, b] => i16::from_be_bytes([a, b]) as i128,
        [0xd2, a, b, c, d] => i32::from_be_bytes([a, b, c, d]) as i128,
        [0xd3, a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]) as i128,
        _ => return None,
    })
}

/// `bytes` as a `T`, when `T` is a scalar and `bytes` is one of its usual forms; `None` sends
/// the caller to rmp-serde (which then gives the value or the error).
#[inline(always)]
pub(crate) fn decode_scalar<T: 'static>(bytes: &[u8]) -> Option<T> {
    let t = TypeId::of::<T>();
    macro_rules! int {
        ($($t:ty),*) => {$(
            if t == TypeId::of::<$t>() {
                let v = read_int(bytes).and_then(|v| <$t>::try_from(v).ok())?;
                return same::<$t, T>(v);
            }
        )*};
    }
    int!(u64, u32, u16, u8, usize, i64, i32, i16, i8, isize);
    if t == TypeId::of::<f64>() {
        let v = match *bytes {
            [0xcb, a, b, c, d, e, f, g, h] => f64::from_be_bytes([a, b, c, d, e, f, g, h]),
            [0xca, a, b, c, d] => f32::from_be_bytes([a, b, c, d]) as f64,
            _ => return None,
        };
        return same::<f64, T>(v);
    }
    if t == TypeId::of::<f32>() {
        let [0xca, a, b, c, d] = *bytes else {
            return None;
        };
        return same::<f32, T>(f32::from_be_bytes([a, b, c, d]));
    }
    if t == TypeId::of::<bool>() {
        return read_bool(bytes).and_then(same::<bool, T>);
    }
    None
}

/// A MessagePack `bool` that fills `bytes` exactly (its only form).
fn read_bool(bytes: &[u8]) -> Option<bool> {
    match *bytes {
        [0xc2] => Some(false),
        [0xc3] => Some(true),
        _ => None,
    }
}

fn write_bin(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let (header, len) = bin_header(bytes.len())?;
    buf.reserve(len + bytes.len());
    buf.extend_from_slice(&header[..len]);
    buf.extend_from_slice(bytes);
    Ok(())
}

/// The header of a MessagePack `bin` value of `len` bytes (in its shortest form): the array's
/// first so many bytes.
pub(crate) fn bin_header(len: usize) -> Result<([u8; 5], usize), String> {
    let mut header = [0u8; 5];
    if len < 1 << 8 {
        header[..2].copy_from_slice(&[0xc4, len as u8]);
        Ok((header, 2))
    } else if len < 1 << 16 {
        header[0] = 0xc5;
        header[1..3].copy_from_slice(&(len as u16).to_be_bytes());
        Ok((header, 3))
    } else if let Ok(len) = u32::try_from(len) {
        header[0] = 0xc6;
        header[1..].copy_from_slice(&len.to_be_bytes());
        Ok((header, 5))
    } else {
        Err("a byte buffer larger than 4 GiB cannot be encoded".to_owned())
    }
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

    /// Runs `$check` on every edge value (below) as each integer type `$t` that holds it, and
    /// as `f64` and `f32`.
    macro_rules! every_scalar {
        ($check:ident; $($t:ty),*) => {
            for e in edges() {
                $(
                    if let Ok(v) = <$t>::try_from(e) {
                        $check(v);
                    }
                )*
                $check(e as f64);
                $check(e as f32);
            }
        };
    }

    /// Values at and around every boundary between MessagePack's integer forms.
    fn edges() -> Vec<i128> {
        let mut v = vec![0, 1, -1];
        for b in [5u32, 7, 8, 15, 16, 31, 32, 63, 64] {
            let p = 1i128 << b;
            v.extend([p - 1, p, p + 1, -p - 1, -p, -p + 1]);
        }
        v.extend([
            31, 32, 33, -31, -32, -33, 127, 128, 255, 256, -127, -128, -129,
        ]);
        v
    }

    /// `Small` writes exactly rmp-serde's bytes, and `decode` reads them back.
    #[test]
    fn scalars_encode_as_rmp_serde_does() {
        fn check<T>(v: T)
        where
            T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Copy + 'static,
        {
            assert!(is_scalar::<T>());
            let small = Small::of(&v).expect("a scalar");
            let want = rmp_serde::to_vec(&v).unwrap();
            let got = &small.bits().to_le_bytes()[..small.len() as usize];
            assert_eq!(got, &want[..], "{v:?}");
            assert_eq!(decode::<T>(&want).unwrap(), v);
        }
        every_scalar!(check; u64, u32, u16, u8, usize, i64, i32, i16, i8, isize);
        for f in [f64::NAN, f64::INFINITY, -0.0, 1e-300, f64::MAX] {
            let small = Small::of(&f).unwrap();
            let want = rmp_serde::to_vec(&f).unwrap();
            assert_eq!(
                &small.bits().to_le_bytes()[..small.len() as usize],
                &want[..]
            );
        }
        check(true);
        check(false);
        assert!(!is_scalar::<String>() && Small::of(&"x".to_string()).is_none());
        assert!(Small::fixed(&"x".to_string()).is_none() && fixed_width::<String>().is_none());
        assert!(!is_scalar::<(u64,)>() && Small::of(&(1u64,)).is_none());
        assert!(!is_scalar::<u128>() && Small::of(&1u128).is_none());
    }

    /// `Small::fixed` writes one length per type, which rmp-serde reads back as the value, and
    /// which `decode_fixed` reads fast; `decode_fixed` takes nothing else.
    #[test]
    fn fixed_width_forms_are_messagepack() {
        fn check<T>(v: T)
        where
            T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Copy + 'static,
        {
            let small = Small::fixed(&v).expect("a scalar");
            assert_eq!(Some(small.len()), fixed_width::<T>(), "{v:?}");
            let bytes = &small.bits().to_le_bytes()[..small.len() as usize];
            assert_eq!(rmp_serde::from_slice::<T>(bytes).unwrap(), v, "{bytes:x?}");
            assert_eq!(decode_fixed::<T>(bytes), Some(v));
            assert_eq!(decode::<T>(bytes).unwrap(), v);
            // The minimal form is not the fixed one (except where they coincide).
            let minimal = rmp_serde::to_vec(&v).unwrap();
            if minimal != bytes {
                assert_eq!(decode_fixed::<T>(&minimal), None);
            }
        }
        every_scalar!(check; u64, u32, u16, u8, usize, i64, i32, i16, i8, isize);
        check(true);
        check(false);
        assert_eq!(decode_fixed::<u64>(&[0xcf, 1, 2]), None);
        assert_eq!(decode_fixed::<u64>(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode_fixed::<String>(&[0xa0]), None);
    }

    /// Whatever the bytes, `decode` of a scalar gives rmp-serde's answer: the same value, or an
    /// error where rmp-serde gives one.
    #[test]
    fn scalar_decoding_agrees_with_rmp_serde() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for e in edges() {
            // Every integer form that can hold `e`, minimal or not.
            let forms: [(u8, i128, usize, bool); 8] = [
                (0xcc, e, 1, e >= 0 && e <= u8::MAX as i128),
                (0xcd, e, 2, e >= 0 && e <= u16::MAX as i128),
                (0xce, e, 4, e >= 0 && e <= u32::MAX as i128),
                (0xcf, e, 8, e >= 0 && e <= u64::MAX as i128),
                (0xd0, e, 1, i8::try_from(e).is_ok()),
                (0xd1, e, 2, i16::try_from(e).is_ok()),
                (0xd2, e, 4, i32::try_from(e).is_ok()),
                (0xd3, e, 8, i64::try_from(e).is_ok()),
            ];
            for (marker, v, n, fits) in forms {
                if fits {
                    let mut b = vec![marker];
                    b.extend_from_slice(&(v as u64).to_be_bytes()[8 - n..]);
                    inputs.push(b);
                }
            }
            inputs.push(rmp_serde::to_vec(&(e as f64)).unwrap());
            inputs.push(rmp_serde::to_vec(&(e as f32)).unwrap());
        }
        for b in 0..=255u8 {
            inputs.push(vec![b]);
            inputs.push(vec![b, 1]);
        }
        inputs.push(vec![0xcf, 1, 2]); // truncated
        inputs.push(vec![0x05, 0x06]); // trailing byte
        inputs.push(rmp_serde::to_vec("text").unwrap());
        inputs.push(rmp_serde::to_vec(&[1u8, 2]).unwrap());
        fn agree<T>(bytes: &[u8])
        where
            T: DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
        {
            let ours = decode::<T>(bytes);
            let theirs = rmp_serde::from_slice::<T>(bytes).map_err(|e| e.to_string());
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert!(
                    a == b || format!("{a:?}") == format!("{b:?}"),
                    "{bytes:x?}: {a:?} vs {b:?}"
                ),
                (Err(a), Err(b)) => assert_eq!(a, b, "{bytes:x?}"),
                _ => panic!(
                    "{bytes:x?} as {}: {ours:?} vs {theirs:?}",
                    std::any::type_name::<T>()
                ),
            }
        }
        for b in &inputs {
            agree::<u64>(b);
            agree::<u32>(b);
            agree::<u16>(b);
            agree::<u8>(b);
            agree::<usize>(b);
            agree::<i64>(b);
            agree::<i32>(b);
            agree::<i16>(b);
            agree::<i8>(b);
            agree::<isize>(b);
            agree::<f64>(b);
            agree::<f32>(b);
            agree::<bool>(b);
        }
    }

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
