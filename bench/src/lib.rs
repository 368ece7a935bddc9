//! Shared code for the benchmark binaries of tower-ws-hub.
//!
//! - `loadgen` (`src/bin/loadgen.rs`): the load generator, built from [`loadgen`] and
//!   [`summary`].
//! - `baseline` (`src/bin/baseline.rs`): a hand-rolled axum + `tokio::sync::broadcast` hub, the
//!   way a user would write one without this crate. It is what tower-ws-hub is measured against.
//! - `hub_server` (`src/bin/hub_server.rs`): the same routes served by tower-ws-hub.
//!
//! Both servers answer `GET /healthz` and `GET /stats` ([`server_stats::ServerStats`]), so that
//! the load generator can read their memory use before and after a scenario.
//!
//! `bench/run.sh` drives them all; `BENCHMARKS.md` at the repository root explains the method
//! and holds the results.

pub mod clock;
pub mod cpustat;
pub mod loadgen;
pub mod netstat;
pub mod payload;
pub mod report;
pub mod serve;
pub mod server_stats;
pub mod summary;
pub mod sys;
