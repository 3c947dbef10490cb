//! Decoding the binary batch layout of `binary.rs` (see its `# Design` for
//! the layout and for why every read is bounded).
//!
//! What a decoded batch holds is bounded by [`MAX_EXPANDED`], one budget
//! charged by [`Decoder::spend`] for the bytes of every string (the
//! dictionary, each tag set and series key, and the key copied into each
//! partial) and 8 bytes for every sketch bucket: a dictionary lets a few
//! bytes name a long key, and a bucket packed in 1 bit decodes into a `u64`,
//! so the input's length alone bounds neither. Table and partial counts are
//! checked against the bytes that remain, and no count read from the input
//! reserves more than [`MAX_RESERVE`] entries ahead of the entries read.

use alloc::string::String;
use alloc::vec::Vec;

use super::binary::{references, TagSet, BUCKET_BYTES, MAX_EXPANDED};
use super::varint::{self, Reader};
use super::{Batch, BatchError, BinaryError, Partial, BATCH_VERSION};
use crate::extent::{Extent, Point};
use crate::series::{MAX_ID_LEN, MAX_TAGS};
use crate::sketch::{Sketch, WideCounts};
use crate::summary::Summary;
use crate::window::{Width, Window};
use crate::{Incarnation, Quantum, SeriesKey};

/// The longest string of the dictionary (a tag value of 128 characters of
/// up to 4 bytes).
const MAX_STRING: usize = 512;

/// The most entries a count read from the input reserves ahead: a table
/// grows past it as its entries are read, so a hostile count followed by
/// junk allocates at most this many before it fails.
const MAX_RESERVE: usize = 1024;

/// Decodes the bytes after the magic byte.
pub(super) fn decode(body: &[u8]) -> Result<Batch, BatchError> {
    decode_counted(body).map(|(batch, _)| batch)
}

/// Decodes the bytes after the magic byte; answers the batch and what it
/// charged to [`MAX_EXPANDED`].
pub(super) fn decode_counted(body: &[u8]) -> Result<(Batch, usize), BatchError> {
    let mut r = Reader::new(body);
    let v = r.wide()?;
    let v = u16::try_from(v).map_err(|_| BinaryError("version past 16 bits"))?;
    if v != BATCH_VERSION {
        return Err(super::wrong_version(v));
    }
    let agent = utf8(r.bytes(4 * MAX_ID_LEN, "agent id too long")?)?;
    let incarnation = r.take(8)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(incarnation);
    let mut batch = Batch::new(agent, 0, 0, Vec::new());
    batch.incarnation = Incarnation::new(u64::from_be_bytes(id));
    batch.seq = r.u64()?;
    batch.first_unconfirmed = r.u64()?;
    batch.watermark = r.i64()?;
    batch.dropped_readings = r.u64()?;
    let mut d = Decoder::default();
    d.tables(&mut r)?;
    batch.partials = d.partials(&mut r, batch.watermark)?;
    if r.remaining() != 0 {
        return Err(BinaryError("trailing bytes").into());
    }
    Ok((batch, d.expanded))
}

fn utf8(b: &[u8]) -> Result<String, BinaryError> {
    core::str::from_utf8(b)
        .map(String::from)
        .map_err(|_| BinaryError("string is not UTF-8"))
}

/// The tables of a batch being decoded, and the string bytes it holds.
#[derive(Default)]
struct Decoder {
    strings: Vec<String>,
    tagsets: Vec<TagSet>,
    series: Vec<(Key, Quantum, usize)>,
    widths: Vec<Width>,
    expanded: usize,
}

/// A series of the table: its key until a partial first names it, then
/// which partial took it (a later one copies it from there). Most batches
/// name each series once, so most keys move and none is copied.
enum Key {
    Held(SeriesKey),
    MovedTo(usize),
}

impl Decoder {
    /// Counts `n` more bytes (of strings, or of buckets) against
    /// [`MAX_EXPANDED`].
    fn spend(&mut self, n: usize) -> Result<(), BinaryError> {
        self.expanded = self
            .expanded
            .checked_add(n)
            .filter(|&e| e <= MAX_EXPANDED)
            .ok_or(BinaryError(
                "the strings and buckets a batch holds exceed their limit",
            ))?;
        Ok(())
    }

    /// Counts `len` more buckets against [`MAX_EXPANDED`].
    fn spend_buckets(&mut self, len: usize) -> Result<(), BinaryError> {
        let n = len
            .checked_mul(BUCKET_BYTES)
            .ok_or(BinaryError("too many buckets"))?;
        self.spend(n)
    }

    fn string(&self, r: &mut Reader<'_>) -> Result<&String, BinaryError> {
        let i = r.len(usize::MAX, "index past usize")?;
        self.strings
            .get(i)
            .ok_or(BinaryError("string index out of range"))
    }

