//! The layer that moves frames between the parent and one worker: the envelope around each
//! frame (`envelope`, stated once), the worker's shared region
//! (`region`: a job ring, a result ring, counters, and the sleep/wake protocol of the two
//! sides), and the lock-free single-producer, single-consumer byte ring it is made of
//! (`spsc_ring`: `SpscRing`, not to be confused with `mp`'s `LockedRing`, which many processes
//! share under a robust mutex). The frames themselves are `wire`'s; who sends which job to which worker is the
//! driver's.

pub(crate) mod envelope;
pub(crate) mod region;
pub(crate) mod spsc_ring;
