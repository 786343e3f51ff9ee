//! `eddy query`: SQL over the stored raw samples, with polars as the
//! batch engine. The samples become one table, `samples`:
//!
//! | column | type |
//! |---|---|
//! | `device` | string |
//! | `metric` | string |
//! | `ts` | datetime (ms) |
//! | `ts_ms` | i64, Unix milliseconds |
//! | `value` | f64 |
//! | `boot`, `seq` | u32, null for JSON devices |
//!
//! Results print as a table, or are written as CSV or Parquet.

use std::io::Write;
use std::path::Path;

use polars::prelude::*;
use polars::sql::SQLContext;

use eddy_gateway::store::{Store, StoreError};

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
}

/// The stored samples (from `since_ms` on, when given) as a frame.
pub fn samples_frame(store: &Store, since_ms: Option<i64>) -> Result<DataFrame, QueryError> {
    let (mut device, mut metric, mut ts, mut value, mut boot, mut seq) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    store.for_each_sample(|_, s| {
        if since_ms.is_some_and(|since| s.ts_ms < since) {
            return;
        }
        device.push(s.device);
        metric.push(s.metric);
        ts.push(s.ts_ms);
        value.push(s.value);
        boot.push(s.frame.map(|f| f.0));
        seq.push(s.frame.map(|f| f.1));
    })?;
    let frame = df!(
        "device" => device,
        "metric" => metric,
        "ts_ms" => ts,
        "value" => value,
        "boot" => boot,
        "seq" => seq,
    )?
    .lazy()
    .with_column(
        col("ts_ms")
            .cast(DataType::Datetime(TimeUnit::Milliseconds, None))
            .alias("ts"),
    )
    .collect()?;
    Ok(frame)
}

/// Runs `sql` over `samples`.
pub fn run(samples: DataFrame, sql: &str) -> Result<DataFrame, QueryError> {
    let mut ctx = SQLContext::new();
    ctx.register("samples", samples.lazy());
    Ok(ctx.execute(sql)?.collect()?)
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
