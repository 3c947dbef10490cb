//! The compact binary encoding of a [`Batch`] (format 2): what an agent on a
//! metered uplink sends.
//!
//! # Design
//! A batch is mostly partials of a few dozen series of one agent, one window
//! each, whose keys repeat the same metric names, tags and device-id
//! prefixes, and whose summaries hold small numbers (readings near each
//! other, times inside the window). The layout spends bytes accordingly:
//!
//! ```text
//! batch    = 0xB7 v agent incarnation seq first_unconfirmed watermark dropped
//!            strings tagsets series widths partials
//! v        = varint (2)            agent = len bytes (UTF-8)
//! incarnation = 8 bytes, most significant first
//! seq, first_unconfirmed, dropped = varint;  watermark = zigzag
//! strings  = n { shared:varint len:varint bytes }   sorted; each string is
//!            the first `shared` bytes of the one before, then `bytes`
//! tagsets  = n { ntags { key:string# value:string# } }
//! series   = n { metric:string# device:string# tags:tagset# quantum:zigzag }
//! widths   = n { ms:varint }
//! partials = n { series# width# Δk:zigzag summary }   start = k·width, Δk
//!            from the previous partial's k (the first from the watermark's)
//! summary  = head:varint  (count·2 + shifted)
//!            if count > 0: min:zigzag  max−min  first.value−min
//!                last.value−min (varints)  first.time−start:zigzag
//!                end−1−last.time:zigzag
//!                Σ:zigzag  Σ²:varint    shifted: Σ(v−min), Σ(v−min)²;
//!                                       else Σv, Σv² as they are
//!            sketch = head:varint (zigzag(scale)·4 + 2·[zero > 0] + [negative
//!                     buckets]), zero:varint if any, positive, negative if any
//!            side   = head:varint (len·64 + bits−1), if len > 0:
//!                     Δoffset:zigzag  counts: len × `bits` bits, packed
//!                     low bit first, ⌈len·bits/8⌉ bytes
//! ```
//! `#` is an index into the table before; varints are LEB128 (postcard's), so
//! the version is read as postcard read it. A side's offset is coded from the
//! bucket of the summary's smallest magnitude on that side (exact when every
//! reading has the same sign, so 1 byte); the sums are coded from the
//! minimum, so they grow with the readings' spread, not their size. Bucket
//! counts are small (60 readings over a few dozen buckets: mostly 0 to 4),
//! so a side's counts are packed in as many bits as its largest needs.
//!
//! No general-purpose compressor. Measured on the demo's workload
//! (`cargo run -p tributary-demo --example batch_sizes`, then raw deflate
//! level 9 and `zstd -19` on the payloads): a full minute of one agent (60
//! partials, 2438 B) deflates to 1892 B (−22 %; zstd 1863 B), the demo's
//! typical batch of 12 partials (545 B) to 505 B (−7 %), one partial (137
//! B) to 134 B (−2 %) — while JSON deflated (3298 B for the full minute) is
//! still larger than this layout uncompressed. At ≤ 1 byte a reading already,
//! a compressor would add a dependency to the core crate, a decompression
//! bound to keep hostile input safe, and CPU on the collector's ingest path
//! for a saving of single-digit percent on the batches agents actually
//! send; a future version can add it behind a header flag.
//!
//! Decoding is hostile-input safe: every length and index is checked
//! against the bytes that remain and the table it indexes, every sum and
//! difference is checked arithmetic, the strings a decoded batch holds (the
//! dictionary and every series key copied into its partials) and its sketch
//! buckets (8 bytes each) are bounded together by [`MAX_EXPANDED`]
//! (`unpack.rs` decodes) — a dictionary lets a few bytes name a long key and
//! a bucket packed in 1 bit decodes into a `u64`, so the input's length
//! alone does not bound them — and every decoded value goes
//! through the same checks as a JSON one (series keys, aligned windows,
//! [`Summary::validate`]). Trailing bytes are refused.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::num::NonZeroU64;

use super::varint;
use super::{Batch, Partial, BATCH_VERSION, BINARY_MAGIC};
use crate::extent::Extent;
use crate::index::QuantumIndex;
use crate::sketch::Side;
use crate::summary::Summary;
use crate::window::{Width, Window};
use crate::Quantum;

/// The most bytes a decoded batch may hold of strings (dictionary and the
/// series keys of its partials) and sketch buckets (8 bytes each), counted
/// together. An agent's batch of 200 partials with keys of a few hundred
/// bytes and full sketches (2 × 2048 buckets, 32 KiB) holds under 8 MiB.
pub const MAX_EXPANDED: usize = 16 << 20;

/// What one decoded bucket costs of [`MAX_EXPANDED`] (its `u64` count).
pub(super) const BUCKET_BYTES: usize = core::mem::size_of::<u64>();