    /// Strings, tag sets, series and widths. Each entry of a table takes at
    /// least one byte, so no table is longer than the bytes that remain.
    fn tables(&mut self, r: &mut Reader<'_>) -> Result<(), BatchError> {
        let n = r.len(r.remaining(), "more strings than bytes")?;
        self.strings.reserve(n.min(MAX_RESERVE));
        for _ in 0..n {
            let shared = r.len(MAX_STRING, "string too long")?;
            let suffix = r.bytes(MAX_STRING, "string too long")?;
            self.spend(shared + suffix.len())?;
            let prev = self.strings.last().map_or(&[][..], |s| s.as_bytes());
            let head = prev
                .get(..shared)
                .ok_or(BinaryError("shared prefix too long"))?;
            let mut s = Vec::with_capacity(shared + suffix.len());
            s.extend_from_slice(head);
            s.extend_from_slice(suffix);
            let s = String::from_utf8(s).map_err(|_| BinaryError("string is not UTF-8"))?;
            self.strings.push(s);
        }
        let n = r.len(r.remaining(), "more tag sets than bytes")?;
        for _ in 0..n {
            let ntags = r.len(MAX_TAGS, "too many tags")?;
            let mut tags = TagSet::new();
            for _ in 0..ntags {
                let k = self.string(r)?.clone();
                let v = self.string(r)?.clone();
                self.spend(k.len() + v.len())?;
                if tags.insert(k, v).is_some() {
                    return Err(BinaryError("duplicate tag key").into());
                }
            }
            self.tagsets.push(tags);
        }
        let n = r.len(r.remaining(), "more series than bytes")?;
        for _ in 0..n {
            let metric = self.string(r)?.clone();
            let device = self.string(r)?.clone();
            let t = r.len(usize::MAX, "index past usize")?;
            let tags = self
                .tagsets
                .get(t)
                .ok_or(BinaryError("tag set index out of range"))?;
            let tags = tags.clone();
            let size = metric.len()
                + device.len()
                + tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            self.spend(size)?;
            let exponent =
                i8::try_from(r.signed()?).map_err(|_| BinaryError("quantum out of range"))?;
            let quantum =
                Quantum::new(exponent).map_err(|_| BinaryError("quantum out of range"))?;
            let key = SeriesKey::new(metric, device, tags).map_err(BatchError::Series)?;
            self.series.push((Key::Held(key), quantum, size));
        }
        let n = r.len(r.remaining(), "more widths than bytes")?;
        for _ in 0..n {
            let ms = i64::try_from(r.u64()?).map_err(|_| BinaryError("width out of range"))?;
            let w = Width::new(ms).map_err(|_| BinaryError("width out of range"))?;
            self.widths.push(w);
        }
        Ok(())
    }

    /// The partials (each takes at least four bytes).
    fn partials(&mut self, r: &mut Reader<'_>, watermark: i64) -> Result<Vec<Partial>, BatchError> {
        let n = r.len(r.remaining() / 4, "more partials than bytes")?;
        let mut out = Vec::with_capacity(n.min(MAX_RESERVE));
        let mut prev_k: Option<i128> = None;
        for _ in 0..n {
            let i = r.len(usize::MAX, "index past usize")?;
            let (slot, quantum, size) = self
                .series
                .get_mut(i)
                .ok_or(BinaryError("series index out of range"))?;
            let (quantum, size) = (*quantum, *size);
            let key = match core::mem::replace(slot, Key::MovedTo(out.len())) {
                Key::Held(key) => key,
                Key::MovedTo(j) => {
                    *slot = Key::MovedTo(j);
                    let first: Option<&Partial> = out.get(j);
                    first
                        .map(|p| p.series.clone())
                        .ok_or(BinaryError("series index out of range"))?
                }
            };
            self.spend(size)?;
            let w = r.len(usize::MAX, "index past usize")?;
            let width = *self
                .widths
                .get(w)
                .ok_or(BinaryError("width index out of range"))?;
            let base = prev_k.unwrap_or(i128::from(watermark.div_euclid(width.ms())));
            let k = base
                .checked_add(r.signed()?)
                .ok_or(BinaryError("window out of range"))?;
            prev_k = Some(k);
            let start = k
                .checked_mul(width.ms().into())
                .and_then(|s| i64::try_from(s).ok())
                .ok_or(BinaryError("window out of range"))?;
            let window =
                Window::new(start, width).map_err(|_| BinaryError("window out of range"))?;
            let summary = self.read_summary(r, quantum, window)?;
            out.push(Partial {
                series: key,
                window,
                summary,
            });
        }
        Ok(out)
    }

