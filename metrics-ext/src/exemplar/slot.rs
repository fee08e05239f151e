//! One exemplar slot: one histogram bucket's exemplar, written and read
//! without a lock.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::TraceIds;

/// An exemplar: the trace of one observation, its value and when it was
/// made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Exemplar {
    pub(crate) trace: TraceIds,
    /// The observed value (seconds).
    pub(crate) value: f64,
    /// Nanoseconds after the process's clock anchor ([`super::clock`]).
    pub(crate) at: u64,
}

/// A seqlock made of atomics only (the crate forbids `unsafe`): `seq` is
/// odd while a writer fills the fields, and a reader that saw it move reads
/// again, so a reader never mixes two writes.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    seq: AtomicU64,
    trace_hi: AtomicU64,
    trace_lo: AtomicU64,
    span: AtomicU64,
    value: AtomicU64,
    at: AtomicU64,
    /// The scrape generation ([`super::SeriesExemplars`]) the exemplar
    /// held was kept in; 0 while the slot is empty. Also read outside the
    /// lock: the one test most traced observations make.
    generation: AtomicU64,
}

/// How often a reader tries before giving the exemplar up: a writer holds
/// the slot for a few stores, unless the scheduler stops it in between.
const READ_ATTEMPTS: usize = 64;

impl Slot {
    /// Whether the slot already holds an exemplar of `generation`.
    #[inline]
    pub(crate) fn holds(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Relaxed) == generation
    }

    /// Keeps `exemplar` as the slot's exemplar of `generation`, unless the
    /// slot already has one of that generation, or one made after it (a
    /// call that ended later wrote first), or another writer holds the slot
    /// at this moment: exemplars are a sample, a skipped one costs nothing,
    /// and a writer never waits. Returns whether it was kept.
    pub(crate) fn offer(&self, exemplar: &Exemplar, generation: u64) -> bool {
        let seq = self.seq.load(Ordering::Relaxed);
        // Acquire: the previous writer's stores come before ours in every
        // field's order, so the last writer's values are the ones left.
        if seq & 1 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // Under the lock: another writer may have kept one since the
        // caller looked.
        let held = self.generation.load(Ordering::Relaxed);
        if held == generation || (held != 0 && exemplar.at < self.at.load(Ordering::Relaxed)) {
            self.seq.store(seq + 2, Ordering::Release);
            return false;
        }
        // A reader that sees any store below also sees the odd `seq`.
        fence(Ordering::Release);
        let trace = exemplar.trace;
        self.trace_hi.store(trace.trace_id[0], Ordering::Relaxed);
        self.trace_lo.store(trace.trace_id[1], Ordering::Relaxed);
        self.span.store(trace.span_id.get(), Ordering::Relaxed);
        self.value
            .store(exemplar.value.to_bits(), Ordering::Relaxed);
        self.at.store(exemplar.at, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
        true
    }

    /// The exemplar held, if any: every field from the same write. `None`
    /// too when writers kept the slot busy through every attempt.
    pub(crate) fn read(&self) -> Option<Exemplar> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let trace_hi = self.trace_hi.load(Ordering::Relaxed);
            let trace_lo = self.trace_lo.load(Ordering::Relaxed);
            let span = self.span.load(Ordering::Relaxed);
            let value = self.value.load(Ordering::Relaxed);
            let at = self.at.load(Ordering::Relaxed);
            // Orders the loads above before the check of `seq` below.
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                // A slot that is not empty holds a valid span's ids.
                let trace =
                    TraceIds::new((u128::from(trace_hi) << 64) | u128::from(trace_lo), span)?;
                return Some(Exemplar {
                    trace,
                    value: f64::from_bits(value),
                    at,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    };

    use super::*;

    /// An exemplar whose every field is derived from `n` (not 0), so a mix
    /// of two writes shows.
    fn numbered(n: u64) -> Exemplar {
        Exemplar {
            trace: TraceIds::new((u128::from(n) << 64) | u128::from(!n), n.rotate_left(17))
                .unwrap(),
            value: n as f64,
            at: n,
        }
    }

    fn number_of(exemplar: &Exemplar) -> u64 {
        let n = exemplar.at;
        assert_eq!(exemplar, &numbered(n), "torn exemplar");
        n
    }

    #[test]
    fn a_slot_is_seven_words() {
        // What the crate documentation counts per bucket.
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }

    #[test]
    fn an_empty_slot_reads_nothing_and_a_write_reads_back_whole() {
        let slot = Slot::default();
        assert_eq!(slot.read(), None);
        assert!(!slot.holds(1));
        assert!(slot.offer(&numbered(7), 1));
        assert!(slot.holds(1));
        assert_eq!(slot.read(), Some(numbered(7)));
    }

    #[test]
    fn one_exemplar_per_generation_and_never_an_older_one() {
        let slot = Slot::default();
        assert!(slot.offer(&numbered(1_000), 1));
        // Same generation: the first stays.
        assert!(!slot.offer(&numbered(1_001), 1));
        assert_eq!(slot.read().map(|e| e.at), Some(1_000));
        // A new generation (a scrape happened), but made before the one
        // held (a call that ended earlier, recorded late): refused.
        assert!(!slot.offer(&numbered(999), 2));
        // A later one: kept.
        assert!(slot.offer(&numbered(1_002), 2));
        assert_eq!(slot.read(), Some(numbered(1_002)));
        assert!(slot.holds(2));
    }

    /// Two writers and two readers hammer one slot, a new generation for
    /// every write: every read is one whole write (trace id, span id,
    /// value and time from the same exemplar), and what a reader sees never
    /// goes back in time.
    #[test]
    fn concurrent_writers_and_readers_never_see_a_torn_exemplar() {
        const WRITES: u64 = 200_000;
        let slot = Arc::new(Slot::default());
        let writing = Arc::new(AtomicBool::new(true));
        let kept = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (slot, kept) = (slot.clone(), kept.clone());
                std::thread::spawn(move || {
                    // Interleaved numbers: the two writers race for newer
                    // and newer values.
                    for i in 1..=WRITES {
                        let n = i * 2 + w;
                        if slot.offer(&numbered(n), n) {
                            kept.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (slot, writing) = (slot.clone(), writing.clone());
                std::thread::spawn(move || {
                    let (mut reads, mut last) = (0u64, 0u64);
                    while writing.load(Ordering::Relaxed) || reads == 0 {
                        if let Some(exemplar) = slot.read() {
                            let n = number_of(&exemplar);
                            assert!(n >= last, "went back from {last} to {n}");
                            last = n;
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        writing.store(false, Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(reads > 0);
        assert!(kept.load(Ordering::Relaxed) > 0);
        number_of(&slot.read().unwrap());
    }
}
