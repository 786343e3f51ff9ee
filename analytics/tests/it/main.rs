//! The integration tests of `eddy-analytics`, one test binary: a module per
//! behaviour (`cargo test -p eddy-analytics --test it`).

mod alerts;
mod engine;
mod multi_metric;
mod polars_oracle;
mod snapshot_fixture;
mod sql;
