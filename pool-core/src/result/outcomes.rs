//! [`EncodedOutcomes`]: each item's own outcome of a job run from encoded arguments, kept in
//! one buffer.

use std::fmt;

use crate::Error;

/// Each item's own outcome of a job submitted with
/// [`Pool::apply_encoded_each`](crate::Pool::apply_encoded_each): the item's return value as
/// MessagePack bytes, or its error.
///
/// The values of all items share one buffer, so a job of a thousand items costs three
/// allocations, not a thousand: transports that pass the bytes on (such as `pool-redis`)
/// read them in place with [`iter`](Self::iter) or [`get`](Self::get).
///
/// # Examples
///
/// ```
/// use pool_core::{task, wire, Pool, Task};
///
/// #[task]
/// fn inverse(x: i64) -> i64 {
///     assert!(x != 0, "no inverse of zero");
///     100 / x
/// }
///
/// let pool = Pool::builder().processes(1).build()?;
/// let items = [wire::encode(&5i64).unwrap(), wire::encode(&0i64).unwrap()];
/// let out = pool.apply_encoded_each(inverse::NAME, &items).get()?;
/// assert_eq!(out.len(), 2);
/// assert_eq!(wire::decode::<i64>(out.get(0).unwrap().unwrap()).unwrap(), 20);
/// assert!(matches!(out.get(1), Some(Err(pool_core::Error::Panicked { .. }))));
/// assert_eq!(out.failures(), 1);
/// # Ok::<(), pool_core::Error>(())
/// ```
#[derive(Default)]
pub struct EncodedOutcomes {
    /// The values of the items that succeeded, one after another.
    bytes: Vec<u8>,
    /// Where each item's bytes end in `bytes`. A MessagePack value is never empty, so an item
    /// whose range is empty is one that failed (its error is in `errors`).
    ends: Vec<usize>,
    /// The items that failed, by index, in increasing order.
    errors: Vec<(usize, Error)>,
}

impl EncodedOutcomes {
    /// Reserves room for `items` more outcomes whose values take about `bytes` bytes.
    pub(crate) fn reserve(&mut self, items: usize, bytes: usize) {
        self.ends.reserve(items);
        self.bytes.reserve(bytes);
    }

    /// Appends an item that returned `value` (a MessagePack value, never empty).
    pub(crate) fn push_ok(&mut self, value: &[u8]) -> Result<(), Error> {
        if value.is_empty() {
            return Err(Error::Protocol(
                "an empty value in a result frame".to_owned(),
            ));
        }
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// Appends an item that failed with `error`.
    pub(crate) fn push_err(&mut self, error: Error) {
        self.errors.push((self.ends.len(), error));
        self.ends.push(self.bytes.len());
    }

    /// How many items the job had.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the job had no items.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// How many items failed.
    pub fn failures(&self) -> usize {
        self.errors.len()
    }

    /// Whether every item succeeded.
    pub fn all_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Item `index`'s outcome: its value's MessagePack bytes, or its error. `None` past the end.
    pub fn get(&self, index: usize) -> Option<Result<&[u8], &Error>> {
        let end = *self.ends.get(index)?;
        let start = index.checked_sub(1).map_or(0, |before| self.ends[before]);
        if start < end {
            return Some(Ok(&self.bytes[start..end]));
        }
        let at = self.errors.binary_search_by_key(&index, |(i, _)| *i).ok()?;
        Some(Err(&self.errors[at].1))
    }

    /// Every item's outcome, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            outcomes: self,
            next: 0,
            start: 0,
            error: 0,
        }
    }

    /// The failed items' indices and errors, in order.
    pub fn errors(&self) -> impl ExactSizeIterator<Item = (usize, &Error)> + '_ {
        self.errors.iter().map(|(i, e)| (*i, e))
    }

    /// Every item's outcome as an owned value, in order.
    pub fn into_vec(self) -> Vec<Result<Vec<u8>, Error>> {
        let mut errors = self.errors.into_iter();
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let item = if start < end {
                    Ok(self.bytes[start..end].to_vec())
                } else {
                    // One error per empty range, in order (`push_err`).
                    Err(errors.next().map_or_else(
                        || Error::Protocol("a failed item without its error".to_owned()),
                        |(_, e)| e,
                    ))
                };
                start = end;
                item
            })
            .collect()
    }
}

impl fmt::Debug for EncodedOutcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a EncodedOutcomes {
    type Item = Result<&'a [u8], &'a Error>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The iterator of [`EncodedOutcomes::iter`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    outcomes: &'a EncodedOutcomes,
    /// The next item's index.
    next: usize,
    /// Where the next item's bytes start.
    start: usize,
    /// The next failed item's place in `errors`.
    error: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Result<&'a [u8], &'a Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let all = self.outcomes;
        let end = *all.ends.get(self.next)?;
        self.next += 1;
        let start = std::mem::replace(&mut self.start, end);
        if start < end {
            return Some(Ok(&all.bytes[start..end]));
        }
        let (_, error) = &all.errors[self.error];
        self.error += 1;
        Some(Err(error))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.outcomes.ends.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EncodedOutcomes {
        let mut out = EncodedOutcomes::default();
        out.push_ok(&[1]).unwrap();
        out.push_err(Error::Cancelled);
        out.push_ok(&[2, 3]).unwrap();
        out.push_err(Error::Terminated);
        out
    }

    #[test]
    fn iter_get_and_into_vec_agree() {
        let out = sample();
        assert_eq!(out.len(), 4);
        assert_eq!(out.failures(), 2);
        assert!(!out.all_ok());
        let seen: Vec<_> = out.iter().collect();
        assert_eq!(seen.len(), 4);
        assert_eq!(out.iter().len(), 4);
        for (i, item) in seen.iter().enumerate() {
            assert_eq!(
                format!("{item:?}"),
                format!("{:?}", out.get(i).unwrap()),
                "item {i}"
            );
        }
        assert_eq!(out.get(0).unwrap().unwrap(), &[1]);
        assert!(matches!(out.get(1), Some(Err(Error::Cancelled))));
        assert_eq!(out.get(2).unwrap().unwrap(), &[2, 3]);
        assert!(matches!(out.get(3), Some(Err(Error::Terminated))));
        assert!(out.get(4).is_none());
        assert_eq!(
            out.errors().map(|(i, _)| i).collect::<Vec<_>>(),
            [1usize, 3]
        );
        let owned = out.into_vec();
        assert_eq!(owned[0].as_ref().unwrap(), &vec![1u8]);
        assert!(matches!(owned[1], Err(Error::Cancelled)));
        assert_eq!(owned[2].as_ref().unwrap(), &vec![2u8, 3]);
        assert!(matches!(owned[3], Err(Error::Terminated)));
    }

    #[test]
    fn an_empty_value_is_refused() {
        let mut out = EncodedOutcomes::default();
        assert!(out.push_ok(&[]).is_err());
        assert!(out.is_empty());
        assert!(out.all_ok());
    }
}