    fn read_summary(
        &mut self,
        r: &mut Reader<'_>,
        quantum: Quantum,
        window: Window,
    ) -> Result<Summary, BinaryError> {
        let head = r.wide()?;
        let count = u64::try_from(head >> 1).map_err(|_| BinaryError("count past 64 bits"))?;
        let shifted_moments = head & 1 == 1;
        if shifted_moments && count == 0 {
            // The encoder shifts the moments by the minimum of the readings:
            // without readings it has none, and never sets the flag.
            return Err(BinaryError("moments flagged shifted without readings"));
        }
        let overflow = BinaryError("summary field out of range");
        let mut extent = None;
        let (mut sum, mut sum_sq) = (0, 0);
        if count > 0 {
            let min = r.i64()?;
            let (max, first_value, last_value) = (above(r, min)?, above(r, min)?, above(r, min)?);
            // The offsets are any i128 the input names: checked, never wrapped.
            let time = |t: Option<i128>| t.and_then(|t| i64::try_from(t).ok()).ok_or(overflow);
            let first_time = time(i128::from(window.start()).checked_add(r.signed()?))?;
            let last_time = time((i128::from(window.end()) - 1).checked_sub(r.signed()?))?;
            (sum, sum_sq) = (r.signed()?, r.wide()?);
            if shifted_moments {
                (sum, sum_sq) = unshifted(count, sum, sum_sq, min).ok_or(overflow)?;
            }
            extent = Some(Extent {
                min,
                max,
                first: Point {
                    time: first_time,
                    value: first_value,
                },
                last: Point {
                    time: last_time,
                    value: last_value,
                },
            });
        }
        let head = r.wide()?;
        let scale = i8::try_from(varint::unzigzag(head >> 2))
            .map_err(|_| BinaryError("sketch scale out of range"))?;
        let zero = if head & 2 != 0 {
            match r.u64()? {
                0 => return Err(BinaryError("a zero count flagged but 0")),
                z => z,
            }
        } else {
            0
        };
        let (pos_ref, neg_ref) = references(quantum, extent.as_ref(), scale);
        let positive = self.read_side(r, pos_ref)?;
        let negative = if head & 1 != 0 {
            match self.read_side(r, neg_ref)? {
                (_, c) if c.is_empty() => {
                    return Err(BinaryError("negative buckets flagged but none"))
                }
                side => side,
            }
        } else {
            (0, Vec::new())
        };
        let sketch = Sketch::from_parts(
            scale,
            zero,
            (positive.0, &positive.1),
            (negative.0, &negative.1),
        )
        .map_err(BinaryError)?;
        Summary::from_parts(quantum, (count, sum, sum_sq), extent, sketch).map_err(BinaryError)
    }

    fn read_side(
        &mut self,
        r: &mut Reader<'_>,
        reference: i32,
    ) -> Result<(i32, Vec<u64>), BinaryError> {
        let head = r.len(usize::MAX, "too many buckets")?;
        let (len, bits) = (head >> 6, (head & 63) as u32 + 1);
        if len == 0 {
            return match bits {
                1 => Ok((0, Vec::new())),
                _ => Err(BinaryError("bits per count without counts")),
            };
        }
        // Every 8 counts take `bits` bytes.
        if len > WideCounts::LIMIT || len.div_ceil(8) > r.remaining() {
            return Err(BinaryError("too many buckets"));
        }
        self.spend_buckets(len)?;
        let offset = i128::from(reference)
            .checked_add(r.signed()?)
            .and_then(|o| i32::try_from(o).ok())
            .ok_or(BinaryError("bucket offset out of range"))?;
        let counts = r.packed(len, bits)?;
        Ok((offset, counts))
    }
}

/// `base` plus an unsigned varint, which must stay an `i64`.
fn above(r: &mut Reader<'_>, base: i64) -> Result<i64, BinaryError> {
    let overflow = BinaryError("summary field out of range");
    let d = i64::try_from(r.u64()?).map_err(|_| overflow)?;
    base.checked_add(d).ok_or(overflow)
}

/// Σv and Σv² from Σ(v−m) and Σ(v−m)², in the reverse order of the steps of
/// [`shifted`] (so no step overflows where that one did not).
fn unshifted(count: u64, s: i128, sq: u128, m: i64) -> Option<(i128, u128)> {
    let (n, m) = (i128::from(count), i128::from(m));
    let sum = s.checked_add(n.checked_mul(m)?)?;
    let sum_sq = i128::try_from(sq)
        .ok()?
        .checked_sub(n.checked_mul(m.checked_mul(m)?)?)?
        .checked_add(m.checked_mul(2)?.checked_mul(sum)?)?;
    Some((sum, u128::try_from(sum_sq).ok()?))
}
