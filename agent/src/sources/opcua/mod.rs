//! OPC UA servers (`[[opcua]]`): monitored items of one subscription per
//! server, each a series (cargo feature `opcua`, on by default; without it
//! the section is refused at load).
//!
//! # Design
//! Each server's task owns an `async-opcua` client session over
//! `opc.tcp` (security `None`, or `Basic256Sha256` with `Sign` or
//! `SignAndEncrypt`; anonymous or user name and password). It creates one
//! subscription (`publishing_interval_ms`) with a monitored item per
//! `[[opcua.items]]` (sampling interval, queue size, oldest discarded when
//! full; a data change filter that by default reports every new
//! SourceTimestamp, so a repeated value is a reading too), timestamps Both. Each data change is turned into ticks of the
//! item's quantum by [`value`] (Good status only; Boolean/integer variants
//! exact, Float/Double rounded once) with the SourceTimestamp as event time
//! (else ServerTimestamp, else receive time), and handed to the engine as
//! [`crate::engine::Input::Readings`], which applies the agent's time
//! bounds like for any reading.
//!
//! Failures and refusals are counted per server and reason in
//! `tributary_agent_opcua_errors_total{device,reason}`: `connect` (no
//! endpoint, session or activation within `timeout_ms`), `subscribe` (the
//! subscription, or the request for its items, refused), `item` (per
//! monitored item the server refuses: the others still report),
//! `connection_lost` (the library's connection broke; it reconnects on
//! its own), `reconnect` (one of its attempts failed), `session_ended`
//! (the session is of no more use: its loop gave up, or a reconnection
//! lost the subscription or some of its monitored items; the task starts a
//! new session), and per value `bad`, `uncertain`
//! (status), `type` (not a number), `value` (does not fit the ticks),
//! `repeat` (the value last handed over, again: a recreated subscription's
//! first report), `overflow` (dropped: the queue to the engine was full).
//! Values handed over are counted in `tributary_agent_opcua_values_total`.
//! Until a session is up the task retries with a backoff from 100 ms
//! doubling to 30 s; after that the library's session loop reconnects with
//! the same backoff, without a limit, and transfers or recreates the
//! subscription (`tributary_agent_opcua_reconnects_total`). The library
//! drops a subscription it cannot recreate (the server refuses it, or the
//! request fails) and only logs a refusal of the recreated items, so the
//! task watches for both: the subscription's queue closing, and a
//! reconnection that leaves fewer monitored items than the session held
//! when the connection broke. Either ends the session, and the task starts
//! a new one after the backoff's next pause (back to 100 ms only if the
//! session had stayed connected 30 s without a break). A server only
//! ever waits on itself: its failures stall no other input. Changes are
//! queued between the library's callback and the engine in a bounded queue
//! (the items' queue sizes summed, times 4, at least 1024 and at most
//! 65,536); the callback never waits, so a change that finds the queue full
//! (the engine not keeping up) is dropped and counted as `overflow`.

#[cfg(feature = "opcua")]
mod client;
pub mod config;
#[cfg(feature = "opcua")]
pub mod value;

#[cfg(feature = "opcua")]
pub(crate) use client::run;
pub use config::{ItemConfig, OpcuaConfig, SecurityMode, SecurityPolicy, Trigger};