/// Encodes `b` (magic byte included).
pub(super) fn encode(b: &Batch) -> Vec<u8> {
    let mut out = alloc::vec![BINARY_MAGIC];
    varint::put(&mut out, BATCH_VERSION.into());
    varint::put_bytes(&mut out, b.agent.as_bytes());
    out.extend_from_slice(&b.incarnation.id().to_be_bytes());
    varint::put(&mut out, b.seq.into());
    varint::put(&mut out, b.first_unconfirmed.into());
    varint::put_signed(&mut out, b.watermark.into());
    varint::put(&mut out, b.dropped_readings.into());
    let t = Tables::of(&b.partials);
    t.write(&mut out);
    varint::put(&mut out, b.partials.len() as u128);
    let mut prev_k = None;
    for p in &b.partials {
        let series = t.series_index(p);
        varint::put(&mut out, series as u128);
        let width = t.widths.iter().position(|&w| w == p.window.width());
        varint::put(&mut out, width.unwrap_or(0) as u128);
        let k = i128::from(p.window.start() / p.window.width().ms());
        let base = prev_k.unwrap_or(i128::from(b.watermark.div_euclid(p.window.width().ms())));
        varint::put_signed(&mut out, k - base);
        prev_k = Some(k);
        put_summary(&mut out, &p.summary, p.window);
    }
    out
}

/// What decoding `b`'s binary form charges to [`MAX_EXPANDED`] (`unpack.rs`):
/// the bytes of every dictionary string, of every tag set's tags, of every
/// series key in the series table and again for each partial that names
/// it, and 8 bytes for every sketch bucket. An encoder keeps a batch at or
/// under the limit by this count, so the collector never refuses a batch
/// an agent formed in good faith.
pub(super) fn decoded_bytes(b: &Batch) -> usize {
    let t = Tables::of(&b.partials);
    let tags = |tags: &TagSet| -> usize { tags.iter().map(|(k, v)| k.len() + v.len()).sum() };
    let key =
        |(metric, device, tagset, _): &SeriesId<'_>| metric.len() + device.len() + tags(tagset);
    let strings: usize = t.strings.keys().map(|s| s.len()).sum();
    let tagsets: usize = t.tagsets.iter().map(|s| tags(s)).sum();
    let series: usize = t.series_order.iter().map(key).sum();
    let partials: usize = b
        .partials
        .iter()
        .map(|p| {
            let k = p.summary.sketch();
            let buckets = k.positive().len() + k.negative().len();
            key(&series_id(p)).saturating_add(buckets.saturating_mul(BUCKET_BYTES))
        })
        .fold(0, usize::saturating_add);
    strings
        .saturating_add(tagsets)
        .saturating_add(series)
        .saturating_add(partials)
}

pub(super) type TagSet = BTreeMap<String, String>;
type SeriesId<'a> = (&'a str, &'a str, &'a TagSet, i8);

fn series_id(p: &Partial) -> SeriesId<'_> {
    let s = &p.series;
    (
        s.metric(),
        s.device(),
        s.tags(),
        p.summary.quantum().exponent(),
    )
}

/// The per-batch tables the partials index into.
struct Tables<'a> {
    /// Every string, sorted (so neighbours share prefixes).
    strings: BTreeMap<&'a str, usize>,
    /// Distinct tag sets in order of first use, and their indexes.
    tagsets: Vec<&'a TagSet>,
    tagset_index: BTreeMap<&'a TagSet, usize>,
    series: BTreeMap<SeriesId<'a>, usize>,
    series_order: Vec<SeriesId<'a>>,
    widths: Vec<Width>,
}

impl<'a> Tables<'a> {
    fn of(partials: &'a [Partial]) -> Self {
        let mut strings = BTreeMap::new();
        let mut tagsets: Vec<&TagSet> = Vec::new();
        let mut tagset_index = BTreeMap::new();
        let mut series = BTreeMap::new();
        let mut series_order = Vec::new();
        let mut widths = Vec::new();
        for p in partials {
            let id = series_id(p);
            if let alloc::collections::btree_map::Entry::Vacant(e) = series.entry(id) {
                e.insert(series_order.len());
                series_order.push(id);
                strings.insert(id.0, 0);
                strings.insert(id.1, 0);
                for (k, v) in id.2 {
                    strings.insert(k.as_str(), 0);
                    strings.insert(v.as_str(), 0);
                }
                tagset_index.entry(id.2).or_insert_with(|| {
                    tagsets.push(id.2);
                    tagsets.len() - 1
                });
            }
            if !widths.contains(&p.window.width()) {
                widths.push(p.window.width());
            }
        }
        for (i, slot) in strings.values_mut().enumerate() {
            *slot = i;
        }
        Tables {
            strings,
            tagsets,
            tagset_index,
            series,
            series_order,
            widths,
        }
    }

    fn string(&self, s: &str) -> u128 {
        self.strings.get(s).copied().unwrap_or(0) as u128
    }

