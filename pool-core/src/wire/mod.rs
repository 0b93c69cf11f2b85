//! The MessagePack encoding of task arguments and results, for code that moves tasks over
//! other transports (such as `pool-redis`): what [`Pool::apply_encoded`](crate::Pool::apply_encoded) takes and returns.
//!
//! It is `rmp-serde`, except that a value that is a whole `Vec<u8>` travels as MessagePack
//! `bin` (one copy) instead of a sequence of numbers; decoding accepts both. A value that is a
//! scalar (an integer, a float or a `bool`) is written as the very bytes `rmp-serde` writes,
//! without going through serde, and decoding reads every MessagePack form of it (a `map` of
//! scalars sends them in their widest form, which `rmp-serde` reads as well).
//!
//! # Examples
//!
//! ```
//! let bytes = pool_core::wire::encode(&(2u64, "three".to_string()))?;
//! let back: (u64, String) = pool_core::wire::decode(&bytes)?;
//! assert_eq!(back, (2, "three".to_string()));
//! # Ok::<(), String>(())
//! ```
//!
//! Inside, the layer a job crosses first and last: the frame formats (`frame`: job frames out,
//! result frames back, with bounds-checked decoders), the MessagePack codec with its fast path
//! for scalars (`codec`), and big byte buffers spliced into job frames instead of copied
//! (`splice`).

pub(crate) mod codec;
pub(crate) mod frame;
pub(crate) mod splice;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes `value` as the pool does.
pub fn encode<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    codec::encode(&mut buf, value)?;
    Ok(buf)
}

/// Decodes one value as the pool does.
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    codec::decode(bytes)
}
