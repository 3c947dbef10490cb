//! Global tags (the config's `[tags]`, like Telegraf's `global_tags`): tags
//! this agent adds to the key of every series it forwards — device channels
//! (serial, simulated, MQTT summaries), JSON readings and bulk input alike.
//!
//! They are applied at one place, when the engine registers or looks up a
//! series ([`GlobalTags::apply`]), so every key the windower, the store and
//! the uplink see already carries them. A tag the source sets itself (a JSON
//! reading's `tags`) wins over a global tag of the same name.
//!
//! Changing the global tags starts new series: keys are identities, and
//! windows already open under the old keys are forwarded under those.

use std::borrow::Cow;
use std::collections::BTreeMap;

use tributary_core::series::KeyError;
use tributary_core::SeriesKey;

/// The tags added to every series key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalTags(BTreeMap<String, String>);

impl GlobalTags {
    /// Tags as configured (validate them with [`GlobalTags::check`] first:
    /// an invalid tag makes [`GlobalTags::apply`] refuse every key).
    pub fn new(tags: BTreeMap<String, String>) -> Self {
        GlobalTags(tags)
    }

    /// The tags.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// What is wrong with each tag, as (tag key, reason); checked by the
    /// rules of series keys ([`tributary_core::series`]).
    pub fn check(tags: &BTreeMap<String, String>) -> Vec<(String, KeyError)> {
        tags.iter()
            .filter_map(|(k, v)| {
                let one = BTreeMap::from([(k.clone(), v.clone())]);
                SeriesKey::new("m", "d", one).err().map(|e| (k.clone(), e))
            })
            .collect()
    }

    /// `key` with the global tags added; a tag `key` already has keeps its
    /// value. Borrows `key` when there is nothing to add. Fails when the
    /// result would have too many tags.
    pub fn apply<'k>(&self, key: &'k SeriesKey) -> Result<Cow<'k, SeriesKey>, KeyError> {
        if self.0.keys().all(|k| key.tags().contains_key(k)) {
            return Ok(Cow::Borrowed(key));
        }
        let mut tags = self.0.clone();
        tags.extend(key.tags().iter().map(|(k, v)| (k.clone(), v.clone())));
        SeriesKey::new(key.metric(), key.device(), tags).map(Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn adds_tags_and_the_source_wins() {
        let g = GlobalTags::new(map(&[("site", "berlin"), ("gateway", "gw-1")]));
        let plain = SeriesKey::new("temperature", "dev-1", BTreeMap::new()).unwrap();
        assert_eq!(
            g.apply(&plain).unwrap().to_string(),
            "temperature{device=\"dev-1\",gateway=\"gw-1\",site=\"berlin\"}"
        );
        let own = SeriesKey::new("t", "d", map(&[("site", "lab"), ("floor", "2")])).unwrap();
        let tagged = g.apply(&own).unwrap().into_owned();
        assert_eq!(tagged.tag("site"), Some("lab"), "the source's tag wins");
        assert_eq!(tagged.tag("gateway"), Some("gw-1"));
        assert_eq!(tagged.tag("floor"), Some("2"));
        assert_eq!(tagged.tags().len(), 3);
        // Applying twice changes nothing (restored keys are already tagged).
        assert!(matches!(g.apply(&tagged).unwrap(), Cow::Borrowed(k) if *k == tagged));
        assert!(
            matches!(GlobalTags::default().apply(&own).unwrap(), Cow::Borrowed(k) if *k == own)
        );
    }

    #[test]
    fn too_many_tags_in_all_is_refused() {
        let g = GlobalTags::new(map(&[("site", "x")]));
        let full: BTreeMap<String, String> = (0..tributary_core::series::MAX_TAGS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let key = SeriesKey::new("t", "d", full).unwrap();
        assert!(matches!(g.apply(&key), Err(KeyError::TooManyTags(17))));
    }

    #[test]
    fn check_names_each_bad_tag() {
        let bad = GlobalTags::check(&map(&[
            ("site", "ok"),
            ("9x", "v"),
            ("device", "v"),
            ("room", "a,b"),
        ]));
        let names: Vec<&str> = bad.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["9x", "device", "room"]);
        assert!(matches!(bad[1].1, KeyError::ReservedTag(_)));
        assert!(matches!(bad[2].1, KeyError::BadChar { ch: ',', .. }));
    }
}