    fn series_index(&self, p: &Partial) -> usize {
        self.series.get(&series_id(p)).copied().unwrap_or(0)
    }

    fn write(&self, out: &mut Vec<u8>) {
        varint::put(out, self.strings.len() as u128);
        let mut prev: &[u8] = &[];
        for s in self.strings.keys() {
            let s = s.as_bytes();
            let shared = prev.iter().zip(s).take_while(|(a, b)| a == b).count();
            varint::put(out, shared as u128);
            varint::put_bytes(out, &s[shared..]);
            prev = s;
        }
        varint::put(out, self.tagsets.len() as u128);
        for tags in &self.tagsets {
            varint::put(out, tags.len() as u128);
            for (k, v) in tags.iter() {
                varint::put(out, self.string(k));
                varint::put(out, self.string(v));
            }
        }
        varint::put(out, self.series_order.len() as u128);
        for (metric, device, tags, quantum) in &self.series_order {
            varint::put(out, self.string(metric));
            varint::put(out, self.string(device));
            let t = self.tagset_index.get(tags).copied().unwrap_or(0);
            varint::put(out, t as u128);
            varint::put_signed(out, (*quantum).into());
        }
        varint::put(out, self.widths.len() as u128);
        for w in &self.widths {
            varint::put(out, w.ms() as u128);
        }
    }
}

/// Σ(v−m) and Σ(v−m)² from Σv and Σv² (`None` if a step overflows).
fn shifted(count: u64, sum: i128, sum_sq: u128, m: i64) -> Option<(i128, u128)> {
    let (n, m) = (i128::from(count), i128::from(m));
    let s = sum.checked_sub(n.checked_mul(m)?)?;
    let sq = i128::try_from(sum_sq)
        .ok()?
        .checked_sub(m.checked_mul(2)?.checked_mul(sum)?)?
        .checked_add(n.checked_mul(m.checked_mul(m)?)?)?;
    Some((s, u128::try_from(sq).ok()?))
}

/// The reference bucket of each side's offset: that of the smallest
/// magnitude the extent allows on the side (0 without readings there).
pub(super) fn references(q: Quantum, extent: Option<&Extent<i64, i64>>, scale: i8) -> (i32, i32) {
    let ix = QuantumIndex::of(q);
    let at = |m: u64| NonZeroU64::new(m).map_or(0, |m| ix.index(m, scale));
    match extent {
        None => (0, 0),
        Some(e) => (
            if e.max > 0 {
                at(e.min.max(1).unsigned_abs())
            } else {
                0
            },
            if e.min < 0 {
                at(e.max.min(-1).unsigned_abs())
            } else {
                0
            },
        ),
    }
}

fn put_summary(out: &mut Vec<u8>, s: &Summary, window: Window) {
    let count = s.count();
    let extent = s.extent().filter(|_| count > 0);
    let moments = extent.and_then(|e| shifted(count, s.sum_ticks(), s.sum_sq_ticks(), e.min));
    varint::put(out, u128::from(count) * 2 + u128::from(moments.is_some()));
    if let Some(e) = extent {
        let (min, max) = (i128::from(e.min), i128::from(e.max));
        varint::put_signed(out, min);
        // A valid extent has min ≤ first, last ≤ max and first ≤ last.
        let above = |v: i128| u128::try_from(v - min).unwrap_or(0);
        for v in [max, e.first.value.into(), e.last.value.into()] {
            varint::put(out, above(v));
        }
        varint::put_signed(out, i128::from(e.first.time) - i128::from(window.start()));
        varint::put_signed(out, i128::from(window.end()) - 1 - i128::from(e.last.time));
        let (sum, sum_sq) = moments.unwrap_or((s.sum_ticks(), s.sum_sq_ticks()));
        varint::put_signed(out, sum);
        varint::put(out, sum_sq);
    }
    let k = s.sketch();
    let (zero, negative) = (k.zero_count() > 0, !k.negative().is_empty());
    let scale = varint::zigzag(k.scale().into());
    varint::put(
        out,
        scale << 2 | u128::from(zero) << 1 | u128::from(negative),
    );
    if zero {
        varint::put(out, k.zero_count().into());
    }
    let (pos_ref, neg_ref) = references(s.quantum(), extent, k.scale());
    for (side, reference) in [(Side::Positive, pos_ref), (Side::Negative, neg_ref)] {
        let b = k.side(side);
        if side == Side::Negative && !negative {
            break;
        }
        let bits = b
            .counts()
            .map(|c| 64 - c.leading_zeros())
            .max()
            .unwrap_or(1);
        varint::put(out, (b.len() as u128) << 6 | u128::from(bits.max(1) - 1));
        if !b.is_empty() {
            varint::put_signed(out, i128::from(b.offset()) - i128::from(reference));
            varint::put_packed(out, b.counts(), bits.max(1));
        }
    }
}
