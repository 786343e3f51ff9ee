//! SQL over the spooled samples, with polars as the batch engine. The
//! samples are one table, `samples`:
//!
//! | column | type |
//! |---|---|
//! | `device` | string |
//! | `metric` | string |
//! | `ts_ms` | i64, Unix milliseconds |
//! | `value` | f64 |
//! | `boot`, `seq` | u32, null for JSON devices |
//! | `ts` | datetime (ms), derived from `ts_ms` |
//!
//! Results print as a table, or are written as CSV or Parquet.

use std::io::Write;
use std::path::Path;

use polars::prelude::*;
use polars::sql::SQLContext;

use eddy_gateway::client::ClientError;
use eddy_gateway::store::StoreError;

use crate::spool::{Spooled, with_ts};

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Parquet,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "table" => Some(Self::Table),
            "csv" => Some(Self::Csv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query: {0}")]
    Polars(#[from] PolarsError),
    #[error("parquet output is binary: give --out FILE")]
    ParquetNeedsFile,
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gateway(#[from] ClientError),
    /// The gateway's answer is not the samples stream it should be, or it
    /// broke off.
    #[error("the samples stream from {url}: {message}")]
    Stream { url: String, message: String },
    #[error("encoding samples: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Checks `sql` against the table's columns, before any sample is read:
/// a typo costs nothing.
pub fn check(sql: &str) -> Result<(), QueryError> {
    let empty = DataFrame::empty_with_schema(&crate::spool::schema());
    let mut ctx = SQLContext::new();
    ctx.register("samples", with_ts(empty.lazy()));
    ctx.execute(sql)?.collect_schema()?;
    Ok(())
}

/// Runs `sql` over `samples` with polars' streaming engine.
pub fn run(samples: &Spooled, sql: &str) -> Result<DataFrame, QueryError> {
    let mut ctx = SQLContext::new();
    ctx.register("samples", samples.lazy()?);
    let result = ctx.execute(sql)?.collect_with_engine(Engine::Streaming)?;
    // One query plans one sink: several results come only of polars'
    // `collect_all`, which a SQL text cannot ask for.
    Ok(result.unwrap_single())
}

/// Writes `frame` in `format` to `out` (stdout when `None`).
pub fn write(frame: &mut DataFrame, format: Format, out: Option<&Path>) -> Result<(), QueryError> {
    let path = out.map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let io = |source| QueryError::Io {
        path: path.clone(),
        source,
    };
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(io)?,
        )),
        None if format == Format::Parquet => return Err(QueryError::ParquetNeedsFile),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        Format::Table => sink.write_all(table(frame).as_bytes()).map_err(io)?,
        Format::Csv => {
            CsvWriter::new(&mut sink).finish(frame)?;
        }
        Format::Parquet => {
            ParquetWriter::new(&mut sink).finish(frame)?;
        }
    }
    sink.flush().map_err(io)
}

/// Every row as an aligned text table.
pub fn table(frame: &DataFrame) -> String {
    let columns = frame.columns();
    let mut cells: Vec<Vec<String>> = vec![columns.iter().map(|c| c.name().to_string()).collect()];
    for row in 0..frame.height() {
        cells.push(
            columns
                .iter()
                .map(|c| match c.get(row) {
                    Ok(AnyValue::Null) | Err(_) => String::new(),
                    Ok(AnyValue::String(s)) => s.to_string(),
                    Ok(v) => v.to_string(),
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out.push_str(&format!("({} rows)\n", frame.height()));
    out
}
