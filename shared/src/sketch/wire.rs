//! The sketch on the wire: `{scale, zero, positive: {offset, counts},
//! negative: {offset, counts}}`, each sign's counts a sequence of the store's
//! count type (`u64` in the full form, `u8` in the device form). Decoding goes
//! through [`ExpHistogram::from_parts`], so every decoded sketch is valid.

use serde::de::DeserializeOwned;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ExpHistogram, Side, Store};

/// A store whose counts travel on the wire.
pub trait WireStore: Store {
    /// A decoded sign's counts.
    type Counts: DeserializeOwned + AsRef<[Self::Count]>;
}

#[cfg(feature = "alloc")]
impl WireStore for super::WideCounts {
    type Counts = alloc::vec::Vec<u64>;
}

impl WireStore for super::SharedCounts {
    type Counts = heapless::Vec<u8, { super::SharedCounts::LIMIT }>;
}

/// One sign's `{offset, counts}`, serialized from the store.
struct SideRef<'a, S> {
    sketch: &'a ExpHistogram<S>,
    side: Side,
}

/// The counts of one sign as a sequence.
struct CountsRef<'a, S>(SideRef<'a, S>);

impl<S: Store> Serialize for CountsRef<'_, S>
where
    S::Count: Serialize,
{
    fn serialize<Z: Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let b = self.0.sketch.side(self.0.side);
        let mut seq = z.serialize_seq(Some(b.len()))?;
        for c in b.counts() {
            // Every stored count is within the store's count type.
            let c = S::Count::try_from(c).map_err(|_| serde::ser::Error::custom("count"))?;
            seq.serialize_element(&c)?;
        }
        seq.end()
    }
}

impl<S: Store> Serialize for SideRef<'_, S>
where
    S::Count: Serialize,
{
    fn serialize<Z: Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let mut st = z.serialize_struct("Buckets", 2)?;
        st.serialize_field("offset", &self.sketch.side(self.side).offset())?;
        st.serialize_field(
            "counts",
            &CountsRef(SideRef {
                sketch: self.sketch,
                side: self.side,
            }),
        )?;
        st.end()
    }
}

impl<S: Store> Serialize for ExpHistogram<S>
where
    S::Count: Serialize,
{
    fn serialize<Z: Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let mut st = z.serialize_struct("ExpHistogram", 4)?;
        st.serialize_field("scale", &self.scale)?;
        st.serialize_field("zero", &self.zero)?;
        for (name, side) in [("positive", Side::Positive), ("negative", Side::Negative)] {
            st.serialize_field(name, &SideRef { sketch: self, side })?;
        }
        st.end()
    }
}

#[derive(Deserialize)]
#[serde(bound = "C: DeserializeOwned")]
struct RawSide<C> {
    offset: i32,
    counts: C,
}

#[derive(Deserialize)]
#[serde(bound = "C: DeserializeOwned")]
struct RawHistogram<C> {
    scale: i8,
    zero: u64,
    positive: RawSide<C>,
    negative: RawSide<C>,
}

impl<'de, S: WireStore> Deserialize<'de> for ExpHistogram<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawHistogram::<S::Counts>::deserialize(d)?;
        Self::from_parts(
            raw.scale,
            raw.zero,
            (raw.positive.offset, raw.positive.counts.as_ref()),
            (raw.negative.offset, raw.negative.counts.as_ref()),
        )
        .map_err(serde::de::Error::custom)
    }
}
