//! The spool: samples written batch by batch into a temporary Parquet
//! file, which polars then scans lazily, so a query over any range holds
//! a batch of samples in memory, not all of them.

use std::fs::File;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt32Type};
use arrow_array::{Array, RecordBatch, StringArray, UInt32Array};
use polars::io::parquet::write::BatchedWriter;
use polars::prelude::*;
use tempfile::TempDir;

use crate::QueryError;

/// The table's stored columns, as the gateway's samples stream has them
/// (`eddy_gateway::samples::schema`), in polars' types.
pub fn schema() -> Schema {
    Schema::from_iter([
        Field::new("device".into(), DataType::String),
        Field::new("metric".into(), DataType::String),
        Field::new("ts_ms".into(), DataType::Int64),
        Field::new("value".into(), DataType::Float64),
        Field::new("boot".into(), DataType::UInt32),
        Field::new("seq".into(), DataType::UInt32),
    ])
}

/// `samples` with the derived column `ts`, a datetime (ms) of `ts_ms`.
pub fn with_ts(samples: LazyFrame) -> LazyFrame {
    samples.with_column(
        col("ts_ms")
            .cast(DataType::Datetime(TimeUnit::Milliseconds, None))
            .alias("ts"),
    )
}

/// Samples being written to a temporary Parquet file.
pub struct Spool {
    dir: TempDir,
    path: PathBuf,
    writer: BatchedWriter<File>,
    rows: u64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// A new spool in the system's temporary directory (`$TMPDIR`),
    /// removed with the [`Spooled`] it becomes.
    pub fn create() -> Result<Self, QueryError> {
        let io = |path: String| move |source| QueryError::Io { path, source };
        let dir = tempfile::Builder::new()
            .prefix("eddy-query-")
            .tempdir()
            .map_err(io(std::env::temp_dir().display().to_string()))?;
        let path = dir.path().join("samples.parquet");
        let file = File::create(&path).map_err(io(path.display().to_string()))?;
        let writer = ParquetWriter::new(file).batched(&schema())?;
        Ok(Self {
            dir,
            path,
            writer,
            rows: 0,
        })
    }

    /// Appends a batch of the samples stream's schema.
    ///
    /// Errors: a column missing or of another type; the file cannot be
    /// written.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let frame = frame(batch)?;
        self.writer.write_batch(&frame)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Samples spooled so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the file, ready to be scanned.
    pub fn finish(self) -> Result<Spooled, QueryError> {
        self.writer.finish()?;
        Ok(Spooled {
            _dir: self.dir,
            path: self.path,
            rows: self.rows,
        })
    }
}

/// A closed spool file, removed when dropped.
#[derive(Debug)]
pub struct Spooled {
    _dir: TempDir,
    path: PathBuf,
    /// Samples in it.
    pub rows: u64,
}

impl Spooled {
    /// The samples, with `ts`, as a lazy scan of the file.
    pub fn lazy(&self) -> Result<LazyFrame, QueryError> {
        let path = PlRefPath::try_from_path(&self.path)?;
        Ok(with_ts(LazyFrame::scan_parquet(
            path,
            ScanArgsParquet::default(),
        )?))
    }
}

/// One batch of the samples stream as a polars frame.
fn frame(batch: &RecordBatch) -> Result<DataFrame, QueryError> {
    Ok(df!(
        "device" => strings(batch, "device")?.iter().collect::<Vec<_>>(),
        "metric" => strings(batch, "metric")?.iter().collect::<Vec<_>>(),
        "ts_ms" => column(batch, "ts_ms", |a| a.as_primitive_opt::<Int64Type>())?.values().to_vec(),
        "value" => column(batch, "value", |a| a.as_primitive_opt::<Float64Type>())?.values().to_vec(),
        "boot" => words(batch, "boot")?.iter().collect::<Vec<_>>(),
        "seq" => words(batch, "seq")?.iter().collect::<Vec<_>>(),
    )?)
}

/// Column `name` of `batch` as the array type `cast` gives.
fn column<'a, T: ?Sized>(
    batch: &'a RecordBatch,
    name: &str,
    cast: impl FnOnce(&'a dyn Array) -> Option<&'a T>,
) -> Result<&'a T, PolarsError> {
    let array = batch.column_by_name(name).ok_or_else(|| {
        PolarsError::SchemaMismatch(format!("the samples have no column `{name}`").into())
    })?;
    cast(array.as_ref()).ok_or_else(|| {
        PolarsError::SchemaMismatch(format!("column `{name}` has another type").into())
    })
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, PolarsError> {
    column(batch, name, |a| a.as_string_opt::<i32>())
}

fn words<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a UInt32Array, PolarsError> {
    column(batch, name, |a| a.as_primitive_opt::<UInt32Type>())
}
