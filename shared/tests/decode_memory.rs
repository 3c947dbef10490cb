//! What a hostile binary batch can make the decoder reserve: a partial
//! count of a million in front of 4 MiB of junk passes the bytes-per-partial
//! bound, so only the decoder's reservation cap (`MAX_RESERVE` entries in
//! `batch/unpack.rs`) keeps it from reserving the whole count up front.
//! Measured with dhat's heap statistics; the allocator is this binary's
//! own, so no other test's allocations are counted, and it holds this one
//! test only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod layout;

use layout::{key, partial, split_one_partial, varint};
use tributary_core::batch::{Batch, BatchError, Partial};

#[global_allocator]
static HEAP: dhat::Alloc = dhat::Alloc;

#[test]
fn a_partial_count_past_the_partials_reserves_little_and_is_refused() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (prefix, _) = split_one_partial(partial(key("m", "d", &[]), 0, 0, 60_000, &[]));
    // 4 MiB of 0xff after a count of a quarter of it: the count passes the
    // bytes-per-partial bound, the first partial's series index does not
    // end (a varint of 0xff bytes).
    let junk = 4usize << 20;
    let count = junk / 4;
    // Sized up front, so no reallocation peaks before the measurement.
    let mut bytes = Vec::with_capacity(prefix.len() + 10 + junk);
    bytes.extend_from_slice(&prefix);
    bytes.extend(varint(count as u64));
    bytes.extend(std::iter::repeat_n(0xff, junk));
    let before = dhat::HeapStats::get();

    let err = Batch::decode(&bytes).unwrap_err();
    assert!(matches!(err, BatchError::Binary(_)), "{err}");

    // The peak while decoding, above what was live before it: reserving
    // the count would take `count` partials (over 100 MiB).
    let after = dhat::HeapStats::get();
    let peak = after.max_bytes.saturating_sub(before.curr_bytes);
    let reserved_all = count * std::mem::size_of::<Partial>();
    assert!(
        peak < 1 << 20,
        "decoding held {peak} bytes at its peak; the whole count would be {reserved_all}"
    );
}
