//! The in-memory state input is applied to — the windower, the registry of
//! series, the device boots, what waits for the commit — and the metrics it
//! keeps, restored from the store at start.

use std::sync::Arc;

use super::config::LimitsConfig;
use super::devices::Devices;
use super::pending::Pending;
use super::registry::Registry;
use super::tags::GlobalTags;
use crate::metrics::Metrics;
use crate::store::Loaded;
use crate::window::{WindowConfig, Windower};

/// The engine's in-memory state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) win: Windower,
    pub(crate) registry: Registry,
    pub(crate) devices: Devices,
    pub(crate) pending: Pending,
    pub(crate) metrics: Arc<Metrics>,
}

impl State {
    /// The state of the last commit, `loaded` from the store.
    pub(crate) fn restore(
        loaded: Loaded,
        window: &WindowConfig,
        limits: &LimitsConfig,
        tags: GlobalTags,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut win = Windower::from_config(window).with_bounds(limits.time_bounds());
        let registry = Registry::restore(
            limits,
            tags,
            loaded.sources,
            loaded.series,
            &mut win,
            metrics.series.clone(),
        );
        for (s, start, sum) in loaded.windows {
            win.restore_window(s, start, sum);
        }
        let devices = Devices::restore(loaded.devices, loaded.links, &registry);
        State {
            win,
            registry,
            devices,
            pending: Pending::default(),
            metrics,
        }
    }
}
