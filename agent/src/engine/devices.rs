//! The device boots the agent knows — channels, clock, de-duplication
//! state, each a [`DeviceState`] — which boot last spoke on each link, and
//! what changed since the last commit.

use std::collections::{HashMap, HashSet};

use tributary_core::frame::Hello;

use super::registry::Registry;
use crate::link::device::DeviceState;
use crate::store::{Commit, DeviceRow};

/// A device boot: (device id, boot id).
pub(crate) type Boot = (String, u32);

/// Every device boot the agent knows and which boot last spoke on each link.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    boots: HashMap<Boot, DeviceState>,
    links: HashMap<String, Boot>,
    /// Boots changed since the last commit.
    dirty: HashSet<Boot>,
    /// Link changes since the last commit: (link, device, boot).
    new_links: Vec<(String, String, u32)>,
}

impl Devices {
    /// The stored boots and links, with each boot's channels resolved to
    /// their series in `registry`.
    pub(crate) fn restore(
        rows: Vec<DeviceRow>,
        links: Vec<(String, String, u32)>,
        registry: &Registry,
    ) -> Self {
        let boots = rows
            .into_iter()
            .map(|d| {
                let st = DeviceState::restore(&d, |key| registry.find(key));
                ((d.device, d.boot), st)
            })
            .collect();
        let links = links.into_iter().map(|(l, d, b)| (l, (d, b))).collect();
        Devices {
            boots,
            links,
            ..Devices::default()
        }
    }

    /// The de-dup mark of a device boot.
    pub(crate) fn hwm(&self, device: String, boot: u32) -> Option<u32> {
        self.boots.get(&(device, boot)).and_then(|d| d.dedupe.hwm())
    }

    /// A device boot's state, for tests.
    #[cfg(test)]
    pub(crate) fn get(&self, device: &str, boot: u32) -> Option<&DeviceState> {
        self.boots.get(&(device.to_string(), boot))
    }

    /// Whether JSON message `seq` of a device boot was applied before; if
    /// not, records it as applied (stored with the next commit).
    pub(crate) fn json_seen(&mut self, device: &str, boot: u32, seq: u32) -> bool {
        let key = (device.to_string(), boot);
        let st = self
            .boots
            .entry(key.clone())
            .or_insert_with(|| DeviceState::for_json(device, boot, seq));
        if st.dedupe.seen(seq) {
            return true;
        }
        st.dedupe.record(seq);
        self.dirty.insert(key);
        false
    }

    /// The boot last seen on `link`.
    pub(crate) fn on_link(&self, link: &str) -> Option<&Boot> {
        self.links.get(link)
    }

    /// A known boot's state, marked changed (stored with the next commit).
    pub(crate) fn boot_mut(&mut self, boot: &Boot) -> Option<&mut DeviceState> {
        let st = self.boots.get_mut(boot)?;
        self.dirty.insert(boot.clone());
        Some(st)
    }

    /// A boot's state after `h`, its Hello on `link` (a new boot is added);
    /// the boot is marked changed and becomes the link's.
    pub(crate) fn hello(&mut self, link: &str, h: &Hello) -> &mut DeviceState {
        let boot = (h.device.as_str().to_string(), h.boot);
        if self.links.get(link) != Some(&boot) {
            self.new_links
                .push((link.to_string(), boot.0.clone(), boot.1));
            self.links.insert(link.to_string(), boot.clone());
        }
        self.dirty.insert(boot.clone());
        self.boots
            .entry(boot)
            .or_insert_with(|| DeviceState::new(h.clone()))
    }

    /// Moves the changed boots and links into `c`.
    pub(crate) fn drain_into(&mut self, c: &mut Commit) {
        for key in self.dirty.drain() {
            if let Some(st) = self.boots.get(&key) {
                c.devices.push(st.row(&key.0, key.1));
            }
        }
        c.links.append(&mut self.new_links);
    }
}
